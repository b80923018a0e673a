// Command testguest is PID 1 of the fast test guest: the whole userspace
// of an initramfs (guestimage.FastInitrd), booting in about two seconds
// under TCG. It mounts the kernel filesystems, loads the modules shipped
// in /lib/modules (qemu_fw_cfg), reports and verifies the credentials as
// systemd 252 would see them (credvm's own guest package), and powers
// off. It is test machinery: the e2e tests build it, the product does
// not contain it.
package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/credvm/credvm/internal/guest"
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
	mods, _ := filepath.Glob("/lib/modules/*.ko")
	for _, mod := range mods {
		f, err := os.Open(mod)
		if err != nil {
			continue
		}
		if err := unix.FinitModule(int(f.Fd()), "", 0); err != nil && err != unix.EEXIST {
			fmt.Fprintf(out, "%serror: load %s: %v\n", guest.ReportPrefix, filepath.Base(mod), err)
		}
		f.Close()
	}
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
	ok := guest.Report(out, creds, true) // a test guest: the tests compare digests
	fmt.Fprintf(out, "%sdone\n", guest.ReportPrefix)
	if strings.Contains(string(cmdline), "credvm.idle") {
		// Stay up until the host stops the VM (tests of the lifecycle).
		fmt.Fprintf(out, "%sidle\n", guest.ReportPrefix)
		for {
			time.Sleep(time.Hour) // (a bare select{} is a deadlock to Go's runtime)
		}
	}
	if !ok {
		return 1
	}
	return 0
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
