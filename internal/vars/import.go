package vars

import (
	"bytes"
	"errors"
	"fmt"
	"path/filepath"
	"slices"
	"strings"

	"filippo.io/age"
	"golang.org/x/crypto/ssh"

	"github.com/credvm/credvm/internal/repo"
	"github.com/credvm/credvm/internal/sops"
	"github.com/credvm/credvm/internal/spec"
	"github.com/credvm/credvm/internal/words"
)

// Import is the receiving end of a migration. A bundle is input from
// another host: it proves who wrote it (its signature, checked against
// the keys the operator names), carries a machine file that may read host
// files, and may hold values of shared generators other machines use. So
// Import shows what it would change, refuses an unknown signer and the
// replacement of shared values unless the operator accepts them, and
// writes the machine file, its key pair and its vars in one transaction.

// Confirmation kinds Import may ask for (repo.ConfirmationError.Kind).
const (
	AcceptSigner = "signer"
	AcceptShared = "shared"
)

// ImportOptions configure Import.
type ImportOptions struct {
	// IdentityFiles are more keys to decrypt the bundle with, besides the
	// user's: age identity files or OpenSSH private keys.
	IdentityFiles []string
	// Plaintext accepts an unencrypted bundle.
	Plaintext bool
	// From are the keys the bundle may be signed with.
	From Senders
	// TrustSigner is a signer the operator accepted (an authorized_keys
	// line), after Import named it in a confirmation.
	TrustSigner string
	// ReplaceShared lets the bundle replace values of shared generators
	// that machines of this repository already use.
	ReplaceShared bool
	// NoCommit skips the git commit.
	NoCommit bool
}

// ImportResult says what Import wrote.
type ImportResult struct {
	Machine string `json:"machine"`
	Vars    int    `json:"vars"`
	// Signer is the key that signed the bundle (its fingerprint).
	Signer string `json:"signer"`
	// WroteMachineFile: the repository had no machine file for it.
	WroteMachineFile bool `json:"wrote_machine_file"`
	// Changes lists what the import changed, one line each.
	Changes []string `json:"changes"`
}

// Import verifies a bundle (as ExportBundle writes it), decrypts and
// checks it whole, and writes its vars into this repository re-encrypted
// to its recipients — each checked to decrypt back to the bundle's value —
// with the machine file and key when the repository has none, all in one
// transaction. What needs the operator's consent comes back as a
// *repo.ConfirmationError before anything changes.
func (e *Engine) Import(data []byte, opts ImportOptions) (*ImportResult, error) {
	var trust ssh.PublicKey
	if opts.TrustSigner != "" {
		trust = parseKeyInLine(opts.TrustSigner)
	}
	payload, signer, err := verify(data, opts.From, trust)
	var unknown *UnknownSenderError
	if errors.As(err, &unknown) {
		line := strings.TrimSpace(string(ssh.MarshalAuthorizedKey(unknown.Key)))
		return nil, &repo.ConfirmationError{Op: "import", Kind: AcceptSigner, Token: line,
			Why:     "the bundle is signed by a key you did not name with --from",
			Changes: []string{fmt.Sprintf("accept a bundle signed by %s %s", unknown.Key.Type(), Fingerprint(unknown.Key))},
			Flag:    fmt.Sprintf("--from %q", line)}
	}
	if err != nil {
		return nil, err
	}
	ids, err := e.decryptingKeys(opts.IdentityFiles...)
	if err != nil {
		return nil, err
	}
	b, err := Open(payload, ids, opts.Plaintext)
	if err != nil {
		return nil, err
	}
	var res *ImportResult
	err = e.locked(func() error {
		var err error
		res, err = e.importLocked(b, opts)
		return err
	})
	if res != nil {
		res.Signer = signer.Type() + " " + Fingerprint(signer)
	}
	return res, err
}

// decryptingKeys are the user's identities and those of files.
func (e *Engine) decryptingKeys(files ...string) ([]age.Identity, error) {
	var ids []age.Identity
	if e.User != nil {
		ids = append(ids, e.User.List...)
	}
	for _, p := range files {
		more, err := sops.LoadIdentityFile(p)
		if err != nil {
			return nil, fmt.Errorf("-i %s: %w", p, err)
		}
		ids = append(ids, more.List...)
	}
	return ids, nil
}

func (e *Engine) importLocked(b *Bundle, opts ImportOptions) (*ImportResult, error) {
	me, err := e.me()
	if err != nil {
		return nil, err
	}
	m, newMachine, err := e.bundleMachine(b)
	if err != nil {
		return nil, err
	}
	if err := b.matches(m); err != nil {
		return nil, err
	}
	res := &ImportResult{Machine: m.Name, WroteMachineFile: newMachine}
	if newMachine {
		res.Changes = append(res.Changes, "+ machine "+m.Name+" ("+m.File+", from the bundle)")
		for _, c := range m.SortedCredentials() {
			if c.File != "" {
				res.Changes = append(res.Changes, fmt.Sprintf("  its credential %s reads the host file %s", c.Name, c.File))
			}
		}
	}
	replaced, err := e.sharedReplaced(b, m)
	if err != nil {
		return nil, err
	}
	for _, g := range replaced {
		res.Changes = append(res.Changes, "~ shared generator "+g+": the bundle's values replace those the machines here use")
	}
	if len(replaced) > 0 && !opts.ReplaceShared {
		return res, &repo.ConfirmationError{Op: "import", Kind: AcceptShared, Changes: res.Changes, Flag: "--replace-shared",
			Why: fmt.Sprintf("the bundle would replace shared vars (%s) that other machines of this repository use", strings.Join(replaced, ", "))}
	}
	t := newTxn(e.Repo)
	r := &runner{e: e, me: me, pending: map[string]string{}}
	if err := e.stageMachine(t, r, b, m, newMachine, res); err != nil {
		t.abort()
		return nil, err
	}
	if res.Vars, err = e.stageBundle(t, r, b, m); err != nil {
		t.abort()
		return nil, err
	}
	if err := t.commit(); err != nil {
		return nil, err
	}
	res.Changes = append(res.Changes, fmt.Sprintf("~ %s of %s, re-encrypted to this repository", words.Plural(res.Vars, "var", "vars"), m.Name))
	p := e.Repo.MachinePaths(m.Name)
	paths := []string{e.Repo.Path("vars"), p.Dir, p.PublicKey, p.PrivateKey}
	if err := e.commitGit(opts.NoCommit, paths, "vars: import %s", m.Name); err != nil {
		return res, fmt.Errorf("vars %s: imported, but %w", m.Name, err)
	}
	return res, nil
}

// bundleMachine is the machine a bundle is for: this repository's, or the
// bundle's own machine file (new).
func (e *Engine) bundleMachine(b *Bundle) (m *spec.Machine, isNew bool, err error) {
	mdir := e.Repo.MachinePaths(b.Machine).Dir
	if e.Repo.Exists(mdir) {
		m, err := e.Repo.Machine(b.Machine)
		return m, false, err
	}
	p := filepath.Join(mdir, b.MachineFile)
	if m, err = spec.ParseMachine(p, b.Machine, []byte(b.MachineSpec)); err != nil {
		return nil, false, fmt.Errorf("bundle: its machine file does not load here: %w", err)
	}
	m.File = e.Repo.Rel(p)
	return m, true, nil
}

// sharedReplaced lists the bundle's shared generators whose values here
// differ from the bundle's (another generation).
func (e *Engine) sharedReplaced(b *Bundle, m *spec.Machine) ([]string, error) {
	var out []string
	for _, bg := range b.Generators {
		g := m.Vars.Generators[bg.Name]
		if !g.Share {
			continue
		}
		dir := e.GeneratorDir(m.Name, g)
		if !e.Repo.Exists(dir) {
			continue
		}
		cur, err := readMeta(e.Repo, dir)
		if err != nil {
			return nil, err
		}
		if cur == nil || bg.Meta == nil || cur.Generation != bg.Meta.Generation {
			out = append(out, bg.Name)
		}
	}
	return out, nil
}

// stageMachine stages a new machine's file and, when the repository has
// no key for it, its key pair (the bundle's, or a new one): in the same
// transaction as its vars, so that a crash leaves none or all of them.
func (e *Engine) stageMachine(t *txn, r *runner, b *Bundle, m *spec.Machine, newMachine bool, res *ImportResult) error {
	p := e.Repo.MachinePaths(m.Name)
	if newMachine {
		staging, err := t.stage(p.Dir)
		if err != nil {
			return err
		}
		if err := e.Repo.WriteFile(filepath.Join(staging, b.MachineFile), []byte(b.MachineSpec), 0o644); err != nil {
			return err
		}
	}
	cur, err := e.Repo.MachinePublicKey(m.Name)
	if err != nil {
		return err
	}
	if b.MachineKey != "" {
		pub, err := repo.PublicKeyOf(b.MachineKey)
		if err != nil {
			return fmt.Errorf("machine %s: the bundle's machine key is not one age identity", m.Name)
		}
		switch {
		case cur == pub:
			return nil
		case cur != "":
			return fmt.Errorf("machine %s already has another key in this repository (%s); import without the machine key, or remove sops/machines/%s and sops/secrets/%s-age.key first", m.Name, cur, m.Name, m.Name)
		}
	} else if cur != "" {
		return nil
	}
	secret, err := t.stage(p.PrivateKey)
	if err != nil {
		return err
	}
	pubDir, err := t.stage(p.PublicKey)
	if err != nil {
		return err
	}
	pub, err := e.Repo.StageMachineKey(m.Name, b.MachineKey, secret, pubDir, repo.Access{Users: []string{r.me}, Groups: e.Repo.DefaultGroups()})
	if err != nil {
		return err
	}
	r.pending[m.Name] = pub
	what := "a new key"
	if b.MachineKey != "" {
		what = "the bundle's key"
	}
	res.Changes = append(res.Changes, fmt.Sprintf("+ machine key of %s (%s, %s)", m.Name, what, pub))
	return nil
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

// stageBundle re-encrypts the bundle's vars into t, proving that each
// secret decrypts back; it returns how many vars it staged.
func (e *Engine) stageBundle(t *txn, r *runner, b *Bundle, m *spec.Machine) (int, error) {
	var sharedTo map[string][]string
	n := 0
	for _, bg := range b.Generators {
		g := m.Vars.Generators[bg.Name]
		machines := []string{m.Name}
		if g.Share {
			if sharedTo == nil {
				var err error
				if sharedTo, err = e.sharedMachines(); err != nil {
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
		target := e.GeneratorDir(m.Name, g)
		staging, err := t.stage(target)
		if err != nil {
			return 0, err
		}
		if err := r.writeGenerator(staging, target, g, files, meta, machines); err != nil {
			return 0, fmt.Errorf("vars %s/%s: %w", m.Name, g.Name, err)
		}
		if bg.ValidationHash != "" {
			e.Repo.WriteFile(filepath.Join(staging, ValidationFile), []byte(bg.ValidationHash), 0o644)
		}
		for _, f := range bg.Files {
			n++
			if !f.Secret {
				continue
			}
			got, err := e.Repo.DecryptSecret(filepath.Join(staging, f.Name), "", e.User)
			if err != nil || !bytes.Equal(got, f.Value) {
				return 0, fmt.Errorf("vars %s/%s/%s: the re-encrypted var does not decrypt back to the bundle's value (%v); nothing was imported", m.Name, g.Name, f.Name, err)
			}
		}
	}
	return n, nil
}
