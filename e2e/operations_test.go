package e2e

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func (r *repo) runRecord(t *testing.T, name string) (started time.Time) {
	t.Helper()
	var rec struct {
		Started time.Time `json:"started"`
	}
	b, _ := os.ReadFile(filepath.Join(r.state, name, "run.json"))
	json.Unmarshal(b, &rec)
	return rec.Started
}

// lastDigest is the KEY digest the guest reported at its latest boot.
func (r *repo) lastDigest(t *testing.T, name string) string {
	t.Helper()
	b, _ := os.ReadFile(filepath.Join(r.state, name, "console.log"))
	boots := strings.Split(string(b), "=== credvm: "+name+" started")
	last := boots[len(boots)-1]
	for _, l := range strings.Split(last, "\n") {
		f := strings.Fields(l)
		if len(f) == 6 && f[0] == "credvm-guest:" && f[1] == "cred" && f[5] == "KEY" {
			return f[4]
		}
	}
	t.Fatalf("%s: no KEY in the latest boot's report:\n%s", name, lastLines(last, 10))
	return ""
}

// TestRotation: three VMs tagged app rotate one at a time, each healthy
// before the next, the guests seeing the new digests; a failing health
// check on the second stops the rollout with the third untouched; rollback
// restores the old digest in the guest.
func TestRotation(t *testing.T) {
	needGuests(t)
	t.Parallel()
	r := newRepo(t)
	names := []string{"rot-a", "rot-b", "rot-c"}
	health := "[vm.health]\nconsole = \"credvm-guest: idle\"\ntimeout = \"60s\"\n"
	inv := ""
	for _, n := range names {
		r.machine(n, idleMachine(256)+health)
		inv += "[machines." + n + "]\ntags = [\"app\"]\n"
	}
	os.WriteFile(filepath.Join(r.dir, "inventory.toml"), []byte(inv), 0o644)
	r.credvm("vars", "generate")
	for _, n := range names {
		r.credvm("create", n, "--state-dir", r.state)
		r.credvm("start", n, "--state-dir", r.state, "--shutdown-timeout", "1s")
		t.Cleanup(func() { r.credvmErr("stop", n, "--state-dir", r.state) })
	}
	for _, n := range names {
		r.waitConsole(t, n, "credvm-guest: idle", 1)
	}

	out := r.credvm("rotate", "--tag", "app", "--dry-run", "--state-dir", r.state)
	if !strings.Contains(out, `2. rot-b: regenerate g (and dependents); restart, then healthy when console matches "credvm-guest: idle" within 1m0s`) {
		t.Errorf("dry run:\n%s", out)
	}
	before := map[string]string{}
	for _, n := range names {
		before[n] = r.credvm("vars", "get", n, "g/key")
	}
	if r.credvm("vars", "get", "rot-a", "g/key") != before["rot-a"] {
		t.Fatal("--dry-run changed a var")
	}

	out = r.credvm("rotate", "--tag", "app", "--state-dir", r.state, "--shutdown-timeout", "1s")
	var prev time.Time
	for _, n := range names {
		if !strings.Contains(out, n+": rotated, restarted, healthy") {
			t.Errorf("%s not rotated:\n%s", n, out)
		}
		key := r.credvm("vars", "get", n, "g/key")
		if key == before[n] {
			t.Errorf("%s: key unchanged", n)
		}
		if d := r.lastDigest(t, n); d != sha([]byte(key)) {
			t.Errorf("%s: the guest reports %s…, want the new key's digest", n, d[:12])
		}
		started := r.runRecord(t, n)
		if !started.After(prev) {
			t.Errorf("%s restarted at %s, not after the VM before it (%s): not one at a time", n, started, prev)
		}
		prev = started
		if got := r.list(t)[n]; got != "current|true|" {
			t.Errorf("%s after rotation: %s", n, got)
		}
	}

	// A health check that fails on the second VM stops the rollout.
	r.machine("rot-b", idleMachine(256)+"[vm.health]\nconsole = \"never appears\"\ntimeout = \"3s\"\n")
	r.credvm("update", "rot-b", "--state-dir", r.state)
	keysBefore := map[string]string{}
	for _, n := range names {
		keysBefore[n] = r.credvm("vars", "get", n, "g/key")
	}
	cStarted := r.runRecord(t, "rot-c")
	out, err := r.credvmErr("rotate", "--tag", "app", "--state-dir", r.state, "--shutdown-timeout", "1s")
	if err == nil {
		t.Fatalf("rotation with a failing health check succeeded:\n%s", out)
	}
	for _, want := range []string{
		"rot-a: rotated, restarted, healthy",
		`rot-b: rotated and restarted, but UNHEALTHY: vm rot-b is not healthy after 3s: no console line matched "never appears"`,
		"rot-c: untouched: old secrets",
		"roll rot-b back:  credvm vars rollback rot-b g && credvm restart rot-b",
		"go on with the rest (still on their old secrets):  credvm rotate rot-c",
		"credvm: rotation stopped at rot-b",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("missing %q in:\n%s", want, out)
		}
	}
	if r.credvm("vars", "get", "rot-c", "g/key") != keysBefore["rot-c"] {
		t.Error("rot-c's vars changed although the rollout stopped before it")
	}
	if !r.runRecord(t, "rot-c").Equal(cStarted) {
		t.Error("rot-c was restarted although the rollout stopped before it")
	}

	// Roll rot-b back: the guest sees the old digest again. (First let the
	// boot of the failed rollout reach idle: under load it takes a while.)
	r.waitConsole(t, "rot-b", "credvm-guest: idle", 3)
	hist := r.credvm("vars", "history", "rot-b")
	if !strings.Contains(hist, "GENERATOR") || strings.Contains(hist, keysBefore["rot-b"]) {
		t.Errorf("history:\n%s", hist)
	}
	r.credvm("vars", "rollback", "rot-b", "g")
	if r.credvm("vars", "get", "rot-b", "g/key") != keysBefore["rot-b"] {
		t.Fatal("rollback did not restore the previous key")
	}
	if got := r.list(t)["rot-b"]; got != "stale|true|credvm restart rot-b" {
		t.Errorf("after rollback: %s", got)
	}
	r.credvm("restart", "rot-b", "--state-dir", r.state, "--shutdown-timeout", "1s")
	r.waitConsole(t, "rot-b", "credvm-guest: idle", 4)
	if d := r.lastDigest(t, "rot-b"); d != sha([]byte(keysBefore["rot-b"])) {
		t.Errorf("after rollback and restart the guest reports %s…, want the old key's digest", d[:12])
	}
}

// guestMachine boots the fast guest, reports and powers off.
func guestMachine() string {
	return vmSection("fast") + `
[vars.generators.g]
script = 'head -c 24 /dev/urandom | od -An -tx1 | tr -d " \n" > "$out/key"'
runtime_inputs = ["coreutils"]
files.key = {}
[credentials]
KEY = { var = "g/key" }
`
}

// TestMigrationAndClone: export a VM's vars to a second repository with
// another user's key, import them there, and run the VM there: the guest
// gets the same secret. A clone gets a different one.
func TestMigrationAndClone(t *testing.T) {
	needGuests(t)
	t.Parallel()
	a := newRepo(t)
	a.machine("mig", guestMachine())
	a.credvm("vars", "generate", "mig")
	key := a.credvm("vars", "get", "mig", "g/key")

	b := newRepo(t) // another user and key
	pubB := strings.TrimSpace(b.credvm("vars", "keygen", "--json"))
	var kg struct {
		PublicKey string `json:"public_key"`
	}
	json.Unmarshal([]byte(pubB), &kg)
	bundle := filepath.Join(t.TempDir(), "mig.bundle")
	a.credvm("vars", "export", "mig", "--to", kg.PublicKey, "--with-machine-key", "-o", bundle)
	// Signed with a's own signing key, made beside its age key.
	out := b.credvm("vars", "import", bundle, "--from", filepath.Join(a.dir, "credvm-signing.key.pub"))
	if !strings.Contains(out, "mig: imported 1 var") {
		t.Fatalf("import: %s", out)
	}
	boot := b.run("mig", []byte(key))
	boot.mustVerify(t)
	if got := boot.creds["KEY"]; got.sha != sha([]byte(key)) {
		t.Errorf("after migration the guest got %s…, want the source's key", got.sha[:12])
	}
	// The machine kept its identity (--with-machine-key).
	ka, _ := os.ReadFile(filepath.Join(a.dir, "sops/machines/mig/key.json"))
	kb, _ := os.ReadFile(filepath.Join(b.dir, "sops/machines/mig/key.json"))
	if string(ka) != string(kb) {
		t.Error("the machine key changed in migration")
	}

	// Clone in the source repository: its own secret, seen by its guest.
	a.credvm("clone", "mig", "mig2")
	key2 := a.credvm("vars", "get", "mig2", "g/key")
	if key2 == key {
		t.Fatal("the clone has the same secret")
	}
	boot2 := a.run("mig2", []byte(key2))
	boot2.mustVerify(t)
	if got := boot2.creds["KEY"]; got.sha != sha([]byte(key2)) {
		t.Errorf("the clone's guest got %s…, want its own key", got.sha[:12])
	}
}
