package firecracker

import (
	"bufio"
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/credvm/credvm/internal/cred"
	"github.com/credvm/credvm/internal/hypervisor"
	"github.com/credvm/credvm/internal/spec"
	"github.com/credvm/credvm/internal/testenv"
)

// TestMain removes the test double's build when the tests are done.
func TestMain(m *testing.M) { testenv.Main(m) }

func machine(t *testing.T, toml string) *spec.Machine {
	return testenv.Machine(t, "[vm]\nhypervisor = \"firecracker\"\nkernel = \"/k\"\ncmdline = \"console=ttyS0 reboot=k\"\n"+toml)
}

func TestPlan(t *testing.T) {
	public := []cred.Credential{
		{Name: "ENVIRONMENT", Value: []byte("production"), Source: "value"},
		{Name: "GREETING", Value: []byte("hello world"), Source: "value"},
	}
	secret := append(public, cred.Credential{Name: "API_KEY", Value: []byte("k"), Secret: true, Source: "var g/api-key"})
	tests := []struct {
		name  string
		toml  string
		creds []cred.Credential
		err   string
	}{
		{"public only", "", public, ""},
		{"secret refused", "", secret, "credential API_KEY (var g/api-key) is secret, and firecracker can pass credentials only on the guest kernel command line, which every process in the guest can read in /proc/cmdline"},
		{"secret opted in", "[vm.firecracker]\nsecrets_on_cmdline = true\n", secret, ""},
		{"binary needs 254", "", []cred.Credential{{Name: "B", Value: []byte{0, 1}}}, "systemd.set_credential_binary= (systemd 254 or newer"},
		{"binary on 254", "guest_systemd = 254\n", []cred.Credential{{Name: "B", Value: []byte{0, 1}}}, ""},
		{"quote", "", []cred.Credential{{Name: "Q", Value: []byte(`a"b`)}}, "holds a quote, backslash or control character"},
		{"too long", "", []cred.Credential{{Name: "L", Value: bytes.Repeat([]byte("x"), 2000)}}, "x86 Linux takes 2048"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, err := Driver{}.Plan(machine(t, tt.toml), tt.creds)
			if testenv.ExpectError(t, err, tt.err) {
				return
			}
			args := BootArgs("console=ttyS0", p)
			if !strings.Contains(args, `"systemd.set_credential=GREETING:hello world"`) && tt.name != "binary on 254" {
				t.Errorf("a value with a space must be quoted: %s", args)
			}
			if !strings.Contains(args, "systemd.set_credential=credvm.manifest:Y3JlZHZtLW1hbmlmZXN0IDIK") {
				t.Errorf("the manifest travels base64-encoded: %s", args)
			}
		})
	}
}

// TestStartAgainstDouble: the configuration goes through the API (each
// body valid by firecracker's swagger), argv holds only the socket, the
// guest's view of the command line verifies against the manifest, and
// SendCtrlAltDel stops it.
func TestStartAgainstDouble(t *testing.T) {
	bin, recs := testenv.HypervisorDouble(t)
	Binary = filepath.Join(bin, "firecracker")
	dir, _ := os.MkdirTemp("/tmp", "fcd")
	defer os.RemoveAll(dir)
	m := machine(t, "vcpu = 2\nmem = 256\nvsock_cid = 5\n[[vm.disks]]\nimage = \"/d.img\"\n[[vm.interfaces]]\ntype = \"tap\"\nid = \"tap0\"\n")
	creds := []cred.Credential{{Name: "ENVIRONMENT", Value: []byte("production")}, {Name: "GREETING", Value: []byte("hello world")}}
	p, err := Driver{}.Plan(m, creds)
	if err != nil {
		t.Fatal(err)
	}
	var console testenv.SyncBuffer
	in, err := Driver{}.Start(hypervisor.Launch{Name: "vm1", VM: m.VM, Plan: p, Dir: dir, Console: &console, Notice: func(string, ...any) {}})
	if err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for !strings.Contains(console.String(), "credvm-guest: verify") && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	if !strings.Contains(console.String(), "credvm-guest: verify ok: 2 credentials match the manifest") {
		t.Errorf("the double's guest view:\n%s", console.String())
	}
	if state, err := (Driver{}).Probe(dir); err != nil || state != "Running" {
		t.Errorf("Probe = %q %v", state, err)
	}
	if exit := in.Shutdown(2 * time.Second); exit.Code != 0 {
		t.Errorf("exit %+v", exit)
	}
	f, err := os.Open(testenv.DoubleRecord(recs, dir))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var calls []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		var r struct {
			Kind, Method, Path, Error string
			Argv                      []string
			Valid                     bool
		}
		json.Unmarshal(sc.Bytes(), &r)
		if r.Kind == "argv" && strings.Join(r.Argv, " ") != "--api-sock "+apiSocket(dir) {
			t.Errorf("argv %q", r.Argv)
		}
		if r.Kind == "request" {
			calls = append(calls, r.Method+" "+r.Path)
			if !r.Valid {
				t.Errorf("%s %s invalid by firecracker's swagger: %s", r.Method, r.Path, r.Error)
			}
		}
	}
	want := "PUT /machine-config,PUT /boot-source,PUT /drives/disk0,PUT /network-interfaces/net0,PUT /vsock,PUT /actions,GET /,PUT /actions"
	if got := strings.Join(calls, ","); got != want {
		t.Errorf("calls:\n%s\nwant\n%s", got, want)
	}
}
