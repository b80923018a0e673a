package e2e

import (
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/credvm/credvm/internal/sops"
)

// idleMachine boots the fast guest and keeps it up after its report.
func idleMachine(mem int) string {
	s := vmSection("fast")
	s = strings.Replace(s, "quiet panic=-1", "quiet panic=-1 credvm.idle", 1)
	s = strings.Replace(s, "\nmem = 256\n", fmt.Sprintf("\nmem = %d\n", mem), 1)
	return s + `
[vars.generators.g]
script = 'head -c 24 /dev/urandom | od -An -tx1 | tr -d " \n" > "$out/key"'
runtime_inputs = ["coreutils"]
files.key = {}
[credentials]
KEY = { var = "g/key" }
`
}

func (r *repo) list(t *testing.T) map[string]string {
	t.Helper()
	var out []struct {
		Name    string `json:"name"`
		Status  string `json:"status"`
		Running bool   `json:"running"`
		Fix     string `json:"fix"`
	}
	if err := json.Unmarshal([]byte(r.credvm("list", "--json", "--state-dir", r.state)), &out); err != nil {
		t.Fatal(err)
	}
	m := map[string]string{}
	for _, v := range out {
		m[v.Name] = fmt.Sprintf("%s|%v|%s", v.Status, v.Running, v.Fix)
	}
	return m
}

// waitConsole waits until the VM's console log holds want n times.
func (r *repo) waitConsole(t *testing.T, name, want string, n int) string {
	t.Helper()
	deadline := time.Now().Add(2 * time.Minute)
	for {
		b, _ := os.ReadFile(filepath.Join(r.state, name, "console.log"))
		if strings.Count(string(b), want) >= n {
			return string(b)
		}
		if time.Now().After(deadline) {
			t.Fatalf("%q did not appear %d times in %s's console:\n%s", want, n, name, lastLines(string(b), 20))
		}
		time.Sleep(200 * time.Millisecond)
	}
}

func qemuCount(name string) int {
	out, _ := exec.Command("pgrep", "-f", "-c", "--", "-name "+name+",").Output()
	n, _ := strconv.Atoi(strings.TrimSpace(string(out)))
	return n
}

// TestLifecycle drives real QEMU guests through the imperative workflow:
// create → start → list current → edit → outdated → update -R → current;
// rotate a secret → stale → restart → current with the new digest in the
// guest; kill -9 of QEMU → failed → start works; concurrent starts → one VM.
func TestLifecycle(t *testing.T) {
	needGuests(t)
	t.Parallel()
	r := newRepo(t)
	name := "lc1"
	r.machine(name, idleMachine(256))
	st := func() string { return r.list(t)[name] }
	start := func(args ...string) string {
		return r.credvm(append([]string{"start", name, "--state-dir", r.state, "--shutdown-timeout", "1s"}, args...)...)
	}
	t.Cleanup(func() { r.credvmErr("stop", name, "--state-dir", r.state) })

	r.credvm("create", name, "--state-dir", r.state)
	if out, err := r.credvmErr("create", name, "--state-dir", r.state); err == nil || !strings.Contains(out, "vm lc1 already exists") {
		t.Errorf("second create: %v %s", err, out)
	}
	if got := st(); got != "not booted|false|credvm vars generate lc1 && credvm start lc1" {
		t.Errorf("after create: %s", got)
	}
	// Missing vars: start says what to run and starts nothing.
	if out, err := r.credvmErr("start", name, "--state-dir", r.state); err == nil || !strings.Contains(out, "run 'credvm vars generate lc1' first") {
		t.Errorf("start without vars: %v %s", err, out)
	}
	r.credvm("vars", "generate", name)
	key1 := r.credvm("vars", "get", name, "g/key")

	out := start()
	if !strings.Contains(out, "lc1: started (supervisor pid") {
		t.Errorf("start: %s", out)
	}
	r.waitConsole(t, name, "credvm-guest: idle", 1)
	if got := st(); got != "current|true|" {
		t.Errorf("after start: %s", got)
	}
	if out := start(); !strings.Contains(out, "lc1: already running (pid ") {
		t.Errorf("second start: %s", out)
	}

	// Edit the machine: outdated until update -R, which shows the change.
	r.machine(name, idleMachine(288))
	if got := st(); got != "outdated|true|credvm update -R lc1" {
		t.Errorf("after editing machine.toml: %s", got)
	}
	out = r.credvm("update", "-R", name, "--state-dir", r.state, "--shutdown-timeout", "1s")
	if !strings.Contains(out, "~ vm.mem: 256 → 288") || !strings.Contains(out, "lc1: started") {
		t.Errorf("update -R:\n%s", out)
	}
	r.waitConsole(t, name, "credvm-guest: idle", 2)
	if got := st(); got != "current|true|" {
		t.Errorf("after update -R: %s", got)
	}

	// Rotate the secret: stale until restart; then the guest has the new one.
	r.credvm("vars", "generate", name, "--regenerate")
	key2 := r.credvm("vars", "get", name, "g/key")
	if key2 == key1 {
		t.Fatal("regenerate did not change the key")
	}
	if got := st(); got != "stale|true|credvm restart lc1" {
		t.Errorf("after rotation: %s", got)
	}
	r.credvm("restart", name, "--state-dir", r.state, "--shutdown-timeout", "1s")
	console := r.waitConsole(t, name, "credvm-guest: idle", 3)
	if got := st(); got != "current|true|" {
		t.Errorf("after restart: %s", got)
	}
	boots := strings.Split(console, "credvm-guest: idle")
	last := boots[len(boots)-2]
	if !strings.Contains(last, sha([]byte(key2))+" KEY") || strings.Contains(last, sha([]byte(key1))) {
		t.Errorf("after restart the guest does not see the new secret's digest:\n%s", grepLines(last, "credvm-guest:"))
	}

	// kill -9 of QEMU: failed, with the exit and the console's last lines;
	// start works again.
	var rec struct {
		QEMU int `json:"hypervisor_pid"`
	}
	b, _ := os.ReadFile(filepath.Join(r.state, name, "run.json"))
	json.Unmarshal(b, &rec)
	if rec.QEMU == 0 {
		t.Fatalf("run.json has no hypervisor pid: %s", b)
	}
	syscall.Kill(rec.QEMU, syscall.SIGKILL)
	deadline := time.Now().Add(30 * time.Second)
	for st() != "failed|false|credvm start lc1" && time.Now().Before(deadline) {
		time.Sleep(200 * time.Millisecond)
	}
	if got := st(); got != "failed|false|credvm start lc1" {
		t.Errorf("after kill -9 of QEMU: %s", got)
	}
	status := r.credvm("status", name, "--state-dir", r.state)
	if !strings.Contains(status, "killed by SIGKILL") || !strings.Contains(status, "| credvm-guest: idle") {
		t.Errorf("status after the crash:\n%s", status)
	}
	start()
	r.waitConsole(t, name, "credvm-guest: idle", 4)
	if got := st(); got != "current|true|" {
		t.Errorf("start after the crash: %s", got)
	}

	// Two concurrent starts of a stopped VM: one VM.
	r.credvm("stop", name, "--state-dir", r.state)
	if got := st(); got != "stopped|false|credvm start lc1" {
		t.Errorf("after stop: %s", got)
	}
	var wg sync.WaitGroup
	outs := make([]string, 2)
	for i := range outs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			outs[i], _ = r.credvmErr("start", name, "--state-dir", r.state, "--shutdown-timeout", "1s")
		}()
	}
	wg.Wait()
	started, running := 0, 0
	for _, o := range outs {
		started += strings.Count(o, "lc1: started")
		running += strings.Count(o, "lc1: already running")
	}
	if started != 1 || running != 1 {
		t.Errorf("concurrent starts: want one started and one already running:\n%s", strings.Join(outs, "\n"))
	}
	if n := qemuCount(name); n != 1 {
		t.Errorf("%d QEMU processes for %s, want 1", n, name)
	}

	logs := r.credvm("logs", name, "--state-dir", r.state, "-n", "1")
	if strings.TrimSpace(logs) == "" || strings.Count(logs, "\n") > 1 {
		t.Errorf("logs -n 1: %q", logs)
	}
	r.credvm("destroy", name, "--state-dir", r.state)
	if _, err := os.Stat(filepath.Join(r.state, name)); err == nil {
		t.Error("destroy left the state directory")
	}
	if qemuCount(name) != 0 {
		t.Error("destroy left QEMU running")
	}
	if _, err := os.Stat(filepath.Join(r.dir, "vars/per-machine", name)); err != nil {
		t.Error("destroy without --purge-vars removed the vars")
	}
}

// TestSystemdUnit: the credvm@.service template passes systemd-analyze
// verify, and `run --systemd` tells a notify socket it is ready once QEMU
// runs — decrypting with the machine's own key from $CREDENTIALS_DIRECTORY
// when no user key is at hand.
func TestSystemdUnit(t *testing.T) {
	needGuests(t)
	t.Parallel()
	r := newRepo(t)
	units := t.TempDir()
	r.credvm("systemd", "install", "--dir", units)
	if analyze, err := exec.LookPath("systemd-analyze"); err == nil {
		link := filepath.Join(units, "credvm@vm1.service")
		os.Symlink(filepath.Join(units, "credvm@.service"), link)
		if out, err := exec.Command(analyze, "verify", link).CombinedOutput(); err != nil {
			t.Errorf("systemd-analyze verify: %v\n%s", err, out)
		}
	} else {
		t.Log("systemd-analyze not installed; unit not verified")
	}

	name := "sd1"
	r.machine(name, strings.Replace(idleMachine(256), " credvm.idle", "", 1))
	r.credvm("create", name, "--state-dir", r.state)
	r.credvm("vars", "generate", name)
	want := r.credvm("vars", "get", name, "g/key")

	// The machine key, as systemd would hand it over.
	creds := t.TempDir()
	keyTxt, _ := os.ReadFile(filepath.Join(r.dir, "key.txt"))
	ids := &sops.Identities{}
	if err := ids.Add(keyTxt, "key.txt"); err != nil {
		t.Fatal(err)
	}
	b, _ := os.ReadFile(filepath.Join(r.dir, "sops/secrets", name+"-age.key", "secret"))
	machineKey, err := sops.Decrypt(b, ids.List)
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(creds, "age-key"), machineKey, 0o400)

	sock := filepath.Join(t.TempDir(), "notify")
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: sock, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	cmd := exec.Command(credvmBin, "run", "--systemd", "--quiet", name, "--state-dir", r.state)
	cmd.Dir = r.dir
	for _, kv := range r.env {
		if !strings.HasPrefix(kv, "SOPS_AGE_KEY_FILE=") {
			cmd.Env = append(cmd.Env, kv)
		}
	}
	cmd.Env = append(cmd.Env, "SOPS_AGE_KEY_FILE=/nonexistent", "NOTIFY_SOCKET="+sock, "CREDENTIALS_DIRECTORY="+creds)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("run --systemd: %v\n%s", err, out)
	}
	// READY=1 comes with the guest's receipt (ready = "receipt"): after a
	// status saying the VM waits for it.
	var got []string
	for {
		conn.SetReadDeadline(time.Now().Add(time.Second))
		buf := make([]byte, 4096)
		n, _, err := conn.ReadFromUnix(buf)
		if err != nil {
			break
		}
		got = append(got, string(buf[:n]))
	}
	all := strings.Join(got, "\n--\n")
	if !strings.Contains(all, "STATUS=qemu running (pid ") || !strings.Contains(all, "waiting for the guest's receipt") {
		t.Errorf("notify socket got no waiting status:\n%s", all)
	}
	if i := slices.IndexFunc(got, func(m string) bool { return strings.Contains(m, "READY=1") }); i < 0 || !strings.Contains(got[i], "STATUS=running, credentials verified") {
		t.Errorf("notify socket got no READY=1 with the verified receipt:\n%s", all)
	}
	console, _ := os.ReadFile(filepath.Join(r.state, name, "console.log"))
	if !strings.Contains(string(console), sha([]byte(want))+" KEY") {
		t.Errorf("the guest did not get the key decrypted with the machine key:\n%s", grepLines(string(console), "credvm-guest"))
	}
}
