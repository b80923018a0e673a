package sops

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"

	"filippo.io/age"
	"filippo.io/age/agessh"
	"filippo.io/age/plugin"
)

// Environment variables sops itself reads for age identities; we honour the
// same ones so a user's existing sops setup works unchanged.
const (
	EnvAgeKey     = "SOPS_AGE_KEY"
	EnvAgeKeyFile = "SOPS_AGE_KEY_FILE"
)

// DefaultKeyFile is where sops looks for age identities when no environment
// variable names them: $XDG_CONFIG_HOME/sops/age/keys.txt, else
// ~/.config/sops/age/keys.txt.
func DefaultKeyFile() (string, error) {
	if dir := os.Getenv("XDG_CONFIG_HOME"); dir != "" {
		return filepath.Join(dir, "sops", "age", "keys.txt"), nil
	}
	home, err := os.UserHomeDir()
	if err != nil {
		return "", err
	}
	return filepath.Join(home, ".config", "sops", "age", "keys.txt"), nil
}

// UserKeyFile is the file `vars keygen` writes to: $SOPS_AGE_KEY_FILE when
// set, else DefaultKeyFile.
func UserKeyFile() (string, error) {
	if p := os.Getenv(EnvAgeKeyFile); p != "" {
		return p, nil
	}
	return DefaultKeyFile()
}

// Identities is a set of age identities with the public keys they belong to.
type Identities struct {
	List       []age.Identity
	Recipients []string // public keys of the X25519 identities, in order
	SSH        []string // public keys of the OpenSSH identities ("ssh-ed25519 …")
	Sources    []string // where they came from, for error messages
	raw        []string
}

// Raw returns the X25519 identities as age-keygen writes them, one per
// line. It is secret.
func (ids *Identities) Raw() string {
	return strings.Join(ids.raw, "\n") + "\n"
}

// Add parses an identity file's content (age-keygen's format: comments,
// AGE-SECRET-KEY-1… lines, and age plugins' AGE-PLUGIN-<NAME>-1… lines,
// as sops reads them) and adds its identities. A plugin identity runs its
// plugin (age-plugin-<name>) only when it is used to decrypt.
func (ids *Identities) Add(content []byte, source string) error {
	var list []age.Identity
	for i, line := range strings.Split(string(content), "\n") {
		line = strings.TrimSpace(line)
		switch {
		case line == "" || strings.HasPrefix(line, "#"):
			continue
		case strings.HasPrefix(line, "AGE-PLUGIN-"):
			id, err := plugin.NewIdentity(line, pluginUI())
			if err != nil {
				return fmt.Errorf("%s:%d: not an age plugin identity: %w", source, i+1, err)
			}
			list = append(list, id)
		default:
			x, err := age.ParseX25519Identity(line)
			if err != nil {
				return fmt.Errorf("%s:%d: not an age identity (AGE-SECRET-KEY-1… or AGE-PLUGIN-…): %w", source, i+1, err)
			}
			ids.Recipients = append(ids.Recipients, x.Recipient().String())
			ids.raw = append(ids.raw, x.String())
			list = append(list, x)
		}
	}
	if len(list) == 0 {
		return fmt.Errorf("%s: no age identity in it", source)
	}
	ids.List = append(ids.List, list...)
	ids.Sources = append(ids.Sources, source)
	return nil
}

// LoadUserIdentities collects age identities the way sops does: the content
// of $SOPS_AGE_KEY, the file $SOPS_AGE_KEY_FILE, the default key file, and
// an OpenSSH key — $SOPS_AGE_SSH_PRIVATE_KEY_FILE, else ~/.ssh/id_ed25519
// or ~/.ssh/id_rsa (one with a passphrase is skipped, as sops skips it).
// A missing file is not an error; an unreadable or malformed one is.
func LoadUserIdentities() (*Identities, error) {
	ids := &Identities{}
	if v := os.Getenv(EnvAgeKey); v != "" {
		if err := ids.Add([]byte(v), "$"+EnvAgeKey); err != nil {
			return nil, err
		}
	}
	if p := os.Getenv(EnvAgeKeyFile); p != "" {
		b, err := os.ReadFile(p)
		if errors.Is(err, fs.ErrNotExist) {
			// Not an error yet: `vars keygen` creates it, and commands
			// that need a key say so, naming the fix.
		} else if err != nil {
			return nil, fmt.Errorf("$%s: %w", EnvAgeKeyFile, err)
		} else if err := ids.Add(b, p); err != nil {
			return nil, err
		}
	}
	p, err := DefaultKeyFile()
	if err == nil {
		b, err := os.ReadFile(p)
		switch {
		case err == nil:
			if err := ids.Add(b, p); err != nil {
				return nil, err
			}
		case !errors.Is(err, fs.ErrNotExist):
			return nil, err
		}
	}
	ids.addSSH()
	return ids, nil
}

// EnvAgeSSHKeyFile names an OpenSSH private key sops uses as an age
// identity.
const EnvAgeSSHKeyFile = "SOPS_AGE_SSH_PRIVATE_KEY_FILE"

// addSSH adds the OpenSSH identity sops would use, and its public key.
func (ids *Identities) addSSH() {
	var paths []string
	if p := os.Getenv(EnvAgeSSHKeyFile); p != "" {
		paths = []string{p}
	} else if home, err := os.UserHomeDir(); err == nil {
		paths = []string{filepath.Join(home, ".ssh", "id_ed25519"), filepath.Join(home, ".ssh", "id_rsa")}
	}
	for _, p := range paths {
		b, err := os.ReadFile(p)
		if err != nil {
			continue
		}
		id, err := agessh.ParseIdentity(b)
		if err != nil {
			continue // passphrase-protected, or not a key sops could use
		}
		ids.List = append(ids.List, id)
		ids.Sources = append(ids.Sources, p)
		if pub, err := os.ReadFile(p + ".pub"); err == nil {
			ids.SSH = append(ids.SSH, strings.TrimSpace(string(pub)))
		}
		return
	}
}

// Public are every public key the identities are known to have: the
// X25519 ones and the OpenSSH ones (from their .pub files).
func (ids *Identities) Public() []string {
	return append(append([]string{}, ids.Recipients...), ids.SSH...)
}

// NoKeyFix says how to get a key when none was found: with
// $SOPS_AGE_KEY_FILE set to a file that does not exist, that is what to
// fix — not "set $SOPS_AGE_KEY_FILE".
func NoKeyFix() string {
	if p := os.Getenv(EnvAgeKeyFile); p != "" {
		if _, err := os.Stat(p); errors.Is(err, fs.ErrNotExist) {
			return fmt.Sprintf("$%s is %s, which does not exist: correct it, unset it, or run `credvm vars keygen` to create a key there", EnvAgeKeyFile, p)
		}
	}
	return fmt.Sprintf("looked in $%s, $%s and %s: run `credvm vars keygen`", EnvAgeKeyFile, EnvAgeKey, defaultKeyFileShown())
}

func defaultKeyFileShown() string {
	p, err := DefaultKeyFile()
	if err != nil {
		return "~/.config/sops/age/keys.txt"
	}
	if home, err := os.UserHomeDir(); err == nil && strings.HasPrefix(p, home+"/") {
		return "~" + strings.TrimPrefix(p, home)
	}
	return p
}

// LoadIdentityFile reads one key file: an age identity file (age-keygen's
// format) or an unencrypted OpenSSH ed25519/RSA private key, which age
// uses as an identity too. Errors name the file.
func LoadIdentityFile(path string) (*Identities, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	ids := &Identities{}
	if strings.Contains(string(b), "AGE-SECRET-KEY-") || !strings.Contains(string(b), "PRIVATE KEY") {
		if err := ids.Add(b, path); err != nil {
			return nil, err
		}
		return ids, nil
	}
	id, err := agessh.ParseIdentity(b)
	if err != nil {
		return nil, fmt.Errorf("%s: not an age identity file or an unencrypted OpenSSH key: %w", path, err)
	}
	ids.List = append(ids.List, id)
	ids.Sources = append(ids.Sources, path)
	return ids, nil
}

// CreateKeyFile writes a new age identity to path — 0600, in a 0700
// directory it creates, never replacing an existing file — and returns
// its public key.
func CreateKeyFile(path string) (string, error) {
	id, err := age.GenerateX25519Identity()
	if err != nil {
		return "", err
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return "", err
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return "", fmt.Errorf("create age key: %w", err)
	}
	content := fmt.Sprintf("# created: %s\n# public key: %s\n%s\n", time.Now().UTC().Format(time.RFC3339), id.Recipient(), id)
	if _, err := f.WriteString(content); err != nil {
		f.Close()
		os.Remove(path)
		return "", err
	}
	if err := f.Close(); err != nil {
		os.Remove(path)
		return "", err
	}
	return id.Recipient().String(), nil
}

// UserKey is the user's age key as EnsureUserKey found or made it.
type UserKey struct {
	PublicKey string `json:"public_key"`
	// File is where the key is ($SOPS_AGE_KEY when it came from there).
	File string `json:"key_file"`
	// Created: there was no key, and File was written.
	Created bool `json:"created"`
}

// EnsureUserKey returns the user's age public key (the first of the
// identities sops would use), creating the key where sops looks for it —
// $SOPS_AGE_KEY_FILE, else the default key file — when the user has none.
func EnsureUserKey() (*UserKey, error) {
	ids, err := LoadUserIdentities()
	if err != nil {
		return nil, err
	}
	if len(ids.Recipients) > 0 {
		src := ""
		if len(ids.Sources) > 0 {
			src = ids.Sources[0]
		}
		return &UserKey{PublicKey: ids.Recipients[0], File: src}, nil
	}
	p, err := UserKeyFile()
	if err != nil {
		return nil, err
	}
	pub, err := CreateKeyFile(p)
	if err != nil {
		return nil, err
	}
	return &UserKey{PublicKey: pub, File: p, Created: true}, nil
}
