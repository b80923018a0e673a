package cloudhypervisor

import (
	"bufio"
	"bytes"
	"encoding/base64"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/getkin/kin-openapi/openapi3"

	"github.com/credvm/credvm/internal/cred"
	"github.com/credvm/credvm/internal/hypervisor"
	"github.com/credvm/credvm/internal/spec"
	"github.com/credvm/credvm/internal/testenv"
)

// TestMain removes the test double's build when the tests are done.
func TestMain(m *testing.M) { testenv.Main(m) }

func machine(t *testing.T, toml string) *spec.Machine {
	return testenv.Machine(t, "[vm]\nhypervisor = \"cloud-hypervisor\"\nkernel = \"/k\"\ninitrd = \"/i\"\ncmdline = \"console=ttyS0\"\n"+toml)
}

var secret = []byte("s3cret,with=commas\nand newline")

func creds() []cred.Credential {
	return []cred.Credential{
		{Name: "API_KEY", Value: secret, Secret: true},
		{Name: "BIN", Value: []byte{0, 1, 2, 0xff}, Secret: true},
		{Name: "ENVIRONMENT", Value: []byte("production")},
	}
}

// TestVmConfigMatchesSchema validates the vm.create body credvm sends
// against cloud-hypervisor's own OpenAPI description.
func TestVmConfigMatchesSchema(t *testing.T) {
	schema := testenv.Fixture(t, "cloud-hypervisor", "cloud-hypervisor.yaml")
	doc, err := openapi3.NewLoader().LoadFromFile(schema)
	if err != nil {
		t.Fatal(err)
	}
	m := machine(t, `vcpu = 2
mem = 768
vsock_cid = 7
[[vm.disks]]
image = "/d.img"
read_only = true
[[vm.interfaces]]
type = "tap"
id = "tap0"
mac = "02:00:00:00:00:01"
[[vm.shares]]
source = "/data"
tag = "data"
socket = "/run/virtiofsd.sock"
`)
	p, err := Driver{}.Plan(m, creds())
	if err != nil {
		t.Fatal(err)
	}
	c, err := Config(m.Name, m.VM, p, "/state/vm1")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := json.Marshal(c)
	var v any
	json.Unmarshal(b, &v)
	if err := doc.Components.Schemas["VmConfig"].Value.VisitJSON(v); err != nil {
		t.Errorf("VmConfig does not validate against cloud-hypervisor.yaml: %v\n%s", err, b)
	}
	if !c.Memory.Shared || c.Memory.Size != 768<<20 || c.Cpus.BootVcpus != 2 || c.Vsock.Cid != 7 {
		t.Errorf("config: %s", b)
	}
	if len(c.Platform.OEMStrings) != 4 || !strings.HasPrefix(c.Platform.OEMStrings[0], "io.systemd.credential:credvm.manifest=credvm-manifest 2\n") {
		t.Errorf("oem strings: %q", c.Platform.OEMStrings)
	}
}

func TestPlanLimits(t *testing.T) {
	m := machine(t, "")
	big := []cred.Credential{{Name: "BIG", Value: bytes.Repeat([]byte("x"), 5000)}}
	if _, err := (Driver{}).Plan(m, big); err == nil || !strings.Contains(err.Error(), "and cloud-hypervisor has no other private transport; the guest would get cut or missing credentials, so it is not started") {
		t.Errorf("over the 252 budget: %v", err)
	}
	newer := machine(t, "guest_systemd = 257\n")
	if p, err := (Driver{}).Plan(newer, big); err != nil || p.Transport != OEMStrings {
		t.Errorf("a 257 guest reads the whole structure: %v", err)
	}
	var many []cred.Credential
	for i := range 255 {
		many = append(many, cred.Credential{Name: "C" + strings.Repeat("x", i%7) + string(rune('A'+i%26)) + string(rune('a'+i/26)), Value: []byte("v")})
	}
	if _, err := (Driver{}).Plan(newer, many); err == nil || !strings.Contains(err.Error(), "256 credentials (with the manifest) exceed the 255 strings") {
		t.Errorf("256 strings: %v", err)
	}
	argv := machine(t, "cloud_hypervisor.oem_strings_on_argv = true\n")
	if _, err := (Driver{}).Plan(argv, []cred.Credential{{Name: "A,B", Value: []byte("x")}}); err == nil || !strings.Contains(err.Error(), `credential "A,B" cannot go on cloud-hypervisor's command line`) {
		t.Errorf("comma in a name on argv: %v", err)
	}
}

// parseCHList splits "oem_strings=[a,b]" by cloud-hypervisor's rules
// (DESIGN.md §3): the option parser splits on commas outside [...] and
// "...", and the string list splits its bracketed value on commas, keeping
// any quote characters inside the strings.
func parseCHList(t *testing.T, opt string) []string {
	t.Helper()
	depth, quoted := 0, false
	var options []string
	start := 0
	for i, r := range opt {
		switch {
		case r == '"':
			quoted = !quoted
		case r == '[' && !quoted:
			depth++
		case r == ']' && !quoted:
			depth--
		case r == ',' && depth == 0 && !quoted:
			options = append(options, opt[start:i])
			start = i + 1
		}
	}
	options = append(options, opt[start:])
	for _, o := range options {
		if v, ok := strings.CutPrefix(o, "oem_strings="); ok {
			return strings.Split(strings.TrimSuffix(strings.TrimPrefix(v, "["), "]"), ",")
		}
	}
	t.Fatalf("no oem_strings in %q", opt)
	return nil
}

// TestArgvForm: with the opt-in, every string goes on argv in the binary
// form, and cloud-hypervisor's parser gives back exactly the credentials —
// commas, "=", newlines and NUL included.
func TestArgvForm(t *testing.T) {
	m := machine(t, "cloud_hypervisor.oem_strings_on_argv = true\nvcpu = 2\n")
	p, err := Driver{}.Plan(m, creds())
	if err != nil {
		t.Fatal(err)
	}
	if p.Transport != OEMStringsArgv || !strings.Contains(p.Why, "every local user can read them") {
		t.Errorf("plan: %s %s", p.Transport, p.Why)
	}
	argv, err := Argv(m.Name, m.VM, p, "/state/vm1")
	if err != nil {
		t.Fatal(err)
	}
	var platform string
	for i, a := range argv {
		if a == "--platform" {
			platform = argv[i+1]
		}
	}
	strs := parseCHList(t, platform)
	if len(strs) != 4 {
		t.Fatalf("cloud-hypervisor would see %d strings, want 4: %q", len(strs), strs)
	}
	want := creds()
	for i, s := range strs[1:] {
		body, ok := strings.CutPrefix(s, cred.SMBIOSBinaryPrefix)
		if !ok {
			t.Fatalf("string %d is not in the binary form: %q", i, s)
		}
		name, b64, _ := strings.Cut(body, "=")
		v, err := base64.StdEncoding.DecodeString(b64)
		if err != nil || name != want[i].Name || !bytes.Equal(v, want[i].Value) {
			t.Errorf("credential %d after cloud-hypervisor's parser: %q=%q (%v)", i, name, v, err)
		}
	}
	joined := strings.Join(argv, " ")
	for _, w := range []string{"--api-socket path=/state/vm1/ch.sock", "--kernel /k", "--initramfs /i", "--cmdline console=ttyS0", "--cpus boot=2", "--serial socket=/state/vm1/serial.sock", "--console off"} {
		if !strings.Contains(joined, w) {
			t.Errorf("argv lacks %q: %s", w, joined)
		}
	}

	// Without the opt-in: nothing but the API socket (and seccomp on) on argv.
	m2 := machine(t, "")
	p2, _ := Driver{}.Plan(m2, creds())
	argv2, _ := Argv(m2.Name, m2.VM, p2, "/state/vm1")
	if strings.Join(argv2, " ") != "--api-socket path=/state/vm1/ch.sock --seccomp true" {
		t.Errorf("argv without opt-in: %q", argv2)
	}
}

type record struct {
	Kind   string          `json:"kind"`
	Argv   []string        `json:"argv"`
	Method string          `json:"method"`
	Path   string          `json:"path"`
	Body   json.RawMessage `json:"body"`
	Valid  bool            `json:"valid"`
	Error  string          `json:"error"`
}

func readRecords(t *testing.T, path string) []record {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var out []record
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 4<<20)
	for sc.Scan() {
		var r record
		json.Unmarshal(sc.Bytes(), &r)
		out = append(out, r)
	}
	return out
}

// TestStartAgainstDouble drives the backend against the test double: the
// credentials travel in vm.create (valid by cloud-hypervisor's schema),
// never on argv; the double's guest view verifies; power-button stops it,
// and a guest that ignores the button is shut down after the timeout.
func TestStartAgainstDouble(t *testing.T) {
	bin, recs := testenv.HypervisorDouble(t)
	Binary = filepath.Join(bin, "cloud-hypervisor")
	for _, ignore := range []bool{false, true} {
		dir, err := os.MkdirTemp("/tmp", "chd")
		if err != nil {
			t.Fatal(err)
		}
		defer os.RemoveAll(dir)
		if ignore {
			os.WriteFile(filepath.Join(dir, "double-ignore-power"), nil, 0o600)
		}
		m := machine(t, "")
		p, err := Driver{}.Plan(m, creds())
		if err != nil {
			t.Fatal(err)
		}
		var console testenv.SyncBuffer
		var notices []string
		in, err := Driver{}.Start(hypervisor.Launch{Name: "vm1", VM: m.VM, Plan: p, Dir: dir, Console: &console,
			Notice: func(f string, a ...any) { notices = append(notices, f) }})
		if err != nil {
			t.Fatal(err)
		}
		if fi, err := os.Stat(apiSocket(dir)); err != nil || fi.Mode().Perm() != 0o600 {
			t.Errorf("API socket mode: %v %v (want 0600: it can read the OEM strings)", fi.Mode().Perm(), err)
		}
		state, err := Driver{}.Probe(dir)
		if err != nil || state != "Running" {
			t.Errorf("Probe = %q, %v", state, err)
		}
		deadline := time.Now().Add(10 * time.Second)
		for !strings.Contains(console.String(), "credvm-guest: verify") && time.Now().Before(deadline) {
			time.Sleep(20 * time.Millisecond)
		}
		if !strings.Contains(console.String(), "credvm-guest: verify ok: 3 credentials match the manifest") {
			t.Errorf("the double's guest view:\n%s", console.String())
		}
		exit := in.Shutdown(300 * time.Millisecond)
		if exit.Code != 0 {
			t.Errorf("exit: %+v", exit)
		}
		timedOut := strings.Contains(strings.Join(notices, "\n"), "did not power off")
		if timedOut != ignore {
			t.Errorf("ignore power=%v but timeout path taken=%v", ignore, timedOut)
		}

		rs := readRecords(t, testenv.DoubleRecord(recs, dir))
		var paths []string
		for _, r := range rs {
			switch r.Kind {
			case "argv":
				if strings.Join(r.Argv, " ") != "--api-socket path="+apiSocket(dir)+" --seccomp true" {
					t.Errorf("argv: %q", r.Argv)
				}
			case "request":
				paths = append(paths, r.Method+" "+r.Path)
				if !r.Valid {
					t.Errorf("%s %s was invalid by the schema: %s", r.Method, r.Path, r.Error)
				}
				if r.Path == "/api/v1/vm.create" && !bytes.Contains(r.Body, []byte(`io.systemd.credential:API_KEY=s3cret,with=commas\nand newline`)) {
					t.Errorf("vm.create lacks the credential: %s", r.Body)
				}
			}
		}
		want := "PUT /api/v1/vm.create,PUT /api/v1/vm.boot,GET /api/v1/vm.info,PUT /api/v1/vm.power-button"
		if ignore {
			want += ",PUT /api/v1/vm.shutdown,PUT /api/v1/vmm.shutdown"
		}
		if got := strings.Join(paths, ","); got != want {
			t.Errorf("requests:\n%s\nwant\n%s", got, want)
		}
	}
}

// TestDoubleRejectsWhatTheSchemaRejects keeps the double honest: a body
// cloud-hypervisor's schema forbids gets a 400, so the passing requests
// above mean something.
func TestDoubleRejectsWhatTheSchemaRejects(t *testing.T) {
	bin, _ := testenv.HypervisorDouble(t)
	dir, _ := os.MkdirTemp("/tmp", "chd")
	defer os.RemoveAll(dir)
	cmd := exec.Command(filepath.Join(bin, "cloud-hypervisor"), "--api-socket", "path="+apiSocket(dir))
	p, err := hypervisor.StartProcess(cmd)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Kill()
	if err := hypervisor.WaitForSocket(apiSocket(dir), p, 5*time.Second); err != nil {
		t.Fatal(err)
	}
	api := hypervisor.NewAPI(apiSocket(dir))
	for name, body := range map[string]any{
		"missing payload":  map[string]any{"cpus": map[string]any{"boot_vcpus": 1, "max_vcpus": 1}},
		"zero vcpus":       map[string]any{"payload": map[string]any{"kernel": "/k"}, "cpus": map[string]any{"boot_vcpus": 0, "max_vcpus": 1}},
		"misspelt field":   map[string]any{"payload": map[string]any{"kernel": "/k"}, "platfrom": map[string]any{}},
		"oem_strings type": map[string]any{"payload": map[string]any{"kernel": "/k"}, "platform": map[string]any{"oem_strings": "a,b"}},
	} {
		err := api.Do("PUT", "/api/v1/vm.create", body, nil)
		var ae *hypervisor.APIError
		if !errors.As(err, &ae) || ae.Status != 400 {
			t.Errorf("%s: %v, want HTTP 400", name, err)
		}
	}
}
