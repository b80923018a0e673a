// Package qemu builds and runs a QEMU command line for a credvm machine.
//
// Secrets never appear on QEMU's argv, in its environment or in a file: each
// credential is written into its own sealed memfd, inherited by QEMU, and
// named on the command line only as /dev/fd/N — for SMBIOS type 11
// (-smbios type=11,path=/dev/fd/N) or fw_cfg
// (-fw_cfg name=opt/io.systemd.credentials/NAME,file=/dev/fd/N). QEMU reads
// them at start-up; credvm closes its copies right after.
//
// The serial console goes to a pipe credvm reads (to the terminal and the
// console log); control goes over QMP on a unix socket in the VM's state
// directory (system_powerdown, quit).
package qemu

import (
	"fmt"
	"os"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/credvm/credvm/internal/cred"
	"github.com/credvm/credvm/internal/receipt"
	"github.com/credvm/credvm/internal/spec"
)

// Binary is the QEMU system emulator credvm runs.
var Binary = "qemu-system-x86_64"

// OVMFPaths are where Debian's ovmf package puts the firmware.
var OVMFPaths = []string{"/usr/share/ovmf/OVMF.fd", "/usr/share/OVMF/OVMF.fd", "/usr/share/qemu/OVMF.fd"}

// Config is everything the command line depends on.
type Config struct {
	Name    string
	VM      spec.VM
	Plan    *cred.Plan
	Accel   string // "kvm" or "tcg", already decided
	QMP     string // QMP socket path
	Console string // path QEMU writes the serial console to (/dev/fd/N)
	// StateDir is the VM's state directory (virtiofsd's sockets).
	StateDir string
	// ConsoleSocket is where `credvm console` attaches ("": no socket).
	ConsoleSocket string
	// ReceiptSocket backs the guest's io.credvm.0 port ("": no port).
	ReceiptSocket string
	// NetFDs are, by interface index, the inherited descriptors of
	// macvtaps.
	NetFDs map[int]int
	// DiskFDs are, by disk index, inherited descriptors of the disks'
	// images, passed through fd sets (-add-fd) to a QEMU that could not
	// open them itself; a disk without any is opened by path.
	DiskFDs map[int][]int
	// HostKHz is the host TSC frequency, passed to microvm guests under
	// TCG (tsc_early_khz) where TSC calibration otherwise hangs.
	HostKHz int
}

// Args builds QEMU's arguments. Credential i of the plan is read from
// /dev/fd/(firstFD+i); the caller passes the files in that order.
func Args(c Config, firstFD int) ([]string, error) {
	vm := c.VM
	if vm.Kernel == "" {
		return nil, fmt.Errorf("vm %s: no kernel: set kernel = \"/path/to/vmlinuz\" in [vm]", c.Name)
	}
	microvm := vm.Machine == "microvm"
	machine := vm.Machine
	if microvm {
		// No legacy devices, but the ISA serial port for the console.
		machine += ",x-option-roms=off,isa-serial=on,rtc=on"
	}
	a := []string{
		"-name", c.Name + ",debug-threads=on",
		"-M", machine,
		"-accel", c.Accel,
		"-smp", strconv.Itoa(vm.Vcpu),
		"-m", strconv.Itoa(vm.Mem),
		"-nodefaults", "-no-user-config", "-nographic", "-no-reboot",
		"-chardev", consoleChardev(c),
		"-serial", "chardev:console",
		"-qmp", "unix:" + Escape(c.QMP) + ",server=on,wait=off",
		// QEMU's seccomp filter: no obsolete system calls, no setuid or
		// setgid, no fork or exec, no scheduler or resource changes.
		"-sandbox", "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny",
	}
	if c.Accel == "kvm" {
		a = append(a, "-cpu", "host")
	}
	switch vm.Firmware {
	case "bios":
	case "ovmf":
		fw := ""
		for _, p := range OVMFPaths {
			if _, err := os.Stat(p); err == nil {
				fw = p
				break
			}
		}
		if fw == "" {
			return nil, fmt.Errorf("vm %s: firmware = \"ovmf\" but no OVMF image in %s: apt-get install ovmf", c.Name, strings.Join(OVMFPaths, ", "))
		}
		a = append(a, "-bios", fw)
	default:
		a = append(a, "-bios", vm.Firmware)
	}
	a = append(a, "-kernel", vm.Kernel)
	if vm.Initrd != "" {
		a = append(a, "-initrd", vm.Initrd)
	}
	cmdline := vm.Cmdline
	if microvm && c.Accel == "tcg" && c.HostKHz > 0 && !strings.Contains(cmdline, "tsc_early_khz=") {
		cmdline = strings.TrimSpace(cmdline + " tsc_early_khz=" + strconv.Itoa(c.HostKHz))
	}
	if cmdline != "" {
		a = append(a, "-append", cmdline)
	}

	dev := func(pci, mmio string) string {
		if microvm {
			return mmio
		}
		return pci
	}
	for i, d := range vm.Disks {
		id := fmt.Sprintf("disk%d", i)
		file := Escape(d.Image)
		if fds := c.DiskFDs[i]; len(fds) > 0 {
			for _, fd := range fds {
				a = append(a, "-add-fd", fmt.Sprintf("fd=%d,set=%d", fd, i+1))
			}
			file = fmt.Sprintf("/dev/fdset/%d", i+1)
		}
		drive := "file=" + file + ",format=" + d.Format + ",if=none,id=" + id
		if d.ReadOnly {
			drive += ",readonly=on"
		}
		a = append(a, "-drive", drive, "-device", dev("virtio-blk-pci", "virtio-blk-device")+",drive="+id)
	}
	virtiofs := false
	for i, s := range vm.Shares {
		id := fmt.Sprintf("fs%d", i)
		switch s.Proto {
		case "9p":
			fsdev := "local,id=" + id + ",path=" + Escape(s.Source) + ",security_model=none"
			if s.ReadOnly {
				fsdev += ",readonly=on"
			}
			a = append(a, "-fsdev", fsdev, "-device", dev("virtio-9p-pci", "virtio-9p-device")+",fsdev="+id+",mount_tag="+s.Tag)
		case "virtiofs":
			virtiofs = true
			a = append(a, "-chardev", "socket,id="+id+",path="+Escape(s.SocketPath(c.StateDir)),
				"-device", dev("vhost-user-fs-pci", "vhost-user-fs-device")+",chardev="+id+",tag="+s.Tag)
		}
	}
	if virtiofs {
		// vhost-user needs the guest's memory shared with virtiofsd.
		a = append(a, "-object", fmt.Sprintf("memory-backend-memfd,id=mem,size=%dM,share=on", vm.Mem), "-numa", "node,memdev=mem")
	}
	for i, n := range vm.Interfaces {
		id := fmt.Sprintf("net%d", i)
		switch n.Type {
		case "user":
			a = append(a, "-netdev", "user,id="+id)
		case "tap":
			netdev := "tap,id=" + id + ",ifname=" + n.ID + ",script=no,downscript=no,vnet_hdr=on"
			if n.MultiQueue && vm.Vcpu > 1 {
				netdev += fmt.Sprintf(",queues=%d", vm.Vcpu)
			}
			a = append(a, "-netdev", netdev)
		case "macvtap":
			fd, ok := c.NetFDs[i]
			if !ok {
				return nil, fmt.Errorf("vm %s: macvtap %s has no open device", c.Name, n.ID)
			}
			a = append(a, "-netdev", fmt.Sprintf("tap,id=%s,fd=%d", id, fd)) // vnet_hdr: QEMU probes the descriptor
		}
		device := dev("virtio-net-pci", "virtio-net-device") + ",netdev=" + id
		if n.Type == "tap" && n.MultiQueue && vm.Vcpu > 1 && !microvm {
			device += fmt.Sprintf(",mq=on,vectors=%d", 2*vm.Vcpu+2)
		}
		if n.MAC != "" {
			device += ",mac=" + n.MAC
		}
		a = append(a, "-device", device)
	}
	if vm.VsockCID != 0 {
		a = append(a, "-device", fmt.Sprintf("%s,guest-cid=%d", dev("vhost-vsock-pci", "vhost-vsock-device"), vm.VsockCID))
	}
	if c.ReceiptSocket != "" {
		// The guest's word back (package receipt): a virtio-serial port,
		// which needs no vhost module on the host.
		a = append(a, "-chardev", "socket,id=credvm-receipt,path="+Escape(c.ReceiptSocket)+",server=on,wait=off",
			"-device", dev("virtio-serial-pci", "virtio-serial-device")+",id=credvm-serial",
			"-device", "virtserialport,bus=credvm-serial.0,chardev=credvm-receipt,name="+receipt.PortName)
	}

	if c.Plan != nil {
		for i, cr := range c.Plan.Credentials {
			fd := fmt.Sprintf("/dev/fd/%d", firstFD+i)
			switch c.Plan.Transport {
			case SMBIOS:
				a = append(a, "-smbios", "type=11,path="+fd)
			case FwCfg:
				a = append(a, "-fw_cfg", "name="+Escape(cred.FwCfgNamePrefix+cr.Name)+",file="+fd)
			default:
				return nil, fmt.Errorf("vm %s: QEMU cannot carry transport %q", c.Name, c.Plan.Transport)
			}
		}
		if slots := fwCfgSlots(vm.Machine, len(c.Plan.Credentials)); c.Plan.Transport == FwCfg && slots > 0 {
			a = append(a, "-global", fmt.Sprintf("fw_cfg_io.x-file-slots=%d", slots))
		}
	}
	return a, nil
}

// consoleChardev is the serial console's backend: a listening unix socket
// in the state directory that `credvm console` attaches to, everything
// the guest prints also logged to c.Console — or, without a socket, the
// log alone.
func consoleChardev(c Config) string {
	if c.ConsoleSocket == "" {
		return "file,id=console,path=" + c.Console
	}
	return "socket,id=console,path=" + Escape(c.ConsoleSocket) + ",server=on,wait=off,logfile=" + c.Console
}

// Payload is what the guest reads for credential c under a transport: the
// whole type-11 string for SMBIOS, the raw value for fw_cfg.
func Payload(t cred.Transport, c *cred.Credential) []byte {
	if t == SMBIOS {
		return c.SMBIOSString()
	}
	return c.Value
}

// SecretFile returns a sealed, anonymous in-memory file holding b. It has
// no path on any filesystem; a child inherits it as an open descriptor.
func SecretFile(name string, b []byte) (*os.File, error) {
	fd, err := unix.MemfdCreate("credvm:"+name, unix.MFD_CLOEXEC|unix.MFD_ALLOW_SEALING)
	if err != nil {
		return nil, fmt.Errorf("memfd: %w", err)
	}
	f := os.NewFile(uintptr(fd), "memfd:credvm")
	if _, err := f.Write(b); err != nil {
		f.Close()
		return nil, err
	}
	// Nobody, not even us, can change it any more.
	if _, err := unix.FcntlInt(uintptr(fd), unix.F_ADD_SEALS, unix.F_SEAL_SEAL|unix.F_SEAL_SHRINK|unix.F_SEAL_GROW|unix.F_SEAL_WRITE); err != nil {
		f.Close()
		return nil, fmt.Errorf("seal memfd: %w", err)
	}
	if _, err := f.Seek(0, 0); err != nil {
		f.Close()
		return nil, err
	}
	return f, nil
}

// HostKHz reads the host CPU's frequency in kHz from /proc/cpuinfo (0 when
// unknown).
func HostKHz() int {
	b, err := os.ReadFile("/proc/cpuinfo")
	if err != nil {
		return 0
	}
	for _, l := range strings.Split(string(b), "\n") {
		if k, v, ok := strings.Cut(l, ":"); ok && strings.TrimSpace(k) == "cpu MHz" {
			mhz, err := strconv.ParseFloat(strings.TrimSpace(v), 64)
			if err == nil {
				return int(mhz * 1000)
			}
		}
	}
	return 0
}
