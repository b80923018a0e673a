package qemu

import (
	"errors"
	"os"
	"path/filepath"
	"testing"
)

// TestProbeCacheIsPrivate: the KVM probe's cache lives in the user's
// private runtime directory and follows no link planted there (issue 12,
// attack 6: root used to write it through another user's symlink).
func TestProbeCacheIsPrivate(t *testing.T) {
	d, err := os.MkdirTemp("/dev/shm", "credvm-test-")
	if err != nil {
		t.Skipf("no /dev/shm: %v", err)
	}
	defer os.RemoveAll(d)
	os.Chmod(d, 0o700)
	t.Setenv("XDG_RUNTIME_DIR", d)
	name := probeCacheName()
	if name == "" {
		t.Skip("no boot id")
	}
	os.Mkdir(filepath.Join(d, "credvm"), 0o700)
	victim := filepath.Join(t.TempDir(), "victim")
	os.Symlink(victim, filepath.Join(d, "credvm", name))
	if _, _, cached := readProbeCache(); cached {
		t.Error("a link was read as the cache")
	}
	writeProbeCache(errors.New("a probe guest did not run under KVM within 3s"))
	if _, err := os.Stat(victim); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the cache was written through the link: %v", err)
	}
	ok, reason, cached := readProbeCache()
	if !cached || ok || reason != "a probe guest did not run under KVM within 3s" {
		t.Errorf("cache = %v %q %v", ok, reason, cached)
	}
}
