package backup

import (
	"bytes"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	_ "github.com/credvm/credvm/internal/hypervisor/drivers" // machine files name a hypervisor
	"github.com/credvm/credvm/internal/repo"
	"github.com/credvm/credvm/internal/sops"
	"github.com/credvm/credvm/internal/testenv"
	"github.com/credvm/credvm/internal/vm"
)

// tree writes files (and symlinks: content "-> target") under dir.
func tree(t *testing.T, dir string, files map[string]string) {
	t.Helper()
	testenv.PrivateState(t)
	for p, content := range files {
		full := filepath.Join(dir, p)
		os.MkdirAll(filepath.Dir(full), 0o755)
		if target, ok := strings.CutPrefix(content, "-> "); ok {
			if err := os.Symlink(target, full); err != nil {
				t.Fatal(err)
			}
			continue
		}
		if err := os.WriteFile(full, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

// snapshot reads a tree: regular files' content and links' targets.
func snapshot(t *testing.T, dir string) map[string]string {
	t.Helper()
	out := map[string]string{}
	filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		if d.Type()&fs.ModeSymlink != 0 {
			target, _ := os.Readlink(p)
			out[rel] = "-> " + target
		} else {
			b, _ := os.ReadFile(p)
			out[rel] = string(b)
		}
		return nil
	})
	return out
}

var vm1Files = map[string]string{
	"credvm.toml":                                                  "",
	"machines/vm1/machine.toml":                                    "[vars.generators.g]\nscript = 'x'\nfiles.f = {}\n[vars.generators.ca]\nshare = true\nscript = 'x'\nfiles.key = {}\n",
	"vars/per-machine/vm1/g/f/secret":                              `{"data":"ENC[…]","sops":{}}`,
	"vars/per-machine/vm1/g/f/machines/vm1":                        "-> ../../../../../../sops/machines/vm1",
	"vars/per-machine/vm1/g/f/users/alice":                         "-> ../../../../../../sops/users/alice",
	"vars/per-machine/vm1/g/.credvm.json":                          `{"generation":"1"}`,
	"vars-history/per-machine/vm1/g/20260101T000000Z-abc/f/secret": "old",
	"vars/shared/ca/key/secret":                                    "shared",
	"sops/machines/vm1/key.json":                                   `[{"publickey":"age1p2j8dqqwhv675tx9p8gu4wtt9l0se2g3w8l9k7pa87z6s85pd5ks02na9f","type":"age"}]`,
	"sops/secrets/vm1-age.key/secret":                              "encrypted machine key",
	"sops/users/alice/key.json":                                    `[{"publickey":"age1wam7jac99rsyj4d2x2e85hneda5kmpudwrhtmly4uakx3c6upgasym0tt6","type":"age"}]`,
}

func TestRoundTrip(t *testing.T) {
	src := t.TempDir()
	tree(t, src, vm1Files)
	tree(t, src, map[string]string{"machines/other/machine.toml": "[vm]\n", "vars/per-machine/other/g/f/value": "not mine"})
	r, err := repo.Open(src)
	if err != nil {
		t.Fatal(err)
	}
	state := t.TempDir()
	s := vm.StateDir{Root: state, Name: "vm1"}
	m, err := r.Machine("vm1")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := vm.Create(s, r, m); err != nil {
		t.Fatal(err)
	}
	archive := filepath.Join(t.TempDir(), "b.tgz")
	created, err := Create(archive, r, state, []string{"vm1"}, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if fi, _ := os.Stat(archive); fi.Mode().Perm() != 0o600 || created.Entries == 0 {
		t.Errorf("archive mode %v, %d entries", fi.Mode().Perm(), created.Entries)
	}

	dst := t.TempDir()
	os.WriteFile(filepath.Join(dst, "credvm.toml"), nil, 0o644)
	r2, _ := repo.Open(dst)
	state2 := t.TempDir()
	if _, err := RestoreFile(archive, RestoreOptions{Repo: r2, StateRoot: state2}); !errors.As(err, new(*repo.ConfirmationError)) || !strings.Contains(err.Error(), "the backup would add 1 user to this repository's users") {
		t.Fatalf("a restore adding a user without consent: %v", err)
	}
	if r2.Exists(r2.Path("machines")) {
		t.Fatal("a refused restore wrote something")
	}
	aliceKeys, _ := repo.ParseKeyFile("alice", []byte(vm1Files["sops/users/alice/key.json"]))
	res, err := RestoreFile(archive, RestoreOptions{Repo: r2, StateRoot: state2, Self: sops.Keys(aliceKeys)})
	if err != nil {
		t.Fatal(err)
	}
	if man := res.Manifest; len(man.Machines) != 1 || man.Machines[0] != "vm1" || !slices.Equal(res.NewUsers, []string{"alice"}) {
		t.Errorf("manifest machines %v, new users %v", man.Machines, res.NewUsers)
	}
	if !slices.ContainsFunc(res.Changes, func(c string) bool { return strings.HasSuffix(c, ": your own key") }) {
		t.Errorf("the restoring user's own key is not named as such: %q", res.Changes)
	}
	got := snapshot(t, dst)
	for p, want := range vm1Files {
		if got[p] != want {
			t.Errorf("%s: restored %q, want %q", p, got[p], want)
		}
	}
	for p := range got {
		if strings.Contains(p, "other") || strings.HasPrefix(p, ".credvm/restore-") {
			t.Errorf("restored %s, which is not vm1's", p)
		}
	}
	reg, err := (vm.StateDir{Root: state2, Name: "vm1"}).Registration()
	if err != nil || reg.Repo != r2.Root || !strings.HasPrefix(reg.Current.File, r2.Root) {
		t.Errorf("registration not pointed at the new repository: %+v %v", reg, err)
	}
	if _, err := RestoreFile(archive, RestoreOptions{Repo: r2, StateRoot: state2, AcceptRecipients: true}); err == nil || !strings.Contains(err.Error(), "restore with --force to replace it") {
		t.Errorf("restore over an existing machine: %v", err)
	}
}

func TestDamagedArchivesRestoreNothing(t *testing.T) {
	src := t.TempDir()
	tree(t, src, vm1Files)
	r, _ := repo.Open(src)
	var buf bytes.Buffer
	if _, err := Write(&buf, r, t.TempDir(), []string{"vm1"}, Options{}); err != nil {
		t.Fatal(err)
	}
	good := buf.Bytes()
	flipped := bytes.Clone(good)
	flipped[len(flipped)/2] ^= 0x40
	for name, data := range map[string][]byte{
		"truncated": good[:len(good)/2],
		"flipped":   flipped,
		"empty":     nil,
	} {
		if _, _, err := Read(bytes.NewReader(data)); err == nil || !strings.Contains(err.Error(), "the backup is truncated, corrupt or altered") {
			t.Errorf("%s: %v", name, err)
		}
	}
	if _, _, err := Read(bytes.NewReader(good)); err != nil {
		t.Errorf("the intact archive: %v", err)
	}
}
