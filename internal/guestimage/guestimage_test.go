package guestimage

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/credvm/credvm/internal/testenv"
)

// The archive writer is proven against GNU cpio, which extracts what it
// wrote: contents, modes (setuid included), owners, links, FIFOs and
// device nodes.
func TestCpioTreeMatchesCpioTool(t *testing.T) {
	if _, err := exec.LookPath("cpio"); err != nil {
		testenv.Missing(t, "cpio", "apt-get install cpio")
	}
	src := t.TempDir()
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(os.MkdirAll(filepath.Join(src, "etc/systemd/system"), 0o755))
	must(os.WriteFile(filepath.Join(src, "etc/hostname"), []byte("guest\n"), 0o644))
	must(os.WriteFile(filepath.Join(src, "odd"), []byte("abc"), 0o640)) // 3 bytes: padding
	must(os.WriteFile(filepath.Join(src, "su"), []byte("#!/bin/sh\n"), 0o755))
	must(os.Chmod(filepath.Join(src, "su"), 0o755|os.ModeSetuid))
	must(os.Symlink("/dev/null", filepath.Join(src, "etc/systemd/system/x.service")))
	must(unix.Mkfifo(filepath.Join(src, "fifo"), 0o600))
	root := os.Geteuid() == 0
	if root {
		must(unix.Mknod(filepath.Join(src, "null"), unix.S_IFCHR|0o666, int(unix.Mkdev(1, 3))))
		must(os.Lchown(filepath.Join(src, "odd"), 0, 8))
	}
	var buf bytes.Buffer
	c := newCpio(&buf)
	must(c.tree(src))
	c.file("added", 0o600, []byte("12345"))
	must(c.close())

	dst := t.TempDir()
	cmd := exec.Command("cpio", "-idm", "--no-absolute-filenames", "--quiet")
	cmd.Dir, cmd.Stdin = dst, &buf
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("cpio: %v\n%s", err, out)
	}
	for _, tc := range []struct {
		path, content, link string
		mode                os.FileMode
	}{
		{path: "etc/hostname", content: "guest\n", mode: 0o644},
		{path: "odd", content: "abc", mode: 0o640},
		{path: "su", content: "#!/bin/sh\n", mode: 0o755 | os.ModeSetuid},
		{path: "etc/systemd/system/x.service", link: "/dev/null"},
		{path: "fifo", mode: 0o600 | os.ModeNamedPipe},
		{path: "added", content: "12345", mode: 0o600},
	} {
		p := filepath.Join(dst, tc.path)
		if tc.link != "" {
			if got, err := os.Readlink(p); err != nil || got != tc.link {
				t.Errorf("%s: link %q %v, want %q", tc.path, got, err, tc.link)
			}
			continue
		}
		fi, err := os.Lstat(p)
		if err != nil {
			t.Errorf("%s: %v", tc.path, err)
			continue
		}
		if fi.Mode() != tc.mode {
			t.Errorf("%s: mode %v, want %v", tc.path, fi.Mode(), tc.mode)
		}
		if fi.Mode().IsRegular() {
			if b, _ := os.ReadFile(p); string(b) != tc.content {
				t.Errorf("%s: %q, want %q", tc.path, b, tc.content)
			}
		}
	}
	if root {
		fi, err := os.Lstat(filepath.Join(dst, "null"))
		if err != nil || fi.Mode()&os.ModeCharDevice == 0 {
			t.Fatalf("null: %v %v", fi, err)
		}
		if st := fi.Sys().(*syscall.Stat_t); unix.Major(st.Rdev) != 1 || unix.Minor(st.Rdev) != 3 {
			t.Errorf("null: device %d:%d, want 1:3", unix.Major(st.Rdev), unix.Minor(st.Rdev))
		}
		fi, _ = os.Lstat(filepath.Join(dst, "odd"))
		if st := fi.Sys().(*syscall.Stat_t); st.Gid != 8 {
			t.Errorf("odd: group %d, want 8", st.Gid)
		}
	}
}

// The modules a guest gets come with what they depend on, read from the
// real Debian kernel's .modinfo sections (make images).
func TestModuleClosure(t *testing.T) {
	dir := imagesDir()
	ver, err := os.ReadFile(filepath.Join(dir, "kernel-version"))
	if err != nil {
		testenv.Missing(t, "the guest images", "make images")
		return
	}
	modDir := filepath.Join(dir, "modules", strings.TrimSpace(string(ver)))
	got, err := moduleClosure(modDir, Modules)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, p := range got {
		names = append(names, strings.TrimSuffix(filepath.Base(p), ".ko"))
	}
	for _, want := range append(Modules, "virtio", "virtio_ring", "fuse", "vsock", "virtio_pci_modern_dev") {
		if !slices.Contains(names, want) {
			t.Errorf("closure %v lacks %s", names, want)
		}
	}
	if _, err := moduleClosure(modDir, []string{"no_such_module"}); err == nil || !strings.Contains(err.Error(), "no kernel module no_such_module") {
		t.Errorf("unknown module: %v", err)
	}
}

func imagesDir() string {
	if d := os.Getenv("CREDVM_IMAGES"); d != "" {
		return d
	}
	return filepath.Join(testenv.Root(), ".cache", "images")
}

// A dynamically linked credvm would not run in the guest.
func TestCheckStatic(t *testing.T) {
	if err := checkStatic("/bin/ls"); err == nil || !strings.Contains(err.Error(), "is dynamically linked and would not run in the guest: build it with CGO_ENABLED=0") {
		t.Errorf("/bin/ls: %v", err)
	}
	if _, err := os.Stat("/bin/busybox"); err != nil {
		testenv.Missing(t, "a static busybox", "apt-get install busybox-static")
		return
	}
	if err := checkStatic("/bin/busybox"); err != nil {
		t.Errorf("busybox-static: %v", err)
	}
}

// The user's guest is the base followed by one archive with its units,
// the user's overlay and credvm, which the kernel unpacks over the base.
func TestUserInitrd(t *testing.T) {
	if _, err := exec.LookPath("cpio"); err != nil {
		testenv.Missing(t, "cpio", "apt-get install cpio")
	}
	if _, err := os.Stat("/bin/busybox"); err != nil {
		testenv.Missing(t, "a static busybox", "apt-get install busybox-static")
		return
	}
	dir := t.TempDir()
	im := Images{Dir: dir}
	var base bytes.Buffer
	c := newCpio(&base)
	c.dir("etc")
	c.file("etc/hostname", 0o644, []byte("base\n"))
	if err := c.close(); err != nil {
		t.Fatal(err)
	}
	os.WriteFile(im.base(), base.Bytes(), 0o644)
	overlay := filepath.Join(t.TempDir(), "files")
	os.MkdirAll(filepath.Join(overlay, "etc/systemd/system"), 0o755)
	os.WriteFile(filepath.Join(overlay, "etc/systemd/system/myapp.service"), []byte("[Service]\nLoadCredential=API_KEY\n"), 0o644)
	out := filepath.Join(dir, "initrd.img")
	if err := im.UserInitrd("/bin/busybox", overlay, out); err != nil {
		t.Fatal(err)
	}
	img, _ := os.ReadFile(out)
	if !bytes.HasPrefix(img, base.Bytes()) {
		t.Fatal("the image does not start with the base")
	}
	x := t.TempDir()
	cmd := exec.Command("cpio", "-idm", "--no-absolute-filenames", "--quiet")
	cmd.Dir, cmd.Stdin = x, bytes.NewReader(img[base.Len():])
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("cpio: %v\n%s", err, out)
	}
	for _, f := range []string{"usr/local/bin/credvm", "etc/systemd/system/credvm-report.service",
		"etc/systemd/system/multi-user.target.wants/credvm-report.service",
		"etc/systemd/system/serial-getty@ttyS0.service.d/autologin.conf", "etc/systemd/system/myapp.service"} {
		if _, err := os.Lstat(filepath.Join(x, f)); err != nil {
			t.Errorf("the overlay lacks %s: %v", f, err)
		}
	}
	if b, _ := os.ReadFile(filepath.Join(x, "etc/systemd/system/credvm-report.service")); bytes.Contains(b, []byte("poweroff")) {
		t.Error("the user's guest powers itself off")
	}
	if err := im.UserInitrd("/bin/ls", "", out); err == nil {
		t.Error("a dynamic credvm was put in the guest")
	}
	if b, _ := os.ReadFile(out); !bytes.Equal(b, img) {
		t.Error("a failed assembly changed the image")
	}
}
