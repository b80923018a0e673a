package vm

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"syscall"
	"time"
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

// Sockets is the directory of the hypervisor's sockets (its control
// socket, the console's, virtiofsd's): the hypervisor's user's, 0700, so
// that an unprivileged hypervisor can make its sockets and nothing else
// of the state directory is within its reach.
func (s StateDir) Sockets() string { return s.File("sockets") }

// EnsureSockets creates the socket directory for uid:gid. For another
// user than credvm's, the state directory becomes root:gid 0710: that
// group may pass through it to the socket directory, and list or read
// nothing else of it.
func (s StateDir) EnsureSockets(uid, gid int) error {
	mode, group := os.FileMode(0o700), os.Getegid()
	if uid != os.Geteuid() {
		mode, group = 0o710, gid
	}
	if err := os.Chown(s.Path(), os.Geteuid(), group); err != nil {
		return fmt.Errorf("state dir: %w", err)
	}
	if err := os.Chmod(s.Path(), mode); err != nil {
		return fmt.Errorf("state dir: %w", err)
	}
	p := s.Sockets()
	if err := os.Mkdir(p, 0o700); err != nil && !errors.Is(err, os.ErrExist) {
		return fmt.Errorf("state dir: %w", err)
	}
	fi, err := os.Lstat(p)
	if err != nil {
		return err
	}
	if !fi.IsDir() {
		return fmt.Errorf("state dir: %s is not a directory", p)
	}
	if err := os.Chmod(p, 0o700); err != nil {
		return err
	}
	return os.Chown(p, uid, gid)
}

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
	// 0710 is the mode EnsureSockets gives it for an unprivileged
	// hypervisor's group to reach its socket directory.
	if perm := fi.Mode().Perm(); perm != 0o700 && perm != 0o710 {
		if err := os.Chmod(p, 0o700); err != nil {
			return err
		}
	}
	return nil
}

// ConsoleLog is a VM's console log opened for reading: from its start, or
// from its last lines as they were when it was opened.
type ConsoleLog struct {
	f   *os.File
	end int64 // the size when opened: what Copy prints without follow
}

// OpenConsole opens the VM's console log, positioned at its last lines
// lines when lines > 0.
func (s StateDir) OpenConsole(lines int) (*ConsoleLog, error) {
	if _, err := s.Registration(); err != nil {
		return nil, err
	}
	f, err := os.Open(s.Console())
	if errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("vm %s has no console log yet (it never ran): credvm start %s", s.Name, s.Name)
	}
	if err != nil {
		return nil, err
	}
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, err
	}
	c := &ConsoleLog{f: f, end: fi.Size()}
	if lines > 0 {
		if err := seekLastLines(f, c.end, lines); err != nil {
			f.Close()
			return nil, err
		}
	}
	return c, nil
}

// Close closes the log.
func (c *ConsoleLog) Close() error { return c.f.Close() }

// Copy copies the log to w: what it held when opened (a guest writing on
// meanwhile does not stretch `logs -n 1`), or with follow everything it
// writes until ctx is done (then it returns nil).
func (c *ConsoleLog) Copy(ctx context.Context, w io.Writer, follow bool) error {
	if !follow {
		pos, err := c.f.Seek(0, io.SeekCurrent)
		if err != nil {
			return err
		}
		_, err = io.CopyN(w, c.f, c.end-pos)
		if errors.Is(err, io.EOF) {
			err = nil // rotated meanwhile
		}
		return err
	}
	for {
		if _, err := io.Copy(w, c.f); err != nil {
			return err
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// seekLastLines positions f at the start of the last n lines of its
// first size bytes.
func seekLastLines(f *os.File, size int64, n int) error {
	start := max(0, size-int64(n)*512-4096)
	buf := make([]byte, size-start)
	if _, err := f.ReadAt(buf, start); err != nil && !errors.Is(err, io.EOF) {
		return err
	}
	idx := len(buf)
	if idx > 0 && buf[idx-1] == '\n' {
		idx--
	}
	for range n {
		j := bytes.LastIndexByte(buf[:idx], '\n')
		if j < 0 {
			idx = 0
			break
		}
		idx = j
	}
	if idx > 0 {
		idx++
	}
	_, err := f.Seek(start+int64(idx), io.SeekStart)
	return err
}
