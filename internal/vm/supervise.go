package vm

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// A VM started in the background runs under a supervisor: credvm itself,
// re-executed as `credvm run NAME --supervised`, in its own session, with
// its output in supervisor.log. It holds the VM's run lock for as long as
// the hypervisor runs, records the run in run.json, and on SIGTERM powers
// the guest off. `start` waits until the supervisor reports, on a pipe,
// one line of the handshake below: both ends live in this file.
//
//	started <hypervisor pid> <hypervisor name>   the hypervisor runs
//	running <pid>                                another process runs the VM
//	error: <message on one line>                 it could not start

// ReadyFD is the descriptor on which a supervised run reports to `start`.
const ReadyFD = 3

const (
	reportStarted = "started "
	reportRunning = "running "
	reportError   = "error: "
)

// DefaultStartWait is how long `start` waits for the supervisor's report.
const DefaultStartWait = 2 * time.Minute

// handshake is the supervisor's end: it reports once, then closes the
// pipe. Its zero value (not supervised) reports nothing.
type handshake struct{ f *os.File }

func supervisorHandshake() handshake { return handshake{os.NewFile(ReadyFD, "ready")} }

func (h *handshake) report(line string) {
	if h.f == nil {
		return
	}
	fmt.Fprintln(h.f, line)
	h.f.Close()
	h.f = nil
}

func (h *handshake) started(pid int, hypervisor string) {
	h.report(fmt.Sprintf("%s%d %s", reportStarted, pid, hypervisor))
}

// ended reports how Run ended, if it has not reported yet.
func (h *handshake) ended(err error) {
	var re *RunningError
	switch {
	case errors.As(err, &re):
		h.report(reportRunning + strconv.Itoa(re.PID))
	case err != nil:
		h.report(reportError + strings.ReplaceAll(err.Error(), "\n", "; "))
	}
}

// StartOptions configure a background start.
type StartOptions struct {
	State           StateDir
	ShutdownTimeout time.Duration
	// Self is the credvm executable (os.Executable).
	Self string
	// Wait bounds how long start waits for the hypervisor to come up.
	Wait time.Duration
}

// Started describes a VM that start brought up.
type Started struct {
	Name          string `json:"name"`
	Supervisor    int    `json:"supervisor_pid"`
	Hypervisor    string `json:"hypervisor,omitempty"`
	HypervisorPID int    `json:"hypervisor_pid,omitempty"`
	// AlreadyRunning: the VM ran already (Supervisor is its pid).
	AlreadyRunning bool `json:"already_running"`
}

// Start runs the VM in the background under a supervisor and returns once
// the hypervisor runs. A VM already running gives a *RunningError.
func Start(o StartOptions) (*Started, error) {
	if _, err := o.State.Registration(); err != nil {
		return nil, err
	}
	if running, pid := o.State.Running(); running {
		return nil, &RunningError{o.State.Name, pid}
	}
	if err := o.State.Ensure(); err != nil {
		return nil, err
	}
	logf, err := os.OpenFile(o.State.File("supervisor.log"), os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		return nil, err
	}
	defer logf.Close()
	fmt.Fprintf(logf, "=== %s: start\n", time.Now().UTC().Format(time.RFC3339))
	r, w, err := os.Pipe()
	if err != nil {
		return nil, err
	}
	defer r.Close()
	devnull, err := os.Open(os.DevNull)
	if err != nil {
		return nil, err
	}
	defer devnull.Close()
	// -v: supervisor.log (0600, in the state directory) keeps the
	// hypervisor's command line for debugging.
	cmd := exec.Command(o.Self, "run", o.State.Name, "--supervised", "-v",
		"--state-dir", o.State.Root, "--shutdown-timeout", o.ShutdownTimeout.String())
	cmd.Stdin, cmd.Stdout, cmd.Stderr = devnull, logf, logf
	cmd.ExtraFiles = []*os.File{w} // fd 3 = ReadyFD
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		w.Close()
		return nil, fmt.Errorf("vm %s: start supervisor: %w", o.State.Name, err)
	}
	w.Close()
	supervisor := cmd.Process.Pid
	cmd.Process.Release() // it outlives us

	lines := make(chan string, 1)
	go func() {
		line, _ := bufio.NewReader(r).ReadString('\n')
		lines <- strings.TrimSpace(line)
	}()
	select {
	case line := <-lines:
		st, err := o.State.parseReport(line)
		if st != nil {
			st.Supervisor = supervisor
		}
		return st, err
	case <-time.After(o.Wait):
		return nil, fmt.Errorf("vm %s: the hypervisor did not start within %s; see %s", o.State.Name, o.Wait, o.State.File("supervisor.log"))
	}
}

// parseReport is start's end of the handshake.
func (s StateDir) parseReport(line string) (*Started, error) {
	switch {
	case strings.HasPrefix(line, reportStarted):
		pid, name, _ := strings.Cut(strings.TrimPrefix(line, reportStarted), " ")
		n, err := strconv.Atoi(pid)
		if err != nil {
			break
		}
		return &Started{Name: s.Name, Hypervisor: name, HypervisorPID: n}, nil
	case strings.HasPrefix(line, reportRunning):
		pid, _ := strconv.Atoi(strings.TrimPrefix(line, reportRunning))
		return nil, &RunningError{s.Name, pid}
	case strings.HasPrefix(line, reportError):
		return nil, errors.New(strings.TrimPrefix(line, reportError))
	}
	return nil, fmt.Errorf("vm %s: the supervisor ended without starting the hypervisor; see %s", s.Name, s.File("supervisor.log"))
}

// Stop asks the VM's supervisor to power the guest off and waits until it
// has: timeout (0: the shutdown timeout the VM was started with) and a
// grace period on top; then it kills the supervisor and the hypervisor.
func Stop(s StateDir, timeout time.Duration) error {
	running, pid := s.Running()
	if !running {
		return fmt.Errorf("vm %s is not running", s.Name)
	}
	if pid <= 0 {
		return fmt.Errorf("vm %s: its run lock names no process", s.Name)
	}
	rec, _ := s.RunRecord()
	if timeout == 0 && rec != nil {
		timeout = time.Duration(rec.ShutdownTimeout)
	}
	if timeout == 0 {
		timeout = DefaultShutdownTimeout
	}
	grace := timeout + stopGrace
	if err := syscall.Kill(pid, syscall.SIGTERM); err != nil {
		return fmt.Errorf("vm %s: signal supervisor (pid %d): %w", s.Name, pid, err)
	}
	deadline := time.Now().Add(grace)
	for time.Now().Before(deadline) {
		if running, _ := s.Running(); !running {
			return nil
		}
		time.Sleep(100 * time.Millisecond)
	}
	syscall.Kill(pid, syscall.SIGKILL)
	if rec != nil && rec.HypervisorPID > 0 {
		syscall.Kill(rec.HypervisorPID, syscall.SIGKILL)
	}
	for range 50 {
		if running, _ := s.Running(); !running {
			return fmt.Errorf("vm %s did not stop within %s and was killed", s.Name, grace)
		}
		time.Sleep(100 * time.Millisecond)
	}
	return fmt.Errorf("vm %s could not be stopped (supervisor pid %d)", s.Name, pid)
}

// DefaultShutdownTimeout is how long a guest gets to power off before the
// hypervisor is told to quit; stopGrace is the supervisor's time beyond it.
const (
	DefaultShutdownTimeout = 30 * time.Second
	stopGrace              = 20 * time.Second
)

// Restart stops the VM if it runs, and starts it.
func Restart(o StartOptions) (*Started, error) {
	if running, _ := o.State.Running(); running {
		if err := Stop(o.State, 0); err != nil {
			return nil, err
		}
	}
	return Start(o)
}
