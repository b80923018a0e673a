// Package hypervisor is the interface every backend (QEMU,
// cloud-hypervisor, firecracker) implements, so that running, stopping and
// listing VMs never depends on which one runs a VM — in the manner of
// lima's driver interface: one required shape, small and complete.
//
// A backend plans how a machine's credentials reach its guest (and refuses
// what its transports cannot carry whole or privately), starts the
// hypervisor with them — never on a command line — and controls it:
// graceful power-off, then a hard stop.
package hypervisor

import (
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/credvm/credvm/internal/cred"
	"github.com/credvm/credvm/internal/spec"
	"github.com/credvm/credvm/internal/tail"
)

// Driver is a hypervisor backend.
type Driver interface {
	// Name is the hypervisor's name in machine.toml; CheckVM checks and
	// completes a machine's [vm] for this backend when the machine file
	// is loaded (spec.HypervisorRules), so that every command — `vars
	// generate` and `creds show` as well as `run` — refuses a setting the
	// backend cannot carry out, with the file's line.
	spec.HypervisorRules
	// Plan decides how creds reach the guest, checking every limit of
	// the transport before anything starts. It decrypts and starts
	// nothing, so `credvm creds show` can call it.
	Plan(m *spec.Machine, creds []cred.Credential) (*cred.Plan, error)
	// Start launches the hypervisor with the planned credentials and
	// returns once it runs the guest.
	Start(l Launch) (Instance, error)
}

// Register makes a backend available under its Name, to Lookup and to
// the machine-file validator (one registry, spec's: a Driver is the rules
// spec checks machine files with, and more). Each backend registers itself
// from its package's init; package drivers links them all into the
// program.
func Register(d Driver) { spec.RegisterHypervisor(d) }

// Lookup returns the registered backend called name.
func Lookup(name string) (Driver, error) {
	if d, ok := spec.LookupHypervisor(name).(Driver); ok {
		return d, nil
	}
	return nil, fmt.Errorf("hypervisor %q is not supported (this credvm knows %s)", name, strings.Join(spec.Hypervisors(), ", "))
}

// For returns the backend that runs machine m.
func For(m *spec.Machine) (Driver, error) {
	d, err := Lookup(m.VM.Hypervisor)
	if err != nil {
		return nil, fmt.Errorf("vm %s: %w", m.Name, err)
	}
	return d, nil
}

// Launch is what Start needs.
type Launch struct {
	Name string
	VM   spec.VM
	Plan *cred.Plan
	// Dir is the VM's socket directory (0700, the hypervisor user's):
	// control sockets live here.
	Dir string
	// Console receives the guest's serial console.
	Console io.Writer
	// As is the unprivileged user the hypervisor runs as (nil: credvm's
	// own). Dir is then theirs; disks reach it as open descriptors.
	As *Identity
	// NetFiles holds, by interface index, the open device of a macvtap
	// (its /dev/tapN), which the hypervisor inherits.
	NetFiles map[int]*os.File
	// Notice prints one-line messages for the user.
	Notice func(format string, args ...any)
	// Detail, when not nil (-v), prints what helps debugging: a
	// hypervisor's command line where it holds no secret.
	Detail func(format string, args ...any)
}

// ConsoleSocket is where a running VM's serial console can be attached
// (`credvm console`): a unix socket in its state directory, made by the
// backends that offer one (QEMU).
func ConsoleSocket(dir string) string { return filepath.Join(dir, "console.sock") }

// ReceiptSocket is where the guest's word comes back (package receipt):
// the unix socket behind its io.credvm.0 port, made by the backends that
// offer one (QEMU).
func ReceiptSocket(dir string) string { return filepath.Join(dir, "receipt.sock") }

// Instance is a running hypervisor.
type Instance interface {
	PID() int
	// Wait blocks until the hypervisor has exited and its console is
	// copied out.
	Wait() Exit
	// Shutdown asks the guest to power off, stops the hypervisor after
	// timeout if the guest has not, and kills it if even that fails. It
	// returns when the hypervisor has exited.
	Shutdown(timeout time.Duration) Exit
}

// Exit is how a hypervisor process ended.
type Exit struct {
	Code   int
	Signal string
	// Stderr holds its last lines of output, for messages.
	Stderr string
	Err    error
}

// Process is a hypervisor process with the handling every backend needs:
// its own process group (the terminal's Ctrl-C reaches credvm, which
// powers the guest off, not the hypervisor, which would just die), death
// with credvm, a minimal environment, its last lines of output kept.
type Process struct {
	Cmd    *exec.Cmd
	stderr tail.Lines
	done   chan struct{}
	exit   Exit
}

// StartProcess starts cmd as a hypervisor process. Its environment is
// reduced to what it needs to find its files: nothing of credvm's, which
// may hold SOPS_AGE_KEY.
func StartProcess(cmd *exec.Cmd) (*Process, error) {
	p := &Process{Cmd: cmd, done: make(chan struct{})}
	cmd.Env = MinimalEnv()
	if cmd.Stdout == nil {
		cmd.Stdout = &p.stderr
	}
	cmd.Stderr = &p.stderr
	var as *syscall.Credential // set by the backend: the unprivileged user
	if cmd.SysProcAttr != nil {
		as = cmd.SysProcAttr.Credential
	}
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGTERM, Credential: as}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	go func() {
		err := cmd.Wait()
		p.exit = exitOf(err)
		p.exit.Stderr = p.stderr.String()
		close(p.done)
	}()
	return p, nil
}

// PID is the process id.
func (p *Process) PID() int { return p.Cmd.Process.Pid }

// Done is closed when the process has exited.
func (p *Process) Done() <-chan struct{} { return p.done }

// Exit is the exit, once Done is closed.
func (p *Process) Exit() Exit { <-p.done; return p.exit }

// WaitFor waits up to d for the process to exit.
func (p *Process) WaitFor(d time.Duration) bool {
	select {
	case <-p.done:
		return true
	case <-time.After(d):
		return false
	}
}

// repressEvery is how often PressUntilOff presses the power button again
// (a variable for its test).
var repressEvery = 10 * time.Second

// PressUntilOff presses the guest's power button (press) and waits for the
// hypervisor to exit, pressing again every repressEvery, for at most
// timeout; it reports whether the guest powered off. A press the guest
// was not yet listening for — early in its boot, before systemd-logind
// watches the button — is lost, so one press is not enough. Only the
// first failure to press is told (notice): the API may be busy.
func (p *Process) PressUntilOff(timeout time.Duration, press func() error, notice func(format string, args ...any), what string) bool {
	deadline := time.Now().Add(timeout)
	told := false
	for {
		if err := press(); err != nil && !told {
			notice("%s failed (%v)", what, err)
			told = true
		}
		if p.WaitFor(min(repressEvery, time.Until(deadline))) {
			return true
		}
		if time.Until(deadline) <= 0 {
			return false
		}
	}
}

// Kill kills the process and waits for it.
func (p *Process) Kill() Exit {
	p.Cmd.Process.Kill()
	return p.Exit()
}

func exitOf(err error) Exit {
	var ee *exec.ExitError
	switch {
	case err == nil:
		return Exit{}
	case errors.As(err, &ee):
		if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
			return Exit{Code: 128 + int(ws.Signal()), Signal: unix.SignalName(ws.Signal())}
		}
		return Exit{Code: ee.ExitCode()}
	}
	return Exit{Code: -1, Err: err}
}

// MinimalEnv is a hypervisor's environment.
func MinimalEnv() []string {
	env := []string{"PATH=" + os.Getenv("PATH")}
	for _, k := range []string{"HOME", "TMPDIR", "LANG", "XDG_RUNTIME_DIR"} {
		if v, ok := os.LookupEnv(k); ok {
			env = append(env, k+"="+v)
		}
	}
	return env
}

// SocketPathOK checks a unix socket path against the kernel's limit (108
// bytes with the NUL), with a message naming the fix.
func SocketPathOK(p string) error {
	if len(p) > 107 {
		return fmt.Errorf("socket path %s is %d bytes; unix sockets allow 107: use a shorter --state-dir", p, len(p))
	}
	return nil
}

// WaitForSocket waits until the hypervisor accepts connections on its API
// socket at path, or exits, or d passes.
func WaitForSocket(path string, p *Process, d time.Duration) error {
	deadline := time.Now().Add(d)
	for {
		if fi, err := os.Stat(path); err == nil && fi.Mode()&os.ModeSocket != 0 {
			// Reachable only by its owner: whoever can talk to it can
			// read the VM's configuration, secrets included.
			if err := os.Chmod(path, 0o600); err != nil {
				return err
			}
			// The file exists from bind(); connections work from listen().
			if c, err := net.Dial("unix", path); err == nil {
				c.Close()
				return nil
			}
		}
		select {
		case <-p.Done():
			return fmt.Errorf("it exited before creating its API socket: %s", p.Exit().Stderr)
		default:
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("its API socket %s did not appear within %s", path, d)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Prober is an optional capability of a Driver: asking a running
// hypervisor, through its control socket in the state directory, what
// state its VM is in ("running", "Running", …), for `credvm status`.
type Prober interface {
	Probe(dir string) (string, error)
}

// CheckKVMBackend reports what a KVM-only backend without QEMU's devices
// (cloud-hypervisor, firecracker) cannot take from a [vm]: a machine type,
// TCG, disk images other than raw ones (its drives, called disks), network
// interfaces other than taps.
func CheckKVMBackend(name, disks string, vm *spec.VM, problem spec.ProblemFunc) {
	if vm.Machine != "" {
		problem("vm.machine", "machine types are QEMU's; %s has none", name)
	}
	if vm.Accel == "tcg" {
		problem("vm.accel", "%s needs KVM; accel = \"tcg\" is QEMU's", name)
	}
	for i, d := range vm.Disks {
		if d.Format != "raw" {
			problem(fmt.Sprintf("vm.disks[%d].format", i), "%s %s are raw images (%s is %s)", name, disks, d.Image, d.Format)
		}
	}
	for i, n := range vm.Interfaces {
		switch n.Type {
		case "user":
			problem(fmt.Sprintf("vm.interfaces[%d].type", i), "%s has no user-mode network; use type = \"tap\" with id = a tap device", name)
		case "macvtap":
			problem(fmt.Sprintf("vm.interfaces[%d].type", i), "a macvtap reaches the hypervisor as an open /dev/tapN, which credvm hands only to QEMU; use type = \"tap\" (with bridge = …) for %s", name)
		}
	}
}
