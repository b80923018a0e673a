package repo

import (
	"fmt"
	"path"
	"path/filepath"
	"strings"

	"github.com/credvm/credvm/internal/spec"
)

// HistoryDir holds the replaced generations of vars, outside clan's
// vars/ tree (see package vars).
const HistoryDir = "vars-history"

// MachinePaths are the repository paths that belong to one machine,
// relative to the root (slash-separated): the single list that purge,
// backup, restore and export take them from.
type MachinePaths struct {
	// Dir holds the machine file: machines/<m>.
	Dir string
	// Vars holds its per-machine vars: vars/per-machine/<m>.
	Vars string
	// History holds their replaced generations: vars-history/per-machine/<m>.
	History string
	// PublicKey is its age public key: sops/machines/<m>.
	PublicKey string
	// PrivateKey is its age private key, encrypted to the users:
	// sops/secrets/<m>-age.key.
	PrivateKey string
}

// PathsOf returns machine m's paths.
func PathsOf(m string) MachinePaths {
	return MachinePaths{
		Dir:        path.Join("machines", m),
		Vars:       path.Join("vars", "per-machine", m),
		History:    path.Join(HistoryDir, "per-machine", m),
		PublicKey:  path.Join("sops", "machines", m),
		PrivateKey: path.Join("sops", "secrets", m+"-age.key"),
	}
}

// All lists every path, in the order above.
func (p MachinePaths) All() []string {
	return []string{p.Dir, p.Vars, p.History, p.PublicKey, p.PrivateKey}
}

// SharedPaths are a shared generator's paths: its vars and their history.
func SharedPaths(gen string) []string {
	return []string{path.Join("vars", "shared", gen), path.Join(HistoryDir, "shared", gen)}
}

// GeneratorDir is where a generator's vars live: vars/shared/<gen> for a
// shared generator, else vars/per-machine/<machine>/<gen>.
func (r *Repo) GeneratorDir(machine, gen string, shared bool) string {
	if shared {
		return r.Path("vars", "shared", gen)
	}
	return r.Path("vars", "per-machine", machine, gen)
}

// MachinePaths returns machine m's paths, absolute.
func (r *Repo) MachinePaths(m string) MachinePaths {
	p := PathsOf(m)
	abs := func(rel string) string { return r.Path(filepath.FromSlash(rel)) }
	return MachinePaths{Dir: abs(p.Dir), Vars: abs(p.Vars), History: abs(p.History), PublicKey: abs(p.PublicKey), PrivateKey: abs(p.PrivateKey)}
}

// CheckGeneratorDir checks that p — absolute in the repository, or
// relative to its root — is a generator directory of the layout:
// vars/per-machine/<machine>/<generator> or vars/shared/<generator>, each
// name valid for its kind. Paths read from content (a journal, a backup)
// are checked with it before anything is done there.
func (r *Repo) CheckGeneratorDir(p string) error {
	rel, err := r.rel(p)
	if err != nil {
		return err
	}
	return checkGeneratorDir(rel)
}

// CheckTxnTarget checks that p is a path a transaction may replace or
// remove: a generator directory, or one of a machine's own paths
// (machines/<m>, vars/per-machine/<m>, vars-history/per-machine/<m>,
// sops/machines/<m>, sops/secrets/<m>-age.key).
func (r *Repo) CheckTxnTarget(p string) error {
	rel, err := r.rel(p)
	if err != nil {
		return err
	}
	parts := strings.Split(filepath.ToSlash(rel), "/")
	switch {
	case len(parts) == 2 && parts[0] == "machines":
		return spec.CheckMachineName(parts[1])
	case len(parts) == 3 && (parts[0] == "vars" || parts[0] == HistoryDir) && parts[1] == "per-machine":
		return spec.CheckMachineName(parts[2])
	case len(parts) == 3 && parts[0] == "sops" && parts[1] == "machines":
		return spec.CheckMachineName(parts[2])
	case len(parts) == 3 && parts[0] == "sops" && parts[1] == "secrets" && strings.HasSuffix(parts[2], "-age.key"):
		return spec.CheckMachineName(strings.TrimSuffix(parts[2], "-age.key"))
	}
	return checkGeneratorDir(rel)
}

func checkGeneratorDir(rel string) error {
	parts := strings.Split(filepath.ToSlash(rel), "/")
	switch {
	case len(parts) == 4 && parts[0] == "vars" && parts[1] == "per-machine":
		if err := spec.CheckMachineName(parts[2]); err != nil {
			return fmt.Errorf("%s: %w", rel, err)
		}
		return spec.CheckName("generator", parts[3])
	case len(parts) == 3 && parts[0] == "vars" && parts[1] == "shared":
		return spec.CheckName("generator", parts[2])
	}
	return fmt.Errorf("%s is not a generator directory of the layout (vars/per-machine/<machine>/<generator> or vars/shared/<generator>)", rel)
}

// Fsync fsyncs a file or directory of the repository.
func (r *Repo) Fsync(p string) error { return r.SyncDir(p) }

// ConfirmationError is what an operation returns, before it changes
// anything, when it would widen who can read secrets (new recipients: a
// user, a machine, a group member) or replace values other machines use,
// and the operator has not accepted that. Changes lists what would change,
// one line each; Flag is the option that accepts it. A command on a
// terminal shows the changes and asks; without one it fails naming Flag.
type ConfirmationError struct {
	Op      string
	Why     string
	Changes []string
	Flag    string
	// Kind tells the operation, on its second run, what was accepted;
	// Token carries what it needs for that (a signer's key).
	Kind, Token string
}

func (e *ConfirmationError) Error() string {
	return fmt.Sprintf("%s: %s; nothing was changed: check the changes above and pass %s to accept them", e.Op, e.Why, e.Flag)
}
