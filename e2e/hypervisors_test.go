package e2e

import (
	"bufio"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/credvm/credvm/internal/testenv"
)

// exampleOn writes the source document's app-vm-01 switched to another
// hypervisor, with stand-in kernel and initrd files (the doubles boot
// nothing).
func exampleOn(t *testing.T, r *repo, hypervisor, extra string) {
	t.Helper()
	src, err := os.ReadFile(filepath.Join(testenv.Root(), "examples/app-vm-01/machines/app-vm-01/machine.toml"))
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{"vmlinuz", "initrd.img"} {
		os.MkdirAll(filepath.Join(r.dir, "images"), 0o755)
		os.WriteFile(filepath.Join(r.dir, "images", f), []byte("stand-in"), 0o644)
	}
	toml := strings.Replace(string(src), "[vm]\n", "[vm]\nhypervisor = \""+hypervisor+"\"\n"+extra, 1)
	r.machine("app-vm-01", toml)
}

type recorded struct {
	argv   []string
	bodies map[string]string // path → body
	valid  bool
}

func readRecord(t *testing.T, path string) recorded {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	rec := recorded{bodies: map[string]string{}, valid: true}
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 4<<20)
	for sc.Scan() {
		var r struct {
			Kind, Method, Path, Error string
			Argv                      []string
			Body                      json.RawMessage
			Valid                     bool
		}
		json.Unmarshal(sc.Bytes(), &r)
		switch r.Kind {
		case "argv":
			rec.argv = r.Argv
		case "request":
			rec.bodies[r.Method+" "+r.Path] += string(r.Body)
			if !r.Valid {
				rec.valid = false
				t.Errorf("%s %s was invalid by the published API: %s", r.Method, r.Path, r.Error)
			}
		}
	}
	return rec
}

// TestOtherHypervisors takes app-vm-01 through create/start/status/stop on
// cloud-hypervisor and firecracker (test doubles that validate every
// request against the published API): the credentials arrive in the
// recorded API calls and nowhere on any command line.
func TestOtherHypervisors(t *testing.T) {
	needCredvm(t)
	bin, records := testenv.HypervisorDouble(t)
	for _, hv := range []string{"cloud-hypervisor", "firecracker"} {
		t.Run(hv, func(t *testing.T) {
			r := newRepo(t)
			for i, kv := range r.env {
				if strings.HasPrefix(kv, "PATH=") {
					r.env[i] = "PATH=" + bin + ":" + strings.TrimPrefix(kv, "PATH=")
				}
			}
			exampleOn(t, r, hv, "")
			r.credvm("vars", "generate", "app-vm-01")
			secrets := map[string]string{}
			for name, v := range map[string]string{"API_KEY": "app-vm-secrets/api-key", "JWT_SECRET": "app-vm-secrets/jwt-secret", "DB_PASSWORD": "database/password"} {
				secrets[name] = r.credvm("vars", "get", "app-vm-01", v)
			}
			r.credvm("create", "app-vm-01", "--state-dir", r.state)

			if hv == "firecracker" {
				// Secrets would be on the guest kernel command line: refused.
				out, err := r.credvmErr("start", "app-vm-01", "--state-dir", r.state)
				if err == nil || !strings.Contains(out, "is secret, and firecracker can pass credentials only on the guest kernel command line, which every process in the guest can read in /proc/cmdline") {
					t.Fatalf("firecracker with secrets: %v\n%s", err, out)
				}
				out, _ = r.credvmErr("creds", "show", "app-vm-01")
				if !strings.Contains(out, "secrets_on_cmdline = true") {
					t.Errorf("creds show must explain the refusal too:\n%s", out)
				}
				exampleOn(t, r, hv, "")
				toml, _ := os.ReadFile(filepath.Join(r.dir, "machines/app-vm-01/machine.toml"))
				r.machine("app-vm-01", string(toml)+"\n[vm.firecracker]\nsecrets_on_cmdline = true\n")
				r.credvm("update", "app-vm-01", "--state-dir", r.state)
			}

			out := r.credvm("creds", "show", "app-vm-01")
			want := map[string]string{"cloud-hypervisor": "transport: oem_strings", "firecracker": "transport: cmdline"}[hv]
			if !strings.Contains(out, want) {
				t.Errorf("creds show:\n%s", out)
			}
			out = r.credvm("start", "app-vm-01", "--state-dir", r.state, "--shutdown-timeout", "2s")
			if !strings.Contains(out, "app-vm-01: started") {
				t.Fatalf("start: %s", out)
			}
			console := r.waitConsole(t, "app-vm-01", "credvm-guest: verify", 1)
			if !strings.Contains(console, "credvm-guest: verify ok: 5 credentials match the manifest") {
				t.Errorf("the double's guest view:\n%s", grepLines(console, "credvm-guest"))
			}
			for name, v := range secrets {
				if !strings.Contains(console, sha([]byte(v))+" "+name) {
					t.Errorf("%s did not arrive with its digest:\n%s", name, grepLines(console, "credvm-guest"))
				}
			}
			// While it runs: no secret on the hypervisor's or credvm's argv.
			var run struct {
				PID        int `json:"hypervisor_pid"`
				Supervisor int `json:"supervisor_pid"`
			}
			b, _ := os.ReadFile(filepath.Join(r.state, "app-vm-01", "run.json"))
			json.Unmarshal(b, &run)
			var ss [][]byte
			for _, v := range secrets {
				ss = append(ss, []byte(v))
			}
			if n := r.checkProcess(itoa(run.PID), hv, ss) + r.checkProcess(itoa(run.Supervisor), "credvm supervisor", ss); n != 2 {
				t.Errorf("the running %s and its supervisor were not both searched for secrets", hv)
			}

			status := r.credvm("status", "app-vm-01", "--state-dir", r.state)
			if !strings.Contains(status, "app-vm-01: current") || !strings.Contains(status, "hypervisor reports: Running") {
				t.Errorf("status:\n%s", status)
			}
			r.credvm("stop", "app-vm-01", "--state-dir", r.state)
			if got := r.list(t)["app-vm-01"]; got != "stopped|false|credvm start app-vm-01" {
				t.Errorf("after stop: %s", got)
			}

			rec := readRecord(t, testenv.DoubleRecord(records, filepath.Join(r.state, "app-vm-01", "sockets")))
			wantArgv := map[string]string{"cloud-hypervisor": "--api-socket path=", "firecracker": "--api-sock "}[hv]
			wantArgs := map[string]int{"cloud-hypervisor": 4, "firecracker": 2}[hv] // and --seccomp true
			if argv := strings.Join(rec.argv, " "); !strings.HasPrefix(argv, wantArgv) || len(rec.argv) != wantArgs {
				t.Errorf("argv: %q", rec.argv)
			}
			carrier := map[string]string{"cloud-hypervisor": "PUT /api/v1/vm.create", "firecracker": "PUT /boot-source"}[hv]
			for name, v := range secrets {
				if !strings.Contains(rec.bodies[carrier], name) || !strings.Contains(rec.bodies[carrier], jsonEscape(v)) {
					t.Errorf("%s is not in %s", name, carrier)
				}
			}
			stop := map[string]string{"cloud-hypervisor": "PUT /api/v1/vm.power-button", "firecracker": "PUT /actions"}[hv]
			if _, ok := rec.bodies[stop]; !ok {
				t.Errorf("stop did not use %s: %v", stop, keys(rec.bodies))
			}
		})
	}
}

func itoa(i int) string { b, _ := json.Marshal(i); return string(b) }

func jsonEscape(s string) string {
	b, _ := json.Marshal(s)
	return strings.Trim(string(b), `"`)
}

func keys(m map[string]string) []string {
	var k []string
	for x := range m {
		k = append(k, x)
	}
	return k
}
