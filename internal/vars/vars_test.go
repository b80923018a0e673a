package vars

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"filippo.io/age"

	"github.com/credvm/credvm/internal/faultinject"
	_ "github.com/credvm/credvm/internal/hypervisor/drivers" // machine files name a hypervisor
	"github.com/credvm/credvm/internal/repo"
	"github.com/credvm/credvm/internal/sops"
	"github.com/credvm/credvm/internal/spec"
	"github.com/credvm/credvm/internal/testenv"
)

// TestMain doubles as a helper process: with CREDVM_TEST_HELPER set, the
// test binary runs one Generate and exits, so crash tests can kill a real
// process at a fault point.
func TestMain(m *testing.M) {
	// The namespaces sandbox execs /proc/self/exe — this test binary — as
	// its init, as it does credvm.
	if len(os.Args) > 1 && os.Args[1] == SandboxInitArg {
		os.Exit(SandboxInit(os.Args[2:]))
	}
	switch os.Getenv("CREDVM_TEST_HELPER") {
	case "generate":
		os.Exit(helperGenerate())
	case "purge":
		os.Exit(helperPurge())
	}
	os.Exit(m.Run())
}

func helperPurge() int {
	r, err := repo.Open(os.Getenv("CREDVM_TEST_REPO"))
	if err == nil {
		_, err = Purge(r, os.Getenv("CREDVM_TEST_MACHINE"))
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	return 0
}

func helperGenerate() int {
	r, err := repo.Open(os.Getenv("CREDVM_TEST_REPO"))
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	ids, _ := sops.LoadUserIdentities()
	e := &Engine{Repo: r, User: ids}
	m, err := r.Machine(os.Getenv("CREDVM_TEST_MACHINE"))
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	_, err = e.Generate(context.Background(), []*spec.Machine{m}, GenerateOptions{Regenerate: true, NoCommit: true})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	return 0
}

type fixture struct {
	t      *testing.T
	dir    string
	id     *age.X25519Identity
	keyTxt string
	e      *Engine
}

// newRepo makes a repository with one registered user whose key is
// $SOPS_AGE_KEY_FILE, and the given machines.
func newRepo(t *testing.T, machines map[string]string) *fixture {
	t.Helper()
	dir := t.TempDir()
	id, _ := age.GenerateX25519Identity()
	keyTxt := filepath.Join(t.TempDir(), "keys.txt")
	os.WriteFile(keyTxt, []byte(id.String()+"\n"), 0o600)
	t.Setenv("SOPS_AGE_KEY_FILE", keyTxt)
	t.Setenv("SOPS_AGE_KEY", "")
	testenv.PrivateState(t)
	os.WriteFile(filepath.Join(dir, "credvm.toml"), nil, 0o644)
	f := &fixture{t: t, dir: dir, id: id, keyTxt: keyTxt}
	for name, content := range machines {
		f.writeMachine(name, content)
	}
	r, err := repo.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	if err := r.AddUser("alice", id.Recipient().String()); err != nil {
		t.Fatal(err)
	}
	ids, err := sops.LoadUserIdentities()
	if err != nil {
		t.Fatal(err)
	}
	f.e = &Engine{Repo: r, User: ids}
	return f
}

func (f *fixture) writeMachine(name, content string) {
	d := filepath.Join(f.dir, "machines", name)
	os.MkdirAll(d, 0o755)
	if err := os.WriteFile(filepath.Join(d, "machine.toml"), []byte(content), 0o644); err != nil {
		f.t.Fatal(err)
	}
}

func (f *fixture) machine(name string) *spec.Machine {
	f.t.Helper()
	m, err := f.e.Repo.Machine(name)
	if err != nil {
		f.t.Fatal(err)
	}
	return m
}

func (f *fixture) generate(opts GenerateOptions, names ...string) error {
	var ms []*spec.Machine
	for _, n := range names {
		ms = append(ms, f.machine(n))
	}
	opts.NoCommit = true
	_, err := f.e.Generate(context.Background(), ms, opts)
	return err
}

func (f *fixture) get(machine, gen, file string) string {
	f.t.Helper()
	v, err := f.e.Get(machine, f.machine(machine), gen, file)
	if err != nil {
		f.t.Fatal(err)
	}
	return string(v)
}

// snapshot hashes every file, link and directory under vars/ and sops/.
func (f *fixture) snapshot() string {
	f.t.Helper()
	var lines []string
	for _, top := range []string{"vars", "sops"} {
		filepath.WalkDir(filepath.Join(f.dir, top), func(p string, d fs.DirEntry, err error) error {
			if err != nil {
				return nil
			}
			rel, _ := filepath.Rel(f.dir, p)
			switch {
			case d.Type()&fs.ModeSymlink != 0:
				t, _ := os.Readlink(p)
				lines = append(lines, rel+" -> "+t)
			case d.IsDir():
				lines = append(lines, rel+"/")
			default:
				b, _ := os.ReadFile(p)
				sum := sha256.Sum256(b)
				lines = append(lines, rel+" "+hex.EncodeToString(sum[:8]))
			}
			return nil
		})
	}
	sort.Strings(lines)
	return strings.Join(lines, "\n")
}

const twoGens = `
[vars.generators.a]
runtime_inputs = ["openssl", "coreutils"]
script = '''
openssl rand -hex 16 | tr -d '\n' > "$out/key"
printf 'public-a' > "$out/pub"
'''
[vars.generators.a.files.key]
[vars.generators.a.files.pub]
secret = false

[vars.generators.b]
dependencies = ["a"]
runtime_inputs = ["coreutils"]
script = '''
printf 'derived-%s' "$(cat "$in/a/key")" > "$out/derived"
'''
[vars.generators.b.files.derived]

[credentials]
KEY = { var = "a/key" }
`

func TestGenerateLayout(t *testing.T) {
	f := newRepo(t, map[string]string{"vm1": twoGens})
	if err := f.generate(GenerateOptions{}, "vm1"); err != nil {
		t.Fatal(err)
	}
	key := f.get("vm1", "a", "key")
	if len(key) != 32 {
		t.Errorf("a/key = %d bytes, want 32", len(key))
	}
	if got := f.get("vm1", "b", "derived"); got != "derived-"+key {
		t.Errorf("b/derived = %q: the dependency's value did not reach $in", got)
	}
	if got := f.get("vm1", "a", "pub"); got != "public-a" {
		t.Errorf("a/pub = %q", got)
	}
	base := filepath.Join(f.dir, "vars/per-machine/vm1/a")
	if b, err := os.ReadFile(filepath.Join(base, "pub", "value")); err != nil || string(b) != "public-a" {
		t.Errorf("public value not stored in plain text: %q %v", b, err)
	}
	// clan's recipient links, relative, pointing at the key directories.
	for link, want := range map[string]string{
		"key/machines/vm1": "../../../../../../sops/machines/vm1",
		"key/users/alice":  "../../../../../../sops/users/alice",
	} {
		got, err := os.Readlink(filepath.Join(base, link))
		if err != nil || got != want {
			t.Errorf("link %s -> %q (%v), want %q", link, got, err, want)
		}
		if _, err := os.Stat(filepath.Join(base, link)); err != nil {
			t.Errorf("link %s dangles: %v", link, err)
		}
	}
	// Encrypted to exactly the machine and the user.
	b, _ := os.ReadFile(filepath.Join(base, "key", "secret"))
	mpub, _ := f.e.Repo.MachinePublicKey("vm1")
	want := []string{mpub, f.id.Recipient().String()}
	sort.Strings(want)
	rs, err := sops.Recipients(b)
	got := sops.Keys(rs)
	sort.Strings(got)
	if err != nil || !slices.Equal(got, want) {
		t.Errorf("recipients = %v (%v), want %v", got, err, want)
	}
	// The machine's key decrypts its var.
	mid, err := f.e.Repo.MachineIdentity("vm1", f.e.User)
	if err != nil {
		t.Fatal(err)
	}
	if pt, err := sops.Decrypt(b, mid.List); err != nil || string(pt) != key {
		t.Errorf("machine key: %q, %v", pt, err)
	}
	// No plaintext anywhere in the repository.
	filepath.WalkDir(f.dir, func(p string, d fs.DirEntry, err error) error {
		if err == nil && d.Type().IsRegular() {
			c, _ := os.ReadFile(p)
			if bytes.Contains(c, []byte(key)) {
				t.Errorf("plaintext of a/key found in %s", p)
			}
		}
		return nil
	})
	// Up to date: nothing runs again.
	before := f.snapshot()
	if err := f.generate(GenerateOptions{}, "vm1"); err != nil {
		t.Fatal(err)
	}
	if f.snapshot() != before {
		t.Error("a second generate changed current vars")
	}
}

// TestInteropSopsCLI: the real sops decrypts what generate stored, with the
// user's key and with the machine's key.
func TestInteropSopsCLI(t *testing.T) {
	sopsBin := testenv.Tool(t, "sops")
	f := newRepo(t, map[string]string{"vm1": twoGens})
	if err := f.generate(GenerateOptions{}, "vm1"); err != nil {
		t.Fatal(err)
	}
	want := f.get("vm1", "a", "key")
	secret := filepath.Join(f.dir, "vars/per-machine/vm1/a/key/secret")
	dec := func(keyFile, file string) string {
		cmd := exec.Command(sopsBin, "decrypt", "--input-type", "binary", "--output-type", "binary", file)
		cmd.Env = append(os.Environ(), "SOPS_AGE_KEY_FILE="+keyFile, "SOPS_CONFIG=/dev/null")
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("sops decrypt %s: %v\n%s", file, err, out)
		}
		return string(out)
	}
	if got := dec(f.keyTxt, secret); got != want {
		t.Errorf("sops with the user key: %q, want %q", got, want)
	}
	machineKey := filepath.Join(t.TempDir(), "machine.txt")
	os.WriteFile(machineKey, []byte(dec(f.keyTxt, filepath.Join(f.dir, "sops/secrets/vm1-age.key/secret"))), 0o600)
	if got := dec(machineKey, secret); got != want {
		t.Errorf("sops with the machine key: %q, want %q", got, want)
	}
}

// TestFailuresLeaveVarsIntact: every way a run can fail leaves the stored
// vars byte for byte as they were, across all generators of the run.
func TestFailuresLeaveVarsIntact(t *testing.T) {
	tests := []struct {
		name    string
		machine string
		opts    GenerateOptions
		want    string
	}{
		{"script fails", strings.Replace(twoGens, `printf 'public-a' > "$out/pub"`, `printf 'public-a' > "$out/pub"; echo "boom $(cat $out/key)" >&2; exit 3`, 1),
			GenerateOptions{Regenerate: true}, "the script failed with exit status 3"},
		{"declared file missing", strings.Replace(twoGens, `printf 'public-a' > "$out/pub"`, `true`, 1),
			GenerateOptions{Regenerate: true}, "did not write the declared file $out/pub"},
		{"undeclared link", strings.Replace(twoGens, `printf 'public-a' > "$out/pub"`, `printf 'public-a' > "$out/pub"; ln -s /etc/passwd "$out/extra"`, 1),
			GenerateOptions{Regenerate: true}, `the script wrote "extra", which is not declared and not a regular file`},
		{"symlink planted in $out", strings.Replace(twoGens, `printf 'public-a' > "$out/pub"`, `ln -s /etc/passwd "$out/pub"`, 1),
			GenerateOptions{Regenerate: true}, "$out/pub is not a regular file"},
		{"second generator fails after the first succeeded", strings.Replace(twoGens, `printf 'derived-%s'`, `false; printf 'derived-%s'`, 1),
			GenerateOptions{Regenerate: true}, "vars vm1/b: the script failed with exit status 1"},
		{"timeout", strings.Replace(twoGens, "[vars.generators.b.files.derived]", "[vars.generators.b.files.derived]\n", 1) + "\n",
			GenerateOptions{Regenerate: true}, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newRepo(t, map[string]string{"vm1": twoGens})
			if err := f.generate(GenerateOptions{}, "vm1"); err != nil {
				t.Fatal(err)
			}
			before := f.snapshot()
			oldKey := f.get("vm1", "a", "key")
			f.writeMachine("vm1", tt.machine)
			if tt.want == "" {
				// timeout case: a script that sleeps past its timeout
				f.writeMachine("vm1", strings.Replace(twoGens, "[vars.generators.b]\n", "[vars.generators.b]\ntimeout = \"300ms\"\n", 1))
				m := f.machine("vm1")
				m.Vars.Generators["b"].Script = "sleep 30"
				start := time.Now()
				_, err := f.e.Generate(context.Background(), []*spec.Machine{m}, tt.opts)
				if err == nil || !strings.Contains(err.Error(), "timed out after 300ms") {
					t.Fatalf("err = %v, want a timeout", err)
				}
				if d := time.Since(start); d > 20*time.Second {
					t.Errorf("the sleeping script was not killed: generate took %s", d)
				}
			} else {
				err := f.generate(tt.opts, "vm1")
				if err == nil || !strings.Contains(err.Error(), tt.want) {
					t.Fatalf("err = %v\nwant it to contain %q", err, tt.want)
				}
				if strings.Contains(err.Error(), oldKey) {
					t.Errorf("the error shows a secret value: %v", err)
				}
			}
			if after := f.snapshot(); after != before {
				t.Errorf("stored vars changed:\nbefore:\n%s\nafter:\n%s", before, after)
			}
			if got := f.get("vm1", "a", "key"); got != oldKey {
				t.Error("a/key changed")
			}
			noLeftovers(t, f.dir)
		})
	}
}

// leftovers fails if a staging directory, journal or workspace remains.
func noLeftovers(t *testing.T, dir string) {
	t.Helper()
	filepath.WalkDir(filepath.Join(dir, "vars"), func(p string, d fs.DirEntry, err error) error {
		if err == nil && (strings.Contains(p, stagingInfix) || strings.Contains(p, oldInfix) || d.Name() == markerFile) {
			t.Errorf("left behind: %s", p)
		}
		return nil
	})
	r, _ := repo.Open(dir)
	if js, _ := journals(r); len(js) > 0 {
		t.Errorf("journal left behind: %v", js)
	}
	if base, err := workspaceBase(); err == nil {
		entries, _ := os.ReadDir(base)
		for _, e := range entries {
			if strings.HasPrefix(e.Name(), fmt.Sprintf("gen-%d-", os.Getpid())) {
				t.Errorf("workspace left behind: %s", filepath.Join(base, e.Name()))
			}
		}
	}
}

// TestCrashConsistency kills a real credvm process with SIGKILL at every
// step of the commit and checks that the vars are all old or all new, and
// that the next run recovers and works.
func TestCrashConsistency(t *testing.T) {
	if !faultinject.Enabled {
		t.Fatal("this test kills credvm at fault points, which exist only in builds with -tags faultinject (make test sets it)")
	}
	points := []struct {
		point   string
		wantNew bool
	}{
		{"vars.script-done", false},
		{"vars.staged", false},
		{"vars.journaled", true},
		{"vars.swapped-first", true},
		{"vars.swapped-all", true},
	}
	for _, p := range points {
		t.Run(p.point, func(t *testing.T) {
			f := newRepo(t, map[string]string{"vm1": twoGens})
			if err := f.generate(GenerateOptions{}, "vm1"); err != nil {
				t.Fatal(err)
			}
			before := f.snapshot()
			oldKey, oldDerived := f.get("vm1", "a", "key"), f.get("vm1", "b", "derived")

			cmd := exec.Command(os.Args[0], "-test.run=^$")
			cmd.Env = append(os.Environ(), "CREDVM_TEST_HELPER=generate", "CREDVM_TEST_REPO="+f.dir,
				"CREDVM_TEST_MACHINE=vm1", faultinject.Env+"="+p.point)
			out, err := cmd.CombinedOutput()
			var ee *exec.ExitError
			if !errors.As(err, &ee) || ee.ExitCode() != -1 {
				t.Fatalf("helper was not killed at %s: %v\n%s", p.point, err, out)
			}

			// Recovery runs first thing in the next command.
			if err := Recover(f.e.Repo); err != nil {
				t.Fatal(err)
			}
			key, derived := f.get("vm1", "a", "key"), f.get("vm1", "b", "derived")
			switch {
			case p.wantNew:
				if key == oldKey || derived != "derived-"+key {
					t.Errorf("after the journal, want every generator new: key changed=%v, derived consistent=%v", key != oldKey, derived == "derived-"+key)
				}
			default:
				if f.snapshot() != before || key != oldKey || derived != oldDerived {
					t.Errorf("before the journal, want the old vars exactly")
				}
			}
			noLeftovers(t, f.dir)
			st, err := f.e.Status(f.machine("vm1"))
			if err != nil {
				t.Fatal(err)
			}
			for _, g := range st {
				if g.Status != StatusOK {
					t.Errorf("after recovery %s is %s (%s)", g.Name, g.Status, g.Reason)
				}
			}
			if err := f.generate(GenerateOptions{Regenerate: true}, "vm1"); err != nil {
				t.Fatalf("next run after the crash: %v", err)
			}
		})
	}
}

func TestOutdated(t *testing.T) {
	f := newRepo(t, map[string]string{"vm1": twoGens})
	if err := f.generate(GenerateOptions{}, "vm1"); err != nil {
		t.Fatal(err)
	}
	status := func() map[string]string {
		st, err := f.e.Status(f.machine("vm1"))
		if err != nil {
			t.Fatal(err)
		}
		out := map[string]string{}
		for _, g := range st {
			out[g.Name] = g.Status + ":" + g.Reason
			if g.Notice != "" {
				out[g.Name] += " (" + g.Notice + ")"
			}
		}
		return out
	}
	key := f.get("vm1", "a", "key")

	// Regenerating a dependency makes its dependents run too.
	if err := f.generate(GenerateOptions{Generators: []string{"a"}, Regenerate: true}, "vm1"); err != nil {
		t.Fatal(err)
	}
	if k := f.get("vm1", "a", "key"); k == key || f.get("vm1", "b", "derived") != "derived-"+k {
		t.Error("regenerating a did not regenerate its dependent b")
	}

	// A changed script is a notice, as clan calls such vars valid; -g
	// reruns the generator anyway (and its dependent).
	f.writeMachine("vm1", strings.Replace(twoGens, "public-a", "public-A", 1))
	st := status()
	if st["a"] != "ok: (definition changed since generation: --regenerate to apply)" || st["b"] != "ok:" {
		t.Errorf("after a script change: %v", st)
	}
	if err := f.generate(GenerateOptions{Generators: []string{"a"}}, "vm1"); err != nil {
		t.Fatal(err)
	}
	if st := status(); st["a"] != "ok:" || st["b"] != "ok:" {
		t.Errorf("after -g a: %v", st)
	}
	f.writeMachine("vm1", twoGens)
	// Validation: clan's .validation-hash.
	f.writeMachine("vm1", strings.Replace(twoGens, "[vars.generators.a.files.key]", "validation = { version = 1 }\n[vars.generators.a.files.key]", 1))
	if err := f.generate(GenerateOptions{}, "vm1"); err != nil {
		t.Fatal(err)
	}
	vh, err := os.ReadFile(filepath.Join(f.dir, "vars/per-machine/vm1/a/.validation-hash"))
	if sum := sha256.Sum256([]byte(`{"version":1}`)); err != nil || string(vh) != hex.EncodeToString(sum[:]) {
		t.Errorf(".validation-hash = %q, %v; want sha256 of Nix's toJSON", vh, err)
	}
	// A clan-written generator directory (no .credvm.json) is judged by the
	// validation hash alone.
	os.Remove(filepath.Join(f.dir, "vars/per-machine/vm1/a", MetaFile))
	if st := status(); st["a"] != "ok:" {
		t.Errorf("without .credvm.json: %v", st)
	}
	f.writeMachine("vm1", strings.Replace(twoGens, "[vars.generators.a.files.key]", "validation = { version = 2 }\n[vars.generators.a.files.key]", 1))
	if st := status(); st["a"] != "outdated:validation changed" {
		t.Errorf("changed validation: %v", st)
	}
	// A stored hash with no validation declared any more is outdated too.
	f.writeMachine("vm1", twoGens)
	if st := status(); st["a"] != "outdated:validation removed (a validation hash is stored, none is declared)" {
		t.Errorf("validation removed: %v", st)
	}
	// A missing file.
	os.RemoveAll(filepath.Join(f.dir, "vars/per-machine/vm1/b/derived"))
	if st := status(); !strings.HasPrefix(st["b"], "missing:") {
		t.Errorf("removed file: %v", st)
	}
}

func TestSandbox(t *testing.T) {
	probe := `
[vars.generators.p]
runtime_inputs = ["coreutils"]
script = '''
env | sort > "$out/env"
cat /proc/net/dev > "$out/net"
if command -v openssl >/dev/null; then echo yes; else echo no; fi > "$out/openssl"
if [ -r "${SOPS_AGE_KEY_FILE:-/nonexistent}" ] || [ -e /root/.config/sops ]; then echo visible; else echo hidden; fi > "$out/home"
'''
files.env = { secret = false }
files.net = { secret = false }
files.openssl = { secret = false }
files.home = { secret = false }
`
	modes := []Sandbox{SandboxNamespaces, SandboxNone}
	if _, err := exec.LookPath("bwrap"); err == nil {
		modes = append(modes, SandboxBwrap)
	} else {
		testenv.Missing(t, "bwrap", "apt-get install bubblewrap")
	}
	for _, mode := range modes {
		t.Run(string(mode), func(t *testing.T) {
			f := newRepo(t, map[string]string{"vm1": probe})
			t.Setenv("CREDVM_CANARY", "should-not-leak")
			if err := f.generate(GenerateOptions{Sandbox: mode}, "vm1"); err != nil {
				t.Fatal(err)
			}
			env := f.get("vm1", "p", "env")
			for _, bad := range []string{"CREDVM_CANARY", "SOPS_AGE_KEY_FILE", "HOME=/root"} {
				if strings.Contains(env, bad) {
					t.Errorf("environment leaks %s:\n%s", bad, env)
				}
			}
			if !strings.Contains(env, "PATH=") || strings.Contains(env, "PATH=/usr") {
				t.Errorf("PATH is not the restricted one:\n%s", env)
			}
			if got := strings.TrimSpace(f.get("vm1", "p", "openssl")); got != "no" {
				t.Errorf("openssl reachable without being a runtime input: %s", got)
			}
			if mode != SandboxNone {
				net := f.get("vm1", "p", "net")
				for _, l := range strings.Split(net, "\n")[2:] {
					if name, _, ok := strings.Cut(strings.TrimSpace(l), ":"); ok && name != "lo" {
						t.Errorf("network interface %q visible in the sandbox", name)
					}
				}
			}
			if mode == SandboxBwrap && strings.TrimSpace(f.get("vm1", "p", "home")) != "hidden" {
				t.Error("the user's key directory is visible inside bwrap")
			}
		})
	}
}

func TestRuntimeInputMissing(t *testing.T) {
	f := newRepo(t, map[string]string{"vm1": "[vars.generators.a]\nruntime_inputs = ['no-such-tool-xyz']\nscript = 'true'\nfiles.f = {}\n"})
	err := f.generate(GenerateOptions{}, "vm1")
	if err == nil || !strings.Contains(err.Error(), `runtime input "no-such-tool-xyz": no such command on $PATH and no installed package`) {
		t.Fatalf("err = %v", err)
	}
}

func TestPrompts(t *testing.T) {
	const m = `
[vars.generators.db]
script = 'cat "$prompts/password" > "$out/password"; cat "$prompts/user" > "$out/user"'
prompts.password = { type = "hidden" }
prompts.user = {}
files.password = {}
files.user = { secret = false }
`
	f := newRepo(t, map[string]string{"vm1": m})
	// No terminal and no answer: an error naming the prompt, before anything runs.
	err := f.generate(GenerateOptions{}, "vm1")
	if err == nil || !strings.Contains(err.Error(), `prompt "password" needs an answer and there is no terminal: pass --prompt db/password=@FILE`) {
		t.Fatalf("err = %v", err)
	}
	answers := Answers{"db/password": []byte("s3cret\n"), "user": []byte("app")}
	if err := f.generate(GenerateOptions{Answers: answers}, "vm1"); err != nil {
		t.Fatal(err)
	}
	if got := f.get("vm1", "db", "password"); got != "s3cret\n" {
		t.Errorf("password = %q", got)
	}
	if got := f.get("vm1", "db", "user"); got != "app" {
		t.Errorf("user = %q", got)
	}
}

func TestShared(t *testing.T) {
	const m = `
[vars.generators.ca]
share = true
script = 'head -c 16 /dev/urandom | od -An -tx1 | tr -d " \n" > "$out/key"'
runtime_inputs = ["coreutils"]
files.key = {}
[vars.generators.own]
dependencies = ["ca"]
script = 'cat "$in/ca/key" > "$out/copy"'
files.copy = {}
`
	f := newRepo(t, map[string]string{"vm1": m, "vm2": m})
	if err := f.generate(GenerateOptions{}, "vm1", "vm2"); err != nil {
		t.Fatal(err)
	}
	ca := f.get("vm1", "ca", "key")
	if ca == "" || f.get("vm2", "ca", "key") != ca || f.get("vm1", "own", "copy") != ca || f.get("vm2", "own", "copy") != ca {
		t.Error("shared generator not shared")
	}
	secret := filepath.Join(f.dir, "vars/shared/ca/key")
	if got := f.e.Repo.LinkedNames(secret, "machines"); strings.Join(got, ",") != "vm1,vm2" {
		t.Errorf("shared secret's machines = %v", got)
	}
	for _, m := range []string{"vm1", "vm2"} {
		mid, err := f.e.Repo.MachineIdentity(m, f.e.User)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := os.ReadFile(filepath.Join(secret, "secret"))
		if pt, err := sops.Decrypt(b, mid.List); err != nil || string(pt) != ca {
			t.Errorf("%s cannot read the shared secret: %v", m, err)
		}
	}
}

func TestSet(t *testing.T) {
	f := newRepo(t, map[string]string{"vm1": twoGens})
	if err := f.generate(GenerateOptions{}, "vm1"); err != nil {
		t.Fatal(err)
	}
	pub := f.get("vm1", "a", "pub")
	if err := f.e.Set(f.machine("vm1"), "a", "key", []byte("chosen\x00value"), SetOptions{NoCommit: true}); err != nil {
		t.Fatal(err)
	}
	if got := f.get("vm1", "a", "key"); got != "chosen\x00value" {
		t.Errorf("a/key = %q", got)
	}
	if got := f.get("vm1", "a", "pub"); got != pub {
		t.Errorf("set changed another file: %q", got)
	}
	st, _ := f.e.Status(f.machine("vm1"))
	for _, g := range st {
		if g.Name == "b" && (g.Status != StatusOK || !strings.Contains(g.Notice, "dependency a was regenerated since")) {
			t.Errorf("dependent b is %s (%s) after setting a/key, want ok with a notice (clan's rule)", g.Status, g.Notice)
		}
	}
	noLeftovers(t, f.dir)
}

func TestConcurrentGenerate(t *testing.T) {
	f := newRepo(t, map[string]string{"vm1": twoGens})
	var wg sync.WaitGroup
	errs := make([]error, 4)
	for i := range errs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			cmd := exec.Command(os.Args[0], "-test.run=^$")
			cmd.Env = append(os.Environ(), "CREDVM_TEST_HELPER=generate", "CREDVM_TEST_REPO="+f.dir, "CREDVM_TEST_MACHINE=vm1")
			if out, err := cmd.CombinedOutput(); err != nil {
				errs[i] = fmt.Errorf("%v: %s", err, out)
			}
		}()
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			t.Error(err)
		}
	}
	key := f.get("vm1", "a", "key")
	if f.get("vm1", "b", "derived") != "derived-"+key {
		t.Error("concurrent runs left a and b inconsistent")
	}
	noLeftovers(t, f.dir)
}

// TestClanFixture reads the real clan repository: as the admin, and through
// the machine key for a var only the machine and admin can read.
func TestClanFixture(t *testing.T) {
	src := testenv.Fixture(t, "clan-service-dummy")
	dir := t.TempDir()
	if err := exec.Command("cp", "-r", src+"/.", dir).Run(); err != nil {
		t.Fatal(err)
	}
	exec.Command("chmod", "-R", "u+w", dir).Run()
	t.Setenv("SOPS_AGE_KEY_FILE", filepath.Join(dir, "admin-age-key.txt"))
	t.Setenv("SOPS_AGE_KEY", "")
	testenv.PrivateState(t)
	r, err := repo.Find(filepath.Join(dir, "vars"))
	if err != nil {
		t.Fatalf("a clan directory (sops/ and vars/) is not recognised as a repository: %v", err)
	}
	ids, _ := sops.LoadUserIdentities()
	e := &Engine{Repo: r, User: ids}
	for _, c := range []struct{ m, g, f, want string }{
		{"peer1", "new-service", "a-secret", "a-secret"},
		{"peer1", "new-service", "not-a-secret", "not-a-secret"},
		{"admin1", "dummy-generator", "host-id", "18650\n"}, // the value file ends in a newline
	} {
		v, err := e.Get(c.m, nil, c.g, c.f)
		if err != nil || string(v) != c.want {
			t.Errorf("%s/%s/%s = %q, %v; want %q", c.m, c.g, c.f, v, err, c.want)
		}
	}
	v, err := e.Get("peer1", nil, "dummy-generator", "generated-password")
	sum := sha256.Sum256(v)
	if err != nil || !strings.HasPrefix(hex.EncodeToString(sum[:]), "9c4d3b6a") {
		t.Errorf("generated-password: %v", err)
	}

	// As the machine: take away the admin's direct access; the machine key
	// (which the admin can decrypt) still opens the var.
	f := filepath.Join(dir, "vars/per-machine/peer1/new-service/a-secret/secret")
	b, _ := os.ReadFile(f)
	pt, _ := sops.Decrypt(b, ids.List)
	mpub, _ := r.MachinePublicKey("peer1")
	onlyMachine, err := sops.Encrypt(pt, sops.AgeAll(mpub))
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(f, onlyMachine, 0o644)
	if v, err := e.Get("peer1", nil, "new-service", "a-secret"); err != nil || string(v) != "a-secret" {
		t.Errorf("through the machine key: %q, %v", v, err)
	}
}

// TestHistoryAndRollback: regenerating keeps the previous generation
// (encrypted, in vars-history/), rollback restores it — and is itself kept
// — and expired generations are pruned.
func TestHistoryAndRollback(t *testing.T) {
	f := newRepo(t, map[string]string{"vm1": twoGens})
	if err := f.generate(GenerateOptions{}, "vm1"); err != nil {
		t.Fatal(err)
	}
	old := f.get("vm1", "a", "key")
	if err := f.generate(GenerateOptions{Generators: []string{"a"}, Regenerate: true}, "vm1"); err != nil {
		t.Fatal(err)
	}
	rotated := f.get("vm1", "a", "key")
	m := f.machine("vm1")
	hist, err := f.e.History(m)
	if err != nil {
		t.Fatal(err)
	}
	gens := map[string]int{}
	for _, h := range hist {
		gens[h.Generator]++
		if time.Until(h.Expires) < 23*time.Hour || time.Until(h.Expires) > DefaultRetention {
			t.Errorf("%s expires %s, want in 24 h", h.ID, h.Expires)
		}
	}
	if gens["a"] != 1 || gens["b"] != 1 {
		t.Fatalf("history = %+v, want one kept generation of a and of b (its dependent)", hist)
	}
	// The kept files are encrypted: no plaintext in vars-history.
	filepath.WalkDir(filepath.Join(f.dir, HistoryDir), func(p string, d fs.DirEntry, err error) error {
		if err == nil && d.Type().IsRegular() {
			b, _ := os.ReadFile(p)
			if bytes.Contains(b, []byte(old)) {
				t.Errorf("plaintext in %s", p)
			}
		}
		return nil
	})

	res, err := f.e.Rollback(m, "a", RollbackOptions{NoCommit: true})
	if err != nil {
		t.Fatal(err)
	}
	if got := f.get("vm1", "a", "key"); got != old {
		t.Errorf("after rollback a/key is not the old value")
	}
	hist, _ = f.e.History(m)
	for _, h := range hist {
		if h.Generator == "a" && h.ID == res.Restored.ID {
			t.Errorf("the restored generation %s is still listed in history: %+v", res.Restored.ID, hist)
		}
	}
	if n := len(hist); n != 2 {
		t.Errorf("after rollback: %d kept generations, want 2 (b's, and a's rotated one)", n)
	}
	// Roll the rollback back.
	if _, err := f.e.Rollback(m, "a", RollbackOptions{NoCommit: true}); err != nil {
		t.Fatal(err)
	}
	if got := f.get("vm1", "a", "key"); got != rotated {
		t.Error("rolling back the rollback did not restore the rotated value")
	}
	if _, err := f.e.Rollback(m, "nope", RollbackOptions{NoCommit: true}); err == nil || !strings.Contains(err.Error(), `no generator "nope"`) {
		t.Errorf("unknown generator: %v", err)
	}

	os.WriteFile(filepath.Join(f.dir, "credvm.toml"), []byte("[history]\nretention = \"0s\"\n"), 0o644)
	if f.e.Repo, err = repo.Open(f.dir); err != nil { // settings are read when the repository is opened
		t.Fatal(err)
	}
	n, err := f.e.PruneHistory()
	if err != nil || n != 2 {
		t.Errorf("prune with retention 0: removed %d, %v; want 2", n, err)
	}
	if _, err := f.e.Rollback(m, "a", RollbackOptions{NoCommit: true}); err == nil || !strings.Contains(err.Error(), "no earlier generation is kept") {
		t.Errorf("rollback with nothing kept: %v", err)
	}
	noLeftovers(t, f.dir)
}

// TestMachineKeyToSomeoneElse: a var only the machine can read, and a
// machine key encrypted to another user: a clear error naming both, and
// the stored files untouched.
func TestMachineKeyToSomeoneElse(t *testing.T) {
	f := newRepo(t, map[string]string{"vm1": twoGens})
	if err := f.generate(GenerateOptions{}, "vm1"); err != nil {
		t.Fatal(err)
	}
	key := f.get("vm1", "a", "key")
	mpub, _ := f.e.Repo.MachinePublicKey("vm1")
	onlyMachine, _ := sops.Encrypt([]byte(key), sops.AgeAll(mpub))
	os.WriteFile(filepath.Join(f.dir, "vars/per-machine/vm1/a/key/secret"), onlyMachine, 0o644)
	// Readable through the machine key while the user can open it…
	if got := f.get("vm1", "a", "key"); got != key {
		t.Fatal("through the machine key: wrong value")
	}
	// …but not once the machine key is encrypted to someone else.
	other, _ := age.GenerateX25519Identity()
	mk, _ := f.e.Repo.MachineIdentity("vm1", f.e.User)
	foreign, _ := sops.Encrypt([]byte(mk.Raw()), sops.AgeAll(other.Recipient().String()))
	os.WriteFile(filepath.Join(f.dir, "sops/secrets/vm1-age.key/secret"), foreign, 0o644)
	before := f.snapshot()
	_, err := f.e.Get("vm1", f.machine("vm1"), "a", "key")
	want := "vars vm1/a/key: no identity matches the file's recipients: your key is not a recipient, and the machine's key cannot be opened either (machine vm1: decrypt sops/secrets/vm1-age.key/secret: no identity matches the file's recipients)"
	if err == nil || err.Error() != want {
		t.Errorf("err = %v\nwant  %s", err, want)
	}
	if f.snapshot() != before {
		t.Error("a failed read changed stored files")
	}
}

// TestForgedJournal: a journal in credvm's own directory that names
// anything but this repository's generator directories, or was written by
// someone else, is refused and nothing is moved (issue 12, attack 1).
func TestForgedJournal(t *testing.T) {
	f := newRepo(t, map[string]string{"vm1": twoGens})
	if err := f.generate(GenerateOptions{}, "vm1"); err != nil {
		t.Fatal(err)
	}
	victim := t.TempDir()
	os.WriteFile(filepath.Join(victim, "important"), []byte("keep"), 0o600)
	d, err := f.e.Repo.LocalDir()
	if err != nil {
		t.Fatal(err)
	}
	host, _ := os.Hostname()
	good := journal{Format: journalFormat, Repo: f.dir, UID: os.Geteuid(), Host: host, Txn: "0123456789ab"}
	escape, _ := filepath.Rel(f.dir, victim)
	tests := []struct {
		name   string
		change func(j *journal)
		want   string
	}{
		{"target outside", func(j *journal) { j.Entries = []journalEntry{{Target: escape}} }, "leaves the repository"},
		{"target not in the layout", func(j *journal) { j.Entries = []journalEntry{{Target: "sops/users"}} }, "is not a generator directory of the layout"},
		{"history elsewhere", func(j *journal) {
			j.Entries = []journalEntry{{Target: "vars/per-machine/vm1/a", History: "machines/vm1"}}
		}, "is not the history of"},
		{"another repository", func(j *journal) { j.Repo = "/elsewhere" }, "written for /elsewhere"},
		{"another user", func(j *journal) { j.UID = 4242 }, "written by uid 4242"},
		{"another host", func(j *journal) { j.Host = "evil" }, "written on host evil"},
		{"old format", func(j *journal) { j.Format = "" }, `format ""`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			j := good
			tt.change(&j)
			b, _ := json.Marshal(j)
			jp := filepath.Join(d, "journal-"+good.Txn+".json")
			os.WriteFile(jp, b, 0o600)
			defer os.Remove(jp)
			err := RecoverIfNeeded(f.e.Repo)
			if err == nil || !strings.Contains(err.Error(), "does not match a transaction credvm started here") || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("err = %v, want a refusal with %q", err, tt.want)
			}
			if b, err := os.ReadFile(filepath.Join(victim, "important")); err != nil || string(b) != "keep" {
				t.Errorf("the victim's file was touched: %q %v", b, err)
			}
			if got := f.get("vm1", "a", "key"); got == "" {
				t.Error("the vars are gone")
			}
		})
	}
}

// Purge removes a machine's vars, history and key pair together: killed
// before its journal, nothing is gone; after, recovery finishes it.
func TestPurge(t *testing.T) {
	for _, tc := range []struct {
		point   string
		removed bool
	}{
		{"", true},
		{"vars.staged", false},
		{"vars.journaled", true},
		{"vars.swapped-first", true},
		{"vars.swapped-all", true},
	} {
		t.Run("kill at "+tc.point, func(t *testing.T) {
			if tc.point != "" && !faultinject.Enabled {
				t.Skip("fault points need -tags faultinject")
			}
			f := newRepo(t, map[string]string{"vm1": twoGens, "vm2": twoGens})
			if err := f.generate(GenerateOptions{}, "vm1", "vm2"); err != nil {
				t.Fatal(err)
			}
			if err := f.generate(GenerateOptions{Regenerate: true}, "vm1"); err != nil {
				t.Fatal(err)
			}
			r := f.e.Repo
			if _, err := r.EnsureMachineKey("vm1", repo.Access{Users: []string{"alice"}}); err != nil {
				t.Fatal(err)
			}
			want := []string{"vars/per-machine/vm1", "vars-history/per-machine/vm1", "sops/machines/vm1", "sops/secrets/vm1-age.key"}
			if got := PurgePaths(r, "vm1"); !slices.Equal(got, want) {
				t.Fatalf("PurgePaths = %v, want %v", got, want)
			}
			before := f.snapshot()
			cmd := exec.Command(os.Args[0], "-test.run=^$")
			cmd.Env = append(os.Environ(), "CREDVM_TEST_HELPER=purge", "CREDVM_TEST_REPO="+f.dir, "CREDVM_TEST_MACHINE=vm1")
			if tc.point != "" {
				cmd.Env = append(cmd.Env, faultinject.Env+"="+tc.point)
			}
			out, err := cmd.CombinedOutput()
			var ee *exec.ExitError
			switch {
			case tc.point == "" && err != nil:
				t.Fatalf("purge: %v\n%s", err, out)
			case tc.point != "" && (!errors.As(err, &ee) || ee.ExitCode() != -1):
				t.Fatalf("purge was not killed at %s: %v\n%s", tc.point, err, out)
			}
			if err := Recover(r); err != nil {
				t.Fatal(err)
			}
			if tc.removed {
				if got := PurgePaths(r, "vm1"); len(got) != 0 {
					t.Errorf("left %v", got)
				}
			} else if f.snapshot() != before {
				t.Errorf("killed before the journal, the repository changed")
			}
			noLeftovers(t, f.dir)
			if _, err := os.Stat(filepath.Join(f.dir, "machines", "vm1", "machine.toml")); err != nil {
				t.Errorf("the machine file went too: %v", err)
			}
			if f.get("vm2", "a", "key") == "" {
				t.Errorf("vm2's vars went too")
			}
		})
	}
}
