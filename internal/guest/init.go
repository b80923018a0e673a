package guest

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// IsInit reports whether this process is a guest's PID 1 started as /init
// from an initramfs: the fast test guest, where credvm is the whole
// userspace.
func IsInit() bool {
	return os.Getpid() == 1 && filepath.Base(os.Args[0]) == "init"
}

// Init is PID 1 of the fast guest: it mounts the kernel filesystems, loads
// the modules shipped in /lib/modules (qemu_fw_cfg), reports and verifies
// the credentials as systemd 252 would see them, and powers off. On the
// kernel command line, credvm.smbios=whole reads SMBIOS as newer systemd
// does, and credvm.idle keeps the guest up after its report.
func Init() int {
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
			fmt.Fprintf(out, "%serror: mount %s: %v\n", ReportPrefix, m.dir, err)
		}
	}
	mods, _ := filepath.Glob("/lib/modules/*.ko")
	for _, mod := range mods {
		f, err := os.Open(mod)
		if err != nil {
			continue
		}
		if err := unix.FinitModule(int(f.Fd()), "", 0); err != nil && err != unix.EEXIST {
			fmt.Fprintf(out, "%serror: load %s: %v\n", ReportPrefix, filepath.Base(mod), err)
		}
		f.Close()
	}
	cmdline, _ := os.ReadFile("/proc/cmdline")
	r := &Reader{Root: "/", SMBIOSSingleRead: !strings.Contains(string(cmdline), "credvm.smbios=whole")}
	start := time.Now()
	creds, err := r.Merged()
	if err != nil {
		fmt.Fprintf(out, "%serror: %v\n", ReportPrefix, err)
		return 1
	}
	fmt.Fprintf(out, "%sread %d credentials in %s\n", ReportPrefix, len(creds), time.Since(start).Round(time.Microsecond))
	reportDevices(out)
	ok := Report(out, creds)
	fmt.Fprintf(out, "%sdone\n", ReportPrefix)
	if strings.Contains(string(cmdline), "credvm.idle") {
		// Stay up until the host stops the VM (tests of the lifecycle).
		fmt.Fprintf(out, "%sidle\n", ReportPrefix)
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
			fmt.Fprintf(out, "%sdevice virtio %s\n", ReportPrefix, strings.TrimSpace(string(device)))
		}
	}
}
