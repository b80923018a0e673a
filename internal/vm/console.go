package vm

import (
	"errors"
	"fmt"
	"io"
	"os"

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
	ended, err := console.Attach(hypervisor.ConsoleSocket(s.Path()), in, out)
	if errors.Is(err, console.ErrNoConsole) {
		return ended, fmt.Errorf("vm %s: %w: its hypervisor offers no console socket (started by an older credvm? restart it)", s.Name, err)
	}
	return ended, err
}
