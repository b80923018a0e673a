package hypervisor

import (
	"encoding/base64"
	"encoding/json"
	"fmt"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/credvm/credvm/internal/cred"
)

// API is the HTTP API a hypervisor serves on a unix socket, as
// cloud-hypervisor and firecracker serve theirs (see httpunix.go).
type API struct {
	Socket  string
	Timeout time.Duration
}

// NewAPI returns a client for the API on socket.
func NewAPI(socket string) *API { return &API{Socket: socket, Timeout: 30 * time.Second} }

// APIError is a non-2xx answer.
type APIError struct {
	Method, Path string
	Status       int
	Body         string
}

func (e *APIError) Error() string {
	return fmt.Sprintf("%s %s: HTTP %d: %s", e.Method, e.Path, e.Status, e.Body)
}

// Do sends a request with a JSON body (nil for none) and decodes a JSON
// answer into out (nil to discard). The request body is never part of an
// error: it may hold credentials.
func (a *API) Do(method, path string, body, out any) error {
	var b []byte
	if body != nil {
		var err error
		if b, err = json.Marshal(body); err != nil {
			return err
		}
		defer clear(b)
	}
	status, resp, err := roundTrip(a.Socket, a.Timeout, method, path, b)
	if err != nil {
		return fmt.Errorf("%s %s: %w", method, path, err)
	}
	if status/100 != 2 {
		msg := strings.TrimSpace(string(resp))
		if len(msg) > 300 {
			msg = msg[:300] + "…"
		}
		return &APIError{method, path, status, msg}
	}
	if out != nil && len(resp) > 0 {
		return json.Unmarshal(resp, out)
	}
	return nil
}

// State asks an API for a VM's state: GET path, keeping only the answer's
// "state" field — the rest may hold the VM's configuration, secrets
// included, and is neither logged nor stored.
func (a *API) State(path string) (string, error) {
	var info struct {
		State string `json:"state"`
	}
	if err := a.Do("GET", path, nil, &info); err != nil {
		return "", err
	}
	return info.State, nil
}

// StartWithAPI starts a hypervisor that is configured through its HTTP
// API on a unix socket — cloud-hypervisor and firecracker — waits for the
// socket, and sends the configuration with configure. Any failure kills
// the process and comes back as "vm NAME: BINARY: …", scrubbed of every
// credential of the plan: an API's answer may quote a request, and
// requests carry secrets.
func StartWithAPI(vmName string, cmd *exec.Cmd, socket string, plan *cred.Plan, configure func(*API) error) (*Process, *API, error) {
	binary := filepath.Base(cmd.Path)
	p, err := StartProcess(cmd)
	if err != nil {
		return nil, nil, fmt.Errorf("vm %s: start %s: %w (install %s)", vmName, binary, err, binary)
	}
	fail := func(err error) (*Process, *API, error) {
		p.Kill()
		return nil, nil, fmt.Errorf("vm %s: %s: %s", vmName, binary, Scrub(err.Error(), plan))
	}
	if err := WaitForSocket(socket, p, 10*time.Second); err != nil {
		return fail(err)
	}
	api := NewAPI(socket)
	if err := configure(api); err != nil {
		return fail(err)
	}
	return p, api, nil
}

// Scrub keeps a plan's credential values out of a message built from a
// hypervisor's output or API answers.
func Scrub(msg string, plan *cred.Plan) string {
	if plan == nil {
		return msg
	}
	for i := range plan.Credentials {
		c := &plan.Credentials[i]
		for _, s := range []string{string(c.SMBIOSString()), string(c.Value), base64.StdEncoding.EncodeToString(c.Value)} {
			if len(s) >= 4 {
				msg = strings.ReplaceAll(msg, s, "[redacted]")
			}
		}
	}
	return msg
}
