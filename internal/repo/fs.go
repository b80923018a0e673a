package repo

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"

	"golang.org/x/sys/unix"

	"github.com/credvm/credvm/internal/faultinject"
)

// The repository is shared — cloned from git, written by a team and by
// clan, restored from backups, fed by bundles — so its content is input,
// not instructions. Every file credvm reads or writes in it goes through
// the methods below, which resolve the path beneath the repository's root
// with an os.Root: a path that leaves it, by ".." or an absolute name or
// through a symlink someone committed (vars/per-machine/vm1 → ~/.ssh, a
// value → /etc/shadow), is refused instead of followed. clan's recipient
// links are relative and stay inside, so they still resolve.
//
// The methods take the absolute paths r.Path builds, so that callers name
// files as before; a path outside the root is an error, never a fallback
// to the host filesystem.

// ErrOutside is returned for a path that leaves the repository.
var ErrOutside = errors.New("leaves the repository")

type rootFS struct {
	once sync.Once
	root *os.Root
	err  error
}

func (r *Repo) osRoot() (*os.Root, error) {
	r.fs.once.Do(func() { r.fs.root, r.fs.err = os.OpenRoot(r.Root) })
	return r.fs.root, r.fs.err
}

// rel turns p (absolute, or relative to the root) into a path relative to
// the root, refusing one that leaves it.
func (r *Repo) rel(p string) (string, error) {
	rel := p
	if filepath.IsAbs(p) {
		var err error
		if rel, err = filepath.Rel(r.Root, p); err != nil {
			return "", &fs.PathError{Op: "open", Path: p, Err: ErrOutside}
		}
	}
	rel = filepath.Clean(rel)
	if rel == ".." || strings.HasPrefix(rel, "../") || filepath.IsAbs(rel) {
		return "", &fs.PathError{Op: "open", Path: p, Err: ErrOutside}
	}
	return rel, nil
}

// do runs op on the root with p made relative, and names p in its error.
func (r *Repo) do(p string, op func(root *os.Root, rel string) error) error {
	rel, err := r.rel(p)
	if err != nil {
		return err
	}
	root, err := r.osRoot()
	if err != nil {
		return err
	}
	if err := op(root, rel); err != nil {
		return confined(r, p, err)
	}
	return nil
}

// confined rewrites os.Root's "path escapes from parent" into an error
// naming the repository path and the reason.
func confined(r *Repo, p string, err error) error {
	if strings.Contains(err.Error(), "path escapes from parent") || errors.Is(err, ErrOutside) {
		return fmt.Errorf("%s: a symlink or name there leads outside the repository; credvm follows none (remove it)", r.Rel(p))
	}
	return err
}

// ReadFile reads a file of the repository.
func (r *Repo) ReadFile(p string) (b []byte, err error) {
	err = r.do(p, func(root *os.Root, rel string) error { b, err = root.ReadFile(rel); return err })
	return b, err
}

// Stat stats a file of the repository, following links inside it.
func (r *Repo) Stat(p string) (fi os.FileInfo, err error) {
	err = r.do(p, func(root *os.Root, rel string) error { fi, err = root.Stat(rel); return err })
	return fi, err
}

// Lstat stats a file of the repository without following a final link.
func (r *Repo) Lstat(p string) (fi os.FileInfo, err error) {
	err = r.do(p, func(root *os.Root, rel string) error { fi, err = root.Lstat(rel); return err })
	return fi, err
}

// Exists reports whether p names something in the repository.
func (r *Repo) Exists(p string) bool {
	_, err := r.Lstat(p)
	return err == nil
}

// IsDir reports whether p is a directory of the repository.
func (r *Repo) IsDir(p string) bool {
	fi, err := r.Stat(p)
	return err == nil && fi.IsDir()
}

// ReadDir lists a directory of the repository, sorted by name.
func (r *Repo) ReadDir(p string) (entries []os.DirEntry, err error) {
	err = r.do(p, func(root *os.Root, rel string) error {
		entries, err = fs.ReadDir(root.FS(), filepath.ToSlash(rel))
		return err
	})
	return entries, err
}

// WalkDir walks a tree of the repository (links are not followed).
func (r *Repo) WalkDir(p string, fn func(path string, d fs.DirEntry, err error) error) error {
	return r.do(p, func(root *os.Root, rel string) error {
		return fs.WalkDir(root.FS(), filepath.ToSlash(rel), func(sub string, d fs.DirEntry, err error) error {
			return fn(r.Path(filepath.FromSlash(sub)), d, err)
		})
	})
}

// Readlink reads a link of the repository.
func (r *Repo) Readlink(p string) (target string, err error) {
	err = r.do(p, func(root *os.Root, rel string) error { target, err = root.Readlink(rel); return err })
	return target, err
}

// MkdirAll makes a directory of the repository and its parents.
func (r *Repo) MkdirAll(p string, perm os.FileMode) error {
	return r.do(p, func(root *os.Root, rel string) error { return root.MkdirAll(rel, perm) })
}

// Mkdir makes a directory of the repository.
func (r *Repo) Mkdir(p string, perm os.FileMode) error {
	return r.do(p, func(root *os.Root, rel string) error { return root.Mkdir(rel, perm) })
}

// Remove removes a file, link or empty directory of the repository.
func (r *Repo) Remove(p string) error {
	return r.do(p, func(root *os.Root, rel string) error { return root.Remove(rel) })
}

// RemoveAll removes a tree of the repository (it never follows links).
func (r *Repo) RemoveAll(p string) error {
	return r.do(p, func(root *os.Root, rel string) error { return root.RemoveAll(rel) })
}

// Rename renames within the repository.
func (r *Repo) Rename(from, to string) error {
	relTo, err := r.rel(to)
	if err != nil {
		return err
	}
	return r.do(from, func(root *os.Root, rel string) error { return root.Rename(rel, relTo) })
}

// Symlink makes link a symbolic link to target, which must be relative and
// stay inside the repository.
func (r *Repo) Symlink(target, link string) error {
	rel, err := r.rel(link)
	if err != nil {
		return err
	}
	if filepath.IsAbs(target) {
		return fmt.Errorf("%s: a link to %s would leave the repository", r.Rel(link), target)
	}
	if _, err := r.rel(filepath.Join(filepath.Dir(rel), target)); err != nil {
		return fmt.Errorf("%s: a link to %s would leave the repository", r.Rel(link), target)
	}
	return r.do(link, func(root *os.Root, rel string) error { return root.Symlink(target, rel) })
}

// WriteFile writes a file of the repository as it is (no fsync): for
// staging directories that their transaction makes durable as a whole.
func (r *Repo) WriteFile(p string, data []byte, perm os.FileMode) error {
	return r.do(p, func(root *os.Root, rel string) error {
		f, err := root.OpenFile(rel, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, perm)
		if err != nil {
			return err
		}
		_, err = f.Write(data)
		return errors.Join(err, f.Chmod(perm), f.Close())
	})
}

// WriteFileAtomic replaces a file of the repository so that a reader, or
// the next run after a crash, sees the old content or the new, never a
// mix: a temporary file beside it, fsync, rename, fsync of the directory.
func (r *Repo) WriteFileAtomic(p string, data []byte, perm os.FileMode) error {
	return r.do(p, func(root *os.Root, rel string) error {
		dir, base := filepath.Split(rel)
		tmp := filepath.Join(dir, "."+base+".tmp-"+randomSuffix())
		f, err := root.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_EXCL, perm)
		if err != nil {
			return err
		}
		ok := false
		defer func() {
			if !ok {
				f.Close()
				root.Remove(tmp)
			}
		}()
		if err := f.Chmod(perm); err != nil {
			return err
		}
		if _, err := f.Write(data); err != nil {
			return err
		}
		if err := f.Sync(); err != nil {
			return err
		}
		if err := f.Close(); err != nil {
			return err
		}
		faultinject.Point("atomicfile.before-rename")
		if err := root.Rename(tmp, rel); err != nil {
			return err
		}
		ok = true
		return syncDir(root, dir)
	})
}

// SyncDir fsyncs a directory of the repository.
func (r *Repo) SyncDir(p string) error {
	return r.do(p, func(root *os.Root, rel string) error { return syncDir(root, rel) })
}

func syncDir(root *os.Root, rel string) error {
	if rel == "" {
		rel = "."
	}
	d, err := root.Open(rel)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

// Syncfs makes the whole filesystem holding p durable (syncfs(2)).
func (r *Repo) Syncfs(p string) error {
	return r.do(p, func(root *os.Root, rel string) error {
		f, err := root.Open(rel)
		if err != nil {
			return err
		}
		defer f.Close()
		return unix.Syncfs(int(f.Fd()))
	})
}

// Exchange swaps two entries of one directory of the repository in one
// renameat2(RENAME_EXCHANGE) — or, with noReplace, moves a to b where b
// does not exist (RENAME_NOREPLACE). The directory is opened through the
// root, and the two names are single components, so neither the
// directory nor the rename can reach outside.
func (r *Repo) Exchange(a, b string, noReplace bool) error {
	if filepath.Dir(a) != filepath.Dir(b) {
		return fmt.Errorf("exchange %s and %s: not in one directory", r.Rel(a), r.Rel(b))
	}
	return r.do(filepath.Dir(a), func(root *os.Root, rel string) error {
		d, err := root.Open(rel)
		if err != nil {
			return err
		}
		defer d.Close()
		flags := uint(unix.RENAME_EXCHANGE)
		if noReplace {
			flags = unix.RENAME_NOREPLACE
		}
		fd := int(d.Fd())
		return unix.Renameat2(fd, filepath.Base(a), fd, filepath.Base(b), flags)
	})
}

func randomSuffix() string {
	b := make([]byte, 6)
	rand.Read(b)
	return hex.EncodeToString(b)
}
