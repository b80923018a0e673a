package vm

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"syscall"
	"time"

	"github.com/credvm/credvm/internal/cred"
	"github.com/credvm/credvm/internal/hypervisor"
	"github.com/credvm/credvm/internal/lock"
	"github.com/credvm/credvm/internal/receipt"
	"github.com/credvm/credvm/internal/spec"
	"github.com/credvm/credvm/internal/tail"
	"github.com/credvm/credvm/internal/words"
)

// bootOptions configure one boot of a machine with its credentials.
type bootOptions struct {
	Machine     *spec.Machine
	Credentials []cred.Credential
	State       StateDir
	// Console receives the guest's serial console (besides the log).
	Console io.Writer
	// Notices receives credvm's own one-line messages.
	Notices io.Writer
	// ShutdownTimeout is how long a powered-down guest gets to stop
	// before the hypervisor is told to quit.
	ShutdownTimeout time.Duration
	// Started, if set, is called with the hypervisor's pid once it has
	// settled: it has run for a moment, or the guest has printed.
	Started func(pid int, hypervisor string)
	// Receipt, if set, is called with each receipt the guest sends.
	Receipt func(receipt.Receipt)
	// ConfigHash and VarsHash are recorded in run.json as what the VM
	// booted with.
	ConfigHash, VarsHash string
	// Verbose adds details to the notices (-v).
	Verbose bool
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

// boot starts the machine's hypervisor and waits for it. Cancelling ctx
// asks the guest to power off, then stops the hypervisor after
// ShutdownTimeout.
func boot(ctx context.Context, o bootOptions) (*Result, error) {
	m := o.Machine
	notice := func(format string, args ...any) {
		if o.Notices != nil {
			fmt.Fprintf(o.Notices, m.Name+": "+format+"\n", args...)
		}
	}
	defer wipe(o.Credentials)
	drv, err := hypervisor.For(m)
	if err != nil {
		return nil, err
	}
	plan, err := drv.Plan(m, o.Credentials)
	if err != nil {
		return nil, err
	}
	if err := checkPaths(m); err != nil {
		return nil, err
	}
	if err := o.State.Ensure(); err != nil {
		return nil, err
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
	o.State.rotateConsole()
	logFile, err := os.OpenFile(o.State.Console(), os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		return nil, err
	}
	defer logFile.Close()
	fmt.Fprintf(logFile, "\n=== credvm: %s started %s ===\n", m.Name, time.Now().UTC().Format(time.RFC3339))
	lastLines := &tail.Lines{Keep: 20}
	spoke := &firstWrite{ch: make(chan struct{})}
	console := io.MultiWriter(logFile, lastLines, spoke)
	if o.Console != nil {
		console = io.MultiWriter(logFile, lastLines, spoke, o.Console)
	}

	as, why, err := hypervisor.ResolveUser(m.VM.User)
	if err != nil {
		return nil, fmt.Errorf("vm %s: %w", m.Name, err)
	}
	if why != "" && o.Verbose {
		notice("%s", why)
	}
	uid, gid := as.IDs()
	if err := o.State.EnsureSockets(uid, gid); err != nil {
		return nil, err
	}
	if err := checkReadable(m, as); err != nil {
		return nil, err
	}
	devs, err := setUpDevices(m, o.State.Path(), o.State.Sockets(), uid, gid, notice)
	if err != nil {
		return nil, err
	}
	defer devs.tearDown()

	notice("%s via %s: %s", words.Plural(len(plan.Credentials)-1, "credential", "credentials"), plan.Transport, plan.Why)
	launch := hypervisor.Launch{
		Name: m.Name, VM: devs.vm, Plan: plan, Dir: o.State.Sockets(), As: as,
		Console: console, Notice: notice, NetFiles: devs.netFiles,
	}
	if o.Verbose {
		launch.Detail = notice
	}
	inst, err := drv.Start(launch)
	wipe(plan.Credentials)
	if err != nil {
		return nil, err
	}
	runsAs := ""
	if as != nil {
		runsAs = " as " + as.Name
	}
	notice("%s started (pid %d%s); console log %s; Ctrl-C powers the guest off", drv.Name(), inst.PID(), runsAs, o.State.Console())
	rec := &RunRecord{State: RunRunning, Supervisor: os.Getpid(), Hypervisor: drv.Name(), HypervisorPID: inst.PID(), Started: time.Now().UTC(),
		ConfigHash: o.ConfigHash, VarsHash: o.VarsHash, Transport: string(plan.Transport), ShutdownTimeout: Duration(o.ShutdownTimeout)}
	if err := o.State.SaveRunRecord(rec); err != nil {
		notice("cannot record the run: %v", err)
	}
	exited := make(chan hypervisor.Exit, 1)
	waited := make(chan struct{})
	go func() { exited <- inst.Wait(); close(waited) }()
	var recMu sync.Mutex // the receipt watcher writes rec too
	go watchReceipts(hypervisor.ReceiptSocket(o.State.Sockets()), plan, waited, func(rc receipt.Receipt) {
		recMu.Lock()
		rec.Receipt = &rc
		if err := o.State.SaveRunRecord(rec); err != nil {
			notice("cannot record the guest's receipt: %v", err)
		}
		recMu.Unlock()
		notice("the guest's receipt: %s", rc.Summary())
		if o.Receipt != nil {
			o.Receipt(rc)
		}
	})
	exit, early := settle(ctx, exited, spoke.ch)
	if o.Started != nil && (!early || exit.Code == 0 && exit.Signal == "") {
		o.Started(inst.PID(), drv.Name())
	}
	died := ""
	if !early {
		select {
		case exit = <-exited:
		case <-ctx.Done():
			notice("powering the guest off; %s is stopped in %s if it has not", drv.Name(), o.ShutdownTimeout)
			exit = inst.Shutdown(o.ShutdownTimeout)
		case died = <-devs.died:
			// virtiofsd also ends when the hypervisor closes its
			// connection: a hypervisor exiting now is the cause.
			select {
			case exit = <-exited:
				died = ""
			case <-time.After(time.Second):
				notice("%s: powering the guest off (its share is gone)", died)
				exit = inst.Shutdown(o.ShutdownTimeout)
			}
		}
	}
	if exit.Err != nil {
		return nil, exit.Err
	}

	res := &Result{ExitCode: exit.Code, Signal: exit.Signal}
	recMu.Lock()
	defer recMu.Unlock()
	rec.Ended, rec.ExitCode, rec.Signal, rec.State = time.Now().UTC(), res.ExitCode, res.Signal, RunExited
	if res.ExitCode != 0 {
		msg := exit.Stderr
		if msg != "" {
			msg = ": " + msg
		}
		notice("%s exited with status %d%s", drv.Name(), res.ExitCode, msg)
		rec.State, rec.Error, rec.LastConsole = RunFailed, exit.Stderr, lastLines.Lines()
	} else {
		notice("%s exited", drv.Name())
	}
	if died != "" {
		rec.State, rec.Error = RunFailed, died
	}
	if err := o.State.SaveRunRecord(rec); err != nil {
		notice("cannot record the run's end: %v", err)
	}
	if died != "" {
		return res, fmt.Errorf("vm %s: stopped: %s: %w", m.Name, died, errDeviceDied)
	}
	if early && rec.State == RunFailed {
		return res, &EarlyExitError{Name: m.Name, Hypervisor: drv.Name(), Code: res.ExitCode, Signal: res.Signal,
			Stderr: exit.Stderr, Console: lastLines.Lines(), Log: o.State.Console()}
	}
	return res, nil
}

// Settling: a hypervisor that dies at once — a junk kernel, a missing
// device, an option it refuses — must fail `start`, not be reported as
// started. It has settled once it has run for settleMax, or once the guest
// (or its firmware) has printed and settleMin has passed.
const (
	settleMin = 200 * time.Millisecond
	settleMax = time.Second
)

// settle waits until the hypervisor has settled; early reports that it
// exited before, with how.
func settle(ctx context.Context, exited <-chan hypervisor.Exit, spoke <-chan struct{}) (exit hypervisor.Exit, early bool) {
	minimum, maximum := time.After(settleMin), time.After(settleMax)
	spoken, waited := false, false
	for {
		select {
		case exit = <-exited:
			return exit, true
		case <-ctx.Done():
			return exit, false
		case <-maximum:
			return exit, false
		case <-spoke:
			spoke, spoken = nil, true
		case <-minimum:
			waited = true
		}
		if spoken && waited {
			return exit, false
		}
	}
}

// firstWrite closes ch at the first bytes written to it.
type firstWrite struct {
	once sync.Once
	ch   chan struct{}
}

func (f *firstWrite) Write(p []byte) (int, error) {
	if len(p) > 0 {
		f.once.Do(func() { close(f.ch) })
	}
	return len(p), nil
}

// EarlyExitError is a hypervisor that died before it settled: the guest
// never ran. It carries the hypervisor's exit status (`run` exits with it).
type EarlyExitError struct {
	Name, Hypervisor string
	Code             int
	Signal           string
	Stderr           string
	Console          []string
	Log              string
}

func (e *EarlyExitError) Error() string {
	how := fmt.Sprintf("status %d", e.Code)
	if e.Signal != "" {
		how = "signal " + e.Signal
	}
	msg := fmt.Sprintf("vm %s: %s exited at once (%s): the guest did not start", e.Name, e.Hypervisor, how)
	if e.Stderr != "" {
		msg += "; " + e.Hypervisor + " said: " + e.Stderr
	}
	if len(e.Console) > 0 {
		msg += "; the console's last line: " + e.Console[len(e.Console)-1]
	}
	return msg + " (console log " + e.Log + ")"
}

// checkPaths names a missing kernel, initrd or disk before the hypervisor
// does.
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
		if s.Proto == "virtiofs" && !s.Managed() {
			errs = append(errs, check("virtiofsd socket (start virtiofsd first, or remove socket to let credvm run it)", s.Socket))
		}
	}
	return errors.Join(errs...)
}

// checkReadable names the boot files an unprivileged hypervisor could not
// read (disks and volumes reach it as open descriptors; the kernel and
// initrd it opens itself).
func checkReadable(m *spec.Machine, as *hypervisor.Identity) error {
	if as == nil {
		return nil
	}
	var errs []error
	for what, p := range map[string]string{"kernel": m.VM.Kernel, "initrd": m.VM.Initrd} {
		if p == "" {
			continue
		}
		if err := readableBy(p, as); err != nil {
			errs = append(errs, fmt.Errorf("vm %s: %s %s: the hypervisor runs as %s, who cannot read it (%v): make it readable (chmod o+r, and o+x on its directories), or set [vm] user = \"root\"", m.Name, what, p, as.Name, err))
		}
	}
	return errors.Join(errs...)
}

// readableBy reports whether the identity can read p, by the mode bits of
// p and of every directory above it.
func readableBy(p string, as *hypervisor.Identity) error {
	abs, err := filepath.Abs(p)
	if err != nil {
		return err
	}
	abs, err = filepath.EvalSymlinks(abs)
	if err != nil {
		return err
	}
	can := func(path string, bit os.FileMode) bool {
		fi, err := os.Stat(path)
		if err != nil {
			return false
		}
		st, _ := fi.Sys().(*syscall.Stat_t)
		mode := fi.Mode().Perm()
		switch {
		case st != nil && int(st.Uid) == as.UID:
			return mode&(bit<<6) != 0
		case st != nil && (int(st.Gid) == as.GID || slices.Contains(as.Groups, st.Gid)):
			return mode&(bit<<3) != 0
		}
		return mode&bit != 0
	}
	for dir := filepath.Dir(abs); ; dir = filepath.Dir(dir) {
		if !can(dir, 1) {
			return fmt.Errorf("%s is not searchable", dir)
		}
		if dir == "/" {
			break
		}
	}
	if !can(abs, 4) {
		return errors.New("not readable")
	}
	return nil
}

// checkLeftover refuses to start a second hypervisor while one from an
// earlier run of this VM survived its supervisor. Every backend names a
// socket in the VM's state directory on its command line, so a process
// with that path in its argv is the VM's.
func checkLeftover(s StateDir, name string) error {
	rec, err := s.RunRecord()
	if err != nil || rec == nil || rec.HypervisorPID == 0 || rec.State != RunRunning {
		return nil
	}
	cmdline, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", rec.HypervisorPID))
	if err == nil && bytes.Contains(cmdline, []byte(s.Path()+"/")) {
		return fmt.Errorf("vm %s: its hypervisor from an earlier run is still alive (pid %d) without its credvm; stop it first (kill %d)", name, rec.HypervisorPID, rec.HypervisorPID)
	}
	return nil
}
