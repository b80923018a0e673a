package vm

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/digitalocean/go-qemu/qmp"
	"golang.org/x/sys/unix"

	"github.com/credvm/credvm/internal/cred"
	"github.com/credvm/credvm/internal/hypervisor/qemu"
	"github.com/credvm/credvm/internal/lock"
	"github.com/credvm/credvm/internal/spec"
)

// RunOptions configure a foreground run.
type RunOptions struct {
	Machine     *spec.Machine
	Credentials []cred.Credential
	State       StateDir
	// Console receives the guest's serial console (besides the log).
	Console io.Writer
	// Notices receives credvm's own one-line messages.
	Notices io.Writer
	// ShutdownTimeout is how long a powered-down guest gets to stop
	// before QEMU is told to quit.
	ShutdownTimeout time.Duration
	// Started, if set, is called with QEMU's pid once it runs.
	Started func(pid int)
	// ConfigHash and VarsHash are recorded in run.json as what the VM
	// booted with.
	ConfigHash, VarsHash string
}

// RunningError says the VM already runs.
type RunningError struct {
	Name string
	PID  int
}

func (e *RunningError) Error() string {
	return fmt.Sprintf("vm %s is already running (pid %d)", e.Name, e.PID)
}

// Result is how a run ended.
type Result struct {
	ExitCode int    `json:"exit_code"`
	Signal   string `json:"signal,omitempty"`
}

// Run starts the machine's hypervisor in the foreground and waits for it.
// Cancelling ctx asks the guest to power off (QMP system_powerdown), then
// tells QEMU to quit after ShutdownTimeout, then kills it.
func Run(ctx context.Context, o RunOptions) (*Result, error) {
	m := o.Machine
	notice := func(format string, args ...any) {
		if o.Notices != nil {
			fmt.Fprintf(o.Notices, m.Name+": "+format+"\n", args...)
		}
	}
	if m.VM.Hypervisor != "qemu" {
		return nil, fmt.Errorf("vm %s: hypervisor %s is not supported yet", m.Name, m.VM.Hypervisor)
	}
	plan, err := Plan(m, o.Credentials)
	defer wipe(o.Credentials)
	if err != nil {
		return nil, err
	}
	if err := o.State.Ensure(); err != nil {
		return nil, err
	}
	if err := qemu.SocketPathOK(o.State.QMP()); err != nil {
		return nil, fmt.Errorf("vm %s: %w", m.Name, err)
	}
	l, err := lock.Acquire(o.State.RunLock(), "VM "+m.Name, 0, nil)
	if err != nil {
		if errors.Is(err, lock.ErrBusy) {
			return nil, &RunningError{m.Name, lock.Holder(o.State.RunLock())}
		}
		return nil, err
	}
	defer l.Release()
	if err := checkLeftover(o.State, m.Name); err != nil {
		return nil, err
	}
	os.Remove(o.State.QMP()) // a stale socket from a crash
	o.State.rotateConsole()

	accel, err := qemu.ChooseAccel(m.VM.Accel)
	if err != nil {
		return nil, fmt.Errorf("vm %s: %w", m.Name, err)
	}
	if accel.Notice != "" {
		notice("%s", accel.Notice)
	}
	notice("%d credentials via %s (%s)", len(plan.Credentials)-1, plan.Transport, plan.Why)

	// Credentials: one sealed memfd each, inherited as fd 3, 4, …
	var files []*os.File
	closeAll := func() {
		for _, f := range files {
			f.Close()
		}
		files = nil
	}
	defer closeAll()
	for i := range plan.Credentials {
		c := &plan.Credentials[i]
		f, err := qemu.SecretFile(c.Name, qemu.Payload(plan.Transport, c))
		if err != nil {
			return nil, fmt.Errorf("vm %s: credential %s: %w", m.Name, c.Name, err)
		}
		files = append(files, f)
	}
	wipe(plan.Credentials)

	// The console: QEMU writes to a pipe; we copy it to the log and out.
	consoleR, consoleW, err := os.Pipe()
	if err != nil {
		return nil, err
	}
	defer consoleR.Close()
	consoleFD := 3 + len(files)
	args, err := qemu.Args(qemu.Config{
		Name: m.Name, VM: m.VM, Plan: plan, Accel: accel.Name, QMP: o.State.QMP(),
		Console: fmt.Sprintf("/dev/fd/%d", consoleFD), HostKHz: qemu.HostKHz(),
	}, 3)
	if err != nil {
		consoleW.Close()
		return nil, err
	}
	if err := checkPaths(m); err != nil {
		consoleW.Close()
		return nil, err
	}
	logFile, err := os.OpenFile(o.State.Console(), os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		consoleW.Close()
		return nil, err
	}
	defer logFile.Close()
	fmt.Fprintf(logFile, "\n=== credvm: %s started %s ===\n", m.Name, time.Now().UTC().Format(time.RFC3339))

	cmd := exec.Command(qemu.Binary, args...)
	cmd.Env = minimalEnv()
	cmd.ExtraFiles = append(append([]*os.File{}, files...), consoleW)
	var stderr tail
	cmd.Stdout, cmd.Stderr = &stderr, &stderr
	// Its own process group, so the terminal's Ctrl-C reaches credvm
	// (which powers the guest off) and not QEMU (which would just die).
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGTERM}
	if err := cmd.Start(); err != nil {
		consoleW.Close()
		return nil, fmt.Errorf("vm %s: start %s: %w (apt-get install qemu-system-x86)", m.Name, qemu.Binary, err)
	}
	consoleW.Close()
	closeAll() // QEMU holds its own copies
	notice("QEMU started (pid %d); console log %s; Ctrl-C powers the guest off", cmd.Process.Pid, o.State.Console())
	rec := &RunRecord{State: RunRunning, Supervisor: os.Getpid(), QEMU: cmd.Process.Pid, Started: time.Now().UTC(),
		ConfigHash: o.ConfigHash, VarsHash: o.VarsHash, Transport: string(plan.Transport), ShutdownTimeout: o.ShutdownTimeout}
	if err := o.State.SaveRunRecord(rec); err != nil {
		notice("cannot record the run: %v", err)
	}
	if o.Started != nil {
		o.Started(cmd.Process.Pid)
	}

	lastLines := &tail{keep: 20}
	var copied sync.WaitGroup
	copied.Add(1)
	go func() {
		defer copied.Done()
		w := io.MultiWriter(logFile, lastLines)
		if o.Console != nil {
			w = io.MultiWriter(logFile, lastLines, o.Console)
		}
		io.Copy(w, consoleR)
	}()

	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	var waitErr error
	select {
	case waitErr = <-done:
	case <-ctx.Done():
		notice("powering the guest off (QMP system_powerdown); QEMU quits in %s if it has not", o.ShutdownTimeout)
		waitErr = shutdown(o.State.QMP(), cmd, done, o.ShutdownTimeout, notice)
	}
	copied.Wait()
	os.Remove(o.State.QMP())

	res := &Result{}
	var ee *exec.ExitError
	switch {
	case waitErr == nil:
	case errors.As(waitErr, &ee):
		if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
			res.ExitCode, res.Signal = 128+int(ws.Signal()), unix.SignalName(ws.Signal())
		} else {
			res.ExitCode = ee.ExitCode()
		}
	default:
		return nil, waitErr
	}
	rec.Ended, rec.ExitCode, rec.Signal, rec.State = time.Now().UTC(), res.ExitCode, res.Signal, RunExited
	if res.ExitCode != 0 {
		msg := stderr.String()
		if msg != "" {
			msg = ": " + msg
		}
		notice("QEMU exited with status %d%s", res.ExitCode, msg)
		rec.State, rec.Error, rec.LastConsole = RunFailed, strings.TrimPrefix(msg, ": "), lastLines.Lines()
	} else {
		notice("QEMU exited")
	}
	if err := o.State.SaveRunRecord(rec); err != nil {
		notice("cannot record the run's end: %v", err)
	}
	return res, nil
}

// shutdown powers the guest off over QMP, then quits QEMU, then kills it.
func shutdown(sock string, cmd *exec.Cmd, done <-chan error, timeout time.Duration, notice func(string, ...any)) error {
	if err := qmpRun(sock, "system_powerdown"); err != nil {
		notice("QMP system_powerdown failed (%v)", err)
	}
	select {
	case err := <-done:
		return err
	case <-time.After(timeout):
	}
	notice("the guest did not power off within %s; telling QEMU to quit", timeout)
	if err := qmpRun(sock, "quit"); err != nil {
		notice("QMP quit failed (%v); killing QEMU", err)
		cmd.Process.Kill()
	}
	select {
	case err := <-done:
		return err
	case <-time.After(10 * time.Second):
		cmd.Process.Kill()
		return <-done
	}
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

// checkPaths names a missing kernel, initrd or disk before QEMU does.
func checkPaths(m *spec.Machine) error {
	check := func(what, p string) error {
		if p == "" {
			return nil
		}
		if _, err := os.Stat(p); err != nil {
			return fmt.Errorf("vm %s: %s %s: %w (fix it in %s)", m.Name, what, p, errors.Unwrap(err), m.File)
		}
		return nil
	}
	errs := []error{check("kernel", m.VM.Kernel), check("initrd", m.VM.Initrd)}
	for _, d := range m.VM.Disks {
		errs = append(errs, check("disk", d.Image))
	}
	for _, s := range m.VM.Shares {
		errs = append(errs, check("share", s.Source))
		if s.Proto == "virtiofs" {
			errs = append(errs, check("virtiofsd socket (start virtiofsd first)", s.Socket))
		}
	}
	return errors.Join(errs...)
}

// minimalEnv is QEMU's environment: nothing of ours (which might hold
// SOPS_AGE_KEY) beyond what QEMU needs to find its files.
func minimalEnv() []string {
	env := []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}
	for _, k := range []string{"HOME", "TMPDIR", "LANG", "XDG_RUNTIME_DIR"} {
		if v, ok := os.LookupEnv(k); ok {
			env = append(env, k+"="+v)
		}
	}
	return env
}

// tail keeps the last lines written to it (5 unless keep says more): QEMU's
// messages for errors, the console's last lines for a failed run.
type tail struct {
	mu    sync.Mutex
	keep  int
	lines []string
	part  string
}

func (t *tail) Write(p []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	text := t.part + string(p)
	i := strings.LastIndexByte(text, '\n')
	t.part = text[i+1:]
	sc := bufio.NewScanner(strings.NewReader(text[:i+1]))
	for sc.Scan() {
		if l := strings.TrimSpace(stripANSI(sc.Text())); l != "" {
			t.lines = append(t.lines, l)
		}
	}
	keep := max(t.keep, 5)
	if len(t.lines) > keep {
		t.lines = t.lines[len(t.lines)-keep:]
	}
	return len(p), nil
}

// Lines returns the kept lines.
func (t *tail) Lines() []string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return append([]string(nil), t.lines...)
}

var ansiRe = regexp.MustCompile(`\x1b\[[0-9;?]*[a-zA-Z]|\x1bc`)

func stripANSI(s string) string { return ansiRe.ReplaceAllString(s, "") }

// checkLeftover refuses to start a second QEMU while one from an earlier
// run of this VM survived its supervisor.
func checkLeftover(s StateDir, name string) error {
	rec, err := s.RunRecord()
	if err != nil || rec == nil || rec.QEMU == 0 || rec.State != RunRunning {
		return nil
	}
	cmdline, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", rec.QEMU))
	if err == nil && bytes.Contains(cmdline, []byte("\x00-name\x00"+name+",")) {
		return fmt.Errorf("vm %s: QEMU from an earlier run is still alive (pid %d) without its credvm; stop it first (kill %d)", name, rec.QEMU, rec.QEMU)
	}
	return nil
}

func (t *tail) String() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	lines := t.lines
	if p := strings.TrimSpace(t.part); p != "" {
		lines = append(lines[:len(lines):len(lines)], p)
	}
	return strings.Join(lines, " / ")
}
