// Package runtimedir gives credvm a directory only the user can reach, on a
// tmpfs: generator workspaces hold plaintext there (never on a disk), and
// small caches live there (the KVM probe's result).
//
// It is $XDG_RUNTIME_DIR/credvm when $XDG_RUNTIME_DIR is a tmpfs directory
// of the user's (as systemd-logind makes it), else /dev/shm/credvm-<uid>.
// The directory is made 0700; one that exists must be a directory — not a
// link —, the user's, 0700, and on a tmpfs. Someone else's, or an open
// one (a squatter in the shared /dev/shm), is an error naming the path:
// credvm never falls back to a disk for plaintext.
package runtimedir

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"syscall"

	"golang.org/x/sys/unix"
)

// Private returns the user's private runtime directory, making it when
// needed.
func Private() (string, error) {
	uid := os.Geteuid()
	if d := os.Getenv("XDG_RUNTIME_DIR"); d != "" && ownTmpfsDir(d, uid) == nil {
		p := filepath.Join(d, "credvm")
		return p, ensure(p, uid)
	}
	p := filepath.Join("/dev/shm", "credvm-"+strconv.Itoa(uid))
	if err := ensure(p, uid); err != nil {
		return "", err
	}
	return p, nil
}

// ensure makes p (0700) or checks the one there.
func ensure(p string, uid int) error {
	if err := os.Mkdir(p, 0o700); err != nil && !errors.Is(err, os.ErrExist) {
		return fmt.Errorf("private runtime directory %s: %w (plaintext is kept on a tmpfs only: make /dev/shm usable, or set $XDG_RUNTIME_DIR to a tmpfs directory of yours)", p, err)
	}
	fi, err := os.Lstat(p)
	if err != nil {
		return err
	}
	st, _ := fi.Sys().(*syscall.Stat_t)
	squatted := func(why string) error {
		return fmt.Errorf("%s %s: someone else prepared it, and credvm keeps plaintext only in a tmpfs directory of yours alone: remove it (as its owner), or set $XDG_RUNTIME_DIR to a tmpfs directory of yours", p, why)
	}
	switch {
	case fi.Mode()&os.ModeSymlink != 0:
		return squatted("is a symlink")
	case !fi.IsDir():
		return squatted("is not a directory")
	case st == nil || int(st.Uid) != uid:
		return squatted(fmt.Sprintf("belongs to uid %d, not to you (uid %d)", st.Uid, uid))
	case fi.Mode().Perm() != 0o700:
		return squatted(fmt.Sprintf("is open to others (mode %o)", fi.Mode().Perm()))
	}
	return isTmpfs(p)
}

// ownTmpfsDir checks that d is a tmpfs directory of uid's, closed to others.
func ownTmpfsDir(d string, uid int) error {
	fi, err := os.Lstat(d)
	if err != nil {
		return err
	}
	st, _ := fi.Sys().(*syscall.Stat_t)
	if !fi.IsDir() || st == nil || int(st.Uid) != uid || fi.Mode().Perm()&0o077 != 0 {
		return errors.New("not a private directory of yours")
	}
	return isTmpfs(d)
}

func isTmpfs(p string) error {
	var fs unix.Statfs_t
	if err := unix.Statfs(p, &fs); err != nil {
		return err
	}
	if fs.Type != unix.TMPFS_MAGIC && fs.Type != unix.RAMFS_MAGIC {
		return fmt.Errorf("%s is not on a tmpfs (plaintext would reach a disk): set $XDG_RUNTIME_DIR to a tmpfs directory of yours", p)
	}
	return nil
}

// ReadFile reads a file of the private directory, refusing a link (even
// there, where only the user can write) or another owner's file.
func ReadFile(name string) ([]byte, error) {
	d, err := Private()
	if err != nil {
		return nil, err
	}
	f, err := os.OpenFile(filepath.Join(d, name), os.O_RDONLY|unix.O_NOFOLLOW, 0)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if st, _ := fi.Sys().(*syscall.Stat_t); !fi.Mode().IsRegular() || st == nil || int(st.Uid) != os.Geteuid() {
		return nil, fmt.Errorf("%s is not a file of yours", f.Name())
	}
	b := make([]byte, min(fi.Size(), 1<<20))
	n, err := f.Read(b)
	return b[:n], err
}

// WriteFile replaces a file of the private directory: a new file (O_EXCL)
// renamed over the name, so a link planted there is replaced, not
// followed.
func WriteFile(name string, data []byte) error {
	d, err := Private()
	if err != nil {
		return err
	}
	tmp := filepath.Join(d, "."+name+".tmp-"+strconv.Itoa(os.Getpid()))
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_EXCL|unix.O_NOFOLLOW, 0o600)
	if err != nil {
		return err
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		os.Remove(tmp)
		return err
	}
	if err := f.Close(); err != nil {
		os.Remove(tmp)
		return err
	}
	return os.Rename(tmp, filepath.Join(d, name))
}
