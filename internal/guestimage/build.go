package guestimage

import (
	"bufio"
	"bytes"
	"context"
	"debug/elf"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
)

// Modules are the kernel modules a guest gets (with what they depend on):
// fw_cfg for credentials; the ACPI power button and evdev, so that
// systemd-logind powers off on QEMU's system_powerdown; virtio devices
// (PCI and MMIO: block, network, console, virtiofs, vsock) for disks,
// taps, shares and word back from the guest; overlayfs.
var Modules = []string{
	"qemu_fw_cfg", "button", "evdev",
	"virtio_pci", "virtio_mmio", "virtio_blk", "virtio_net", "virtio_console",
	"virtiofs", "vmw_vsock_virtio_transport", "overlay",
}

// BuildOptions configure Build.
type BuildOptions struct {
	Dir     string   // where the images go
	Suite   string   // Debian release of the root (default bookworm)
	Mirror  string   // Debian mirror (default $DEBIAN_MIRROR or deb.debian.org)
	Include []string // more Debian packages in the root
	Overlay string   // a directory copied over the user's guest ("": none)
	Rebuild bool     // rebuild the kernel and root even when cached
	Credvm  string   // the static credvm put inside (default: this one)
	Log     io.Writer
}

// BuildResult says what Build made.
type BuildResult struct {
	Dir           string   `json:"dir"`
	Kernel        string   `json:"kernel"`
	Initrd        string   `json:"initrd"`
	Cmdline       string   `json:"cmdline"`
	KernelVersion string   `json:"kernel_version"`
	Suite         string   `json:"suite"`
	Packages      []string `json:"packages"`
	// Built lists the parts made this time; the others were reused.
	Built []string `json:"built"`
}

// Build makes the guest images in o.Dir from Debian packages: the kernel
// and its modules (apt-get download, dpkg-deb -x: nothing is installed on
// the host), a Debian root with systemd (debootstrap, which needs root),
// the base initramfs the guests share, and the user's guest, initrd.img.
// Parts already there are reused unless o.Rebuild.
func Build(ctx context.Context, o BuildOptions) (*BuildResult, error) {
	if o.Suite == "" {
		o.Suite = "bookworm"
	}
	if o.Mirror == "" {
		o.Mirror = cmp(os.Getenv("DEBIAN_MIRROR"), "http://deb.debian.org/debian")
	}
	if o.Log == nil {
		o.Log = io.Discard
	}
	if o.Credvm == "" {
		self, err := os.Executable()
		if err != nil {
			return nil, err
		}
		o.Credvm = self
	}
	if err := checkStatic(o.Credvm); err != nil {
		return nil, err
	}
	if err := checkHost(); err != nil {
		return nil, err
	}
	dir, err := filepath.Abs(o.Dir)
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	b := &builder{o: o, im: Images{Dir: dir}, ctx: ctx}
	res := &BuildResult{Dir: dir, Kernel: b.im.Kernel(), Initrd: b.im.Initrd(), Cmdline: Cmdline, Suite: o.Suite,
		Packages: append(rootPackages(), o.Include...), Built: []string{}}
	for _, step := range []struct {
		part string
		run  func() (bool, error)
	}{
		{"kernel", b.kernel},
		{"root", b.root},
		{"systemd-base.cpio", func() (bool, error) { return b.base(len(res.Built) > 0) }},
	} {
		built, err := step.run()
		if err != nil {
			return nil, err
		}
		if built {
			res.Built = append(res.Built, step.part)
		}
	}
	b.step("writing the guest %s (systemd, credvm, credvm-report.service, root on ttyS0)", res.Initrd)
	if err := b.im.UserInitrd(o.Credvm, o.Overlay, res.Initrd); err != nil {
		return nil, err
	}
	res.Built = append(res.Built, "initrd.img")
	v, _ := os.ReadFile(filepath.Join(dir, "kernel-version"))
	res.KernelVersion = strings.TrimSpace(string(v))
	return res, nil
}

// rootPackages are what every root has besides minbase: systemd as init,
// udev and kmod for devices and modules, dbus for systemd-logind (the
// power button).
func rootPackages() []string { return []string{"systemd-sysv", "udev", "kmod", "dbus"} }

func cmp(a, b string) string {
	if a != "" {
		return a
	}
	return b
}

// checkHost names what the host lacks.
func checkHost() error {
	if _, err := os.Stat("/etc/NIXOS"); err == nil {
		return errors.New("credvm image builds a Debian guest with apt-get and debootstrap; on NixOS the guest's NixOS configuration is the machine: build it with microvm.nix and name its kernel and initrd in [vm]")
	}
	for _, tool := range []struct{ cmd, pkg string }{
		{"apt-get", "apt"}, {"apt-cache", "apt"}, {"dpkg-deb", "dpkg"}, {"debootstrap", "debootstrap"}, {"chroot", "coreutils"},
	} {
		if _, err := exec.LookPath(tool.cmd); err != nil {
			return fmt.Errorf("credvm image needs %s (Debian or Ubuntu: apt-get install %s)", tool.cmd, tool.pkg)
		}
	}
	if os.Geteuid() != 0 {
		return errors.New("credvm image needs root: debootstrap installs packages into the guest's root as root (run it with sudo; the images are then readable by every user)")
	}
	return nil
}

type builder struct {
	o   BuildOptions
	im  Images
	ctx context.Context
}

func (b *builder) step(format string, args ...any) {
	fmt.Fprintf(b.o.Log, "==> "+format+"\n", args...)
}

func (b *builder) path(name ...string) string {
	return filepath.Join(append([]string{b.im.Dir}, name...)...)
}

// run runs a command, its output kept for the error.
func (b *builder) run(dir, name string, args ...string) ([]byte, error) {
	cmd := exec.CommandContext(b.ctx, name, args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "DEBIAN_FRONTEND=noninteractive", "LC_ALL=C")
	out, err := cmd.CombinedOutput()
	if err != nil {
		return out, fmt.Errorf("%s %s: %w\n%s", name, strings.Join(args, " "), err, lastLines(out, 15))
	}
	return out, nil
}

func lastLines(b []byte, n int) string {
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// stamp reports whether file holds want; write records it.
func (b *builder) stamp(file, want string) bool {
	got, err := os.ReadFile(b.path(file))
	return err == nil && string(got) == want
}

func (b *builder) writeStamp(file, v string) error {
	return os.WriteFile(b.path(file), []byte(v), 0o644)
}

// kernel fetches Debian's cloud kernel and the Modules, with their
// dependencies read from each module's .modinfo.
func (b *builder) kernel() (bool, error) {
	want := strings.Join(Modules, " ") + "\n"
	if !b.o.Rebuild && b.stamp("modules.stamp", want) && exists(b.path("vmlinuz")) && exists(b.path("kernel-version")) {
		return false, nil
	}
	pkg, err := b.kernelPackage()
	if err != nil {
		return false, err
	}
	b.step("fetching the kernel %s (apt-get download; nothing is installed)", pkg)
	tmp, err := os.MkdirTemp("", "credvm-kernel-")
	if err != nil {
		return false, err
	}
	defer os.RemoveAll(tmp)
	if _, err := b.run(tmp, "apt-get", "download", pkg); err != nil {
		return false, err
	}
	debs, _ := filepath.Glob(filepath.Join(tmp, "*.deb"))
	if len(debs) != 1 {
		return false, fmt.Errorf("apt-get download %s left %d packages", pkg, len(debs))
	}
	x := filepath.Join(tmp, "x")
	if _, err := b.run(tmp, "dpkg-deb", "-x", debs[0], x); err != nil {
		return false, err
	}
	vers, _ := os.ReadDir(filepath.Join(x, "lib", "modules"))
	if len(vers) != 1 {
		return false, fmt.Errorf("%s: expected one lib/modules/<version>, found %d", pkg, len(vers))
	}
	ver := vers[0].Name()
	src := filepath.Join(x, "lib", "modules", ver)
	mods, err := moduleClosure(src, Modules)
	if err != nil {
		return false, fmt.Errorf("%s: %w", pkg, err)
	}
	dst := b.path("modules", ver)
	if err := os.RemoveAll(b.path("modules")); err != nil {
		return false, err
	}
	for _, rel := range mods {
		if err := copyFile(filepath.Join(src, rel), filepath.Join(dst, rel)); err != nil {
			return false, err
		}
	}
	for _, f := range []string{"modules.order", "modules.builtin", "modules.builtin.modinfo"} {
		if exists(filepath.Join(src, f)) {
			if err := copyFile(filepath.Join(src, f), filepath.Join(dst, f)); err != nil {
				return false, err
			}
		}
	}
	if err := copyFile(filepath.Join(src, "kernel", "drivers", "firmware", "qemu_fw_cfg.ko"), b.path("qemu_fw_cfg.ko")); err != nil {
		return false, err
	}
	if err := copyFile(filepath.Join(x, "boot", "vmlinuz-"+ver), b.path("vmlinuz")); err != nil {
		return false, err
	}
	if err := b.writeStamp("kernel-version", ver+"\n"); err != nil {
		return false, err
	}
	fmt.Fprintf(b.o.Log, "    kernel %s, %d modules\n", ver, len(mods))
	return true, b.writeStamp("modules.stamp", want)
}

// kernelPackage is the package linux-image-cloud-amd64 depends on now.
func (b *builder) kernelPackage() (string, error) {
	find := func() string {
		out, _ := exec.CommandContext(b.ctx, "apt-cache", "depends", "linux-image-cloud-amd64").Output()
		for _, l := range strings.Split(string(out), "\n") {
			if p, ok := strings.CutPrefix(strings.TrimSpace(l), "Depends: "); ok && strings.HasPrefix(p, "linux-image-") {
				return p
			}
		}
		return ""
	}
	if p := find(); p != "" {
		return p, nil
	}
	b.step("apt-get update (the package lists know no linux-image-cloud-amd64)")
	if _, err := b.run("/", "apt-get", "update", "-qq"); err != nil {
		return "", err
	}
	if p := find(); p != "" {
		return p, nil
	}
	return "", errors.New("no package linux-image-cloud-amd64 in this host's apt sources: add Debian's main component (or build the kernel yourself and name it in [vm])")
}

// moduleClosure returns the paths (relative to the modules directory) of
// the named modules and every module they depend on.
func moduleClosure(modDir string, names []string) ([]string, error) {
	byName := map[string]string{}
	err := filepath.WalkDir(filepath.Join(modDir, "kernel"), func(p string, d os.DirEntry, err error) error {
		if err == nil && strings.HasSuffix(p, ".ko") {
			rel, _ := filepath.Rel(modDir, p)
			byName[strings.ReplaceAll(strings.TrimSuffix(d.Name(), ".ko"), "-", "_")] = rel
		}
		return err
	})
	if err != nil {
		return nil, err
	}
	var out []string
	seen := map[string]bool{}
	queue := slices.Clone(names)
	for len(queue) > 0 {
		n := queue[0]
		queue = queue[1:]
		if seen[n] {
			continue
		}
		seen[n] = true
		rel, ok := byName[n]
		if !ok {
			if builtin(modDir, n) {
				continue
			}
			return nil, fmt.Errorf("no kernel module %s (and it is not built in)", n)
		}
		out = append(out, rel)
		deps, err := moduleDepends(filepath.Join(modDir, rel))
		if err != nil {
			return nil, err
		}
		queue = append(queue, deps...)
	}
	slices.Sort(out)
	return out, nil
}

// moduleDepends reads "depends=" from a module's .modinfo section.
func moduleDepends(ko string) ([]string, error) {
	f, err := elf.Open(ko)
	if err != nil {
		return nil, fmt.Errorf("%s: %w (compressed modules are not supported)", ko, err)
	}
	defer f.Close()
	s := f.Section(".modinfo")
	if s == nil {
		return nil, nil
	}
	data, err := s.Data()
	if err != nil {
		return nil, err
	}
	for _, kv := range bytes.Split(data, []byte{0}) {
		if v, ok := bytes.CutPrefix(kv, []byte("depends=")); ok && len(v) > 0 {
			return strings.Split(string(v), ","), nil
		}
	}
	return nil, nil
}

func builtin(modDir, name string) bool {
	f, err := os.Open(filepath.Join(modDir, "modules.builtin"))
	if err != nil {
		return false
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if strings.ReplaceAll(strings.TrimSuffix(filepath.Base(sc.Text()), ".ko"), "-", "_") == name {
			return true
		}
	}
	return false
}

// root makes the Debian root with debootstrap, then configures it.
func (b *builder) root() (bool, error) {
	root := b.path("systemd-root")
	want := b.o.Suite + " " + strings.Join(append(rootPackages(), b.o.Include...), ",") + "\n"
	have := exists(filepath.Join(root, "lib", "systemd", "systemd")) && exists(filepath.Join(root, "usr", "bin", "dbus-daemon"))
	// A root from before stamps were written is the default one.
	stamped := b.stamp("root.stamp", want) || (!exists(b.path("root.stamp")) && len(b.o.Include) == 0 && b.o.Suite == "bookworm")
	built := false
	if b.o.Rebuild || !have || !stamped {
		b.step("debootstrap %s (minbase, %s; about a minute)", b.o.Suite, strings.Join(append(rootPackages(), b.o.Include...), ", "))
		if err := os.RemoveAll(root); err != nil {
			return false, err
		}
		out, err := b.run(b.im.Dir, "debootstrap", "--variant=minbase", "--include="+strings.Join(append(rootPackages(), b.o.Include...), ","), b.o.Suite, root, b.o.Mirror)
		os.WriteFile(b.path("debootstrap.log"), out, 0o644)
		if err != nil {
			return false, fmt.Errorf("debootstrap (log in %s): %w", b.path("debootstrap.log"), err)
		}
		if err := b.writeStamp("root.stamp", want); err != nil {
			return false, err
		}
		built = true
	}
	return built, nil
}

// configure makes the root a guest: no units that only cost time, systemd
// as /init, the modules, an empty machine-id (a new one at each boot).
func (b *builder) configure(root string) error {
	for _, d := range []string{"usr/share/doc", "usr/share/man", "usr/share/locale", "var/cache/apt", "var/lib/apt/lists"} {
		os.RemoveAll(filepath.Join(root, d))
	}
	unitDir := filepath.Join(root, "etc", "systemd", "system")
	for _, f := range overlayFiles {
		os.RemoveAll(filepath.Join(unitDir, f))
	}
	for _, u := range masked {
		p := filepath.Join(unitDir, u)
		os.Remove(p)
		if err := os.Symlink("/dev/null", p); err != nil {
			return err
		}
	}
	def := filepath.Join(unitDir, "default.target")
	os.Remove(def)
	if err := os.Symlink("/lib/systemd/system/multi-user.target", def); err != nil {
		return err
	}
	os.Remove(filepath.Join(root, "init"))
	if err := os.Symlink("/lib/systemd/systemd", filepath.Join(root, "init")); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(root, "etc", "hostname"), []byte("credvm-guest\n"), 0o644); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(root, "etc", "machine-id"), nil, 0o444); err != nil {
		return err
	}
	ver, err := os.ReadFile(b.path("kernel-version"))
	if err != nil {
		return err
	}
	v := strings.TrimSpace(string(ver))
	mods := filepath.Join(root, "lib", "modules")
	os.RemoveAll(mods)
	if err := copyTree(b.path("modules", v), filepath.Join(mods, v)); err != nil {
		return err
	}
	_, err = b.run(root, "chroot", root, "depmod", v)
	return err
}

// baseVersion changes when configure or the overlays' assumptions about
// the base change: a base packed by another version is packed again.
const baseVersion = "credvm-base/2"

// base configures the root and packs it as the initramfs every guest
// starts from, when anything it is made of changed.
func (b *builder) base(changed bool) (bool, error) {
	modules, _ := os.ReadFile(b.path("modules.stamp"))
	rootStamp, _ := os.ReadFile(b.path("root.stamp"))
	want := baseVersion + "\n" + string(modules) + string(rootStamp)
	if !changed && !b.o.Rebuild && exists(b.im.base()) && b.stamp("base.stamp", want) {
		return false, nil
	}
	root := b.path("systemd-root")
	b.step("configuring the guest root")
	if err := b.configure(root); err != nil {
		return false, err
	}
	b.step("packing the root as %s", b.im.base())
	tmp := b.im.base() + ".tmp"
	f, err := os.Create(tmp)
	if err != nil {
		return false, err
	}
	defer os.Remove(tmp)
	w := bufio.NewWriterSize(f, 1<<20)
	c := newCpio(w)
	if err := c.tree(b.path("systemd-root")); err != nil {
		f.Close()
		return false, err
	}
	if err := errors.Join(c.close(), w.Flush(), f.Close()); err != nil {
		return false, err
	}
	if err := os.Rename(tmp, b.im.base()); err != nil {
		return false, err
	}
	return true, b.writeStamp("base.stamp", want)
}

func exists(p string) bool {
	_, err := os.Lstat(p)
	return err == nil
}

func copyFile(src, dst string) error {
	b, err := os.ReadFile(src)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
		return err
	}
	return os.WriteFile(dst, b, 0o644)
}

func copyTree(src, dst string) error {
	return filepath.WalkDir(src, func(p string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(src, p)
		if d.IsDir() {
			return os.MkdirAll(filepath.Join(dst, rel), 0o755)
		}
		return copyFile(p, filepath.Join(dst, rel))
	})
}
