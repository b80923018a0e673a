package vm

import (
	"fmt"
	"io"
	"net"
	"os"
	"time"

	"github.com/credvm/credvm/internal/spec"
)

// ConsoleOffset is the console log's current size: what a health check
// started now must not look at.
func (s StateDir) ConsoleOffset() int64 {
	fi, err := os.Stat(s.Console())
	if err != nil {
		return 0
	}
	return fi.Size()
}

// noCheckGrace is how long a VM without a health check must keep running
// after its start to count as healthy.
const noCheckGrace = 3 * time.Second

// WaitHealthy waits until a (re)started VM passes its health check
// ([vm.health]): its console shows a matching line after offset, and/or a
// TCP port accepts connections, within the timeout. Without a check, the
// VM is healthy when its hypervisor still runs after a short grace period.
// The error says what was checked and what was seen.
func WaitHealthy(s StateDir, m *spec.Machine, offset int64) error {
	h := &m.VM.Health
	deadline := time.Now().Add(h.CheckTimeout())
	if h.ConsoleRe() == nil && h.TCP == "" && m.VM.Ready == "receipt" {
		return waitReceipt(s, m)
	}
	if h.ConsoleRe() == nil && h.TCP == "" {
		time.Sleep(noCheckGrace)
		if running, _ := s.Running(); !running {
			return fmt.Errorf("vm %s stopped within %s of its start (no [vm.health] check is set)", m.Name, noCheckGrace)
		}
		return nil
	}
	consoleOK, tcpOK := h.ConsoleRe() == nil, h.TCP == ""
	for {
		if running, _ := s.Running(); !running {
			return fmt.Errorf("vm %s stopped before it was healthy", m.Name)
		}
		if !consoleOK {
			if f, err := os.Open(s.Console()); err == nil {
				f.Seek(offset, io.SeekStart)
				b, _ := io.ReadAll(f)
				f.Close()
				consoleOK = h.ConsoleRe().Match(b)
			}
		}
		if !tcpOK {
			if c, err := net.DialTimeout("tcp", h.TCP, time.Second); err == nil {
				c.Close()
				tcpOK = true
			}
		}
		if consoleOK && tcpOK {
			return nil
		}
		if time.Now().After(deadline) {
			var missing []string
			if !consoleOK {
				missing = append(missing, fmt.Sprintf("no console line matched %q", h.Console))
			}
			if !tcpOK {
				missing = append(missing, fmt.Sprintf("%s accepted no connection", h.TCP))
			}
			return fmt.Errorf("vm %s is not healthy after %s: %s", m.Name, h.CheckTimeout(), joinAnd(missing))
		}
		time.Sleep(200 * time.Millisecond)
	}
}

func joinAnd(s []string) string {
	switch len(s) {
	case 0:
		return ""
	case 1:
		return s[0]
	}
	return s[0] + " and " + s[1]
}

// waitReceipt is the default health check of a VM whose guest reports
// (ready = "receipt"): its receipt for this run says every credential
// arrived whole. A cut or missing credential fails at once; a guest that
// says nothing within ready_timeout is healthy if it still runs, and
// unverified.
func waitReceipt(s StateDir, m *spec.Machine) error {
	deadline := time.Now().Add(m.VM.ReadyWait())
	for {
		if running, _ := s.Running(); !running {
			return fmt.Errorf("vm %s stopped before its guest reported its credentials", m.Name)
		}
		if rec, err := s.RunRecord(); err == nil && rec != nil && rec.Receipt != nil {
			if rec.Receipt.Verified() {
				return nil
			}
			return fmt.Errorf("vm %s: its guest reports %s", m.Name, rec.Receipt.Summary())
		}
		if time.Now().After(deadline) {
			return nil // unverified: status says so
		}
		time.Sleep(200 * time.Millisecond)
	}
}
