// Package firecracker runs firecracker, configured entirely through its API
// socket (PUT /machine-config, /boot-source, /drives, /network-interfaces,
// /vsock, /actions): nothing about the VM on its command line.
//
// firecracker has neither SMBIOS nor fw_cfg. The only way to hand systemd
// a credential is the guest kernel command line
// (systemd.set_credential=NAME:VALUE), which every process in the guest can
// read in /proc/cmdline. So public credentials go there, within x86 Linux's
// 2,048-byte command line, and secret ones are refused — unless the machine
// opts in with [vm.firecracker] secrets_on_cmdline = true.
package firecracker

import (
	"encoding/base64"
	"fmt"
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

// Binary is the firecracker executable.
var Binary = "firecracker"

// Cmdline is the transport: the guest kernel command line.
const Cmdline cred.Transport = "cmdline"

// MaxCmdline is x86 Linux's command line size (COMMAND_LINE_SIZE, with
// its NUL); a longer one makes the guest kernel panic before its console
// starts — a silent hang.
const MaxCmdline = 2048

// Driver runs firecracker.
type Driver struct{}

func init() { hypervisor.Register(Driver{}) }

// Name implements hypervisor.Driver.
func (Driver) Name() string { return "firecracker" }

// maxVcpus is firecracker's limit.
const maxVcpus = 32

// CheckVM implements spec.HypervisorRules: what firecracker can run.
func (d Driver) CheckVM(vm *spec.VM, problem spec.ProblemFunc) {
	hypervisor.CheckKVMBackend(d.Name(), "drives", vm, problem)
	switch vm.Transport {
	case "auto":
	case "smbios", "fw_cfg":
		problem("vm.transport", "firecracker has neither SMBIOS nor fw_cfg: credentials go on the guest kernel command line; leave transport out (or \"auto\")")
	default:
		problem("vm.transport", "unknown transport %q: firecracker takes only \"auto\"", vm.Transport)
	}
	if vm.Firmware != "bios" {
		problem("vm.firmware", "firecracker boots a kernel directly and takes no firmware")
	}
	if vm.Vcpu > maxVcpus {
		problem("vm.vcpu", "firecracker takes at most %d vcpus", maxVcpus)
	}
	if len(vm.Shares) > 0 {
		problem("vm.shares", "firecracker has no virtiofs or 9p; drop [[vm.shares]] or use another hypervisor")
	}
}

// Plan implements hypervisor.Driver.
func (Driver) Plan(m *spec.Machine, creds []cred.Credential) (*cred.Plan, error) {
	for i := range creds {
		c := &creds[i]
		if err := c.Check(); err != nil {
			return nil, fmt.Errorf("vm %s: %w", m.Name, err)
		}
		if c.Secret && !m.VM.Firecracker.SecretsOnCmdline {
			return nil, fmt.Errorf("vm %s: credential %s (%s) is secret, and firecracker can pass credentials only on the guest kernel command line, which every process in the guest can read in /proc/cmdline: use hypervisor = \"qemu\" or \"cloud-hypervisor\" for secrets, or set secrets_on_cmdline = true under [vm.firecracker] to accept the exposure", m.Name, c.Name, c.Source)
		}
		if c.IsBinary() {
			if m.VM.GuestSystemd < 254 {
				return nil, fmt.Errorf("vm %s: credential %s holds binary data, which the kernel command line carries only as systemd.set_credential_binary= (systemd 254 or newer; set guest_systemd if the guest has it)", m.Name, c.Name)
			}
		} else if strings.ContainsAny(string(c.Value), "\"\\\n\r\t") || strings.ContainsFunc(string(c.Value), func(r rune) bool { return r < 0x20 || r == 0x7f }) {
			return nil, fmt.Errorf("vm %s: credential %s holds a quote, backslash or control character, which the kernel command line cannot carry as text; set binary = true for it (needs guest systemd ≥ 254)", m.Name, c.Name)
		}
		if strings.ContainsAny(c.Name, " \"") {
			return nil, fmt.Errorf("vm %s: credential name %q holds a space or quote, which the kernel command line cannot carry", m.Name, c.Name)
		}
	}
	// The manifest has newlines, so it travels base64-encoded as text;
	// credvm guest verify reads it either way.
	manifest := cred.Manifest(creds)
	manifest.Value = []byte(base64.StdEncoding.EncodeToString(manifest.Value))
	all := append([]cred.Credential{manifest}, creds...)
	p := &cred.Plan{Transport: Cmdline, Credentials: all}
	line := BootArgs(m.VM.Cmdline, p)
	if len(line)+1 > MaxCmdline {
		return nil, fmt.Errorf("vm %s: with its credentials the kernel command line would be %d bytes; x86 Linux takes %d and hangs before its console on a longer one: pass fewer or smaller credentials", m.Name, len(line)+1, MaxCmdline)
	}
	p.Why = fmt.Sprintf("firecracker has no SMBIOS or fw_cfg: the kernel command line (%d of %d bytes), readable by every guest process", len(line)+1, MaxCmdline)
	return p, nil
}

// BootArgs is the guest kernel command line: the machine's, then each
// credential as systemd.set_credential (quoted when it holds a space).
func BootArgs(cmdline string, p *cred.Plan) string {
	parts := []string{}
	if strings.TrimSpace(cmdline) != "" {
		parts = append(parts, strings.TrimSpace(cmdline))
	}
	for i := range p.Credentials {
		c := &p.Credentials[i]
		var arg string
		if c.IsBinary() {
			arg = "systemd.set_credential_binary=" + c.Name + ":" + base64.StdEncoding.EncodeToString(c.Value)
		} else {
			arg = "systemd.set_credential=" + c.Name + ":" + string(c.Value)
		}
		if strings.Contains(arg, " ") {
			arg = `"` + arg + `"`
		}
		parts = append(parts, arg)
	}
	return strings.Join(parts, " ")
}

func apiSocket(dir string) string   { return filepath.Join(dir, "fc.sock") }
func vsockSocket(dir string) string { return filepath.Join(dir, "vsock.sock") }

// Requests are the API calls that configure the VM, in order.
type Request struct {
	Method, Path string
	Body         any
}

// Requests builds the configuration calls for a VM (InstanceStart last).
func Requests(name string, vm spec.VM, p *cred.Plan, dir string) ([]Request, error) {
	if vm.Kernel == "" {
		return nil, fmt.Errorf("vm %s: firecracker needs kernel = \"/path/to/vmlinux\" in [vm]", name)
	}
	// The machine's [vm] passed CheckVM when it was loaded.
	boot := map[string]any{"kernel_image_path": vm.Kernel, "boot_args": BootArgs(vm.Cmdline, p)}
	if vm.Initrd != "" {
		boot["initrd_path"] = vm.Initrd
	}
	reqs := []Request{
		{"PUT", "/machine-config", map[string]any{"vcpu_count": vm.Vcpu, "mem_size_mib": vm.Mem}},
		{"PUT", "/boot-source", boot},
	}
	for i, d := range vm.Disks {
		id := fmt.Sprintf("disk%d", i)
		reqs = append(reqs, Request{"PUT", "/drives/" + id, map[string]any{
			"drive_id": id, "path_on_host": d.Image, "is_root_device": false, "is_read_only": d.ReadOnly}})
	}
	for i, n := range vm.Interfaces {
		id := fmt.Sprintf("net%d", i)
		body := map[string]any{"iface_id": id, "host_dev_name": n.ID}
		if n.MAC != "" {
			body["guest_mac"] = n.MAC
		}
		reqs = append(reqs, Request{"PUT", "/network-interfaces/" + id, body})
	}
	if vm.VsockCID != 0 {
		reqs = append(reqs, Request{"PUT", "/vsock", map[string]any{"guest_cid": vm.VsockCID, "uds_path": vsockSocket(dir)}})
	}
	return append(reqs, Request{"PUT", "/actions", map[string]any{"action_type": "InstanceStart"}}), nil
}

// Start implements hypervisor.Driver.
func (Driver) Start(l hypervisor.Launch) (hypervisor.Instance, error) {
	sock := apiSocket(l.Dir)
	for _, p := range []string{sock, vsockSocket(l.Dir)} {
		if err := hypervisor.SocketPathOK(p); err != nil {
			return nil, fmt.Errorf("vm %s: %w", l.Name, err)
		}
		os.Remove(p)
	}
	reqs, err := Requests(l.Name, l.VM, l.Plan, l.Dir)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(Binary, "--api-sock", sock)
	cmd.Stdout = l.Console // firecracker's stdout is the guest's serial console
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: l.As.Credential()}
	p, api, err := hypervisor.StartWithAPI(l.Name, cmd, sock, l.Plan, func(api *hypervisor.API) error {
		for _, r := range reqs {
			if err := api.Do(r.Method, r.Path, r.Body, nil); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return &instance{p: p, api: api, notice: l.Notice}, nil
}

type instance struct {
	p      *hypervisor.Process
	api    *hypervisor.API
	notice func(string, ...any)
}

func (in *instance) PID() int              { return in.p.PID() }
func (in *instance) Wait() hypervisor.Exit { return in.p.Exit() }

// Shutdown sends Ctrl-Alt-Del (firecracker's graceful stop on x86), then
// ends the process.
func (in *instance) Shutdown(timeout time.Duration) hypervisor.Exit {
	if err := in.api.Do("PUT", "/actions", map[string]any{"action_type": "SendCtrlAltDel"}, nil); err != nil {
		in.notice("SendCtrlAltDel failed (%v)", err)
	}
	if !in.p.WaitFor(timeout) {
		in.notice("the guest did not stop within %s; ending firecracker", timeout)
		in.p.Cmd.Process.Signal(os.Interrupt)
		if !in.p.WaitFor(5 * time.Second) {
			in.p.Kill()
		}
	}
	return in.Wait()
}

// Probe implements hypervisor.Prober with GET / (the instance's state).
func (Driver) Probe(dir string) (string, error) {
	return hypervisor.NewAPI(apiSocket(dir)).State("/")
}
