package e2e

import (
	"encoding/json"

	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"testing"

	"filippo.io/age"

	"github.com/credvm/credvm/internal/guest"
	"github.com/credvm/credvm/internal/guestimage"
	"github.com/credvm/credvm/internal/testenv"
)

// documentedJSON reads the README's "JSON output" table: for each
// command, the fields of its objects (nested ones dotted, e.g.
// last_run.started; a trailing ? marks a field that appears only when it
// applies).
func documentedJSON(t *testing.T) map[string]map[string]bool {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(testenv.Root(), "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	text := string(b)
	start := strings.Index(text, "\n## JSON output")
	if start < 0 {
		t.Fatal("README.md has no \"## JSON output\" section")
	}
	section := text[start+1:]
	if end := strings.Index(section[3:], "\n## "); end >= 0 {
		section = section[:end+3]
	}
	cmdRe := regexp.MustCompile("`([a-z][a-z -]*)`")
	fieldRe := regexp.MustCompile("`([a-z0-9_.]+\\??)`")
	out := map[string]map[string]bool{}
	for _, line := range strings.Split(section, "\n") {
		cells := strings.Split(line, "|")
		if len(cells) < 4 || !strings.HasPrefix(strings.TrimSpace(cells[1]), "`") {
			continue
		}
		fields := map[string]bool{}
		for _, m := range fieldRe.FindAllStringSubmatch(cells[3], -1) {
			f := m[1]
			fields[strings.TrimSuffix(f, "?")] = !strings.HasSuffix(f, "?")
		}
		for _, m := range cmdRe.FindAllStringSubmatch(cells[1], -1) {
			out[m[1]] = fields
		}
	}
	if len(out) == 0 {
		t.Fatal("no rows in README.md's JSON output table")
	}
	return out
}

// jsonFields collects the dotted keys of v (list items merged) and
// reports any null.
func jsonFields(t *testing.T, cmd string, v any, prefix string, into map[string]bool) {
	switch v := v.(type) {
	case nil:
		t.Errorf("%s: %s is null (the vocabulary has no nulls: [] or left out)", cmd, strings.TrimSuffix(prefix, "."))
	case map[string]any:
		for k, x := range v {
			into[prefix+k] = true
			jsonFields(t, cmd, x, prefix+k+".", into)
		}
	case []any:
		for _, x := range v {
			jsonFields(t, cmd, x, prefix, into)
		}
	}
}

// TestJSONVocabulary runs every command that has --json through a VM's
// life (on the cloud-hypervisor test double, which needs no KVM) and
// checks each output against the README's JSON output table: every field
// it prints is documented there for that command, every field documented
// as always present was printed, and nothing is null.
func TestJSONVocabulary(t *testing.T) {
	needCredvm(t)
	doc := documentedJSON(t)
	bin, _ := testenv.HypervisorDouble(t)
	r := newRepo(t)
	for i, kv := range r.env {
		if strings.HasPrefix(kv, "PATH=") {
			r.env[i] = "PATH=" + bin + ":" + strings.TrimPrefix(kv, "PATH=")
		}
	}
	exampleOn(t, r, "cloud-hypervisor", "")
	state := []string{"--state-dir", r.state}
	seen := map[string]map[string]bool{}
	check := func(cmd string, args ...string) {
		t.Helper()
		cmd_ := exec.Command(credvmBin, append(args, "--json")...)
		cmd_.Env, cmd_.Dir = r.env, r.dir
		var stderr strings.Builder
		cmd_.Stderr = &stderr
		b, err := cmd_.Output()
		if err != nil && !(cmd == "vars check" && cmd_.ProcessState.ExitCode() == 1) {
			t.Fatalf("%s --json: %v\n%s", cmd, err, stderr.String())
		}
		out := string(b)
		var v any
		if err := json.Unmarshal([]byte(out), &v); err != nil {
			t.Fatalf("%s --json: %v\n%s", cmd, err, out)
		}
		if seen[cmd] == nil {
			seen[cmd] = map[string]bool{}
		}
		jsonFields(t, cmd, v, "", seen[cmd])
	}
	check("vars keygen", "vars", "keygen")
	check("init", "init", filepath.Join(t.TempDir(), "new"))
	check("vars check", "vars", "check") // exits 1: nothing generated yet
	check("vars generate", "vars", "generate")
	check("vars generate", "vars", "generate", "--regenerate")
	check("vars list", "vars", "list")
	check("vars check", "vars", "check")
	check("vars history", "vars", "history", "app-vm-01")
	check("vars fix", "vars", "fix")
	// A member committed into the admins group: fix re-encrypts for them.
	eve, _ := age.GenerateX25519Identity()
	os.MkdirAll(filepath.Join(r.dir, "sops/users/eve"), 0o755)
	os.WriteFile(filepath.Join(r.dir, "sops/users/eve/key.json"), []byte(`[{"publickey": "`+eve.Recipient().String()+`", "type": "age"}]`), 0o644)
	os.Symlink("../../../users/eve", filepath.Join(r.dir, "sops/groups/admins/users/eve"))
	check("vars fix", "vars", "fix", "--accept-recipients")
	check("vars group list", "vars", "group", "list")
	check("creds show", "creds", "show")
	check("create", append([]string{"create", "app-vm-01"}, state...)...)
	check("list", append([]string{"list"}, state...)...)
	check("status", append([]string{"status"}, state...)...)
	check("start", append([]string{"start", "app-vm-01", "--shutdown-timeout", "2s"}, state...)...)
	r.waitConsole(t, "app-vm-01", "credvm-guest: verify", 1)
	check("start", append([]string{"start", "app-vm-01"}, state...)...) // already running
	check("status", append([]string{"status"}, state...)...)
	check("list", append([]string{"list"}, state...)...)
	toml, _ := os.ReadFile(filepath.Join(r.dir, "machines/app-vm-01/machine.toml"))
	r.machine("app-vm-01", strings.Replace(string(toml), "mem = 1024", "mem = 768", 1))
	check("update", append([]string{"update", "app-vm-01"}, state...)...)
	r.credvm(append([]string{"stop", "app-vm-01"}, state...)...)
	check("status", append([]string{"status"}, state...)...)
	check("destroy", append([]string{"destroy", "app-vm-01"}, state...)...)

	// Two outputs that need a guest or root: checked through their types.
	typed := func(cmd string, v any) {
		b, _ := json.Marshal(v)
		var x any
		json.Unmarshal(b, &x)
		seen[cmd] = map[string]bool{}
		jsonFields(t, cmd, x, "", seen[cmd])
	}
	typed("guest list", []guest.Found{{Name: "A", Size: 1, SHA256: "ab", Source: "fw_cfg"}})
	typed("image", &guestimage.BuildResult{Packages: []string{}, Built: []string{}})

	if os.Getenv("CREDVM_JSON_FIELDS") != "" {
		for cmd, fields := range seen {
			keys := make([]string, 0, len(fields))
			for k := range fields {
				keys = append(keys, k)
			}
			sort.Strings(keys)
			t.Logf("FIELDS %s: %s", cmd, strings.Join(keys, " "))
		}
	}
	for cmd, fields := range seen {
		want, ok := doc[cmd]
		if !ok {
			t.Errorf("README.md's JSON output table has no row for %s", cmd)
			continue
		}
		var extra, missing []string
		for f := range fields {
			if _, ok := want[f]; !ok {
				extra = append(extra, f)
			}
		}
		for f, always := range want {
			if always && !fields[f] {
				missing = append(missing, f)
			}
		}
		sort.Strings(extra)
		sort.Strings(missing)
		if len(extra) > 0 {
			t.Errorf("%s --json prints fields the README does not document: %s", cmd, strings.Join(extra, ", "))
		}
		if len(missing) > 0 {
			t.Errorf("%s --json never printed documented fields: %s (mark them ? if they appear only sometimes)", cmd, strings.Join(missing, ", "))
		}
	}
	for cmd := range doc {
		if _, ok := seen[cmd]; !ok {
			t.Errorf("README.md documents %s --json, which this test does not run", cmd)
		}
	}
}
