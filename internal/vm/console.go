package vm

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/credvm/credvm/internal/console"
	"github.com/credvm/credvm/internal/hypervisor"
)

// AttachConsole attaches in and out to the running VM's serial console
// until the detach key (Ctrl-]) or the VM's end; hello is told once
// attached, with how to detach.
func AttachConsole(s StateDir, in *os.File, out, hello io.Writer) (console.Ended, error) {
	if !s.Exists() {
		return console.Closed, fmt.Errorf("vm %s does not exist in %s: create it with `credvm create %s`", s.Name, s.Root, s.Name)
	}
	rec, err := s.RunRecord()
	if err != nil {
		return console.Closed, err
	}
	if rec == nil || rec.State != RunRunning {
		return console.Closed, fmt.Errorf("vm %s is not running: start it (`credvm start %s`), or `credvm run %s --interactive` to boot it on this terminal; `credvm logs %s` shows its last console output", s.Name, s.Name, s.Name, s.Name)
	}
	if rec.Hypervisor != "" && rec.Hypervisor != "qemu" {
		return console.Closed, fmt.Errorf("vm %s runs on %s, whose console credvm does not attach to yet: `credvm logs -f %s` follows it", s.Name, rec.Hypervisor, s.Name)
	}
	fmt.Fprintf(hello, "attached to %s's console; Ctrl-] detaches (the VM keeps running)\r\n", s.Name)
	ended, err := console.Attach(hypervisor.ConsoleSocket(s.Sockets()), in, out)
	if errors.Is(err, console.ErrNoConsole) {
		return ended, fmt.Errorf("vm %s: %w: its hypervisor offers no console socket (started by an older credvm? restart it)", s.Name, err)
	}
	return ended, err
}

// RunInteractive is Run with this terminal as the guest's console, as
// `microvm -r` has it: what is typed goes to the guest, what it prints
// comes back (and to console.log), and Ctrl-] powers the guest off and
// ends the run.
func RunInteractive(ctx context.Context, o RunOptions, in *os.File, out io.Writer) (*Result, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	o.Console = nil // the attached socket shows it
	type ran struct {
		res *Result
		err error
	}
	done := make(chan ran, 1)
	go func() {
		res, err := Run(ctx, o)
		done <- ran{res, err}
	}()
	sock := hypervisor.ConsoleSocket(o.State.Sockets())
	for {
		select {
		case r := <-done:
			return r.res, r.err
		case <-time.After(50 * time.Millisecond):
		}
		if _, err := os.Stat(sock); err != nil {
			continue
		}
		ended, err := console.Attach(sock, in, out)
		if errors.Is(err, console.ErrNoConsole) {
			continue // a stale socket, not yet replaced
		}
		if err != nil {
			cancel()
			r := <-done
			return r.res, errors.Join(err, r.err)
		}
		if ended == console.Detached && o.Notices != nil {
			fmt.Fprintf(o.Notices, "\r\n%s: Ctrl-]: powering the guest off\r\n", o.State.Name)
		}
		cancel()
		r := <-done
		return r.res, r.err
	}
}
