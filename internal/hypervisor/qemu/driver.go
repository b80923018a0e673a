package qemu

import (
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/digitalocean/go-qemu/qmp"

	"github.com/credvm/credvm/internal/cred"
	"github.com/credvm/credvm/internal/hypervisor"
	"github.com/credvm/credvm/internal/spec"
)

// Driver runs QEMU.
type Driver struct{}

func init() { hypervisor.Register(Driver{}) }

// Name implements hypervisor.Driver.
func (Driver) Name() string { return "qemu" }

// Machine types credvm runs.
var machineTypes = []string{"q35", "pc", "microvm"}

// CheckVM implements spec.HypervisorRules: QEMU's machine types and
// transports.
func (Driver) CheckVM(vm *spec.VM, problem spec.ProblemFunc) {
	if vm.Machine == "" {
		vm.Machine = "q35"
	}
	if !slices.Contains(machineTypes, vm.Machine) {
		problem("vm.machine", "unknown QEMU machine type %q: use one of %s", vm.Machine, spec.QuoteList(machineTypes...))
	}
	switch vm.Transport {
	case "auto", "fw_cfg":
	case "smbios":
		if vm.Machine == "microvm" {
			problem("vm.transport", "SMBIOS never reaches a QEMU microvm guest; use \"fw_cfg\" or \"auto\"")
		}
	default:
		problem("vm.transport", "unknown transport %q: use one of %s", vm.Transport, spec.QuoteList("auto", "smbios", "fw_cfg"))
	}
}

// Plan implements hypervisor.Driver: SMBIOS type 11 while it fits the
// guest's budget, fw_cfg beyond (see Plan).
func (Driver) Plan(m *spec.Machine, creds []cred.Credential) (*cred.Plan, error) {
	return PlanFor(m, creds)
}

// QMPSocket is the control socket's path in a state directory.
func QMPSocket(dir string) string { return filepath.Join(dir, "qmp.sock") }

// Start implements hypervisor.Driver.
func (Driver) Start(l hypervisor.Launch) (hypervisor.Instance, error) {
	sock := QMPSocket(l.Dir)
	if err := hypervisor.SocketPathOK(sock); err != nil {
		return nil, fmt.Errorf("vm %s: %w", l.Name, err)
	}
	os.Remove(sock) // a stale socket from a crash
	consoleSock := hypervisor.ConsoleSocket(l.Dir)
	if hypervisor.SocketPathOK(consoleSock) != nil {
		consoleSock = "" // too long a path: the log only, no attaching
	}
	os.Remove(consoleSock)
	receiptSock := hypervisor.ReceiptSocket(l.Dir)
	if hypervisor.SocketPathOK(receiptSock) != nil {
		receiptSock = ""
	}
	os.Remove(receiptSock)
	accel, err := ChooseAccel(l.VM.Accel)
	if err != nil {
		return nil, fmt.Errorf("vm %s: %w", l.Name, err)
	}
	if accel.Notice != "" {
		l.Notice("%s", accel.Notice)
	}

	// Credentials: one sealed memfd each, inherited as fd 3, 4, …
	var files []*os.File
	defer func() {
		for _, f := range files {
			f.Close()
		}
	}()
	for i := range l.Plan.Credentials {
		c := &l.Plan.Credentials[i]
		f, err := SecretFile(c.Name, Payload(l.Plan.Transport, c))
		if err != nil {
			return nil, fmt.Errorf("vm %s: credential %s: %w", l.Name, c.Name, err)
		}
		files = append(files, f)
	}

	// The console: QEMU writes to a pipe that we copy out.
	consoleR, consoleW, err := os.Pipe()
	if err != nil {
		return nil, err
	}
	// Then the console's pipe, then the macvtaps' devices.
	netFDs := map[int]int{}
	var netFiles []*os.File
	for _, i := range slices.Sorted(maps.Keys(l.NetFiles)) {
		netFDs[i] = 3 + len(files) + 1 + len(netFiles)
		netFiles = append(netFiles, l.NetFiles[i])
	}
	// Then, for an unprivileged QEMU, the disks, opened here: it could not
	// open them itself.
	// QEMU takes from a disk's fd set the descriptor whose access mode it
	// asks for, read-only to probe and read-write to run: a writable disk
	// gets one of each.
	diskFDs := map[int][]int{}
	var diskFiles []*os.File
	if l.As != nil {
		for i, d := range l.VM.Disks {
			flags := []int{os.O_RDONLY}
			if !d.ReadOnly {
				flags = append(flags, os.O_RDWR)
			}
			for _, flag := range flags {
				f, err := os.OpenFile(d.Image, flag, 0)
				if err != nil {
					consoleR.Close()
					consoleW.Close()
					closeAll(diskFiles)
					return nil, fmt.Errorf("vm %s: disk %s: %w", l.Name, d.Image, err)
				}
				diskFDs[i] = append(diskFDs[i], 3+len(files)+1+len(netFiles)+len(diskFiles))
				diskFiles = append(diskFiles, f)
			}
		}
	}
	defer closeAll(diskFiles)
	args, err := Args(Config{
		Name: l.Name, VM: l.VM, Plan: l.Plan, Accel: accel.Name, QMP: sock, StateDir: l.Dir, ConsoleSocket: consoleSock, ReceiptSocket: receiptSock,
		Console: fmt.Sprintf("/dev/fd/%d", 3+len(files)), HostKHz: HostKHz(), NetFDs: netFDs, DiskFDs: diskFDs,
	}, 3)
	if err != nil {
		consoleR.Close()
		consoleW.Close()
		return nil, err
	}
	cmd := exec.Command(Binary, args...)
	cmd.ExtraFiles = append(append(append(append([]*os.File{}, files...), consoleW), netFiles...), diskFiles...)
	if l.As != nil {
		// QEMU reopens /dev/fd/N, which checks the inode's owner.
		uid, gid := l.As.IDs()
		for _, f := range append(files, consoleW) {
			f.Chown(uid, gid)
		}
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: l.As.Credential()}
	}
	if l.Detail != nil {
		// Never a secret on it: credentials go by inherited descriptors.
		l.Detail("%s %s", Binary, strings.Join(args, " "))
	}
	p, err := hypervisor.StartProcess(cmd)
	consoleW.Close()
	if err != nil {
		consoleR.Close()
		return nil, fmt.Errorf("vm %s: start %s: %w (apt-get install qemu-system-x86)", l.Name, Binary, err)
	}
	in := &instance{p: p, sock: sock, notice: l.Notice, copied: make(chan struct{})}
	go func() {
		defer close(in.copied)
		defer consoleR.Close()
		io.Copy(l.Console, consoleR)
	}()
	return in, nil
}

type instance struct {
	p      *hypervisor.Process
	sock   string
	notice func(string, ...any)
	copied chan struct{}
}

func (in *instance) PID() int { return in.p.PID() }

func (in *instance) Wait() hypervisor.Exit {
	e := in.p.Exit()
	<-in.copied
	os.Remove(in.sock)
	os.Remove(hypervisor.ConsoleSocket(filepath.Dir(in.sock)))
	os.Remove(hypervisor.ReceiptSocket(filepath.Dir(in.sock)))
	return e
}

// Shutdown presses the ACPI power button (QMP system_powerdown, again
// every few seconds: see PressUntilOff), then tells QEMU to quit, then
// kills it.
func (in *instance) Shutdown(timeout time.Duration) hypervisor.Exit {
	press := func() error { return qmpRun(in.sock, "system_powerdown") }
	if !in.p.PressUntilOff(timeout, press, in.notice, "QMP system_powerdown") {
		in.notice("the guest did not power off within %s; telling QEMU to quit", timeout)
		if err := qmpRun(in.sock, "quit"); err != nil {
			in.notice("QMP quit failed (%v); killing QEMU", err)
			in.p.Kill()
		} else if !in.p.WaitFor(10 * time.Second) {
			in.p.Kill()
		}
	}
	return in.Wait()
}

func qmpRun(sock, command string) error {
	mon, err := qmp.NewSocketMonitor("unix", sock, 2*time.Second)
	if err != nil {
		return err
	}
	if err := mon.Connect(); err != nil {
		return err
	}
	defer mon.Disconnect()
	_, err = mon.Run([]byte(`{"execute":"` + command + `"}`))
	return err
}

// Probe implements hypervisor.Prober with QMP query-status.
func (Driver) Probe(dir string) (string, error) {
	mon, err := qmp.NewSocketMonitor("unix", QMPSocket(dir), 2*time.Second)
	if err != nil {
		return "", err
	}
	if err := mon.Connect(); err != nil {
		return "", err
	}
	defer mon.Disconnect()
	out, err := mon.Run([]byte(`{"execute":"query-status"}`))
	if err != nil {
		return "", err
	}
	var r struct {
		Return struct {
			Status string `json:"status"`
		} `json:"return"`
	}
	if err := json.Unmarshal(out, &r); err != nil {
		return "", err
	}
	return r.Return.Status, nil
}

func closeAll(files []*os.File) {
	for _, f := range files {
		f.Close()
	}
}
