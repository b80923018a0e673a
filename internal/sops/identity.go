package sops

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"filippo.io/age"
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
	Sources    []string // where they came from, for error messages
	raw        []string
}

// Raw returns the X25519 identities as age-keygen writes them, one per
// line. It is secret.
func (ids *Identities) Raw() string {
	return strings.Join(ids.raw, "\n") + "\n"
}

// Add parses an identity file's content (age-keygen format: comments and
// AGE-SECRET-KEY-1… lines) and adds its identities.
func (ids *Identities) Add(content []byte, source string) error {
	list, err := age.ParseIdentities(strings.NewReader(string(content)))
	if err != nil {
		return fmt.Errorf("%s: %w", source, err)
	}
	for _, id := range list {
		if x, ok := id.(*age.X25519Identity); ok {
			ids.Recipients = append(ids.Recipients, x.Recipient().String())
			ids.raw = append(ids.raw, x.String())
		}
	}
	ids.List = append(ids.List, list...)
	ids.Sources = append(ids.Sources, source)
	return nil
}

// LoadUserIdentities collects age identities the way sops does: the content
// of $SOPS_AGE_KEY, the file $SOPS_AGE_KEY_FILE, and the default key file.
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
	return ids, nil
}
