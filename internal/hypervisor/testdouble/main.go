// Command testdouble stands in for cloud-hypervisor and firecracker, which
// cannot be installed on the machines credvm is tested on. Installed (or
// linked) under either name, it behaves as that hypervisor's API does:
//
//   - it serves the API on the unix socket its command line names
//     (cloud-hypervisor --api-socket path=…, firecracker --api-sock …);
//   - it validates every request against the hypervisor's published API
//     description — cloud-hypervisor's OpenAPI document (its path set at
//     build time: -ldflags "-X main.chSchema=…/cloud-hypervisor.yaml") or
//     the subset of firecracker's swagger embedded here — with kin-openapi,
//     made strict about unknown fields (so a misspelt key fails here
//     instead of being ignored), and answers 400 to an invalid one;
//   - it records its argv and every request, with the verdict, as JSON
//     lines in <recordDir>/<socket's directory, "/" as "_">.jsonl
//     (-X main.recordDir=…; default: next to the socket) — credvm gives
//     hypervisors a minimal environment, so settings come this way;
//   - it "boots" by reading the credentials the request carried exactly
//     as the guest's systemd would (SMBIOS strings, or the kernel command
//     line) and printing credvm's guest report on the serial console —
//     the socket cloud-hypervisor was told to use, firecracker's stdout;
//   - it powers off on vm.power-button or SendCtrlAltDel (unless a file
//     "double-ignore-power" sits next to its socket, to test timeouts)
//     and exits on vmm.shutdown.
package main

import (
	"bytes"
	"context"
	_ "embed"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/getkin/kin-openapi/openapi2"
	"github.com/getkin/kin-openapi/openapi2conv"
	"github.com/getkin/kin-openapi/openapi3"
	"github.com/getkin/kin-openapi/openapi3filter"
	"github.com/getkin/kin-openapi/routers"
	"github.com/getkin/kin-openapi/routers/legacy"
	"gopkg.in/yaml.v3"

	"github.com/credvm/credvm/internal/guest"
)

//go:embed firecracker-subset.yaml
var firecrackerSpec []byte

// Set at build time with -ldflags -X.
var (
	chSchema  string
	recordDir string
)

type double struct {
	role    string
	dir     string
	router  routers.Router
	mu      sync.Mutex
	record  *os.File
	state   string
	config  json.RawMessage // cloud-hypervisor's VmConfig
	serial  string          // cloud-hypervisor's serial socket
	argvOEM []string        // OEM strings from argv
	boot    map[string]any  // firecracker's boot-source
	console io.Writer
}

func main() {
	d := &double{role: filepath.Base(os.Args[0]), state: "Created", console: os.Stdout}
	if err := d.run(os.Args[1:]); err != nil {
		fmt.Fprintf(os.Stderr, "%s (test double): %v\n", d.role, err)
		os.Exit(1)
	}
}

func (d *double) run(args []string) error {
	var sock string
	var err error
	switch d.role {
	case "cloud-hypervisor":
		sock, err = d.chArgs(args)
		if err == nil {
			err = d.loadCH()
		}
		d.state = "Created"
	case "firecracker":
		sock, err = fcArgs(args)
		if err == nil {
			err = d.loadFC()
		}
		d.state = "Not started"
	default:
		return fmt.Errorf("call me cloud-hypervisor or firecracker, not %s", d.role)
	}
	if err != nil {
		return err
	}
	d.dir = filepath.Dir(sock)
	p := filepath.Join(d.dir, "double.jsonl")
	if recordDir != "" {
		p = filepath.Join(recordDir, strings.ReplaceAll(d.dir, "/", "_")+".jsonl")
	}
	if d.record, err = os.OpenFile(p, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600); err != nil {
		return err
	}
	d.log(map[string]any{"kind": "argv", "role": d.role, "argv": args})
	l, err := net.Listen("unix", sock)
	if err != nil {
		return err
	}
	return http.Serve(l, http.HandlerFunc(d.serve))
}

func (d *double) chArgs(args []string) (string, error) {
	sock := ""
	for i := 0; i < len(args); i++ {
		if i+1 >= len(args) {
			break
		}
		switch args[i] {
		case "--api-socket":
			sock = strings.TrimPrefix(args[i+1], "path=")
		case "--serial":
			d.serial = strings.TrimPrefix(args[i+1], "socket=")
		case "--platform":
			v := strings.TrimPrefix(args[i+1], "oem_strings=")
			v = strings.TrimSuffix(strings.TrimPrefix(v, "["), "]")
			// cloud-hypervisor's string list: split on commas, quotes kept.
			d.argvOEM = strings.Split(v, ",")
		}
		i++
	}
	if sock == "" {
		return "", fmt.Errorf("no --api-socket")
	}
	return sock, nil
}

func fcArgs(args []string) (string, error) {
	for i := 0; i+1 < len(args); i++ {
		if args[i] == "--api-sock" {
			return args[i+1], nil
		}
	}
	return "", fmt.Errorf("no --api-sock")
}

func (d *double) loadCH() error {
	if chSchema == "" {
		return fmt.Errorf("built without -X main.chSchema=…/cloud-hypervisor.yaml")
	}
	doc, err := openapi3.NewLoader().LoadFromFile(chSchema)
	if err != nil {
		return err
	}
	return d.useDoc(doc)
}

func (d *double) loadFC() error {
	// openapi2 decodes from JSON only: go through a generic value.
	var generic map[string]any
	if err := yaml.Unmarshal(firecrackerSpec, &generic); err != nil {
		return err
	}
	js, err := json.Marshal(stringKeys(generic))
	if err != nil {
		return err
	}
	var doc2 openapi2.T
	if err := json.Unmarshal(js, &doc2); err != nil {
		return err
	}
	doc, err := openapi2conv.ToV3(&doc2)
	if err != nil {
		return err
	}
	return d.useDoc(doc)
}

// stringKeys turns YAML's map[any]any (response codes are integer keys)
// into JSON objects.
func stringKeys(v any) any {
	switch v := v.(type) {
	case map[string]any:
		for k, x := range v {
			v[k] = stringKeys(x)
		}
		return v
	case map[any]any:
		m := make(map[string]any, len(v))
		for k, x := range v {
			m[fmt.Sprint(k)] = stringKeys(x)
		}
		return m
	case []any:
		for i, x := range v {
			v[i] = stringKeys(x)
		}
	}
	return v
}

func (d *double) useDoc(doc *openapi3.T) error {
	strict(doc)
	if err := doc.Validate(context.Background()); err != nil {
		return fmt.Errorf("API description: %w", err)
	}
	r, err := legacy.NewRouter(doc)
	if err != nil {
		return err
	}
	d.router = r
	return nil
}

// strict forbids properties a schema does not declare.
func strict(doc *openapi3.T) {
	seen := map[*openapi3.Schema]bool{}
	var walk func(s *openapi3.SchemaRef)
	walk = func(s *openapi3.SchemaRef) {
		if s == nil || s.Value == nil || seen[s.Value] {
			return
		}
		seen[s.Value] = true
		v := s.Value
		if len(v.Properties) > 0 && v.AdditionalProperties.Has == nil && v.AdditionalProperties.Schema == nil {
			no := false
			v.AdditionalProperties.Has = &no
		}
		for _, p := range v.Properties {
			walk(p)
		}
		walk(v.Items)
		for _, x := range v.AllOf {
			walk(x)
		}
	}
	for _, s := range doc.Components.Schemas {
		walk(s)
	}
}

func (d *double) log(v map[string]any) {
	if d.record == nil {
		return
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	b, _ := json.Marshal(v)
	d.record.Write(append(b, '\n'))
}

func (d *double) serve(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(r.Body)
	r.Body = io.NopCloser(bytes.NewReader(body))
	entry := map[string]any{"kind": "request", "method": r.Method, "path": r.URL.Path}
	if len(body) > 0 {
		entry["body"] = json.RawMessage(body)
	}
	// A server-side URL has no scheme or host; the router matches them
	// against the API's server URL.
	r.URL.Scheme, r.URL.Host = "http", r.Host
	route, params, err := d.router.FindRoute(r)
	if err == nil {
		err = openapi3filter.ValidateRequest(r.Context(), &openapi3filter.RequestValidationInput{
			Request: r, PathParams: params, Route: route,
			Options: &openapi3filter.Options{AuthenticationFunc: openapi3filter.NoopAuthenticationFunc},
		})
	}
	entry["valid"] = err == nil
	if err != nil {
		entry["error"] = err.Error()
		d.log(entry)
		http.Error(w, `{"error":`+quote(err.Error())+`}`, http.StatusBadRequest)
		return
	}
	d.log(entry)
	status, out := d.handle(r.Method, r.URL.Path, body)
	if out != nil {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(status)
		json.NewEncoder(w).Encode(out)
		return
	}
	w.WriteHeader(status)
}

func quote(s string) string { b, _ := json.Marshal(s); return string(b) }

func (d *double) handle(method, path string, body []byte) (int, any) {
	d.mu.Lock()
	defer d.mu.Unlock()
	switch d.role + " " + method + " " + path {
	case "cloud-hypervisor GET /api/v1/vmm.ping":
		return 200, map[string]any{"version": "test-double"}
	case "cloud-hypervisor PUT /api/v1/vm.create":
		d.config = body
		var c struct {
			Serial struct {
				Socket string `json:"socket"`
			} `json:"serial"`
		}
		json.Unmarshal(body, &c)
		if c.Serial.Socket != "" {
			d.serial = c.Serial.Socket
		}
		return 204, nil
	case "cloud-hypervisor PUT /api/v1/vm.boot":
		d.state = "Running"
		go d.chBoot()
		return 204, nil
	case "cloud-hypervisor GET /api/v1/vm.info":
		return 200, map[string]any{"config": json.RawMessage(d.config), "state": d.state}
	case "cloud-hypervisor PUT /api/v1/vm.power-button", "firecracker PUT /actions":
		if strings.Contains(string(body), "InstanceStart") {
			d.state = "Running"
			go d.fcBoot()
			return 204, nil
		}
		if _, err := os.Stat(filepath.Join(d.dir, "double-ignore-power")); err != nil {
			exitSoon(0)
		}
		return 204, nil
	case "cloud-hypervisor PUT /api/v1/vm.shutdown":
		d.state = "Shutdown"
		return 204, nil
	case "cloud-hypervisor PUT /api/v1/vmm.shutdown":
		exitSoon(0)
		return 204, nil
	case "firecracker PUT /boot-source":
		json.Unmarshal(body, &d.boot)
		return 204, nil
	case "firecracker GET /":
		return 200, map[string]any{"app_name": "Firecracker", "id": "anonymous-instance", "state": d.state, "vmm_version": "test-double"}
	}
	if method == "PUT" {
		return 204, nil // the other configuration calls: accepted, recorded
	}
	return 404, map[string]any{"error": "not implemented by the test double"}
}

func exitSoon(code int) {
	go func() {
		time.Sleep(100 * time.Millisecond)
		os.Exit(code)
	}()
}

// chBoot serves the serial socket and prints the guest's view of the OEM
// strings, as credvm's guest report does.
func (d *double) chBoot() {
	d.mu.Lock()
	strs := d.argvOEM
	if d.config != nil {
		var c struct {
			Platform struct {
				OEMStrings []string `json:"oem_strings"`
			} `json:"platform"`
		}
		json.Unmarshal(d.config, &c)
		strs = c.Platform.OEMStrings
	}
	sock := d.serial
	d.mu.Unlock()
	var raw []byte
	raw = append(raw, 11, 5, 0, 0, byte(len(strs)))
	for _, s := range strs {
		raw = append(append(raw, s...), 0)
	}
	raw = append(raw, 0)
	creds, err := guest.ParseType11(raw)
	var out bytes.Buffer
	fmt.Fprintf(&out, "test-double: booted with %d OEM strings\n", len(strs))
	if err != nil {
		fmt.Fprintf(&out, "test-double: %v\n", err)
	}
	guest.Report(&out, creds, true)
	if sock == "" {
		return
	}
	l, err := net.Listen("unix", sock)
	if err != nil {
		return
	}
	c, err := l.Accept()
	if err != nil {
		return
	}
	c.Write(out.Bytes())
	// Keep the connection open, as a serial port stays open.
}

// fcBoot prints the guest's view of the kernel command line credentials
// on stdout, firecracker's serial console.
func (d *double) fcBoot() {
	d.mu.Lock()
	args, _ := d.boot["boot_args"].(string)
	d.mu.Unlock()
	creds := guest.ParseCmdline(args)
	fmt.Fprintf(d.console, "test-double: booted with kernel command line of %d bytes\n", len(args))
	guest.Report(d.console, creds, true)
}
