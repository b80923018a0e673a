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
//  2. a journal naming the targets is written and synced: from here on
//     the transaction rolls forward;
//  3. each staging directory is exchanged with its target in one
//     renameat2(RENAME_EXCHANGE) (a plain rename for a new target), after
//     which the staging path holds the old content;
//  4. markers and old contents are removed (the old kept in history), then
//     the journal.
//
// A crash before 2 leaves staging directories with markers and no journal:
// recovery deletes them (roll back). A crash after 2 leaves the journal:
// recovery finishes the exchanges (a staging path still holding the marker
// has not been exchanged yet) and the cleanup (roll forward). Either way the
// vars are all old or all new, and the next command starts by recovering.
//
// The journal is an instruction to move and delete directories, so it is
// never repository content: it lives in the repository's LocalDir, outside
// the work tree (.git/credvm, or the user's state directory), and names only
// directories of the layout a transaction may replace (generator
// directories; a machine's directory and key pair, for an import),
// relative to the root; staging and
// old paths are derived from them and the transaction id, not read. A
// journal that names anything else, or was not written by this user on
// this host for this repository, is refused and never replayed. Every move
// goes through the repository's confined filesystem (repo/fs.go).

const (
	stagingInfix  = ".credvm-new-"
	oldInfix      = ".credvm-old-"
	markerFile    = ".credvm-staged"
	journalFormat = "credvm-journal/2"
)

// journal is what is written at step 2.
type journal struct {
	Format  string         `json:"format"`
	Repo    string         `json:"repository"`
	UID     int            `json:"uid"`
	Host    string         `json:"host"`
	Txn     string         `json:"txn"`
	Entries []journalEntry `json:"entries"`
}

type journalEntry struct {
	// Target is the generator directory, relative to the root.
	Target string `json:"target"`
	// History is where the replaced content is kept (for rollback),
	// relative to the root; "" discards it.
	History string `json:"history,omitempty"`
	// Remove: the target is deleted, not replaced (a purge).
	Remove bool `json:"remove,omitempty"`
}

// txnEntry is one replaced (or removed) directory, with every path
// absolute.
type txnEntry struct {
	Target, Staging, Old, History string
	Remove                        bool
}

type txn struct {
	id      string
	repo    *repo.Repo
	entries []txnEntry
	// noHistory keeps no replaced content: for a re-encryption (vars fix)
	// the values are the same, and rolling back to the old recipients
	// would undo the fix.
	noHistory bool
}

func newTxn(r *repo.Repo) *txn {
	b := make([]byte, 6)
	rand.Read(b)
	return &txn{id: hex.EncodeToString(b), repo: r}
}

// entryFor derives a target's staging, old and history paths.
func entryFor(r *repo.Repo, target, id, history string) txnEntry {
	parent, base := filepath.Split(target)
	return txnEntry{
		Target:  target,
		Staging: filepath.Join(parent, "."+base+stagingInfix+id),
		Old:     filepath.Join(parent, "."+base+oldInfix+id),
		History: history,
	}
}

// stage returns a new, empty staging directory for target, with its
// marker. The content it replaces is kept in history (see history.go).
func (t *txn) stage(target string) (string, error) {
	r := t.repo
	if err := r.CheckTxnTarget(target); err != nil {
		return "", err
	}
	history := historyPath(r, target, t.id)
	if t.noHistory {
		history = ""
	}
	e := entryFor(r, target, t.id, history)
	if err := r.MkdirAll(filepath.Dir(target), 0o755); err != nil {
		return "", err
	}
	if err := r.Mkdir(e.Staging, 0o755); err != nil {
		return "", err
	}
	if err := r.WriteFile(filepath.Join(e.Staging, markerFile), []byte(t.id+"\n"), 0o644); err != nil {
		r.RemoveAll(e.Staging)
		return "", err
	}
	t.entries = append(t.entries, e)
	return e.Staging, nil
}

// remove schedules target's deletion: at commit it is moved aside, then
// deleted, with no history kept.
func (t *txn) remove(target string) error {
	if err := t.repo.CheckTxnTarget(target); err != nil {
		return err
	}
	e := entryFor(t.repo, target, t.id, "")
	e.Remove = true
	t.entries = append(t.entries, e)
	return nil
}

// abort removes every staging directory; the targets were never touched.
func (t *txn) abort() {
	for _, e := range t.entries {
		if !e.Remove {
			t.repo.RemoveAll(e.Staging)
		}
	}
	t.entries = nil
}

// commit makes every staged directory current.
func (t *txn) commit() error {
	if len(t.entries) == 0 {
		return nil
	}
	if err := syncStaged(t.repo, t.entries); err != nil {
		t.abort()
		return fmt.Errorf("sync staged vars: %w", err)
	}
	faultinject.Point("vars.staged")
	d, err := t.repo.LocalDir()
	if err != nil {
		t.abort()
		return err
	}
	j := journal{Format: journalFormat, Repo: t.repo.Root, UID: os.Geteuid(), Host: hostname(), Txn: t.id}
	for _, e := range t.entries {
		je := journalEntry{Target: t.repo.Rel(e.Target), Remove: e.Remove}
		if e.History != "" {
			je.History = t.repo.Rel(e.History)
		}
		j.Entries = append(j.Entries, je)
	}
	b, _ := json.MarshalIndent(j, "", "  ")
	jp := filepath.Join(d, "journal-"+t.id+".json")
	if err := atomicfile.Write(jp, b, 0o600); err != nil {
		t.abort()
		return fmt.Errorf("write journal: %w", err)
	}
	faultinject.Point("vars.journaled")
	return rollForward(t.repo, jp, t.entries)
}

func hostname() string {
	h, _ := os.Hostname()
	return h
}

// rollForward completes a journaled transaction; it is idempotent.
func rollForward(r *repo.Repo, journalPath string, entries []txnEntry) error {
	for i, e := range entries {
		if err := exchange(r, e); err != nil {
			return fmt.Errorf("commit %s: %w (run the command again to finish it)", r.Rel(e.Target), err)
		}
		if i == 0 {
			faultinject.Point("vars.swapped-first")
		}
	}
	faultinject.Point("vars.swapped-all")
	var dirs []string
	for _, e := range entries {
		r.Remove(filepath.Join(e.Target, markerFile))
		if err := keepHistory(r, e); err != nil {
			return err
		}
		if err := r.RemoveAll(e.Staging); err != nil {
			return err
		}
		if err := r.RemoveAll(e.Old); err != nil {
			return err
		}
		dirs = append(dirs, filepath.Dir(e.Target))
	}
	for _, d := range dirs {
		r.SyncDir(d)
	}
	return os.Remove(journalPath)
}

// exchange puts the staged directory in place of the target, if that has
// not happened yet.
func exchange(r *repo.Repo, e txnEntry) error {
	if e.Remove {
		if _, err := r.Lstat(e.Target); errors.Is(err, os.ErrNotExist) {
			return nil // moved aside already
		}
		return r.Rename(e.Target, e.Old)
	}
	if !hasMarker(r, e.Staging) {
		// Already exchanged: the staging path holds the old content, or
		// nothing if the target was new. Finish a fallback move if needed.
		if !r.Exists(e.Target) {
			return fmt.Errorf("neither the new nor the old content of %s is where it should be", r.Rel(e.Target))
		}
		return nil
	}
	if !r.Exists(e.Target) {
		return r.Exchange(e.Staging, e.Target, true)
	}
	err := r.Exchange(e.Staging, e.Target, false)
	if errors.Is(err, unix.EINVAL) || errors.Is(err, unix.ENOSYS) || errors.Is(err, unix.EOPNOTSUPP) {
		// Filesystems without RENAME_EXCHANGE: move the old content aside,
		// then the new in. A crash in between leaves no target, which the
		// next roll-forward mends by moving the staged content in.
		if err := r.Rename(e.Target, e.Old); err != nil {
			return err
		}
		return r.Rename(e.Staging, e.Target)
	}
	return err
}

func hasMarker(r *repo.Repo, dir string) bool {
	return r.Exists(filepath.Join(dir, markerFile))
}

// syncStaged makes every staged directory durable before the journal is
// written: one syncfs(2) of the filesystem holding them (the staging
// directories sit next to their targets, in the repository), or, where
// that fails, an fsync of every file and directory.
func syncStaged(r *repo.Repo, entries []txnEntry) error {
	if err := r.Syncfs(r.Root); err == nil {
		return nil
	}
	for _, e := range entries {
		if e.Remove {
			continue
		}
		err := r.WalkDir(e.Staging, func(p string, d os.DirEntry, err error) error {
			if err != nil || d.Type()&os.ModeSymlink != 0 {
				return err
			}
			return r.Fsync(p)
		})
		if err != nil {
			return err
		}
	}
	return nil
}

// journals lists the journal files in the repository's LocalDir.
func journals(r *repo.Repo) ([]string, error) {
	d, err := r.LocalDir()
	if err != nil {
		return nil, err
	}
	return filepath.Glob(filepath.Join(d, "journal-*.json"))
}

// leftovers lists staging and old directories of the vars tree — found
// through the repository's confined filesystem, never by following a link.
func leftovers(r *repo.Repo) []string {
	var out []string
	scan := func(dir string) {
		entries, _ := r.ReadDir(dir)
		for _, e := range entries {
			if n := e.Name(); strings.HasPrefix(n, ".") && (strings.Contains(n, stagingInfix) || strings.Contains(n, oldInfix)) {
				out = append(out, filepath.Join(dir, n))
			}
		}
	}
	machines, _ := r.ReadDir(r.Path("vars", "per-machine"))
	for _, m := range machines {
		if m.IsDir() {
			scan(r.Path("vars", "per-machine", m.Name()))
		}
	}
	for _, d := range []string{r.Path("vars", "shared"), r.Path("machines"), r.Path("sops", "machines"), r.Path("sops", "secrets")} {
		scan(d)
	}
	return out
}

// RecoverIfNeeded runs Recover under the repository lock when a crashed
// credvm left a journal or staging directories behind, so that readers
// too see the finished transaction. Without leftovers it costs a glob and
// a directory read per machine.
func RecoverIfNeeded(r *repo.Repo) error {
	j, err := journals(r)
	if err != nil {
		return err
	}
	if len(j) == 0 && len(leftovers(r)) == 0 {
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
	js, err := journals(r)
	if err != nil {
		return err
	}
	for _, jp := range js {
		entries, err := readJournal(r, jp)
		if err != nil {
			return err
		}
		if err := rollForward(r, jp, entries); err != nil {
			return fmt.Errorf("finish an interrupted vars commit: %w", err)
		}
	}
	// Staging directories without a journal belong to runs that crashed
	// before committing: roll them back.
	for _, s := range leftovers(r) {
		name := filepath.Base(s)
		if before, _, ok := strings.Cut(name, oldInfix); ok {
			// An old directory without a journal means its transaction
			// finished but for this removal; never delete the only copy.
			if !r.Exists(filepath.Join(filepath.Dir(s), strings.TrimPrefix(before, "."))) {
				continue
			}
		}
		if err := r.RemoveAll(s); err != nil {
			return err
		}
	}
	return nil
}

// readJournal reads and checks a journal: it must be one this user wrote
// on this host for this repository, naming generator directories of the
// layout and their history only.
func readJournal(r *repo.Repo, jp string) ([]txnEntry, error) {
	refuse := func(why string) error {
		return fmt.Errorf("journal %s does not match a transaction credvm started here (%s); it was not replayed: inspect it, and remove it if it is not yours", jp, why)
	}
	b, err := os.ReadFile(jp)
	if err != nil {
		return nil, err
	}
	var j journal
	if err := json.Unmarshal(b, &j); err != nil {
		return nil, refuse("unreadable: " + err.Error())
	}
	switch {
	case j.Format != journalFormat:
		return nil, refuse(fmt.Sprintf("format %q", j.Format))
	case j.Repo != r.Root:
		return nil, refuse("written for " + j.Repo)
	case j.UID != os.Geteuid():
		return nil, refuse(fmt.Sprintf("written by uid %d", j.UID))
	case j.Host != hostname():
		return nil, refuse("written on host " + j.Host)
	case "journal-"+j.Txn+".json" != filepath.Base(jp) || !isHex(j.Txn):
		return nil, refuse("its transaction id does not match its name")
	}
	var out []txnEntry
	for _, je := range j.Entries {
		target := r.Path(filepath.FromSlash(je.Target))
		if err := r.CheckTxnTarget(target); err != nil {
			return nil, refuse(err.Error())
		}
		e := entryFor(r, target, j.Txn, "")
		e.Remove = je.Remove
		if je.History != "" && !je.Remove {
			want := historyPath(r, target, j.Txn)
			h := r.Path(filepath.FromSlash(je.History))
			if filepath.Dir(h) != filepath.Dir(want) || !strings.HasSuffix(h, "-"+j.Txn) {
				return nil, refuse(je.History + " is not the history of " + je.Target)
			}
			e.History = h
		}
		out = append(out, e)
	}
	return out, nil
}

func isHex(s string) bool {
	_, err := hex.DecodeString(s)
	return err == nil && s != ""
}
