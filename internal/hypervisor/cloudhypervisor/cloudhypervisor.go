// Package cloudhypervisor runs cloud-hypervisor with credentials as SMBIOS
// type 11 OEM strings, passed through its REST API — never on its command
// line.
//
// cloud-hypervisor starts with nothing but --api-socket; credvm then sends
// PUT /api/v1/vm.create with the whole VmConfig (payload, cpus, memory,
// disks, fs, net, vsock, serial, platform.oem_strings) and PUT vm.boot.
// The socket is a secret in itself — GET vm.info returns the OEM strings —
// so it is 0600 in the 0700 state directory, and credvm never logs or
// stores what the API returns.
//
// Only with cloud_hypervisor.oem_strings_on_argv = true in machine.toml do
// the strings go on argv (--platform oem_strings=[…]), where every local
// user can read them. Then every string takes the binary form
// (io.systemd.credential.binary:NAME=<padded base64>): cloud-hypervisor's
// option parser splits on commas outside [...] and "..." but its string
// list keeps the quote characters inside a string (quoting would corrupt
// the credential), and releases before v48 split on every comma. base64
// holds neither; names holding , [ ] or " are refused.
package cloudhypervisor

import (
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/credvm/credvm/internal/cred"
	"github.com/credvm/credvm/internal/hypervisor"
	"github.com/credvm/credvm/internal/spec"
)

// Binary is the cloud-hypervisor executable.
var Binary = "cloud-hypervisor"

// Transports.
const (
	// OEMStrings: platform.oem_strings in the vm.create request.
	OEMStrings cred.Transport = "oem_strings"
	// OEMStringsArgv: --platform oem_strings=[…] on the command line.
	OEMStringsArgv cred.Transport = "oem_strings_argv"
)

// tableBudget: cloud-hypervisor writes the SMBIOS tables at guest physical
// 0xF0000 and they must end below 0x100000 — 64 KiB for all structures.
const tableBudget = 60000

// Driver runs cloud-hypervisor.
type Driver struct{}

func init() { hypervisor.Register(Driver{}) }

// Name implements hypervisor.Driver.
func (Driver) Name() string { return "cloud-hypervisor" }

// CheckVM implements spec.HypervisorRules: what cloud-hypervisor can run.
func (d Driver) CheckVM(vm *spec.VM, problem spec.ProblemFunc) {
	hypervisor.CheckKVMBackend(d.Name(), "disks", vm, problem)
	switch vm.Transport {
	case "auto", "smbios":
	case "fw_cfg":
		problem("vm.transport", "fw_cfg is a QEMU transport; cloud-hypervisor cannot carry it")
	default:
		problem("vm.transport", "unknown transport %q: use one of %s", vm.Transport, spec.QuoteList("auto", "smbios"))
	}
	if vm.Firmware == "ovmf" {
		problem("vm.firmware", "firmware = \"ovmf\" is QEMU's; for cloud-hypervisor give the path of its firmware (CLOUDHV.fd or hypervisor-fw)")
	}
	for i, sh := range vm.Shares {
		if sh.Proto != "virtiofs" {
			problem(fmt.Sprintf("vm.shares[%d].proto", i), "cloud-hypervisor shares directories with virtiofs only (share %s is %s)", sh.Tag, sh.Proto)
		}
	}
}

// Plan implements hypervisor.Driver. SMBIOS is cloud-hypervisor's only
// private transport, so a payload over the guest's budget is refused, not
// moved elsewhere.
func (Driver) Plan(m *spec.Machine, creds []cred.Credential) (*cred.Plan, error) {
	argv := m.VM.CloudHypervisor.OEMStringsOnArgv
	if argv {
		for i := range creds {
			if strings.ContainsAny(creds[i].Name, `,[]"`) {
				return nil, fmt.Errorf("vm %s: credential %q cannot go on cloud-hypervisor's command line: its option parser splits at , [ ] and \" (rename it, or drop oem_strings_on_argv)", m.Name, creds[i].Name)
			}
			creds[i].ForceBinary = true
		}
	}
	all, err := cred.PrepareSet(m.Name, creds)
	if err != nil {
		return nil, err
	}
	if argv {
		all[0].ForceBinary = true
	}
	p := &cred.Plan{Credentials: all, SMBIOSSize: cred.SMBIOSSize(all), SMBIOSBudget: min(cred.SMBIOSBudget(m.VM.GuestSystemd), tableBudget)}
	switch {
	case len(all) > cred.MaxSMBIOSStrings:
		return nil, fmt.Errorf("vm %s: %d credentials (with the manifest) exceed the %d strings one SMBIOS structure can hold, and cloud-hypervisor does not check (the count would wrap): pass fewer credentials", m.Name, len(all), cred.MaxSMBIOSStrings)
	case p.SMBIOSSize > p.SMBIOSBudget:
		hint := "shorten or drop credentials"
		if m.VM.GuestSystemd < cred.WholeSMBIOSSystemd {
			hint += fmt.Sprintf(", or set guest_systemd = %d if the guest's systemd is that new", cred.WholeSMBIOSSystemd)
		}
		return nil, fmt.Errorf("vm %s: the credentials need %d bytes of SMBIOS type 11 but the guest reads only %d, and cloud-hypervisor has no other private transport; the guest would get cut or missing credentials, so it is not started: %s", m.Name, p.SMBIOSSize, p.SMBIOSBudget, hint)
	}
	p.Transport, p.Why = OEMStrings, fmt.Sprintf("platform.oem_strings over the API socket (%d of %d bytes of SMBIOS)", p.SMBIOSSize, p.SMBIOSBudget)
	if argv {
		p.Transport, p.Why = OEMStringsArgv, fmt.Sprintf("--platform oem_strings on argv, opted in by oem_strings_on_argv: every local user can read them (%d of %d bytes of SMBIOS)", p.SMBIOSSize, p.SMBIOSBudget)
	}
	return p, nil
}

// Paths in the state directory.
func apiSocket(dir string) string    { return filepath.Join(dir, "ch.sock") }
func serialSocket(dir string) string { return filepath.Join(dir, "serial.sock") }
func vsockSocket(dir string) string  { return filepath.Join(dir, "vsock.sock") }

// VmConfig is the subset of cloud-hypervisor's VmConfig credvm sends.
// Field names are the API's (vmm/src/api/openapi/cloud-hypervisor.yaml).
type VmConfig struct {
	Payload  Payload   `json:"payload"`
	Cpus     *Cpus     `json:"cpus,omitempty"`
	Memory   *Memory   `json:"memory,omitempty"`
	Disks    []Disk    `json:"disks,omitempty"`
	Net      []Net     `json:"net,omitempty"`
	Fs       []Fs      `json:"fs,omitempty"`
	Vsock    *Vsock    `json:"vsock,omitempty"`
	Serial   *Console  `json:"serial,omitempty"`
	Console  *Console  `json:"console,omitempty"`
	Platform *Platform `json:"platform,omitempty"`
}

type Payload struct {
	Firmware  string `json:"firmware,omitempty"`
	Kernel    string `json:"kernel,omitempty"`
	Cmdline   string `json:"cmdline,omitempty"`
	Initramfs string `json:"initramfs,omitempty"`
}

type Cpus struct {
	BootVcpus int `json:"boot_vcpus"`
	MaxVcpus  int `json:"max_vcpus"`
}

type Memory struct {
	Size   int64 `json:"size"`
	Shared bool  `json:"shared,omitempty"`
}

type Disk struct {
	Path     string `json:"path"`
	Readonly bool   `json:"readonly,omitempty"`
}

type Net struct {
	Tap string `json:"tap,omitempty"`
	Mac string `json:"mac,omitempty"`
}

type Fs struct {
	Tag       string `json:"tag"`
	Socket    string `json:"socket"`
	NumQueues int    `json:"num_queues"`
	QueueSize int    `json:"queue_size"`
}

type Vsock struct {
	Cid    int64  `json:"cid"`
	Socket string `json:"socket"`
}

type Console struct {
	Mode   string `json:"mode"`
	Socket string `json:"socket,omitempty"`
}

type Platform struct {
	OEMStrings []string `json:"oem_strings,omitempty"`
}

// Config builds the VmConfig for a VM; the OEM strings are the plan's
// (nil with the argv form, which carries them instead).
func Config(name string, vm spec.VM, plan *cred.Plan, dir string) (*VmConfig, error) {
	if vm.Kernel == "" && vm.Firmware == "bios" {
		return nil, fmt.Errorf("vm %s: cloud-hypervisor needs a kernel (or firmware = \"/path/to/hypervisor-fw\") in [vm]", name)
	}
	c := &VmConfig{
		Payload: Payload{Kernel: vm.Kernel, Initramfs: vm.Initrd, Cmdline: vm.Cmdline},
		Cpus:    &Cpus{BootVcpus: vm.Vcpu, MaxVcpus: vm.Vcpu},
		Memory:  &Memory{Size: int64(vm.Mem) << 20},
		Serial:  &Console{Mode: "Socket", Socket: serialSocket(dir)},
		Console: &Console{Mode: "Off"},
	}
	if vm.Firmware != "bios" {
		c.Payload.Firmware = vm.Firmware
	}
	// The machine's [vm] passed CheckVM when it was loaded.
	for _, d := range vm.Disks {
		c.Disks = append(c.Disks, Disk{Path: d.Image, Readonly: d.ReadOnly})
	}
	for _, n := range vm.Interfaces {
		c.Net = append(c.Net, Net{Tap: n.ID, Mac: n.MAC})
	}
	for _, s := range vm.Shares {
		c.Fs = append(c.Fs, Fs{Tag: s.Tag, Socket: s.SocketPath(dir), NumQueues: 1, QueueSize: 1024})
		c.Memory.Shared = true // vhost-user needs shared guest memory
	}
	if vm.VsockCID != 0 {
		c.Vsock = &Vsock{Cid: int64(vm.VsockCID), Socket: vsockSocket(dir)}
	}
	if plan != nil && plan.Transport == OEMStrings {
		c.Platform = &Platform{}
		for i := range plan.Credentials {
			c.Platform.OEMStrings = append(c.Platform.OEMStrings, string(plan.Credentials[i].SMBIOSString()))
		}
	}
	return c, nil
}

// Argv is cloud-hypervisor's command line: only the API socket, unless the
// machine opted in to OEM strings on argv — then the whole configuration,
// by cloud-hypervisor's option syntax.
func Argv(name string, vm spec.VM, plan *cred.Plan, dir string) ([]string, error) {
	// Its own seccomp filters, on (their default; said, not assumed).
	a := []string{"--api-socket", "path=" + apiSocket(dir), "--seccomp", "true"}
	if plan == nil || plan.Transport != OEMStringsArgv {
		return a, nil
	}
	c, err := Config(name, vm, nil, dir)
	if err != nil {
		return nil, err
	}
	if c.Payload.Kernel != "" {
		a = append(a, "--kernel", c.Payload.Kernel)
	}
	if c.Payload.Firmware != "" {
		a = append(a, "--firmware", c.Payload.Firmware)
	}
	if c.Payload.Initramfs != "" {
		a = append(a, "--initramfs", c.Payload.Initramfs)
	}
	if c.Payload.Cmdline != "" {
		a = append(a, "--cmdline", c.Payload.Cmdline)
	}
	a = append(a, "--cpus", fmt.Sprintf("boot=%d", c.Cpus.BootVcpus), "--memory", fmt.Sprintf("size=%dM,shared=%s", vm.Mem, onOff(c.Memory.Shared)))
	for _, d := range c.Disks {
		a = append(a, "--disk", "path="+d.Path+",readonly="+onOff(d.Readonly))
	}
	for _, n := range c.Net {
		opt := "tap=" + n.Tap
		if n.Mac != "" {
			opt += ",mac=" + n.Mac
		}
		a = append(a, "--net", opt)
	}
	for _, f := range c.Fs {
		a = append(a, "--fs", "tag="+f.Tag+",socket="+f.Socket)
	}
	if c.Vsock != nil {
		a = append(a, "--vsock", fmt.Sprintf("cid=%d,socket=%s", c.Vsock.Cid, c.Vsock.Socket))
	}
	var strs []string
	for i := range plan.Credentials {
		strs = append(strs, string(plan.Credentials[i].SMBIOSString()))
	}
	a = append(a, "--serial", "socket="+c.Serial.Socket, "--console", "off",
		"--platform", "oem_strings=["+strings.Join(strs, ",")+"]")
	return a, nil
}

func onOff(b bool) string {
	if b {
		return "on"
	}
	return "off"
}

// Start implements hypervisor.Driver.
func (Driver) Start(l hypervisor.Launch) (hypervisor.Instance, error) {
	sock := apiSocket(l.Dir)
	for _, p := range []string{sock, serialSocket(l.Dir), vsockSocket(l.Dir)} {
		if err := hypervisor.SocketPathOK(p); err != nil {
			return nil, fmt.Errorf("vm %s: %w", l.Name, err)
		}
		os.Remove(p) // stale from a crash
	}
	args, err := Argv(l.Name, l.VM, l.Plan, l.Dir)
	if err != nil {
		return nil, err
	}
	var cfg *VmConfig
	if l.Plan.Transport == OEMStrings {
		if cfg, err = Config(l.Name, l.VM, l.Plan, l.Dir); err != nil {
			return nil, err
		}
	}
	cmd := exec.Command(Binary, args...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: l.As.Credential()}
	p, api, err := hypervisor.StartWithAPI(l.Name, cmd, sock, l.Plan, func(api *hypervisor.API) error {
		if cfg != nil {
			if err := api.Do("PUT", "/api/v1/vm.create", cfg, nil); err != nil {
				return err
			}
		}
		return api.Do("PUT", "/api/v1/vm.boot", nil, nil)
	})
	if err != nil {
		return nil, err
	}
	in := &instance{p: p, api: api, notice: l.Notice, copied: make(chan struct{})}
	go in.copyConsole(serialSocket(l.Dir), l.Console)
	return in, nil
}

type instance struct {
	p      *hypervisor.Process
	api    *hypervisor.API
	notice func(string, ...any)
	copied chan struct{}
}

func (in *instance) PID() int { return in.p.PID() }

// copyConsole connects to the serial socket and copies the console out
// until the VM ends.
func (in *instance) copyConsole(path string, w io.Writer) {
	defer close(in.copied)
	var conn net.Conn
	for {
		c, err := net.Dial("unix", path)
		if err == nil {
			conn = c
			break
		}
		select {
		case <-in.p.Done():
			return
		case <-time.After(50 * time.Millisecond):
		}
	}
	defer conn.Close()
	go func() {
		<-in.p.Done()
		conn.SetReadDeadline(time.Now().Add(500 * time.Millisecond))
	}()
	io.Copy(w, conn)
}

func (in *instance) Wait() hypervisor.Exit {
	e := in.p.Exit()
	<-in.copied
	return e
}

// Shutdown presses the power button (vm.power-button, again every few
// seconds: see PressUntilOff), then shuts the VM and the VMM down
// (vm.shutdown, vmm.shutdown), then kills.
func (in *instance) Shutdown(timeout time.Duration) hypervisor.Exit {
	press := func() error { return in.api.Do("PUT", "/api/v1/vm.power-button", nil, nil) }
	if !in.p.PressUntilOff(timeout, press, in.notice, "vm.power-button") {
		in.notice("the guest did not power off within %s; shutting cloud-hypervisor down", timeout)
		in.api.Do("PUT", "/api/v1/vm.shutdown", nil, nil)
		in.api.Do("PUT", "/api/v1/vmm.shutdown", nil, nil)
		if !in.p.WaitFor(10 * time.Second) {
			in.p.Kill()
		}
	}
	return in.Wait()
}

// Probe implements hypervisor.Prober with GET vm.info. Only the state is
// kept: the rest of the answer holds the VM's configuration, OEM strings
// (secrets) included, and is neither logged nor stored.
func (Driver) Probe(dir string) (string, error) {
	return hypervisor.NewAPI(apiSocket(dir)).State("/api/v1/vm.info")
}
