package repo

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/credvm/credvm/internal/lock"
)

// LocalDir is credvm's own directory in the repository: the vars lock and
// the journal of an interrupted commit. It ignores itself in git.
func (r *Repo) LocalDir() (string, error) {
	d := r.Path(".credvm")
	if err := os.MkdirAll(d, 0o700); err != nil {
		return "", err
	}
	gi := filepath.Join(d, ".gitignore")
	if _, err := os.Stat(gi); os.IsNotExist(err) {
		if err := os.WriteFile(gi, []byte("# credvm's lock and journal; never committed\n*\n"), 0o644); err != nil {
			return "", err
		}
	}
	return d, nil
}

// LockTimeout is how long a command waits for another credvm to finish
// with the repository's vars before it gives up with a "busy" error.
var LockTimeout = 2 * time.Minute

// Lock serialises writers of the repository's vars and keys.
func (r *Repo) Lock(notify func(string)) (*lock.Lock, error) {
	d, err := r.LocalDir()
	if err != nil {
		return nil, err
	}
	return lock.Acquire(filepath.Join(d, "lock"), "repository "+r.Root, LockTimeout, notify)
}

// InGit reports whether the repository is inside a git work tree.
func (r *Repo) InGit() bool {
	if _, err := exec.LookPath("git"); err != nil {
		return false
	}
	out, err := exec.Command("git", "-C", r.Root, "rev-parse", "--is-inside-work-tree").Output()
	return err == nil && strings.TrimSpace(string(out)) == "true"
}

// Commit stages paths (relative or absolute, added or deleted) and commits
// them alone with msg; a commit with no change is skipped. Other staged
// changes of the user are left staged and out of the commit.
func (r *Repo) Commit(paths []string, msg string) error {
	var rel []string
	for _, p := range paths {
		abs := p
		if !filepath.IsAbs(abs) {
			abs = r.Path(p)
		}
		if _, err := os.Lstat(abs); err != nil {
			// Gone: worth staging only if git knew it (a deletion).
			out, _ := exec.Command("git", "-C", r.Root, "ls-files", "--", r.Rel(abs)).Output()
			if len(bytes.TrimSpace(out)) == 0 {
				continue
			}
		}
		rel = append(rel, r.Rel(abs))
	}
	if len(rel) == 0 {
		return nil
	}
	git := func(args ...string) ([]byte, error) {
		cmd := exec.Command("git", append([]string{"-C", r.Root}, args...)...)
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		out, err := cmd.Output()
		if err != nil {
			return out, fmt.Errorf("git %s: %v: %s", args[0], err, strings.TrimSpace(stderr.String()))
		}
		return out, nil
	}
	if _, err := git(append([]string{"add", "-A", "--"}, rel...)...); err != nil {
		return err
	}
	out, err := git(append([]string{"status", "--porcelain", "--"}, rel...)...)
	if err != nil {
		return err
	}
	if len(bytes.TrimSpace(out)) == 0 {
		return nil
	}
	_, err = git(append([]string{"commit", "-q", "-m", msg, "--"}, rel...)...)
	return err
}
