package vars

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"filippo.io/age"
	"filippo.io/age/agessh"
	"filippo.io/age/armor"

	"github.com/credvm/credvm/internal/sops"
	"github.com/credvm/credvm/internal/spec"
)

// A bundle moves one machine's vars to another repository (another host):
// every var's value, the machine file, optionally the machine's own age
// key, as JSON — encrypted with age to the receiving host's key (an age
// recipient or an ssh-ed25519 public key), so it is never plaintext on the
// way unless the user asks. age authenticates the payload, so a truncated
// or altered bundle fails to decrypt; import writes nothing until the whole
// bundle is read, checked and re-encrypted, and commits it in one
// transaction.

// BundleFormat names the bundle's JSON layout.
const BundleFormat = "credvm-vars-bundle/1"

// Bundle is a machine's vars in transit. It holds secrets in the clear:
// it exists decrypted only in memory.
type Bundle struct {
	Format      string            `json:"format"`
	Machine     string            `json:"machine"`
	Exported    time.Time         `json:"exported"`
	MachineFile string            `json:"machine_file"` // machine.toml or machine.json
	MachineSpec string            `json:"machine_spec"`
	MachineKey  string            `json:"machine_key,omitempty"`
	Generators  []BundleGenerator `json:"generators"`
}

// BundleGenerator is one generator's files.
type BundleGenerator struct {
	Name           string       `json:"name"`
	Share          bool         `json:"share,omitempty"`
	ValidationHash string       `json:"validation_hash,omitempty"`
	Meta           *Meta        `json:"meta,omitempty"`
	Files          []BundleFile `json:"files"`
}

// BundleFile is one var.
type BundleFile struct {
	Name   string `json:"name"`
	Secret bool   `json:"secret"`
	Value  []byte `json:"value"`
}

// Export collects a machine's vars (decrypting its secrets) into a bundle.
func (e *Engine) Export(m *spec.Machine, withMachineKey bool) (*Bundle, error) {
	st, err := e.Status(m)
	if err != nil {
		return nil, err
	}
	for _, g := range st {
		if g.Status == StatusMissing {
			return nil, fmt.Errorf("vars %s/%s: %s: run `credvm vars generate %s` before exporting", m.Name, g.Name, g.Reason, m.Name)
		}
	}
	spec, err := e.Repo.ReadFile(e.Repo.Path(m.File))
	if err != nil {
		return nil, err
	}
	b := &Bundle{Format: BundleFormat, Machine: m.Name, Exported: time.Now().UTC(), MachineFile: filepath.Base(m.File), MachineSpec: string(spec)}
	for _, g := range m.GeneratorOrder() {
		dir := e.GeneratorDir(m.Name, g)
		bg := BundleGenerator{Name: g.Name, Share: g.Share}
		if h, err := e.Repo.ReadFile(filepath.Join(dir, ValidationFile)); err == nil {
			bg.ValidationHash = string(trimNL(h))
		}
		bg.Meta, _ = readMeta(e.Repo, dir)
		for _, f := range g.SortedFiles() {
			v, err := e.Get(m.Name, m, g.Name, f.Name)
			if err != nil {
				return nil, err
			}
			bg.Files = append(bg.Files, BundleFile{Name: f.Name, Secret: f.IsSecret(), Value: v})
		}
		b.Generators = append(b.Generators, bg)
	}
	if withMachineKey {
		mid, err := e.Repo.MachineIdentity(m.Name, e.User)
		if err != nil {
			return nil, err
		}
		b.MachineKey = mid.Raw()
	}
	return b, nil
}

// ExportOptions configure ExportBundle.
type ExportOptions struct {
	// To is the receiving host's key: an age recipient, an ssh-ed25519
	// public key, or a file holding one. "" only with Plaintext.
	To string
	// WithMachineKey includes the machine's own age key.
	WithMachineKey bool
	// Plaintext writes the bundle unencrypted.
	Plaintext bool
}

// Exported is a bundle ready to write.
type Exported struct {
	Data       []byte
	Machine    string
	Vars       int
	Generators int
}

// ExportBundle writes machine m's vars as a bundle sealed to opts.To (or,
// with Plaintext, unencrypted).
func (e *Engine) ExportBundle(m *spec.Machine, opts ExportOptions) (*Exported, error) {
	if (opts.To == "") == !opts.Plaintext {
		return nil, errors.New("give --to RECIPIENT (the receiving host's age or ssh-ed25519 public key), or --plaintext")
	}
	var rcpt age.Recipient
	if opts.To != "" {
		var err error
		if rcpt, err = ParseRecipient(opts.To); err != nil {
			return nil, err
		}
	}
	b, err := e.Export(m, opts.WithMachineKey)
	if err != nil {
		return nil, err
	}
	out := &Exported{Machine: m.Name, Generators: len(b.Generators)}
	for _, bg := range b.Generators {
		out.Vars += len(bg.Files)
	}
	if opts.Plaintext {
		out.Data, err = json.MarshalIndent(b, "", "  ")
		out.Data = append(out.Data, '\n')
	} else {
		out.Data, err = Seal(b, rcpt)
	}
	return out, err
}

// ParseRecipient accepts an age recipient ("age1…"), an ssh-ed25519 (or
// ssh-rsa) public key line, or a file holding one.
func ParseRecipient(s string) (age.Recipient, error) {
	s = strings.TrimSpace(s)
	if !strings.HasPrefix(s, "age1") && !strings.HasPrefix(s, "ssh-") {
		if b, err := os.ReadFile(s); err == nil {
			s = strings.TrimSpace(string(b))
		}
	}
	switch {
	case strings.HasPrefix(s, "age1"):
		return age.ParseX25519Recipient(s)
	case strings.HasPrefix(s, "ssh-"):
		return agessh.ParseRecipient(s)
	}
	return nil, fmt.Errorf("--to %q: give an age recipient (age1…), an ssh-ed25519 public key, or a file holding one", s)
}

// Seal encrypts a bundle to a recipient, ASCII-armored.
func Seal(b *Bundle, to age.Recipient) ([]byte, error) {
	js, err := json.Marshal(b)
	if err != nil {
		return nil, err
	}
	var out bytes.Buffer
	aw := armor.NewWriter(&out)
	w, err := age.Encrypt(aw, to)
	if err != nil {
		return nil, err
	}
	if _, err := w.Write(js); err != nil {
		return nil, err
	}
	clear(js)
	if err := w.Close(); err != nil {
		return nil, err
	}
	if err := aw.Close(); err != nil {
		return nil, err
	}
	return out.Bytes(), nil
}

// Open decrypts and parses a bundle — armored or binary age, or (when
// plaintextOK) plain JSON. A truncated or altered bundle fails here.
func Open(data []byte, ids []age.Identity, plaintextOK bool) (*Bundle, error) {
	var js []byte
	trimmed := bytes.TrimSpace(data)
	switch {
	case bytes.HasPrefix(trimmed, []byte("{")):
		if !plaintextOK {
			return nil, errors.New("this bundle is plaintext (exported with --plaintext); import it with --plaintext if that is what you meant")
		}
		js = trimmed
	default:
		var r io.Reader = bytes.NewReader(data)
		if bytes.HasPrefix(trimmed, []byte(armor.Header)) {
			r = armor.NewReader(bytes.NewReader(trimmed))
		}
		if len(ids) == 0 {
			return nil, errors.New("no identity to decrypt the bundle: set $SOPS_AGE_KEY_FILE or pass -i with the key the bundle was exported --to")
		}
		dr, err := age.Decrypt(r, ids...)
		if err != nil {
			var nm *age.NoIdentityMatchError
			if errors.As(err, &nm) {
				return nil, errors.New("the bundle was encrypted to a key that is not among yours (pass -i with the receiving host's key)")
			}
			return nil, fmt.Errorf("the bundle is truncated or altered (%v); nothing was imported", err)
		}
		js, err = io.ReadAll(dr)
		if err != nil {
			return nil, fmt.Errorf("the bundle is truncated or altered (%v); nothing was imported", err)
		}
	}
	var b Bundle
	dec := json.NewDecoder(bytes.NewReader(js))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&b); err != nil {
		return nil, fmt.Errorf("the bundle's content is malformed: %w", err)
	}
	if b.Format != BundleFormat {
		return nil, fmt.Errorf("bundle format %q: this credvm reads %q", b.Format, BundleFormat)
	}
	if err := spec.CheckMachineName(b.Machine); err != nil {
		return nil, err
	}
	if b.MachineFile != "machine.toml" && b.MachineFile != "machine.json" {
		return nil, fmt.Errorf("bundle: machine file %q is neither machine.toml nor machine.json", b.MachineFile)
	}
	return &b, nil
}

// ImportOptions configure Import.
type ImportOptions struct {
	// IdentityFiles are more keys to decrypt the bundle with, besides the
	// user's: age identity files or OpenSSH private keys.
	IdentityFiles []string
	// Plaintext accepts an unencrypted bundle.
	Plaintext bool
	// NoCommit skips the git commit.
	NoCommit bool
}

// ImportResult says what Import wrote.
type ImportResult struct {
	Machine string `json:"machine"`
	Vars    int    `json:"vars"`
	// WroteMachineFile: the repository had no machine file for it.
	WroteMachineFile bool `json:"wrote_machine_file"`
}

// Import reads a bundle (as ExportBundle writes it), checks it whole and
// writes its vars into this repository, re-encrypted to its recipients,
// after checking that every secret written decrypts to the bundle's value;
// all of it in one transaction. The machine file is written when the
// repository has none for the machine.
func (e *Engine) Import(data []byte, opts ImportOptions) (*ImportResult, error) {
	var ids []age.Identity
	if e.User != nil {
		ids = append(ids, e.User.List...)
	}
	for _, p := range opts.IdentityFiles {
		more, err := sops.LoadIdentityFile(p)
		if err != nil {
			return nil, fmt.Errorf("-i %s: %w", p, err)
		}
		ids = append(ids, more.List...)
	}
	b, err := Open(data, ids, opts.Plaintext)
	if err != nil {
		return nil, err
	}
	var res *ImportResult
	err = e.locked(func() error {
		var err error
		res, err = e.importLocked(b, opts)
		return err
	})
	return res, err
}

func (e *Engine) importLocked(b *Bundle, opts ImportOptions) (*ImportResult, error) {
	users, err := e.recipientUsers()
	if err != nil {
		return nil, err
	}
	m, specPath, err := e.bundleMachine(b)
	if err != nil {
		return nil, err
	}
	if err := b.matches(m); err != nil {
		return nil, err
	}
	res := &ImportResult{Machine: m.Name, WroteMachineFile: specPath != ""}
	mdir := e.Repo.MachinePaths(b.Machine).Dir
	if specPath != "" {
		if err := e.Repo.MkdirAll(mdir, 0o755); err != nil {
			return nil, err
		}
		if err := e.Repo.WriteFileAtomic(specPath, []byte(b.MachineSpec), 0o644); err != nil {
			return nil, err
		}
	}
	if b.MachineKey != "" {
		if err := e.Repo.ImportMachineKey(b.Machine, b.MachineKey, users); err != nil {
			return nil, err
		}
	}
	if res.Vars, err = e.stageBundle(b, m, users); err != nil {
		return nil, err
	}
	paths := []string{e.Repo.Path("vars"), e.Repo.Path("sops"), mdir}
	if err := e.commitGit(opts.NoCommit, paths, "vars: import %s", m.Name); err != nil {
		return res, fmt.Errorf("vars %s: imported, but %w", m.Name, err)
	}
	return res, nil
}

// bundleMachine is the machine a bundle is for: this repository's, or
// the bundle's own machine file (specPath says where to write it).
func (e *Engine) bundleMachine(b *Bundle) (m *spec.Machine, specPath string, err error) {
	mdir := e.Repo.MachinePaths(b.Machine).Dir
	if e.Repo.Exists(mdir) {
		m, err := e.Repo.Machine(b.Machine)
		return m, "", err
	}
	p := filepath.Join(mdir, b.MachineFile)
	if m, err = spec.ParseMachine(p, b.Machine, []byte(b.MachineSpec)); err != nil {
		return nil, "", fmt.Errorf("bundle: its machine file does not load here: %w", err)
	}
	m.File = e.Repo.Rel(p)
	return m, p, nil
}

// matches checks that the bundle holds exactly what m declares.
func (b *Bundle) matches(m *spec.Machine) error {
	for _, bg := range b.Generators {
		g := m.Vars.Generators[bg.Name]
		if g == nil {
			return fmt.Errorf("bundle: generator %s is not declared by %s here", bg.Name, m.File)
		}
		for _, f := range bg.Files {
			if fd := g.Files[f.Name]; fd == nil || fd.IsSecret() != f.Secret {
				return fmt.Errorf("bundle: %s/%s does not match %s here (missing, or secret/public differs)", bg.Name, f.Name, m.File)
			}
		}
		if len(bg.Files) != len(g.Files) {
			return fmt.Errorf("bundle: generator %s has %d files, %s declares %d", bg.Name, len(bg.Files), m.File, len(g.Files))
		}
	}
	return nil
}

// stageBundle re-encrypts the bundle's vars and commits them in one
// transaction, proving first that each secret decrypts back; it returns
// how many vars it wrote.
func (e *Engine) stageBundle(b *Bundle, m *spec.Machine, users []string) (int, error) {
	var sharedTo map[string][]string
	r := &runner{e: e, users: users}
	t := newTxn(e.Repo)
	n := 0
	for _, bg := range b.Generators {
		g := m.Vars.Generators[bg.Name]
		machines := []string{m.Name}
		if g.Share {
			if sharedTo == nil {
				var err error
				if sharedTo, err = e.sharedMachines(); err != nil {
					t.abort()
					return 0, err
				}
			}
			machines = sharedTo[g.Name]
			if !slices.Contains(machines, m.Name) {
				machines = append(machines, m.Name)
			}
		}
		files := map[string][]byte{}
		for _, f := range bg.Files {
			files[f.Name] = f.Value
		}
		meta := bg.Meta
		if meta == nil {
			meta = &Meta{Definition: g.DefinitionHash(), Generation: randomID()}
		}
		staging, err := t.stage(e.GeneratorDir(m.Name, g))
		if err != nil {
			t.abort()
			return 0, err
		}
		if err := r.writeGenerator(staging, g, files, meta, machines); err != nil {
			t.abort()
			return 0, fmt.Errorf("vars %s/%s: %w", m.Name, g.Name, err)
		}
		if bg.ValidationHash != "" {
			e.Repo.WriteFile(filepath.Join(staging, ValidationFile), []byte(bg.ValidationHash), 0o644)
		}
		// Prove it: every staged secret decrypts to the bundle's value.
		for _, f := range bg.Files {
			n++
			if !f.Secret {
				continue
			}
			got, err := e.Repo.DecryptSecret(filepath.Join(staging, f.Name), "", e.User)
			if err != nil || !bytes.Equal(got, f.Value) {
				t.abort()
				return 0, fmt.Errorf("vars %s/%s/%s: the re-encrypted var does not decrypt back to the bundle's value (%v); nothing was imported", m.Name, g.Name, f.Name, err)
			}
		}
	}
	return n, t.commit()
}
