// Package guestimage builds and assembles credvm's guests from Debian
// packages: a Debian cloud kernel (apt-get download, never installed) with
// the modules a microVM needs, and a debootstrapped systemd root packed as
// an initramfs (Build, `credvm image`, `make images`).
//
// Three guests share that base. The user's guest (initrd.img, UserInitrd)
// stays up, shows the credentials that arrived and logs root in on the
// serial console. The test and demo guest (SystemdInitrd) reports through
// an example service and powers off. The fast test guest (FastInitrd) is a
// single static program. credvm itself changes with every build, so it is
// added when a guest is assembled: Linux unpacks concatenated cpio
// archives in order, and a small archive appended to the base overlays it.
package guestimage

import (
	"bytes"
	"debug/elf"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
)

// DefaultDir is where `credvm image` puts the user's guest unless told
// otherwise: building needs root, and the files are read by every user's
// VMs (mode 0644; nothing secret is in them).
const DefaultDir = "/var/cache/credvm/images"

// Cmdline is the kernel command line the guests need: the console on the
// serial port credvm logs (the initramfs's /init is systemd).
const Cmdline = "console=ttyS0"

// Images is a directory Build filled.
type Images struct{ Dir string }

// Kernel is the guest kernel.
func (im Images) Kernel() string { return filepath.Join(im.Dir, "vmlinuz") }

// Initrd is the user's guest (UserInitrd).
func (im Images) Initrd() string { return filepath.Join(im.Dir, "initrd.img") }

func (im Images) base() string { return filepath.Join(im.Dir, "systemd-base.cpio") }

// Check reports what is missing, with the command that builds it.
func (im Images) Check(systemd bool) error {
	need := []string{"vmlinuz", "qemu_fw_cfg.ko"}
	if systemd {
		need = append(need, "systemd-base.cpio")
	}
	for _, n := range need {
		if _, err := os.Stat(filepath.Join(im.Dir, n)); err != nil {
			return fmt.Errorf("guest image %s is missing in %s: run `make images` (or credvm image --dir %s)", n, im.Dir, im.Dir)
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
	// Every module of the guest's set, flat (init loads them in any
	// order, again until none more loads: that is their dependency order).
	var mods []string
	filepath.WalkDir(filepath.Join(im.Dir, "modules"), func(p string, d fs.DirEntry, err error) error {
		if err == nil && !d.IsDir() && strings.HasSuffix(p, ".ko") {
			mods = append(mods, p)
		}
		return nil
	})
	if len(mods) == 0 {
		mods = []string{filepath.Join(im.Dir, "qemu_fw_cfg.ko")}
	}
	var buf bytes.Buffer
	w := newCpio(&buf)
	for _, d := range []string{"dev", "proc", "sys", "mnt", "lib", "lib/modules"} {
		w.dir(d)
	}
	w.file("init", 0o755, bin)
	seen := map[string]bool{}
	for _, m := range mods {
		if seen[filepath.Base(m)] {
			continue
		}
		seen[filepath.Base(m)] = true
		b, err := os.ReadFile(m)
		if err != nil {
			return err
		}
		w.file("lib/modules/"+filepath.Base(m), 0o644, b)
	}
	if err := w.close(); err != nil {
		return err
	}
	return os.WriteFile(out, buf.Bytes(), 0o644)
}

// SystemdInitrd writes the test and demo guest: the base root, its units
// (report, then power off) and credvmStatic as /usr/local/bin/credvm.
func (im Images) SystemdInitrd(credvmStatic, out string) error {
	return im.assemble(out, credvmStatic, "", testOverlay)
}

// UserInitrd writes the user's guest: the base root, its units (report
// and stay up; root on the serial console), the files of overlayDir if
// not "" (the user's own units and programs, copied over the root), and
// credvmStatic.
func (im Images) UserInitrd(credvmStatic, overlayDir, out string) error {
	return im.assemble(out, credvmStatic, overlayDir, userOverlay)
}

// assemble writes base + units + the user's overlay + credvm to out,
// through a temporary file renamed into place: a VM booting the old image
// never reads a half-written one.
func (im Images) assemble(out, credvmStatic, overlayDir string, units func(*cpio)) error {
	if err := checkStatic(credvmStatic); err != nil {
		return err
	}
	bin, err := os.ReadFile(credvmStatic)
	if err != nil {
		return err
	}
	base, err := os.Open(im.base())
	if err != nil {
		return err
	}
	defer base.Close()
	tmp := out + ".tmp"
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		return err
	}
	defer os.Remove(tmp)
	if _, err := io.Copy(f, base); err != nil {
		f.Close()
		return err
	}
	w := newCpio(f)
	units(w)
	if overlayDir != "" {
		if err := w.tree(overlayDir); err != nil {
			f.Close()
			return fmt.Errorf("overlay %s: %w", overlayDir, err)
		}
	}
	w.dir("usr")
	w.dir("usr/local")
	w.dir("usr/local/bin")
	w.file("usr/local/bin/credvm", 0o755, bin)
	if err := errors.Join(w.close(), f.Close()); err != nil {
		return err
	}
	return os.Rename(tmp, out)
}

// checkStatic refuses a dynamically linked credvm: the guest's libc is not
// the host's.
func checkStatic(bin string) error {
	f, err := elf.Open(bin)
	if err != nil {
		return fmt.Errorf("%s: %w", bin, err)
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			return fmt.Errorf("%s is dynamically linked and would not run in the guest: build it with CGO_ENABLED=0 (make build)", bin)
		}
	}
	return nil
}
