// Package receipt is the word a guest sends back to its host: it booted,
// and what became of each credential credvm sent it (ok, missing, cut,
// differs — never a value), then that it is ready. It travels over a
// channel credvm adds to every QEMU VM: a virtio-serial port named
// io.credvm.0 backed by a unix socket in the VM's socket directory (it
// needs no vhost module, so it works wherever QEMU does).
//
// The guest's word is input, not instructions: the host keeps only the
// statuses of credentials it sent, under names it knows, bounded in size,
// and uses them to show and to health-check — never to decide what to
// send or where.
package receipt

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/credvm/credvm/internal/guest"
)

// PortName is the virtio-serial port's name.
const PortName = "io.credvm.0"

// Statuses of a credential in a receipt.
const (
	OK      = "ok"
	Missing = "missing"
	Cut     = "cut"
	Differs = "differs"
)

// Receipt is one message from the guest.
type Receipt struct {
	Booted      bool         `json:"booted"`
	Ready       bool         `json:"ready"`
	Credentials []Credential `json:"credentials"`
	// Error: the guest could not verify at all (no manifest).
	Error string `json:"error,omitempty"`
	// Received is when the host read it (set by the host).
	Received time.Time `json:"received"`
}

// Credential is one credential's fate in the guest.
type Credential struct {
	Name   string `json:"name"`
	Status string `json:"status"`
}

// Problems are the credentials that did not arrive whole.
func (r *Receipt) Problems() []Credential {
	var out []Credential
	for _, c := range r.Credentials {
		if c.Status != OK {
			out = append(out, c)
		}
	}
	return out
}

// Verified reports whether the guest confirmed every credential.
func (r *Receipt) Verified() bool {
	return r != nil && r.Error == "" && len(r.Credentials) > 0 && len(r.Problems()) == 0
}

// Summary is how list and status show a receipt: "verified",
// "credentials cut: A, B", "unverified (…)".
func (r *Receipt) Summary() string {
	switch {
	case r == nil:
		return "unverified"
	case r.Error != "":
		return "unverified (the guest: " + r.Error + ")"
	case len(r.Problems()) > 0:
		byStatus := map[string][]string{}
		var order []string
		for _, c := range r.Problems() {
			if byStatus[c.Status] == nil {
				order = append(order, c.Status)
			}
			byStatus[c.Status] = append(byStatus[c.Status], c.Name)
		}
		var parts []string
		for _, s := range order {
			parts = append(parts, "credentials "+s+": "+strings.Join(byStatus[s], ", "))
		}
		return strings.Join(parts, "; ")
	case len(r.Credentials) == 0:
		return "unverified (no credentials reported)"
	}
	return "verified"
}

// FromVerify is the receipt of a guest that verified found credentials.
func FromVerify(found []guest.Found) Receipt {
	r := Receipt{Booted: true, Ready: true, Credentials: []Credential{}}
	ok, problems, err := guest.Verify(found)
	if err != nil {
		r.Error = err.Error()
		return r
	}
	for _, c := range ok {
		r.Credentials = append(r.Credentials, Credential{c.Name, OK})
	}
	for _, p := range problems {
		status, _, _ := strings.Cut(p.What, " ")
		status = strings.TrimSuffix(status, ":")
		r.Credentials = append(r.Credentials, Credential{p.Name, status})
	}
	return r
}

// FindPort is the guest's device for the port: /dev/virtio-ports/NAME
// (udev's link), else the /dev/vportNpM whose sysfs name is NAME.
func FindPort(root string) (string, error) {
	if p := filepath.Join(root, "dev/virtio-ports", PortName); exists(p) {
		return p, nil
	}
	names, _ := filepath.Glob(filepath.Join(root, "sys/class/virtio-ports/*/name"))
	for _, n := range names {
		b, err := os.ReadFile(n)
		if err == nil && strings.TrimSpace(string(b)) == PortName {
			return filepath.Join(root, "dev", filepath.Base(filepath.Dir(n))), nil
		}
	}
	return "", fmt.Errorf("no virtio-serial port %s: was the VM started by credvm (QEMU), and is virtio_console loaded?", PortName)
}

func exists(p string) bool { _, err := os.Stat(p); return err == nil }

// SendTimeout bounds how long Send waits for the host to listen.
var SendTimeout = 60 * time.Second

// Send writes r to the port as one line. The write waits until the host
// listens, for at most SendTimeout.
func Send(port string, r Receipt) error {
	f, err := os.OpenFile(port, os.O_WRONLY, 0)
	if err != nil {
		return err
	}
	f.SetWriteDeadline(time.Now().Add(SendTimeout)) // where the device polls
	b, err := json.Marshal(r)
	if err != nil {
		f.Close()
		return err
	}
	_, err = f.Write(append(b, '\n'))
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}

// maxLine bounds one message from the guest.
const maxLine = 64 << 10

// Read reads the guest's messages from r until it ends, calling got with
// each, checked against the credentials the host sent (sent): unknown
// names and statuses are dropped, a line over maxLine or not JSON ends
// the reading with an error.
func Read(r io.Reader, sent []string, got func(Receipt)) error {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 4096), maxLine)
	for sc.Scan() {
		var rc Receipt
		if err := json.Unmarshal(sc.Bytes(), &rc); err != nil {
			return fmt.Errorf("the guest's receipt is not JSON: %w", err)
		}
		rc.Credentials = slices.DeleteFunc(rc.Credentials, func(c Credential) bool {
			return !slices.Contains(sent, c.Name) || !slices.Contains([]string{OK, Missing, Cut, Differs}, c.Status)
		})
		if len(rc.Error) > 200 {
			rc.Error = rc.Error[:200]
		}
		rc.Received = time.Now().UTC()
		got(rc)
	}
	if err := sc.Err(); err != nil {
		if errors.Is(err, bufio.ErrTooLong) {
			return fmt.Errorf("the guest sent a receipt line over %d bytes", maxLine)
		}
		return err
	}
	return nil
}
