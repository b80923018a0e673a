package repo

import (
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"filippo.io/age"

	_ "github.com/credvm/credvm/internal/hypervisor/drivers" // machine files name a hypervisor
	"github.com/credvm/credvm/internal/testenv"
)

func newRepo(t *testing.T, files map[string]string) *Repo {
	t.Helper()
	testenv.PrivateState(t)
	dir := t.TempDir()
	for p, content := range files {
		os.MkdirAll(filepath.Dir(filepath.Join(dir, p)), 0o755)
		if err := os.WriteFile(filepath.Join(dir, p), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	r, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// TestLayout pins clan's layout: the paths every other package takes
// from here.
func TestLayout(t *testing.T) {
	p := PathsOf("vm1")
	want := MachinePaths{
		Dir:        "machines/vm1",
		Vars:       "vars/per-machine/vm1",
		History:    "vars-history/per-machine/vm1",
		PublicKey:  "sops/machines/vm1",
		PrivateKey: "sops/secrets/vm1-age.key",
	}
	if p != want {
		t.Errorf("PathsOf = %+v", p)
	}
	if !slices.Equal(p.All(), []string{want.Dir, want.Vars, want.History, want.PublicKey, want.PrivateKey}) {
		t.Errorf("All = %v", p.All())
	}
	if got := SharedPaths("ca"); !slices.Equal(got, []string{"vars/shared/ca", "vars-history/shared/ca"}) {
		t.Errorf("SharedPaths = %v", got)
	}
	r := newRepo(t, map[string]string{"credvm.toml": ""})
	if got := r.GeneratorDir("vm1", "g", false); got != r.Path("vars", "per-machine", "vm1", "g") {
		t.Errorf("per-machine generator dir %s", got)
	}
	if got := r.GeneratorDir("vm1", "g", true); got != r.Path("vars", "shared", "g") {
		t.Errorf("shared generator dir %s", got)
	}
	if abs := r.MachinePaths("vm1"); abs.PrivateKey != r.Path("sops", "secrets", "vm1-age.key") {
		t.Errorf("MachinePaths = %+v", abs)
	}
}

func TestFind(t *testing.T) {
	tests := []struct {
		name  string
		files map[string]string
		ok    bool
	}{
		{"credvm.toml", map[string]string{"credvm.toml": ""}, true},
		{"inventory.toml", map[string]string{"inventory.toml": ""}, true},
		{"clan directory", map[string]string{"sops/.keep": "", "vars/.keep": ""}, true},
		{"sops alone", map[string]string{"sops/.keep": ""}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := newRepo(t, tt.files)
			sub := filepath.Join(r.Root, "machines", "deep")
			os.MkdirAll(sub, 0o755)
			found, err := Find(sub)
			switch {
			case tt.ok && (err != nil || found.Root != r.Root):
				t.Errorf("Find from below: %v, %v", found, err)
			case !tt.ok && !errors.Is(err, ErrNotFound):
				// The temp dir's parents hold no repository either.
				t.Errorf("Find: %v, want ErrNotFound", err)
			}
		})
	}
}

func TestMachine(t *testing.T) {
	r := newRepo(t, map[string]string{
		"credvm.toml":               "",
		"machines/vm1/machine.toml": "[vm]\nmem = 256\n",
		"machines/bad/machine.toml": "[vm]\nmem = 'lots'\n",
		"machines/two/machine.toml": "", "machines/two/machine.json": "{}",
	})
	if names, _ := r.MachineNames(); !slices.Equal(names, []string{"bad", "two", "vm1"}) {
		t.Errorf("MachineNames = %v", names)
	}
	m, err := r.Machine("vm1")
	if err != nil || m.VM.Mem != 256 || m.File != "machines/vm1/machine.toml" {
		t.Fatalf("Machine(vm1) = %+v, %v", m, err)
	}
	for name, want := range map[string]string{
		"nosuch": "machine nosuch: not found: no machines/nosuch/machine.toml (machines in this repository: bad, two, vm1)",
		"bad":    "machines/bad/machine.toml:2: vm.mem: expected integer, got string",
		"two":    "machine two: both machine.toml and machine.json exist; keep one",
		"../x":   `invalid machine name "../x"`,
	} {
		if _, err := r.Machine(name); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("Machine(%q) = %v, want %q", name, err, want)
		}
	}
}

func TestInventoryWriter(t *testing.T) {
	r := newRepo(t, map[string]string{"credvm.toml": "", "inventory.toml": "# our fleet\n[machines.vm1]\ntags = [\"web\"]\n"})
	undo, err := r.AddToInventory("vm2", []string{"web", "eu"})
	if err != nil {
		t.Fatal(err)
	}
	b, _ := os.ReadFile(r.Path("inventory.toml"))
	if !strings.HasPrefix(string(b), "# our fleet\n[machines.vm1]") || !strings.Contains(string(b), "[machines.vm2]\ntags = [\"web\", \"eu\"]\n") {
		t.Errorf("inventory.toml:\n%s", b)
	}
	if got := r.Inventory.Tagged("eu"); !slices.Equal(got, []string{"vm2"}) {
		t.Errorf("the inventory was not reloaded: %v", got)
	}
	if _, err := r.AddToInventory("vm2", nil); err == nil || err.Error() != "inventory.toml lists machine vm2 already" {
		t.Errorf("second add: %v", err)
	}
	if err := undo(); err != nil {
		t.Fatal(err)
	}
	if b2, _ := os.ReadFile(r.Path("inventory.toml")); string(b2) != "# our fleet\n[machines.vm1]\ntags = [\"web\"]\n" {
		t.Errorf("undo left:\n%s", b2)
	}
	if _, err := r.AddToInventory("vm3", []string{"not a tag"}); err == nil || !strings.Contains(err.Error(), `invalid tag "not a tag"`) {
		t.Errorf("bad tag: %v", err)
	}
	if b3, _ := os.ReadFile(r.Path("inventory.toml")); strings.Contains(string(b3), "vm3") {
		t.Errorf("a refused table stayed in the file:\n%s", b3)
	}
}

func TestCopyMachine(t *testing.T) {
	r := newRepo(t, map[string]string{"credvm.toml": "", "machines/vm1/machine.toml": "[vm]\n", "machines/vm1/notes": "x"})
	undo, err := r.CopyMachine("vm1", "vm2")
	if err != nil {
		t.Fatal(err)
	}
	if b, err := os.ReadFile(r.Path("machines", "vm2", "notes")); err != nil || string(b) != "x" {
		t.Errorf("copy: %q %v", b, err)
	}
	if _, err := r.CopyMachine("vm1", "vm2"); err == nil || err.Error() != "machine vm2 exists already (machines/vm2)" {
		t.Errorf("copy onto an existing machine: %v", err)
	}
	undo()
	if _, err := os.Stat(r.Path("machines", "vm2")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("undo left machines/vm2: %v", err)
	}

}

func TestRegisterUser(t *testing.T) {
	r := newRepo(t, map[string]string{"credvm.toml": ""})
	id, _ := age.GenerateX25519Identity()
	pub := id.Recipient().String()
	if name, err := r.RegisterUser("alice", pub); err != nil || name != "alice" {
		t.Fatalf("first: %s %v", name, err)
	}
	if name, err := r.RegisterUser("bob", pub); err != nil || name != "alice" {
		t.Errorf("the same key again registers under its owner: %s %v", name, err)
	}
	if _, err := os.Stat(r.Path("sops", "users", "bob")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("a second user was made for one key")
	}
}
