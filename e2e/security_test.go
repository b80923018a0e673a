package e2e

import (
	"bytes"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// canaries holds secret values to hunt for, growing as the test learns
// them (generated secrets become known only after `vars get`).
type canaries struct {
	mu   sync.Mutex
	vals [][]byte
}

func (c *canaries) add(v []byte) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.vals = append(c.vals, bytes.TrimRight(v, "\n"))
}

func (c *canaries) find(b []byte) string {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, v := range c.vals {
		if len(v) < 8 {
			continue
		}
		if bytes.Contains(b, v) {
			return string(v[:4]) + "…"
		}
		if bytes.Contains(b, []byte(base64.StdEncoding.EncodeToString(v))) {
			return "base64(" + string(v[:4]) + "…)"
		}
	}
	return ""
}

// pollProcs searches every process's argv and environment for the
// canaries until stop is closed, and reports what it found.
func pollProcs(c *canaries, stop <-chan struct{}) <-chan []string {
	out := make(chan []string, 1)
	go func() {
		var hits []string
		seen := map[string]bool{}
		scans := 0
		for {
			select {
			case <-stop:
				out <- append(hits, fmt.Sprintf("(%d scans)", scans))
				return
			default:
			}
			procs, _ := filepath.Glob("/proc/[0-9]*")
			for _, p := range procs {
				for _, f := range []string{"cmdline", "environ"} {
					b, err := os.ReadFile(filepath.Join(p, f))
					if err != nil {
						continue
					}
					if w := c.find(b); w != "" {
						comm, _ := os.ReadFile(filepath.Join(p, "comm"))
						key := p + f + w
						if !seen[key] {
							seen[key] = true
							hits = append(hits, fmt.Sprintf("%s in %s of %s (%s)", w, f, p, strings.TrimSpace(string(comm))))
						}
					}
				}
			}
			scans++
			time.Sleep(10 * time.Millisecond)
		}
	}()
	return out
}

// TestNoLeak runs the whole workflow — keygen, generate, create, start a
// real guest, list, status, logs, creds show, rotate, stop, export, backup —
// with canary secrets, polling every process's argv and environment
// throughout, and then searches credvm's output (at -v), the state
// directory, the repository (sops files included: they must hold only
// ciphertext), the temporary directories and /dev/shm. Zero hits. It also
// checks the permissions of every file that holds or guards a secret.
func TestNoLeak(t *testing.T) {
	needGuests(t)
	r := newRepo(t)
	raw := make([]byte, 12)
	rand.Read(raw)
	canary := "CANARY-" + hex.EncodeToString(raw)
	c := &canaries{}
	c.add([]byte(canary))
	answer := filepath.Join(t.TempDir(), "answer")
	os.WriteFile(answer, []byte(canary), 0o600)

	r.machine("leak", idleMachine(256)+`
[vars.generators.canary]
script = 'cat "$prompts/value" > "$out/value"'
runtime_inputs = ["coreutils"]
prompts.value = { type = "hidden" }
files.value = {}
[credentials.CANARY]
var = "canary/value"
`)
	stop := make(chan struct{})
	hitsCh := pollProcs(c, stop)
	// Control: the poller must see a canary that is on a command line.
	control := exec.Command("sleep", "0.5", canary)
	if err := control.Run(); err == nil {
		t.Fatal("sleep accepted a canary as a duration")
	}
	exec.Command("sh", "-c", "sleep 0.5", "sh", canary).Run()
	var outputs bytes.Buffer
	run := func(args ...string) string {
		t.Helper()
		out, err := r.credvmErr(append([]string{"-v"}, args...)...)
		outputs.WriteString(out)
		if err != nil {
			t.Fatalf("credvm %s: %v\n%s", strings.Join(args, " "), err, out)
		}
		return out
	}
	get := func(v string) {
		out, err := r.credvmErr("vars", "get", "leak", v) // prints the value: by design, not searched
		if err != nil {
			t.Fatal(err)
		}
		c.add([]byte(out))
	}

	run("vars", "generate", "leak", "--prompt", "canary/value=@"+answer)
	get("g/key")
	run("vars", "list", "leak", "--json")
	run("creds", "show", "leak", "--json")
	run("create", "leak", "--state-dir", r.state)
	run("start", "leak", "--state-dir", r.state, "--shutdown-timeout", "1s")
	r.waitConsole(t, "leak", "credvm-guest: idle", 1)
	run("list", "--state-dir", r.state)
	run("status", "leak", "--json", "--state-dir", r.state)
	run("logs", "leak", "--state-dir", r.state)
	run("rotate", "leak", "--generator", "g", "--state-dir", r.state, "--shutdown-timeout", "1s")
	get("g/key")
	run("vars", "history", "leak")
	run("stop", "leak", "--state-dir", r.state)
	other := newRepo(t)
	var kg struct {
		PublicKey string `json:"public_key"`
	}
	json.Unmarshal([]byte(other.credvm("vars", "keygen", "--json")), &kg)
	bundle := filepath.Join(t.TempDir(), "leak.bundle")
	run("vars", "export", "leak", "--to", kg.PublicKey, "-o", bundle)
	archive := filepath.Join(t.TempDir(), "leak.tgz")
	run("backup", "leak", "-o", archive, "--state-dir", r.state)
	close(stop)
	hits := <-hitsCh
	scans := hits[len(hits)-1]
	hits = hits[:len(hits)-1]
	t.Logf("process scans while the workflow ran: %s", scans)
	controlSeen := false
	for _, h := range hits {
		if strings.Contains(h, "(sh)") || strings.Contains(h, "(sleep)") {
			controlSeen = true
			continue
		}
		t.Errorf("leak: %s", h)
	}
	if !controlSeen {
		t.Error("the process poller missed the control process holding the canary on its command line")
	}

	if w := c.find(outputs.Bytes()); w != "" {
		t.Errorf("leak: %s in credvm's output", w)
	}
	// Files: the state directory, the repository (every file, sops files
	// included), the key and the bundle, temporary directories, /dev/shm.
	// credvm's per-repository directory (journals) is outside the work
	// tree, under $XDG_STATE_HOME (issue 12).
	local := r.localDir()
	roots := []string{r.state, r.dir, local, bundle, archive, os.TempDir(), "/dev/shm"}
	for _, root := range roots {
		filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
			if err != nil || !d.Type().IsRegular() || p == answer || strings.HasSuffix(p, "key.txt") {
				return nil // the answer file and the user's key file hold them by design
			}
			info, err := d.Info()
			if err != nil || info.Size() > 64<<20 {
				return nil
			}
			b, err := os.ReadFile(p)
			if err != nil {
				return nil
			}
			if w := c.find(b); w != "" {
				t.Errorf("leak: %s in %s (mode %v)", w, p, info.Mode().Perm())
			}
			return nil
		})
	}
	// The backup is an archive: search its contents too.
	if out, err := exec.Command("tar", "-xzOf", archive).Output(); err != nil || c.find(out) != "" {
		t.Errorf("the backup archive holds a secret (%v)", err)
	}

	// Permissions of what holds or guards secrets.
	mode := func(p string) os.FileMode {
		fi, err := os.Lstat(p)
		if err != nil {
			t.Errorf("%s: %v", p, err)
			return 0
		}
		return fi.Mode().Perm()
	}
	for p, want := range map[string]os.FileMode{
		filepath.Join(r.dir, "key.txt"):                  0o600,
		filepath.Join(r.state, "leak"):                   0o700,
		filepath.Join(r.state, "leak", "vm.json"):        0o600,
		filepath.Join(r.state, "leak", "run.json"):       0o600,
		filepath.Join(r.state, "leak", "console.log"):    0o600,
		filepath.Join(r.state, "leak", "run.lock"):       0o600,
		filepath.Join(r.state, "leak", "supervisor.log"): 0o600,
		local:   0o700,
		bundle:  0o600,
		archive: 0o600,
	} {
		if got := mode(p); got != want {
			t.Errorf("%s is %v, want %v", p, got, want)
		}
	}
	if base, err := os.ReadDir("/dev/shm"); err == nil {
		for _, e := range base {
			if strings.HasPrefix(e.Name(), "credvm-") {
				if got := mode(filepath.Join("/dev/shm", e.Name())); got != 0o700 {
					t.Errorf("workspace base /dev/shm/%s is %v, want 0700", e.Name(), got)
				}
			}
		}
	}
}

// TestConcurrentListAndUpdate: lists while the configuration is updated
// over and over never fail, never see a torn vm.json, and all of it ends
// in bounded time.
func TestConcurrentListAndUpdate(t *testing.T) {
	needCredvm(t)
	r := newRepo(t)
	write := func(mem int) {
		p := filepath.Join(r.dir, "machines", "cc", "machine.toml")
		os.MkdirAll(filepath.Dir(p), 0o755)
		tmp := p + ".tmp"
		os.WriteFile(tmp, []byte(fmt.Sprintf("[vm]\nkernel = \"/k\"\nmem = %d\n[credentials]\nA = { value = \"a\" }\n", mem)), 0o644)
		os.Rename(tmp, p)
	}
	write(512)
	r.credvm("create", "cc", "--state-dir", r.state)
	start := time.Now()
	var wg sync.WaitGroup
	errs := make(chan string, 100)
	for i := range 6 {
		wg.Add(2)
		go func() {
			defer wg.Done()
			write(512 + 64*(i%2+1))
			if out, err := r.credvmErr("update", "cc", "--state-dir", r.state); err != nil {
				errs <- fmt.Sprintf("update: %v %s", err, out)
			}
		}()
		go func() {
			defer wg.Done()
			for range 3 {
				out, err := r.credvmErr("list", "--json", "--state-dir", r.state)
				var v []map[string]any
				if err != nil || json.Unmarshal([]byte(out), &v) != nil || len(v) != 1 {
					errs <- fmt.Sprintf("list: %v %s", err, out)
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for e := range errs {
		t.Error(e)
	}
	if d := time.Since(start); d > 60*time.Second {
		t.Errorf("6 updates and 18 lists took %s", d)
	}
	b, _ := os.ReadFile(filepath.Join(r.state, "cc", "vm.json"))
	var reg map[string]any
	if err := json.Unmarshal(b, &reg); err != nil {
		t.Errorf("vm.json is torn: %v", err)
	}
	if left, _ := filepath.Glob(filepath.Join(r.state, "cc", ".vm.json.tmp-*")); len(left) > 0 {
		t.Errorf("temporary files left: %v", left)
	}
}

// localDir is credvm's directory for the rig's repository: the one
// $XDG_STATE_HOME/credvm/repos/<hash> there is.
func (r *repo) localDir() string {
	r.t.Helper()
	for _, kv := range r.env {
		if v, ok := strings.CutPrefix(kv, "XDG_STATE_HOME="); ok {
			dirs, _ := filepath.Glob(filepath.Join(v, "credvm", "repos", "*"))
			if len(dirs) != 1 {
				r.t.Fatalf("credvm's directory for the repository: found %v under %s", dirs, v)
			}
			return dirs[0]
		}
	}
	r.t.Fatal("no XDG_STATE_HOME in the rig's environment")
	return ""
}
