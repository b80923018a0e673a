package vm

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/credvm/credvm/internal/sops"
)

// DefaultHostKey is the host key a sealed machine key opens with.
const DefaultHostKey = "/etc/ssh/ssh_host_ed25519_key"

const (
	sealedKey    = "machine-key.sealed"
	sealedKeyFor = "machine-key.host-key"
)

// InstallSealedKey is the host side of a deploy: the machine key sealed to
// this host's key, kept in the VM's state directory (0600) with which host
// key opens it; `run` opens it there, in memory.
func (s StateDir) InstallSealedKey(sealed []byte, hostKey string) error {
	if len(sealed) == 0 || !bytes.HasPrefix(bytes.TrimSpace(sealed), []byte("-----BEGIN AGE ENCRYPTED FILE-----")) {
		return fmt.Errorf("vm %s: its sealed machine key is not an age file", s.Name)
	}
	if _, err := os.Stat(hostKey); err != nil {
		return fmt.Errorf("vm %s: the host key that opens its machine key: %w", s.Name, err)
	}
	if err := os.WriteFile(filepath.Join(s.Path(), sealedKey+".new"), sealed, 0o600); err != nil {
		return err
	}
	if err := os.Rename(filepath.Join(s.Path(), sealedKey+".new"), filepath.Join(s.Path(), sealedKey)); err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(s.Path(), sealedKeyFor), []byte(hostKey+"\n"), 0o600)
}

// SealedKey opens the machine key a deploy left in stateDir, if any (nil
// when there is none).
func (s StateDir) SealedKey() (*sops.Identities, error) {
	sealed, err := os.ReadFile(filepath.Join(s.Path(), sealedKey))
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	hostKey := DefaultHostKey
	if b, err := os.ReadFile(filepath.Join(s.Path(), sealedKeyFor)); err == nil {
		hostKey = strings.TrimSpace(string(b))
	}
	return sops.OpenSealed(sealed, hostKey)
}
