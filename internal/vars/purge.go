package vars

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/credvm/credvm/internal/repo"
)

// PurgePaths lists what Purge would remove of machine m, relative to the
// root: its vars, their history and its key pair — never its machine file,
// nor shared vars other machines use. Only paths that exist are listed.
func PurgePaths(r *repo.Repo, m string) []string {
	p := repo.PathsOf(m)
	var out []string
	for _, rel := range []string{p.Vars, p.History, p.PublicKey, p.PrivateKey} {
		if _, err := r.Lstat(r.Path(filepath.FromSlash(rel))); !errors.Is(err, os.ErrNotExist) {
			out = append(out, rel)
		}
	}
	return out
}

// Purge removes machine m's vars, their history and its key pair in one
// transaction under the repository lock — a crash leaves all of them or
// none — and commits the removal in git. It returns what it removed,
// relative to the root.
func Purge(r *repo.Repo, m string) ([]string, error) {
	l, err := r.Lock(nil)
	if err != nil {
		return nil, err
	}
	defer l.Release()
	if err := Recover(r); err != nil {
		return nil, err
	}
	paths := PurgePaths(r, m)
	t := newTxn(r)
	for _, rel := range paths {
		if err := t.remove(r.Path(filepath.FromSlash(rel))); err != nil {
			return nil, fmt.Errorf("purge %s: %w", m, err)
		}
	}
	if err := t.commit(); err != nil {
		return nil, fmt.Errorf("purge %s: %w", m, err)
	}
	if len(paths) > 0 && r.InGit() {
		if err := r.Commit(paths, "vars: purge "+m); err != nil {
			return paths, fmt.Errorf("purge %s: removed, but not committed: %w", m, err)
		}
	}
	return paths, nil
}
