package runtimedir

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// tmpfsDir is a directory of the test's on /dev/shm (a tmpfs).
func tmpfsDir(t *testing.T) string {
	t.Helper()
	d, err := os.MkdirTemp("/dev/shm", "credvm-test-")
	if err != nil {
		t.Skipf("no /dev/shm: %v", err)
	}
	t.Cleanup(func() { os.RemoveAll(d) })
	return d
}

// TestSquatted: a directory someone else prepared is refused, naming it
// (issue 12, attack 5).
func TestSquatted(t *testing.T) {
	uid := os.Geteuid()
	tests := []struct {
		name  string
		setup func(p string)
		want  string
	}{
		{"made", func(string) {}, ""},
		{"ours", func(p string) { os.Mkdir(p, 0o700) }, ""},
		{"open to others", func(p string) { os.Mkdir(p, 0o700); os.Chmod(p, 0o777) }, "is open to others (mode 777)"},
		{"a link", func(p string) { os.Symlink(t.TempDir(), p) }, "is a symlink"},
		{"a file", func(p string) { os.WriteFile(p, nil, 0o600) }, "is not a directory"},
		{"someone else's", func(p string) {
			os.Mkdir(p, 0o700)
			if err := os.Chown(p, 65534, 65534); err != nil {
				t.Skip("needs root to give a directory away")
			}
		}, "belongs to uid 65534, not to you"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := filepath.Join(tmpfsDir(t), "credvm")
			tt.setup(p)
			err := ensure(p, uid)
			switch {
			case tt.want == "" && err != nil:
				t.Fatal(err)
			case tt.want != "" && (err == nil || !strings.Contains(err.Error(), p+" "+tt.want) || !strings.Contains(err.Error(), "someone else prepared it")):
				t.Fatalf("err = %v, want %q", err, tt.want)
			}
		})
	}
	// Not a tmpfs: a disk directory is refused, not used.
	disk := t.TempDir()
	if isTmpfs(disk) == nil {
		t.Skipf("%s is a tmpfs here", disk)
	}
	if err := ensure(filepath.Join(disk, "credvm"), uid); err == nil || !strings.Contains(err.Error(), "is not on a tmpfs (plaintext would reach a disk)") {
		t.Errorf("a disk directory: %v", err)
	}
}

func TestXDGRuntimeDir(t *testing.T) {
	d := tmpfsDir(t)
	os.Chmod(d, 0o700)
	t.Setenv("XDG_RUNTIME_DIR", d)
	p, err := Private()
	if err != nil || p != filepath.Join(d, "credvm") {
		t.Fatalf("Private() = %s, %v", p, err)
	}
	// A file planted as a link is replaced, not followed, and not read.
	victim := filepath.Join(t.TempDir(), "victim")
	os.WriteFile(victim, []byte("keep"), 0o600)
	os.Symlink(victim, filepath.Join(p, "cache"))
	if _, err := ReadFile("cache"); err == nil {
		t.Error("read through a link")
	}
	if err := WriteFile("cache", []byte("new")); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(victim); string(b) != "keep" {
		t.Errorf("wrote through a link: victim holds %q", b)
	}
	if b, err := ReadFile("cache"); err != nil || string(b) != "new" {
		t.Errorf("ReadFile = %q, %v", b, err)
	}
}
