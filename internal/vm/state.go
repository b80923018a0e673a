package vm

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"syscall"
)

// EnvStateDir overrides the state root.
const EnvStateDir = "CREDVM_STATE_DIR"

// DefaultStateRoot is where VM state lives: /var/lib/microvms as
// microvm.nix has it when root, else a per-user directory
// ($XDG_STATE_HOME/credvm, ~/.local/state/credvm).
func DefaultStateRoot() string {
	if d := os.Getenv(EnvStateDir); d != "" {
		return d
	}
	if os.Geteuid() == 0 {
		return "/var/lib/microvms"
	}
	if d := os.Getenv("XDG_STATE_HOME"); d != "" {
		return filepath.Join(d, "credvm")
	}
	if home, err := os.UserHomeDir(); err == nil {
		return filepath.Join(home, ".local", "state", "credvm")
	}
	return filepath.Join(os.TempDir(), fmt.Sprintf("credvm-%d", os.Getuid()))
}

// StateDir is one VM's state directory. It holds no secret: the console
// log, the control socket, the lock.
type StateDir struct {
	Root, Name string
}

// Path is the directory itself.
func (s StateDir) Path() string { return filepath.Join(s.Root, s.Name) }

// File names a file in it.
func (s StateDir) File(name string) string { return filepath.Join(s.Path(), name) }

// Console is the console log.
func (s StateDir) Console() string { return s.File("console.log") }

// Ensure creates the directory (0700; the root 0755) and refuses one that
// is a symlink or belongs to someone else.
func (s StateDir) Ensure() error {
	if err := os.MkdirAll(s.Root, 0o755); err != nil {
		return fmt.Errorf("state dir: %w", err)
	}
	p := s.Path()
	if err := os.Mkdir(p, 0o700); err != nil && !errors.Is(err, os.ErrExist) {
		return fmt.Errorf("state dir: %w", err)
	}
	fi, err := os.Lstat(p)
	if err != nil {
		return err
	}
	st, _ := fi.Sys().(*syscall.Stat_t)
	switch {
	case fi.Mode()&os.ModeSymlink != 0:
		return fmt.Errorf("state dir %s is a symlink; refusing to follow it (remove it)", p)
	case !fi.IsDir():
		return fmt.Errorf("state dir %s is not a directory", p)
	case st != nil && int(st.Uid) != os.Geteuid():
		return fmt.Errorf("state dir %s belongs to uid %d, not to you (uid %d)", p, st.Uid, os.Geteuid())
	}
	if fi.Mode().Perm() != 0o700 {
		if err := os.Chmod(p, 0o700); err != nil {
			return err
		}
	}
	return nil
}
