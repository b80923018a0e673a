package vm

import (
	"bufio"
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
// QEMU runs, records the run in run.json, and on SIGTERM powers the guest
// off (QMP system_powerdown, then quit). `start` waits until the
// supervisor reports on a pipe that QEMU runs, or why it could not start.

// ReadyFD is the descriptor on which a supervised run reports to `start`.
const ReadyFD = 3

// StartOptions configure a background start.
type StartOptions struct {
	State           StateDir
	ShutdownTimeout time.Duration
	// Self is the credvm executable (os.Executable).
	Self string
	// Wait bounds how long start waits for QEMU to come up.
	Wait time.Duration
}

// Started describes a VM that start brought up.
type Started struct {
	Supervisor int
	QEMU       int
}

// Start runs the VM in the background under a supervisor and returns once
// QEMU runs. A VM already running gives a *RunningError.
func Start(o StartOptions) (*Started, error) {
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
	cmd := exec.Command(o.Self, "run", o.State.Name, "--supervised",
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

	type report struct {
		line string
		err  error
	}
	ch := make(chan report, 1)
	go func() {
		line, err := bufio.NewReader(r).ReadString('\n')
		ch <- report{strings.TrimSpace(line), err}
	}()
	wait := o.Wait
	if wait == 0 {
		wait = 2 * time.Minute
	}
	select {
	case rep := <-ch:
		switch {
		case strings.HasPrefix(rep.line, "started "):
			qemu, _ := strconv.Atoi(strings.TrimPrefix(rep.line, "started "))
			return &Started{Supervisor: supervisor, QEMU: qemu}, nil
		case strings.HasPrefix(rep.line, "running "):
			pid, _ := strconv.Atoi(strings.TrimPrefix(rep.line, "running "))
			return nil, &RunningError{o.State.Name, pid}
		case strings.HasPrefix(rep.line, "error: "):
			return nil, fmt.Errorf("%s", strings.TrimPrefix(rep.line, "error: "))
		}
		return nil, fmt.Errorf("vm %s: the supervisor ended without starting QEMU; see %s", o.State.Name, o.State.File("supervisor.log"))
	case <-time.After(wait):
		return nil, fmt.Errorf("vm %s: QEMU did not start within %s; see %s", o.State.Name, wait, o.State.File("supervisor.log"))
	}
}

// Stop asks the VM's supervisor to power the guest off and waits until it
// has, killing the supervisor and QEMU if they outlast grace.
func Stop(s StateDir, grace time.Duration) error {
	running, pid := s.Running()
	if !running {
		return fmt.Errorf("vm %s is not running", s.Name)
	}
	if pid <= 0 {
		return fmt.Errorf("vm %s: its run lock names no process", s.Name)
	}
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
	rec, _ := s.RunRecord()
	syscall.Kill(pid, syscall.SIGKILL)
	if rec != nil && rec.QEMU > 0 {
		syscall.Kill(rec.QEMU, syscall.SIGKILL)
	}
	for i := 0; i < 50; i++ {
		if running, _ := s.Running(); !running {
			return fmt.Errorf("vm %s did not stop within %s and was killed", s.Name, grace)
		}
		time.Sleep(100 * time.Millisecond)
	}
	return fmt.Errorf("vm %s could not be stopped (supervisor pid %d)", s.Name, pid)
}
