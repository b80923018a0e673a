package vm

import (
	"net"
	"time"

	"github.com/credvm/credvm/internal/cred"
	"github.com/credvm/credvm/internal/receipt"
)

// watchReceipts reads the guest's receipts from sock while the hypervisor
// runs (until done), passing each to got. The hypervisor listens on sock;
// credvm connects as soon as it is there, and the guest's write waits for
// that, so nothing is lost. A backend without the port makes no socket.
func watchReceipts(sock string, plan *cred.Plan, done <-chan struct{}, got func(receipt.Receipt)) {
	var sent []string
	for i := range plan.Credentials {
		sent = append(sent, plan.Credentials[i].Name)
	}
	for {
		conn, err := net.Dial("unix", sock)
		if err == nil {
			go func() { <-done; conn.Close() }()
			receipt.Read(conn, sent, got)
			conn.Close()
			return
		}
		select {
		case <-done:
			return
		case <-time.After(100 * time.Millisecond):
		}
	}
}
