package vars

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/credvm/credvm/internal/atomicfile"
	"github.com/credvm/credvm/internal/faultinject"
	"github.com/credvm/credvm/internal/repo"
)

// A transaction replaces whole generator directories, so that a generator's
// files — and every generator of one run — change together or not at all:
//
//  1. each new generator directory is written complete into a staging
//     directory next to its target (".<gen>.credvm-new-<id>", same
//     filesystem), holding a marker file;
//  2. a journal listing (staging, target) pairs is written and synced:
//     from here on the transaction rolls forward;
//  3. each staging directory is exchanged with its target in one
//     renameat2(RENAME_EXCHANGE) (a plain rename for a new target), after
//     which the staging path holds the old content;
//  4. markers and old contents are removed, then the journal.
//
// A crash before 2 leaves staging directories with markers and no journal:
// recovery deletes them (roll back). A crash after 2 leaves the journal:
// recovery finishes the exchanges (a staging path still holding the marker
// has not been exchanged yet) and the cleanup (roll forward). Either way the
// vars are all old or all new, and the next command starts by recovering.

const (
	stagingInfix = ".credvm-new-"
	oldInfix     = ".credvm-old-"
	markerFile   = ".credvm-staged"
)

type txnEntry struct {
	Target  string `json:"target"`
	Staging string `json:"staging"`
	Old     string `json:"old"` // used only where RENAME_EXCHANGE is not supported
	// History is where the replaced content is kept (for rollback); ""
	// discards it.
	History string `json:"history,omitempty"`
}

type txn struct {
	id      string
	repo    *repo.Repo
	entries []txnEntry
}

func newTxn(r *repo.Repo) *txn {
	b := make([]byte, 6)
	rand.Read(b)
	return &txn{id: hex.EncodeToString(b), repo: r}
}

// stage returns a new, empty staging directory for target, with its
// marker. The content it replaces is kept in history (see history.go).
func (t *txn) stage(target string) (string, error) {
	parent, base := filepath.Split(target)
	if err := os.MkdirAll(parent, 0o755); err != nil {
		return "", err
	}
	staging := filepath.Join(parent, "."+base+stagingInfix+t.id)
	if err := os.Mkdir(staging, 0o755); err != nil {
		return "", err
	}
	if err := os.WriteFile(filepath.Join(staging, markerFile), []byte(t.id+"\n"), 0o644); err != nil {
		os.RemoveAll(staging)
		return "", err
	}
	t.entries = append(t.entries, txnEntry{
		Target:  target,
		Staging: staging,
		Old:     filepath.Join(parent, "."+base+oldInfix+t.id),
		History: historyPath(t.repo, target, t.id),
	})
	return staging, nil
}

// abort removes every staging directory; the targets were never touched.
func (t *txn) abort() {
	for _, e := range t.entries {
		os.RemoveAll(e.Staging)
	}
	t.entries = nil
}

func (t *txn) journalPath() (string, error) {
	d, err := t.repo.LocalDir()
	if err != nil {
		return "", err
	}
	return filepath.Join(d, "journal-"+t.id+".json"), nil
}

// commit makes every staged directory current.
func (t *txn) commit() error {
	if len(t.entries) == 0 {
		return nil
	}
	if err := syncStaged(t.entries); err != nil {
		t.abort()
		return fmt.Errorf("sync staged vars: %w", err)
	}
	faultinject.Point("vars.staged")
	jp, err := t.journalPath()
	if err != nil {
		t.abort()
		return err
	}
	b, _ := json.MarshalIndent(t.entries, "", "  ")
	if err := atomicfile.Write(jp, b, 0o600); err != nil {
		t.abort()
		return fmt.Errorf("write journal: %w", err)
	}
	faultinject.Point("vars.journaled")
	return rollForward(t.repo, jp, t.entries)
}

// rollForward completes a journaled transaction; it is idempotent.
func rollForward(r *repo.Repo, journal string, entries []txnEntry) error {
	for i, e := range entries {
		if err := exchange(e); err != nil {
			return fmt.Errorf("commit %s: %w (run the command again to finish it)", r.Rel(e.Target), err)
		}
		if i == 0 {
			faultinject.Point("vars.swapped-first")
		}
	}
	faultinject.Point("vars.swapped-all")
	var dirs []string
	for _, e := range entries {
		os.Remove(filepath.Join(e.Target, markerFile))
		if err := keepHistory(e); err != nil {
			return err
		}
		if err := os.RemoveAll(e.Staging); err != nil {
			return err
		}
		if err := os.RemoveAll(e.Old); err != nil {
			return err
		}
		dirs = append(dirs, filepath.Dir(e.Target))
	}
	for _, d := range dirs {
		atomicfile.SyncDir(d)
	}
	return os.Remove(journal)
}

// exchange puts the staged directory in place of the target, if that has
// not happened yet.
func exchange(e txnEntry) error {
	if !hasMarker(e.Staging) {
		// Already exchanged: the staging path holds the old content, or
		// nothing if the target was new. Finish a fallback move if needed.
		if _, err := os.Stat(e.Target); errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("neither the new nor the old content of %s is where it should be", e.Target)
		}
		return nil
	}
	_, err := os.Lstat(e.Target)
	switch {
	case errors.Is(err, os.ErrNotExist):
		return unix.Renameat2(unix.AT_FDCWD, e.Staging, unix.AT_FDCWD, e.Target, unix.RENAME_NOREPLACE)
	case err != nil:
		return err
	}
	err = unix.Renameat2(unix.AT_FDCWD, e.Staging, unix.AT_FDCWD, e.Target, unix.RENAME_EXCHANGE)
	if errors.Is(err, unix.EINVAL) || errors.Is(err, unix.ENOSYS) || errors.Is(err, unix.EOPNOTSUPP) {
		// Filesystems without RENAME_EXCHANGE: move the old content aside,
		// then the new in. A crash in between leaves no target, which the
		// next roll-forward mends by moving the staged content in.
		if err := os.Rename(e.Target, e.Old); err != nil {
			return err
		}
		return os.Rename(e.Staging, e.Target)
	}
	return err
}

func hasMarker(dir string) bool {
	_, err := os.Stat(filepath.Join(dir, markerFile))
	return err == nil
}

// syncStaged makes every staged directory durable before the journal is
// written: one syncfs(2) of the filesystem holding them (the staging
// directories sit next to their targets, in the repository), or, where
// that fails, an fsync of every file and directory.
func syncStaged(entries []txnEntry) error {
	f, err := os.Open(entries[0].Staging)
	if err == nil {
		err = unix.Syncfs(int(f.Fd()))
		f.Close()
		if err == nil {
			return nil
		}
	}
	for _, e := range entries {
		if err := syncTree(e.Staging); err != nil {
			return err
		}
	}
	return nil
}

// syncTree fsyncs every file and directory under dir, so the journal is
// never written before the content it points at is durable.
func syncTree(dir string) error {
	return filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.Type()&os.ModeSymlink != 0 {
			return nil
		}
		f, err := os.Open(p)
		if err != nil {
			return err
		}
		defer f.Close()
		return f.Sync()
	})
}

// RecoverIfNeeded runs Recover under the repository lock when a crashed
// credvm left a journal or staging directories behind, so that readers
// too see the finished transaction. Without leftovers it costs two globs.
func RecoverIfNeeded(r *repo.Repo) error {
	j, _ := filepath.Glob(r.Path(".credvm", "journal-*.json"))
	s1, _ := filepath.Glob(r.Path("vars", "per-machine", "*", ".*"+stagingInfix+"*"))
	s2, _ := filepath.Glob(r.Path("vars", "shared", ".*"+stagingInfix+"*"))
	if len(j)+len(s1)+len(s2) == 0 {
		return nil
	}
	l, err := r.Lock(nil)
	if err != nil {
		return err
	}
	defer l.Release()
	return Recover(r)
}

// Recover finishes or undoes transactions a crashed credvm left behind. It
// must run under the repository lock, before anything reads the vars.
func Recover(r *repo.Repo) error {
	d, err := r.LocalDir()
	if err != nil {
		return err
	}
	journals, _ := filepath.Glob(filepath.Join(d, "journal-*.json"))
	for _, jp := range journals {
		b, err := os.ReadFile(jp)
		if err != nil {
			return err
		}
		var entries []txnEntry
		if err := json.Unmarshal(b, &entries); err != nil {
			return fmt.Errorf("journal %s is corrupt: %w (it was written atomically; inspect it and remove it by hand)", jp, err)
		}
		if err := rollForward(r, jp, entries); err != nil {
			return fmt.Errorf("finish an interrupted vars commit: %w", err)
		}
	}
	// Staging directories without a journal belong to runs that crashed
	// before committing: roll them back.
	for _, pattern := range []string{
		r.Path("vars", "per-machine", "*", ".*"+stagingInfix+"*"),
		r.Path("vars", "shared", ".*"+stagingInfix+"*"),
		r.Path("vars", "per-machine", "*", ".*"+oldInfix+"*"),
		r.Path("vars", "shared", ".*"+oldInfix+"*"),
	} {
		stale, _ := filepath.Glob(pattern)
		for _, s := range stale {
			if strings.Contains(filepath.Base(s), oldInfix) {
				// An old directory without a journal means its
				// transaction finished but for this removal.
				target := filepath.Join(filepath.Dir(s), strings.TrimPrefix(strings.SplitN(filepath.Base(s), oldInfix, 2)[0], "."))
				if _, err := os.Stat(target); err != nil {
					continue // never delete the only copy
				}
			}
			if err := os.RemoveAll(s); err != nil {
				return err
			}
		}
	}
	return nil
}
