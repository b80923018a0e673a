package vars

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/credvm/credvm/internal/repo"
	"github.com/credvm/credvm/internal/spec"
)

// History: when a commit replaces a generator's directory, the replaced
// content — sops-encrypted as it was, to the same recipients — is moved to
// vars-history/<the path under vars/>/<UTC time>-<transaction>/, outside
// clan's vars/ tree so that clan never sees it. `vars rollback` brings it
// back (the current content going to history in turn); entries older than
// the retention period (24 h unless credvm.toml says otherwise) are pruned.

// HistoryDir is the history's root in a repository.
const HistoryDir = repo.HistoryDir

const historyTimeFormat = "20060102T150405Z"

// historyPath is where target's current content goes when a transaction
// replaces it.
func historyPath(r *repo.Repo, target, txnID string) string {
	rel, err := filepath.Rel(r.Path("vars"), target)
	if err != nil || strings.HasPrefix(rel, "..") {
		return ""
	}
	return r.Path(HistoryDir, rel, time.Now().UTC().Format(historyTimeFormat)+"-"+txnID)
}

// keepHistory moves an exchanged-out old generator directory to history.
func keepHistory(r *repo.Repo, e txnEntry) error {
	if e.History == "" {
		return nil
	}
	for _, old := range []string{e.Staging, e.Old} {
		fi, err := r.Lstat(old)
		if err != nil || !fi.IsDir() || hasMarker(r, old) {
			continue // nothing there, or the new content not yet exchanged
		}
		if err := r.MkdirAll(filepath.Dir(e.History), 0o755); err != nil {
			return err
		}
		if err := r.Rename(old, e.History); err != nil && !errors.Is(err, os.ErrExist) {
			return fmt.Errorf("keep history: %w", err)
		}
		return nil
	}
	return nil
}

// HistoryEntry is one kept generation of a generator. It holds no value.
type HistoryEntry struct {
	Generator  string    `json:"generator"`
	ID         string    `json:"id"`
	Replaced   time.Time `json:"replaced"`
	Expires    time.Time `json:"expires"`
	Generation string    `json:"generation,omitempty"`
	Files      []string  `json:"files"`
	path       string
}

// History lists the kept generations of the machine's generators, newest
// first per generator.
func (e *Engine) History(m *spec.Machine) ([]HistoryEntry, error) {
	retention := e.retention()
	var out []HistoryEntry
	for _, g := range m.SortedGenerators() {
		rel, _ := filepath.Rel(e.Repo.Path("vars"), e.GeneratorDir(m.Name, g))
		dir := e.Repo.Path(HistoryDir, rel)
		entries, err := e.Repo.ReadDir(dir)
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			return nil, err
		}
		var list []HistoryEntry
		for _, ent := range entries {
			ts, _, _ := strings.Cut(ent.Name(), "-")
			t, err := time.Parse(historyTimeFormat, ts)
			if err != nil || !ent.IsDir() {
				continue
			}
			h := HistoryEntry{Generator: g.Name, ID: ent.Name(), Replaced: t, Expires: t.Add(retention), path: filepath.Join(dir, ent.Name())}
			if meta, _ := readMeta(e.Repo, h.path); meta != nil {
				h.Generation = meta.Generation
			}
			files, _ := e.Repo.ReadDir(h.path)
			for _, f := range files {
				if f.IsDir() {
					h.Files = append(h.Files, f.Name())
				}
			}
			list = append(list, h)
		}
		slices.SortFunc(list, func(a, b HistoryEntry) int { return strings.Compare(b.ID, a.ID) })
		out = append(out, list...)
	}
	return out, nil
}

// retention is how long replaced vars are kept.
func (e *Engine) retention() time.Duration {
	if e.Repo.Settings != nil && e.Repo.Settings.History.Retention != "" {
		return e.Repo.Settings.Retention()
	}
	return DefaultRetention
}

// DefaultRetention keeps replaced vars for a day.
const DefaultRetention = 24 * time.Hour

// PruneHistory removes history entries older than the retention period,
// and returns how many it removed.
func (e *Engine) PruneHistory() (int, error) {
	root := e.Repo.Path(HistoryDir)
	cutoff := time.Now().Add(-e.retention())
	n := 0
	err := e.Repo.WalkDir(root, func(p string, d os.DirEntry, err error) error {
		if err != nil {
			if errors.Is(err, os.ErrNotExist) {
				return nil
			}
			return err
		}
		if !d.IsDir() || p == root {
			return nil
		}
		ts, _, ok := strings.Cut(d.Name(), "-")
		t, perr := time.Parse(historyTimeFormat, ts)
		if !ok || perr != nil {
			return nil
		}
		if t.Before(cutoff) {
			if err := e.Repo.RemoveAll(p); err != nil {
				return err
			}
			n++
		}
		return filepath.SkipDir
	})
	return n, err
}

// RollbackOptions configure Rollback.
type RollbackOptions struct {
	// To is the kept generation's ID; "" takes the newest.
	To string
	// NoCommit skips the git commit.
	NoCommit bool
}

// RollbackResult says what Rollback restored.
type RollbackResult struct {
	Machine   string       `json:"machine"`
	Generator string       `json:"generator"`
	Restored  HistoryEntry `json:"restored"`
	// Dependents are the generators that depend on it, now outdated.
	Dependents []string `json:"dependents"`
}

// Rollback makes a kept generation of a generator current again (the
// newest, or the one with opts.To), in one transaction; the content it
// replaces goes to history in turn, so a rollback can itself be undone.
func (e *Engine) Rollback(m *spec.Machine, gen string, opts RollbackOptions) (*RollbackResult, error) {
	g := m.Vars.Generators[gen]
	if g == nil {
		return nil, fmt.Errorf("vars %s: no generator %q (see %s)", m.Name, gen, m.File)
	}
	var res *RollbackResult
	err := e.locked(func() error {
		var err error
		res, err = e.rollback(m, g, opts)
		return err
	})
	return res, err
}

func (e *Engine) rollback(m *spec.Machine, g *spec.Generator, opts RollbackOptions) (*RollbackResult, error) {
	hist, err := e.History(m)
	if err != nil {
		return nil, err
	}
	var pick *HistoryEntry
	for i := range hist {
		if hist[i].Generator == g.Name && (opts.To == "" || hist[i].ID == opts.To) {
			pick = &hist[i]
			break
		}
	}
	if pick == nil {
		if opts.To != "" {
			return nil, fmt.Errorf("vars %s/%s: no kept generation %q (see `credvm vars history %s`)", m.Name, g.Name, opts.To, m.Name)
		}
		return nil, fmt.Errorf("vars %s/%s: no earlier generation is kept (retention %s): nothing to roll back to", m.Name, g.Name, e.retention())
	}
	target := e.GeneratorDir(m.Name, g)
	t := newTxn(e.Repo)
	staging, err := t.stage(target)
	if err != nil {
		return nil, err
	}
	if err := copyTree(e.Repo, pick.path, staging, func(string) bool { return false }); err != nil {
		t.abort()
		return nil, fmt.Errorf("vars %s/%s: %w", m.Name, g.Name, err)
	}
	if err := t.commit(); err != nil {
		return nil, fmt.Errorf("vars %s/%s: %w", m.Name, g.Name, err)
	}
	e.Repo.RemoveAll(pick.path)
	res := &RollbackResult{Machine: m.Name, Generator: g.Name, Restored: *pick, Dependents: []string{}}
	for _, other := range m.SortedGenerators() {
		if slices.Contains(other.Dependencies, g.Name) {
			res.Dependents = append(res.Dependents, other.Name)
		}
	}
	if err := e.commitGit(opts.NoCommit, []string{target}, "vars: roll back %s/%s to %s", m.Name, g.Name, pick.ID); err != nil {
		return res, fmt.Errorf("vars %s/%s: rolled back, but %w", m.Name, g.Name, err)
	}
	return res, nil
}
