package vars

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"filippo.io/age"
	"filippo.io/age/agessh"
	"filippo.io/age/armor"
	"golang.org/x/crypto/ssh"

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
	// SignKey is the OpenSSH private key to sign with ("": the agent's
	// first ed25519 key, ~/.ssh/id_ed25519, or credvm's own; FindSigner).
	SignKey string
}

// Exported is a bundle ready to write.
type Exported struct {
	Data       []byte
	Machine    string
	Vars       int
	Generators int
	// Signer is the signing key's fingerprint and where it came from;
	// SignerCreated names the file when credvm made the key now.
	Signer, SignerCreated string
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
	signer, err := FindSigner(opts.SignKey)
	if err != nil {
		return nil, err
	}
	var payload []byte
	if opts.Plaintext {
		payload, err = json.MarshalIndent(b, "", "  ")
	} else {
		payload, err = Seal(b, rcpt)
	}
	if err != nil {
		return nil, err
	}
	if out.Data, err = signer.Sign(payload); err != nil {
		return nil, err
	}
	out.Signer = fmt.Sprintf("%s %s (%s)", signer.PublicKey().Type(), Fingerprint(signer.PublicKey()), signer.Source)
	if signer.Created != "" {
		out.SignerCreated = signer.Created
		if err := e.registerSigningKey(signer); err != nil {
			return nil, err
		}
	}
	return out, nil
}

// SigningKeyFile is where a user's credvm signing key (its public half)
// is registered in the repository, beside their age key: teammates name
// it with --from.
const SigningKeyFile = "credvm-signing.pub"

// registerSigningKey records the user's new signing key in the
// repository, under the user their age key is registered as.
func (e *Engine) registerSigningKey(s *Signer) error {
	if e.User == nil {
		return nil
	}
	u, err := e.Repo.UserFor(e.User.Recipients)
	if err != nil || u == "" {
		return err
	}
	line := append(bytes.TrimSpace(ssh.MarshalAuthorizedKey(s.PublicKey())), []byte(" "+u+"\n")...)
	return e.Repo.WriteFileAtomic(e.Repo.Path("sops", "users", u, SigningKeyFile), line, 0o644)
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
	var r age.Recipient
	var err error
	switch {
	case strings.HasPrefix(s, "age1"):
		r, err = age.ParseX25519Recipient(s)
	case strings.HasPrefix(s, "ssh-"):
		r, err = agessh.ParseRecipient(s)
	default:
		return nil, fmt.Errorf("--to %q: give an age recipient (age1…), an ssh-ed25519 public key, or a file holding one", s)
	}
	if err != nil {
		// age's own message is about bech32 checksums; say what to do.
		return nil, fmt.Errorf("--to %q is not a valid public key (it is cut or mistyped: copy the receiver's whole key, e.g. from `age-keygen -y` or its .pub file)", s)
	}
	return r, nil
}

// Seal encrypts a bundle to a recipient, ASCII-armored.
func Seal(b *Bundle, to age.Recipient) ([]byte, error) {
	js, err := json.Marshal(b)
	if err != nil {
		return nil, err
	}
	defer clear(js)
	return sops.EncryptArmored(js, to)
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
