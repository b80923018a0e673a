package repo

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/credvm/credvm/internal/lock"
)

// LocalDir is credvm's own directory for this repository: its lock and
// the journal of an interrupted commit. It lives outside the work tree,
// where nothing cloned, restored or imported can put anything — inside the
// git directory (.git/credvm) when the repository is a git work tree, else
// in the user's state directory ($XDG_STATE_HOME/credvm, /var/lib/credvm
// for root, ~/.local/state/credvm: repos/<hash of the root>) — and
// belongs to the user, 0700.
func (r *Repo) LocalDir() (string, error) {
	d, err := r.localDir()
	if err != nil {
		return "", err
	}
	if err := os.MkdirAll(d, 0o700); err != nil {
		return "", fmt.Errorf("credvm's directory for %s: %w", r.Root, err)
	}
	if err := ownedPrivateDir(d); err != nil {
		return "", err
	}
	return d, nil
}

func (r *Repo) localDir() (string, error) {
	if gd := r.gitDir(); gd != "" {
		return filepath.Join(gd, "credvm"), nil
	}
	base := os.Getenv("XDG_STATE_HOME")
	switch {
	case base != "":
		base = filepath.Join(base, "credvm")
	case os.Geteuid() == 0:
		base = "/var/lib/credvm"
	default:
		home, err := os.UserHomeDir()
		if err != nil {
			return "", fmt.Errorf("no home directory for credvm's state of %s: %w", r.Root, err)
		}
		base = filepath.Join(home, ".local", "state", "credvm")
	}
	sum := sha256.Sum256([]byte(r.Root))
	return filepath.Join(base, "repos", hex.EncodeToString(sum[:8])), nil
}

// gitDir is the git directory of the work tree the repository is in, or
// "": the nearest .git upward, a directory or a worktree's "gitdir:" file.
// (git never checks out a path named .git, so a clone cannot plant one.)
func (r *Repo) gitDir() string {
	for d := r.Root; ; d = filepath.Dir(d) {
		p := filepath.Join(d, ".git")
		fi, err := os.Lstat(p)
		switch {
		case err == nil && fi.IsDir():
			return p
		case err == nil && fi.Mode().IsRegular():
			b, err := os.ReadFile(p)
			if gd, ok := strings.CutPrefix(strings.TrimSpace(string(b)), "gitdir: "); err == nil && ok {
				if !filepath.IsAbs(gd) {
					gd = filepath.Join(d, gd)
				}
				return gd
			}
		}
		if filepath.Dir(d) == d {
			return ""
		}
	}
}

// ownedPrivateDir refuses a directory that is a link, belongs to someone
// else, or is open to others (and closes it to others when it is ours).
func ownedPrivateDir(d string) error {
	fi, err := os.Lstat(d)
	if err != nil {
		return err
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	switch {
	case !fi.IsDir():
		return fmt.Errorf("%s is not a directory (a link or file someone put there); remove it", d)
	case ok && int(st.Uid) != os.Geteuid():
		return fmt.Errorf("%s belongs to uid %d, not to you (uid %d): someone else prepared it; remove it", d, st.Uid, os.Geteuid())
	case fi.Mode().Perm()&0o077 != 0:
		return os.Chmod(d, 0o700)
	}
	return nil
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

// git is a git command on the repository that runs none of the
// repository's hooks: credvm commits on the user's behalf, and a hook is
// code someone else may have put there (a restored backup's, a clone's
// .git/hooks when copied with it).
func (r *Repo) git(args ...string) *exec.Cmd {
	return exec.Command("git", append([]string{"-C", r.Root, "-c", "core.hooksPath=/dev/null"}, args...)...)
}

// InGit reports whether the repository is inside a git work tree.
func (r *Repo) InGit() bool {
	if _, err := exec.LookPath("git"); err != nil {
		return false
	}
	out, err := r.git("rev-parse", "--is-inside-work-tree").Output()
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
		if _, err := r.Lstat(abs); err != nil {
			// Gone: worth staging only if git knew it (a deletion).
			out, _ := r.git("ls-files", "--", r.Rel(abs)).Output()
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
		cmd := r.git(args...)
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
