// Package testenv finds the external programs and files that real tests need
// (the sops CLI, qemu-system-x86_64, a Debian kernel) and decides what a test
// does when one is missing.
//
// A plain `go test ./...` on a bare machine skips such tests with a message
// naming what is missing. `make test` and CI set CREDVM_TEST_STRICT=1, and
// then a missing tool fails the test: nothing is silently skipped where the
// promise is that it runs.
package testenv

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"

	"github.com/credvm/credvm/internal/spec"
)

// Strict reports whether missing tools fail tests instead of skipping them.
func Strict() bool { return os.Getenv("CREDVM_TEST_STRICT") == "1" }

// Missing skips or fails t, depending on Strict, explaining what is missing
// and how to get it.
func Missing(t testing.TB, what, how string) {
	t.Helper()
	if Strict() {
		t.Fatalf("%s is required (CREDVM_TEST_STRICT=1): %s", what, how)
	}
	t.Skipf("%s not found (%s); skipping", what, how)
}

// Root is the repository root, found from this file's location.
func Root() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(file), "..", "..")
}

// Tool returns the path of an external program, looking in $CREDVM_TOOLS
// (where `make` installs sops), the repository's .cache/bin, then $PATH.
func Tool(t testing.TB, name string) string {
	t.Helper()
	if p := LookTool(name); p != "" {
		return p
	}
	Missing(t, name, "run `make tools` or install it on $PATH")
	return ""
}

// LookTool is Tool without a test: "" when not found.
func LookTool(name string) string {
	dirs := []string{os.Getenv("CREDVM_TOOLS"), filepath.Join(Root(), ".cache", "bin")}
	for _, d := range dirs {
		if d == "" {
			continue
		}
		p := filepath.Join(d, name)
		if fi, err := os.Stat(p); err == nil && !fi.IsDir() && fi.Mode()&0o111 != 0 {
			return p
		}
	}
	if p, err := exec.LookPath(name); err == nil {
		return p
	}
	return ""
}

// Fixture returns the path of a shared fixture under ../shared/fixtures.
func Fixture(t testing.TB, elem ...string) string {
	t.Helper()
	p := filepath.Join(append([]string{Root(), "..", "shared", "fixtures"}, elem...)...)
	if _, err := os.Stat(p); err != nil {
		Missing(t, "fixture "+filepath.Join(elem...), "the shared fixtures live in ../shared/fixtures next to the checkout")
	}
	return p
}

var (
	tempMu sync.Mutex
	temps  []string
)

// TempDir makes a directory shared by a test binary's tests (a build, a
// guest image), which Main removes when they are done.
func TempDir(prefix string) (string, error) {
	d, err := os.MkdirTemp("", prefix)
	if err != nil {
		return "", err
	}
	tempMu.Lock()
	temps = append(temps, d)
	tempMu.Unlock()
	return d, nil
}

// Main runs a test binary's tests and removes every TempDir, whether the
// tests passed or not. Use it as TestMain where TempDir is used (directly
// or through HypervisorDouble).
func Main(m *testing.M) {
	code := m.Run()
	tempMu.Lock()
	for _, d := range temps {
		os.RemoveAll(d)
	}
	tempMu.Unlock()
	os.Exit(code)
}

// Machine parses a machine file for vm1 of a repository at /r, or fails t.
func Machine(t testing.TB, toml string) *spec.Machine {
	t.Helper()
	m, err := spec.ParseMachine("/r/machines/vm1/machine.toml", "vm1", []byte(toml))
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// ExpectError checks err against a table test's want: with want "" there
// must be no error (else t fails at once); otherwise err must contain
// want. It reports whether an error was expected, so the case can stop.
func ExpectError(t testing.TB, err error, want string) bool {
	t.Helper()
	switch {
	case want == "" && err != nil:
		t.Fatal(err)
	case want != "" && (err == nil || !strings.Contains(err.Error(), want)):
		t.Fatalf("err = %v, want %q", err, want)
	}
	return want != ""
}

// SyncBuffer is a bytes.Buffer safe for concurrent writers (a console
// copied by one goroutine, read by the test).
type SyncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *SyncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}
func (s *SyncBuffer) String() string { s.mu.Lock(); defer s.mu.Unlock(); return s.b.String() }

// PrivateState points $XDG_STATE_HOME at a directory of the test's, where
// credvm keeps the lock and journal of repositories outside git — so tests
// leave nothing in the user's state directory.
func PrivateState(t testing.TB) {
	t.Helper()
	t.Setenv("XDG_STATE_HOME", t.TempDir())
}
