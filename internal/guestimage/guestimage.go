// Package guestimage assembles the initramfs images of credvm's test and
// demo guests from the parts scripts/build-images caches (a Debian kernel,
// its qemu_fw_cfg module, a debootstrapped systemd root packed as cpio) and
// the credvm binary being tested, which changes with every build and so is
// added at boot time: Linux unpacks concatenated cpio archives in order, so
// appending a small archive to the cached base overlays it.
package guestimage

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
)

// Images is a directory built by scripts/build-images.
type Images struct{ Dir string }

// Kernel is the guest kernel.
func (im Images) Kernel() string { return filepath.Join(im.Dir, "vmlinuz") }

// Check reports what is missing, with the command that builds it.
func (im Images) Check(systemd bool) error {
	need := []string{"vmlinuz", "qemu_fw_cfg.ko"}
	if systemd {
		need = append(need, "systemd-base.cpio")
	}
	for _, n := range need {
		if _, err := os.Stat(filepath.Join(im.Dir, n)); err != nil {
			return fmt.Errorf("guest image %s is missing in %s: run `make images` (or scripts/build-images %s)", n, im.Dir, im.Dir)
		}
	}
	return nil
}

// FastInitrd writes the fast test guest: init, a static program that is
// the guest's whole userspace (e2e/testguest: it reports and verifies the
// credentials, then powers off), and qemu_fw_cfg.ko.
func (im Images) FastInitrd(init, out string) error {
	bin, err := os.ReadFile(init)
	if err != nil {
		return err
	}
	mod, err := os.ReadFile(filepath.Join(im.Dir, "qemu_fw_cfg.ko"))
	if err != nil {
		return err
	}
	var buf bytes.Buffer
	w := newCpio(&buf)
	for _, d := range []string{"dev", "proc", "sys", "lib", "lib/modules"} {
		w.dir(d)
	}
	w.file("init", 0o755, bin)
	w.file("lib/modules/qemu_fw_cfg.ko", 0o644, mod)
	if err := w.close(); err != nil {
		return err
	}
	return os.WriteFile(out, buf.Bytes(), 0o644)
}

// SystemdInitrd writes the systemd guest: the cached base root with credvm
// appended as /usr/local/bin/credvm.
func (im Images) SystemdInitrd(credvmStatic, out string) error {
	bin, err := os.ReadFile(credvmStatic)
	if err != nil {
		return err
	}
	base, err := os.Open(filepath.Join(im.Dir, "systemd-base.cpio"))
	if err != nil {
		return err
	}
	defer base.Close()
	f, err := os.Create(out)
	if err != nil {
		return err
	}
	if _, err := io.Copy(f, base); err != nil {
		f.Close()
		return err
	}
	w := newCpio(f)
	w.dir("usr/local/bin")
	w.file("usr/local/bin/credvm", 0o755, bin)
	return errors.Join(w.close(), f.Close())
}

// cpio writes the "newc" format the kernel's initramfs unpacker reads.
type cpio struct {
	w   io.Writer
	ino int
	err error
}

func newCpio(w io.Writer) *cpio { return &cpio{w: w, ino: 1} }

func (c *cpio) entry(name string, mode uint32, data []byte) {
	if c.err != nil {
		return
	}
	c.ino++
	hdr := fmt.Sprintf("070701%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X",
		c.ino, mode, 0, 0, 1, 0, len(data), 0, 0, 0, 0, len(name)+1, 0)
	var b bytes.Buffer
	b.WriteString(hdr)
	b.WriteString(name)
	b.WriteByte(0)
	for b.Len()%4 != 0 {
		b.WriteByte(0)
	}
	b.Write(data)
	for b.Len()%4 != 0 {
		b.WriteByte(0)
	}
	_, c.err = c.w.Write(b.Bytes())
}

func (c *cpio) dir(name string)                         { c.entry(name, 0o040755, nil) }
func (c *cpio) file(name string, perm uint32, b []byte) { c.entry(name, 0o100000|perm, b) }
func (c *cpio) close() error {
	c.entry("TRAILER!!!", 0, nil)
	return c.err
}
