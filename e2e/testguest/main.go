// Command testguest is PID 1 of the fast test guest: the whole userspace
// of an initramfs (guestimage.FastInitrd), booting in about two seconds
// under TCG. It mounts the kernel filesystems, loads the modules shipped
// in /lib/modules (qemu_fw_cfg), reports and verifies the credentials as
// systemd 252 would see them (credvm's own guest package), and powers
// off. It is test machinery: the e2e tests build it, the product does
// not contain it.
package main

import (
	"encoding/binary"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/credvm/credvm/internal/guest"
	"github.com/credvm/credvm/internal/receipt"
	"github.com/vishvananda/netlink"
)

func main() { os.Exit(run()) }

// run is the guest's life. On the kernel command line, credvm.smbios=whole
// reads SMBIOS as newer systemd does, and credvm.idle keeps the guest up
// after its report.
func run() int {
	out := os.Stdout
	if f, err := os.OpenFile("/dev/console", os.O_WRONLY, 0); err == nil {
		out = f
	}
	defer powerOff()
	for _, m := range []struct{ src, dir, fs string }{
		{"proc", "/proc", "proc"}, {"sysfs", "/sys", "sysfs"}, {"devtmpfs", "/dev", "devtmpfs"},
	} {
		os.MkdirAll(m.dir, 0o755)
		if err := unix.Mount(m.src, m.dir, m.fs, 0, ""); err != nil && err != unix.EBUSY {
			fmt.Fprintf(out, "%serror: mount %s: %v\n", guest.ReportPrefix, m.dir, err)
		}
	}
	loadModules(out)
	cmdline, _ := os.ReadFile("/proc/cmdline")
	r := &guest.Reader{Root: "/", SMBIOSSingleRead: !strings.Contains(string(cmdline), "credvm.smbios=whole")}
	start := time.Now()
	creds, err := r.Merged()
	if err != nil {
		fmt.Fprintf(out, "%serror: %v\n", guest.ReportPrefix, err)
		return 1
	}
	fmt.Fprintf(out, "%sread %d credentials in %s\n", guest.ReportPrefix, len(creds), time.Since(start).Round(time.Microsecond))
	reportDevices(out)
	for _, arg := range strings.Fields(string(cmdline)) {
		k, v, _ := strings.Cut(arg, "=")
		switch k {
		case "credvm.mount":
			useShare(out, v)
		case "credvm.volume":
			useVolume(out, v)
		case "credvm.ip":
			configureNet(out, v)
		}
	}
	ok := guest.Report(out, creds, true) // a test guest: the tests compare digests
	if port, err := receipt.FindPort("/"); err == nil {
		if err := receipt.Send(port, receipt.FromVerify(creds)); err != nil {
			fmt.Fprintf(out, "%sreceipt: %v\n", guest.ReportPrefix, err)
		} else {
			fmt.Fprintf(out, "%sreceipt sent\n", guest.ReportPrefix)
		}
	}
	fmt.Fprintf(out, "%sdone\n", guest.ReportPrefix)
	if strings.Contains(string(cmdline), "credvm.idle") {
		// Stay up until the host stops the VM (tests of the lifecycle).
		fmt.Fprintf(out, "%sidle\n", guest.ReportPrefix)
		waitPowerButton() // the host's system_powerdown: power off, as systemd-logind would
		fmt.Fprintf(out, "%spower button: powering off\n", guest.ReportPrefix)
		return 0
	}
	if !ok {
		return 1
	}
	return 0
}

// loadModules loads every module in /lib/modules, again and again until
// no more loads: the ones that failed wanted one loaded later.
func loadModules(out *os.File) {
	mods, _ := filepath.Glob("/lib/modules/*.ko")
	var last map[string]error
	for len(mods) > 0 {
		failed := map[string]error{}
		var again []string
		for _, mod := range mods {
			f, err := os.Open(mod)
			if err != nil {
				continue
			}
			if err := unix.FinitModule(int(f.Fd()), "", 0); err != nil && err != unix.EEXIST {
				failed[mod] = err
				again = append(again, mod)
			}
			f.Close()
		}
		if len(again) == len(mods) {
			last = failed
			break
		}
		mods = again
	}
	for mod, err := range last {
		fmt.Fprintf(out, "%serror: load %s: %v\n", guest.ReportPrefix, filepath.Base(mod), err)
	}
}

// useShare mounts the virtiofs share tag, reports its file "hello", and
// tries to write to it.
func useShare(out *os.File, tag string) {
	dir := "/mnt/" + tag
	os.MkdirAll(dir, 0o755)
	if err := unix.Mount(tag, dir, "virtiofs", 0, ""); err != nil {
		fmt.Fprintf(out, "%sshare %s mount: %v\n", guest.ReportPrefix, tag, err)
		return
	}
	b, err := os.ReadFile(filepath.Join(dir, "hello"))
	fmt.Fprintf(out, "%sshare %s read %q %v\n", guest.ReportPrefix, tag, strings.TrimSpace(string(b)), err)
	if err := os.WriteFile(filepath.Join(dir, "from-guest"), []byte("written by the guest\n"), 0o644); err != nil {
		fmt.Fprintf(out, "%sshare %s write refused: %v\n", guest.ReportPrefix, tag, err)
	} else {
		fmt.Fprintf(out, "%sshare %s write ok\n", guest.ReportPrefix, tag)
	}
	unix.Unmount(dir, 0)
}

// useVolume finds the ext4 volume labelled label, mounts it, reports and
// increments the counter it keeps.
func useVolume(out *os.File, label string) {
	devs, _ := filepath.Glob("/dev/vd*")
	for _, dev := range devs {
		f, err := os.Open(dev)
		if err != nil {
			continue
		}
		sb := make([]byte, 136)
		_, err = f.ReadAt(sb, 1024) // the ext superblock; its volume name at 120
		f.Close()
		if err != nil || sb[56] != 0x53 || sb[57] != 0xef || strings.TrimRight(string(sb[120:136]), "\x00") != label {
			continue
		}
		dir := "/mnt/" + label
		os.MkdirAll(dir, 0o755)
		if err := unix.Mount(dev, dir, "ext4", 0, ""); err != nil {
			fmt.Fprintf(out, "%svolume %s mount %s: %v\n", guest.ReportPrefix, label, dev, err)
			return
		}
		n := 0
		if b, err := os.ReadFile(filepath.Join(dir, "count")); err == nil {
			fmt.Sscan(string(b), &n)
		}
		n++
		os.WriteFile(filepath.Join(dir, "count"), []byte(fmt.Sprintln(n)), 0o644)
		unix.Sync()
		unix.Unmount(dir, 0)
		fmt.Fprintf(out, "%svolume %s count %d\n", guest.ReportPrefix, label, n)
		return
	}
	fmt.Fprintf(out, "%svolume %s not found among %v\n", guest.ReportPrefix, label, devs)
}

// configureNet gives the first ethernet interface the address cidr and
// brings it up (the kernel then answers pings).
func configureNet(out *os.File, cidr string) {
	addr, err := netlink.ParseAddr(cidr)
	if err != nil {
		fmt.Fprintf(out, "%snet %s: %v\n", guest.ReportPrefix, cidr, err)
		return
	}
	links, _ := netlink.LinkList()
	for _, l := range links {
		if l.Type() != "device" || l.Attrs().Name == "lo" {
			continue
		}
		if lo, err := netlink.LinkByName("lo"); err == nil {
			netlink.LinkSetUp(lo)
		}
		if err := netlink.AddrAdd(l, addr); err != nil {
			fmt.Fprintf(out, "%snet %s: %v\n", guest.ReportPrefix, l.Attrs().Name, err)
			return
		}
		if err := netlink.LinkSetUp(l); err != nil {
			fmt.Fprintf(out, "%snet %s: %v\n", guest.ReportPrefix, l.Attrs().Name, err)
			return
		}
		fmt.Fprintf(out, "%snet %s %s up\n", guest.ReportPrefix, l.Attrs().Name, cidr)
		return
	}
	fmt.Fprintf(out, "%snet: no interface\n", guest.ReportPrefix)
}

// waitPowerButton blocks until the ACPI power button (KEY_POWER on an
// input device, the button module's) is pressed; without one, forever.
func waitPowerButton() {
	const keyPower, evKey = 116, 1
	devs, _ := filepath.Glob("/dev/input/event*")
	pressed := make(chan struct{}, 1)
	for _, d := range devs {
		go func() {
			f, err := os.Open(d)
			if err != nil {
				return
			}
			ev := make([]byte, 24) // struct input_event on 64-bit
			for {
				if _, err := io.ReadFull(f, ev); err != nil {
					return
				}
				typ, code, value := binary.LittleEndian.Uint16(ev[16:]), binary.LittleEndian.Uint16(ev[18:]), binary.LittleEndian.Uint32(ev[20:])
				if typ == evKey && code == keyPower && value == 1 {
					pressed <- struct{}{}
					return
				}
			}
		}()
	}
	<-pressed
}

func powerOff() {
	unix.Sync()
	unix.Reboot(unix.LINUX_REBOOT_CMD_POWER_OFF)
	for {
		time.Sleep(time.Hour)
	}
}

// reportDevices lists the guest's virtio PCI devices (vendor 0x1af4), so
// tests can see that the disks, shares and network interfaces of [vm]
// reached the guest.
func reportDevices(out *os.File) {
	devs, _ := filepath.Glob("/sys/bus/pci/devices/*")
	for _, d := range devs {
		vendor, _ := os.ReadFile(filepath.Join(d, "vendor"))
		device, _ := os.ReadFile(filepath.Join(d, "device"))
		if strings.TrimSpace(string(vendor)) == "0x1af4" {
			fmt.Fprintf(out, "%sdevice virtio %s\n", guest.ReportPrefix, strings.TrimSpace(string(device)))
		}
	}
}
