package sops

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"filippo.io/age"
	"filippo.io/age/agessh"
	"filippo.io/age/plugin"
)

// A Recipient is a key a sops file is encrypted to, as clan's key.json
// names it: type "age" — an X25519 key ("age1…"), an age plugin's
// ("age1yubikey1…", launching age-plugin-yubikey as age does), or an
// OpenSSH public key ("ssh-ed25519 …", "ssh-rsa …"), all of which sops
// accepts as age recipients — or type "pgp", a PGP key by fingerprint,
// which only the sops binary (with gpg) can encrypt to. credvm writes files
// with age recipients itself; a file with a PGP recipient is written by
// the sops binary, so that no recipient is ever dropped.
type Recipient struct {
	Type string `json:"type"`
	Key  string `json:"publickey"`
}

func (r Recipient) String() string {
	if r.Type == "pgp" {
		return "pgp:" + r.Key
	}
	return r.Key
}

// Age is an age recipient.
func Age(key string) Recipient { return Recipient{Type: "age", Key: key} }

// AgeAll are age recipients.
func AgeAll(keys ...string) []Recipient {
	out := make([]Recipient, len(keys))
	for i, k := range keys {
		out[i] = Age(k)
	}
	return out
}

// Keys are the recipients' keys.
func Keys(rs []Recipient) []string {
	out := make([]string, len(rs))
	for i, r := range rs {
		out[i] = r.Key
	}
	return out
}

// ParseRecipient checks a recipient and returns it with its type: "pgp"
// keys are fingerprints (hex), everything else must parse as an age
// recipient.
func ParseRecipient(typ, key string) (Recipient, error) {
	key = strings.TrimSpace(key)
	switch typ {
	case "", "age":
		if _, err := ageRecipient(key, true); err != nil {
			return Recipient{}, err
		}
		return Age(key), nil
	case "pgp":
		fp := strings.ToUpper(strings.ReplaceAll(key, " ", ""))
		if len(fp) < 16 || strings.Trim(fp, "0123456789ABCDEF") != "" {
			return Recipient{}, fmt.Errorf("%q is not a PGP fingerprint (hex)", key)
		}
		return Recipient{Type: "pgp", Key: fp}, nil
	}
	return Recipient{}, fmt.Errorf("key type %q: credvm knows age (X25519, age plugins, ssh-ed25519, ssh-rsa) and pgp", typ)
}

// ageRecipient parses an age recipient of any kind. With check, a plugin
// recipient is only checked for its form: its plugin is run when a file
// is encrypted to it, not when a key file is read.
func ageRecipient(s string, check bool) (age.Recipient, error) {
	switch {
	case strings.HasPrefix(s, "ssh-"):
		r, err := agessh.ParseRecipient(s)
		if err != nil {
			return nil, fmt.Errorf("%q is not an OpenSSH public key age can encrypt to: %w", s, err)
		}
		return r, nil
	case strings.HasPrefix(s, "age1"):
		if x, err := age.ParseX25519Recipient(s); err == nil {
			return x, nil
		}
		r, err := plugin.NewRecipient(s, pluginUI())
		if err != nil {
			return nil, fmt.Errorf("%q is not an age public key (X25519 or a plugin's)", s)
		}
		if !check {
			if _, err := exec.LookPath("age-plugin-" + r.Name()); err != nil {
				return nil, fmt.Errorf("recipient %s… needs the age plugin age-plugin-%s, which is not on $PATH: install it", s[:min(len(s), 20)], r.Name())
			}
		}
		return r, nil
	}
	return nil, fmt.Errorf("%q is not an age recipient (age1…, or an ssh-ed25519/ssh-rsa public key)", s)
}

// pluginUI is how age plugins talk to the user: through the terminal,
// as age and sops do; messages go to standard error.
func pluginUI() *plugin.ClientUI {
	return plugin.NewTerminalUI(func(format string, v ...any) {
		fmt.Fprintf(os.Stderr, "credvm: "+format+"\n", v...)
	}, func(format string, v ...any) {
		fmt.Fprintf(os.Stderr, "credvm: warning: "+format+"\n", v...)
	})
}

// Binary is the sops CLI credvm uses for what its own codec does not do
// (PGP): $CREDVM_SOPS, else sops on $PATH.
func Binary() (string, error) {
	if p := os.Getenv("CREDVM_SOPS"); p != "" {
		return p, nil
	}
	p, err := exec.LookPath("sops")
	if err != nil {
		return "", errors.New("the sops binary is not installed (credvm needs it for PGP keys: install sops, or set $CREDVM_SOPS)")
	}
	return p, nil
}

// encryptWithBinary has the sops binary write the file, for recipient
// sets that include PGP keys. The plaintext goes on its standard input;
// it runs in an empty directory so that no .sops.yaml applies.
func encryptWithBinary(plaintext []byte, rcpts []Recipient) ([]byte, error) {
	bin, err := Binary()
	if err != nil {
		return nil, fmt.Errorf("encrypt to %s: %w", pgpOf(rcpts), err)
	}
	var agek, pgp []string
	for _, r := range rcpts {
		if r.Type == "pgp" {
			pgp = append(pgp, r.Key)
		} else {
			agek = append(agek, r.Key)
		}
	}
	args := []string{"--config", os.DevNull, "encrypt", "--filename-override", "secret", "--input-type", "binary", "--output-type", "json", "--pgp", strings.Join(pgp, ",")}
	if len(agek) > 0 {
		args = append(args, "--age", strings.Join(agek, ","))
	}
	cmd := exec.Command(bin, args...)
	cmd.Dir = filepath.Dir(os.DevNull)
	cmd.Stdin = bytes.NewReader(plaintext)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("sops could not encrypt to %s: %v: %s", pgpOf(rcpts), err, strings.TrimSpace(stderr.String()))
	}
	return out, nil
}

// decryptWithBinary has the sops binary decrypt a file (with gpg, for a
// user whose key is PGP). The plaintext comes back on its output.
func decryptWithBinary(content []byte) ([]byte, error) {
	bin, err := Binary()
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(bin, "--config", os.DevNull, "decrypt", "--filename-override", "secret", "--input-type", "json", "--output-type", "binary")
	cmd.Dir = filepath.Dir(os.DevNull)
	cmd.Stdin = bytes.NewReader(content)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("%w (and sops with gpg could not either: %s)", ErrNoIdentity, firstLine(stderr.String()))
	}
	return out, nil
}

func firstLine(s string) string {
	l, _, _ := strings.Cut(strings.TrimSpace(s), "\n")
	return l
}

func pgpOf(rcpts []Recipient) string {
	var out []string
	for _, r := range rcpts {
		if r.Type == "pgp" {
			out = append(out, "PGP key "+r.Key)
		}
	}
	return strings.Join(out, ", ")
}
