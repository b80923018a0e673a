package vars

import (
	"os"
	"path/filepath"
	"slices"
	"testing"
)

// TestHiddenDirs: what a namespaces-mode script does not see — parents
// first, nothing twice, nothing that holds what the script needs.
func TestHiddenDirs(t *testing.T) {
	root := t.TempDir()
	home, repo, run := filepath.Join(root, "home"), filepath.Join(root, "repo"), filepath.Join(root, "run")
	for _, d := range []string{home + "/.config/sops/age", repo, run + "/ws"} {
		os.MkdirAll(d, 0o700)
	}
	tests := []struct {
		name, home, keyFile, repo string
		needed                    []string
		want                      []string
	}{
		{"home and repository", home, "", repo, []string{run + "/ws"}, []string{home, repo}},
		{"the key inside home: hidden with it", home, home + "/.config/sops/age/keys.txt", repo, nil, []string{home, repo}},
		{"the key elsewhere", filepath.Join(root, "none"), home + "/.config/sops/age/keys.txt", repo, nil, []string{repo, home + "/.config/sops/age"}},
		{"the workspace inside home: home stays", home, "", repo, []string{home + "/ws"}, []string{repo}},
		{"a repository at /: not hidden", home, "", "/", nil, []string{home}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Setenv("HOME", tt.home)
			t.Setenv("SOPS_AGE_KEY_FILE", tt.keyFile)
			got := hiddenDirs(tt.repo, tt.needed...)
			if !slices.Equal(got, tt.want) {
				t.Errorf("got %v, want %v", got, tt.want)
			}
		})
	}
}
