// Package console attaches a terminal to a running VM's serial console:
// the unix socket the hypervisor listens on in the VM's state directory
// (QEMU's socket chardev, which also keeps writing the console log).
// Keys go to the guest as typed — the terminal is in raw mode, so Ctrl-C
// reaches the guest's shell, not credvm — except the detach key, Ctrl-]
// (telnet's and virsh console's), which ends the session and leaves the
// VM running.
package console

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"syscall"

	"golang.org/x/term"
)

// DetachKey is Ctrl-].
const DetachKey = 0x1d

// Ended says how an attached session ended.
type Ended int

const (
	// Detached: the user pressed the detach key.
	Detached Ended = iota
	// Closed: the hypervisor closed the console (the VM stopped).
	Closed
)

// ErrNoConsole is Attach's error when nothing listens on the socket.
var ErrNoConsole = errors.New("no console to attach to")

// Attach connects in and out to the console at sock until the detach key
// or the console's end. A terminal in is put in raw mode and restored.
func Attach(sock string, in *os.File, out io.Writer) (Ended, error) {
	conn, err := net.Dial("unix", sock)
	if err != nil {
		if errors.Is(err, syscall.ENOENT) || errors.Is(err, syscall.ECONNREFUSED) {
			return Closed, ErrNoConsole
		}
		return Closed, err
	}
	defer conn.Close()
	if fd := int(in.Fd()); term.IsTerminal(fd) {
		old, err := term.MakeRaw(fd)
		if err != nil {
			return Closed, fmt.Errorf("the terminal: %w", err)
		}
		defer term.Restore(fd, old)
	}
	detached := make(chan struct{})
	go func() {
		buf := make([]byte, 512)
		for {
			n, err := in.Read(buf)
			if n > 0 {
				b := buf[:n]
				if i := bytes.IndexByte(b, DetachKey); i >= 0 {
					conn.Write(b[:i])
					close(detached)
					conn.(*net.UnixConn).CloseRead()
					return
				}
				if _, err := conn.Write(b); err != nil {
					return
				}
			}
			if err != nil {
				return
			}
		}
	}()
	io.Copy(out, conn)
	select {
	case <-detached:
		return Detached, nil
	default:
		return Closed, nil
	}
}
