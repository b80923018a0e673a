package guestimage

import (
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"syscall"

	"golang.org/x/sys/unix"
)

// cpio writes the "newc" format the kernel's initramfs unpacker reads
// (Documentation/driver-api/early-userspace/buffer-format.rst). It is
// written here rather than taken from a library because the kernel reads
// only this one format, and what it needs — directories, files, links and
// device nodes with their owners, modes and times — is the 110-byte header
// below; cpio(1) is not installed everywhere credvm builds a guest.
type cpio struct {
	w   io.Writer
	ino int
	err error
}

func newCpio(w io.Writer) *cpio { return &cpio{w: w, ino: 1} }

// header describes one entry.
type header struct {
	name       string
	mode       uint32 // type and permission bits, as in stat(2)
	uid, gid   uint32
	mtime      int64
	size       int64
	rmaj, rmin uint32 // device number of a device node
}

func (c *cpio) header(h header) {
	if c.err != nil {
		return
	}
	c.ino++
	hdr := fmt.Sprintf("070701%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X",
		c.ino, h.mode, h.uid, h.gid, 1, uint32(h.mtime), h.size, 0, 0, h.rmaj, h.rmin, len(h.name)+1, 0)
	c.write([]byte(hdr + h.name + "\x00"))
	c.pad(int64(len(hdr) + len(h.name) + 1))
}

func (c *cpio) write(b []byte) {
	if c.err == nil {
		_, c.err = c.w.Write(b)
	}
}

// pad aligns to 4 bytes after n bytes written.
func (c *cpio) pad(n int64) {
	if r := n % 4; r != 0 {
		c.write(make([]byte, 4-r))
	}
}

func (c *cpio) data(b []byte) {
	c.write(b)
	c.pad(int64(len(b)))
}

func (c *cpio) dir(name string) { c.header(header{name: name, mode: unix.S_IFDIR | 0o755}) }

func (c *cpio) file(name string, perm uint32, b []byte) {
	c.header(header{name: name, mode: unix.S_IFREG | perm, size: int64(len(b))})
	c.data(b)
}

func (c *cpio) symlink(name, target string) {
	c.header(header{name: name, mode: unix.S_IFLNK | 0o777, size: int64(len(target))})
	c.data([]byte(target))
}

// tree adds everything under root, named relative to it, keeping owners,
// modes (setuid included), times, links and device nodes. Hard links are
// stored as separate copies; sockets are left out (nothing can use one
// from an archive).
func (c *cpio) tree(root string) error {
	return filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil || c.err != nil {
			return firstErr(err, c.err)
		}
		rel, _ := filepath.Rel(root, p)
		fi, err := os.Lstat(p)
		if err != nil {
			return err
		}
		st := fi.Sys().(*syscall.Stat_t)
		h := header{name: rel, mode: st.Mode, uid: st.Uid, gid: st.Gid, mtime: st.Mtim.Sec}
		switch fi.Mode().Type() {
		case 0:
			h.size = fi.Size()
			c.header(h)
			return c.copyFile(p, h.size)
		case fs.ModeSymlink:
			t, err := os.Readlink(p)
			if err != nil {
				return err
			}
			h.size = int64(len(t))
			c.header(h)
			c.data([]byte(t))
		case fs.ModeSocket:
		case fs.ModeDevice, fs.ModeDevice | fs.ModeCharDevice:
			h.rmaj, h.rmin = unix.Major(st.Rdev), unix.Minor(st.Rdev)
			c.header(h)
		default: // directories, FIFOs
			c.header(h)
		}
		return c.err
	})
}

func (c *cpio) copyFile(p string, size int64) error {
	f, err := os.Open(p)
	if err != nil {
		return err
	}
	defer f.Close()
	if c.err == nil {
		var n int64
		n, c.err = io.CopyN(c.w, f, size)
		if c.err != nil {
			return fmt.Errorf("%s: %w (changed while packing? read %d of %d bytes)", p, c.err, n, size)
		}
	}
	c.pad(size)
	return c.err
}

func (c *cpio) close() error {
	c.header(header{name: "TRAILER!!!"})
	return c.err
}

func firstErr(errs ...error) error {
	for _, e := range errs {
		if e != nil {
			return e
		}
	}
	return nil
}
