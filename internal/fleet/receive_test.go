package fleet

import (
	"crypto/sha256"
	"encoding/hex"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestReceiveRefuses: what is not a shipment of this format, or names a
// machine outside the machine name rules, changes nothing on the host.
func TestReceiveRefuses(t *testing.T) {
	tests := []struct {
		name, in, want string
	}{
		{"not JSON", "hello", "receive: the shipment is not one: invalid character 'h' looking for beginning of value"},
		{"another format", `{"format": 2}`, "receive: shipment format 2, this credvm reads 1"},
		{"a path for a name", `{"format": 1, "machines": ["../etc"]}`, `receive: invalid machine name "../etc": use a hostname (letters, digits and '-', at most 63, not starting or ending with '-')`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			o := ReceiveOptions{Repo: filepath.Join(dir, "repo"), StateRoot: filepath.Join(dir, "state")}
			_, err := Receive(strings.NewReader(tt.in), o)
			if err == nil || err.Error() != tt.want {
				t.Fatalf("got %v, want %q", err, tt.want)
			}
			if entries, _ := os.ReadDir(dir); len(entries) != 0 {
				t.Errorf("a refused shipment left %v", entries)
			}
		})
	}
}

// TestFileDigest: the digest is the file's SHA-256, remembered by the
// file's identity, and taken again when the file changes.
func TestFileDigest(t *testing.T) {
	t.Setenv("XDG_CACHE_HOME", t.TempDir())
	p := filepath.Join(t.TempDir(), "credvm")
	for i, content := range []string{"one", "two", "two"} {
		if i < 2 {
			os.WriteFile(p, []byte(content), 0o755)
			future := time.Now().Add(time.Duration(i) * time.Second)
			os.Chtimes(p, future, future)
		}
		sum := sha256.Sum256([]byte(content))
		got, err := fileDigest(p)
		if err != nil || got != hex.EncodeToString(sum[:]) {
			t.Fatalf("digest of %q: %s, %v", content, got, err)
		}
	}
	b, err := os.ReadFile(filepath.Join(os.Getenv("XDG_CACHE_HOME"), "credvm", "self-digest"))
	if err != nil || !strings.HasPrefix(string(b), p+" ") {
		t.Errorf("the digest was not remembered: %q, %v", b, err)
	}
}
