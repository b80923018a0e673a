package backup

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"maps"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"

	"github.com/credvm/credvm/internal/atomicfile"
	"github.com/credvm/credvm/internal/repo"
	"github.com/credvm/credvm/internal/sops"
	"github.com/credvm/credvm/internal/spec"
	"github.com/credvm/credvm/internal/vm"
	"github.com/credvm/credvm/internal/words"
)

// A backup is input, not instructions: it may come from anyone who could
// write a file, and its manifest's checksums prove only that it is whole,
// not who made it. So restore accepts nothing but what credvm's backups
// hold — the machines named in the manifest (valid names), their paths of
// the layout, shared generators, users' public keys, recipient links that
// point where clan's do, and the VMs' registrations — writes it through
// the repository's confined filesystem, shows what it changes, and refuses
// to add a user (a new recipient of every later secret) unless told to.

// checkLayout refuses a manifest naming anything outside the layout.
func checkLayout(man *Manifest) error {
	for _, m := range man.Machines {
		if err := spec.CheckMachineName(m); err != nil {
			return fmt.Errorf("machine %q: %w", m, err)
		}
	}
	for _, e := range man.Entries {
		if err := checkEntry(man.Machines, e); err != nil {
			return fmt.Errorf("%s: %w", e.Path, err)
		}
	}
	return nil
}

// checkEntry checks one member: its place in the layout, its type, and a
// link's target.
func checkEntry(machines []string, e Entry) error {
	if e.Type != "dir" && e.Type != "file" && e.Type != "symlink" {
		return fmt.Errorf("type %q", e.Type)
	}
	if e.Mode&^0o777 != 0 {
		return fmt.Errorf("mode %o", e.Mode)
	}
	if strings.HasPrefix(e.Path, "state/") {
		parts := strings.Split(e.Path, "/")
		if len(parts) == 3 && slices.Contains(machines, parts[1]) && parts[2] == "vm.json" && e.Type == "file" {
			return nil
		}
		if len(parts) == 2 && slices.Contains(machines, parts[1]) && e.Type == "dir" {
			return nil
		}
		if len(parts) == 3 && slices.Contains(machines, parts[1]) && parts[2] == "volumes" && e.Type == "dir" {
			return nil
		}
		if len(parts) == 4 && slices.Contains(machines, parts[1]) && parts[2] == "volumes" && e.Type == "file" && spec.CheckName("volume", parts[3]) == nil {
			return nil
		}
		return errors.New("not a registration of a machine of the backup")
	}
	rel, ok := strings.CutPrefix(e.Path, "repo/")
	if !ok {
		return errors.New("outside the backup's trees")
	}
	parts := strings.Split(rel, "/")
	if !inLayout(machines, parts) {
		return errors.New("not part of a machine, a shared generator or a user in the repository layout")
	}
	for _, p := range parts {
		if p == "" || p == "." || p == ".." || strings.HasPrefix(p, ".git") {
			return fmt.Errorf("path component %q", p)
		}
	}
	if e.Type == "symlink" {
		return checkRecipientLink(parts, e.Target)
	}
	return nil
}

// inLayout reports whether parts (a path under repo/) belong to one of
// machines, a shared generator, or a user's key.
func inLayout(machines []string, parts []string) bool {
	under := func(prefix ...string) bool {
		return len(parts) >= len(prefix) && slices.Equal(parts[:len(prefix)], prefix)
	}
	for _, m := range machines {
		p := repo.PathsOf(m)
		for _, owned := range p.All() {
			if under(strings.Split(owned, "/")...) {
				return true
			}
		}
	}
	// Parents of those trees, and the trees everyone shares.
	parents := [][]string{{"machines"}, {"vars"}, {"vars", "per-machine"}, {repo.HistoryDir}, {repo.HistoryDir, "per-machine"},
		{"sops"}, {"sops", "machines"}, {"sops", "secrets"}, {"vars", "shared"}, {repo.HistoryDir, "shared"}, {"sops", "users"}}
	if slices.ContainsFunc(parents, func(p []string) bool { return slices.Equal(parts, p) }) {
		return true
	}
	switch {
	case under("vars", "shared") && len(parts) >= 3 && spec.CheckName("generator", parts[2]) == nil:
		return true
	case under(repo.HistoryDir, "shared") && len(parts) >= 3 && spec.CheckName("generator", parts[2]) == nil:
		return true
	case under("sops", "users") && len(parts) == 3:
		return spec.CheckName("user", parts[2]) == nil
	case under("sops", "users") && len(parts) == 4:
		return spec.CheckName("user", parts[2]) == nil && parts[3] == "key.json"
	}
	return false
}

// checkRecipientLink accepts only clan's recipient links:
// <…>/<file>/{machines,users,groups}/<name> → "../"×k + sops/<kind>/<name>,
// with k no deeper than the link (kept history holds such links from the
// depth they were made at).
func checkRecipientLink(parts []string, target string) error {
	n := len(parts)
	if n < 3 || !slices.Contains([]string{"machines", "users", "groups"}, parts[n-2]) {
		return errors.New("a link where credvm keeps none")
	}
	want := path.Join("sops", parts[n-2], parts[n-1])
	if path.Join(path.Join(parts[:n-1]...), target) == want {
		return nil
	}
	ups := strings.Count(target, "../")
	tail := target[min(len(target), 3*ups):]
	if strings.HasPrefix(target, strings.Repeat("../", ups)) && ups <= n-1 && (tail == want || tail == path.Join(parts[n-2], parts[n-1])) {
		return nil // kept history: the link as it was made, at another depth
	}
	return fmt.Errorf("a recipient link to %q (clan's lead to %s)", target, want)
}

// AcceptUsers is the confirmation a restore adding users asks for.
const AcceptUsers = "users"

// RestoreOptions choose where a backup goes and what it may change.
type RestoreOptions struct {
	Repo      *repo.Repo
	StateRoot string
	// Force replaces machines that exist here.
	Force bool
	// AcceptRecipients allows the restore to add users to the repository:
	// every secret generated from then on is encrypted to them.
	AcceptRecipients bool
	// Self are the operator's own public keys: restoring a backup of one's
	// own makes no one new a recipient.
	Self []string
	// spooled are the backup's volumes, read into files of StateRoot.
	spooled map[string]string
}

// RestoreResult says what a restore wrote.
type RestoreResult struct {
	Manifest *Manifest `json:"manifest"`
	// Changes lists what was (or, with an error, would have been)
	// changed, one line each.
	Changes []string `json:"changes"`
	// NewUsers are the users the backup added.
	NewUsers []string `json:"new_users"`
	// Volumes are the volumes restored ("machine/image").
	Volumes []string `json:"volumes"`
	// Unreadable are the restored secrets the operator's keys are not a
	// recipient of: restored as they were, nothing decrypts them for
	// whoever restored them until someone who can runs `vars fix`.
	Unreadable []string `json:"unreadable"`
}

// RestoreFile reads and checks the backup at path, then restores it under
// the repository's lock, and commits what it wrote inside a git work tree.
// A backup that would add users is refused with a *repo.ConfirmationError
// unless AcceptRecipients.
func RestoreFile(path string, o RestoreOptions) (*RestoreResult, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return Restore(f, o)
}

// Restore is RestoreFile of an archive read from f.
func Restore(f io.Reader, o RestoreOptions) (*RestoreResult, error) {
	if err := os.MkdirAll(o.StateRoot, 0o755); err != nil {
		return nil, err
	}
	man, files, spooled, err := ReadSpooling(f, o.StateRoot)
	if err != nil {
		return nil, err
	}
	defer removeSpooled(spooled) // what was not moved into place
	r := o.Repo
	l, err := r.Lock(nil)
	if err != nil {
		return nil, err
	}
	defer l.Release()
	o.spooled = spooled
	res, err := restore(man, files, o)
	if err != nil {
		return res, err
	}
	if r.InGit() {
		if err := r.Commit(res.paths(r, man), "restore "+strings.Join(man.Machines, ", ")+" from backup"); err != nil {
			return res, fmt.Errorf("restored, but the git commit failed: %w", err)
		}
	}
	return res, nil
}

// paths are the repository paths a restore wrote, to commit.
func (res *RestoreResult) paths(r *repo.Repo, man *Manifest) []string {
	set := map[string]bool{}
	for _, e := range man.Entries {
		rel, ok := strings.CutPrefix(e.Path, "repo/")
		if !ok {
			continue
		}
		parts := strings.Split(rel, "/")
		if len(parts) > 3 {
			parts = parts[:3]
		}
		set[r.Path(filepath.FromSlash(path.Join(parts...)))] = true
	}
	return slices.Sorted(maps.Keys(set))
}

// restore plans, checks and writes a checked archive.
func restore(man *Manifest, files map[string][]byte, o RestoreOptions) (*RestoreResult, error) {
	r := o.Repo
	res := &RestoreResult{Manifest: man, NewUsers: []string{}}
	for _, m := range man.Machines {
		p := r.MachinePaths(m)
		exists := r.Exists(p.Dir) || r.Exists(p.Vars) || (vm.StateDir{Root: o.StateRoot, Name: m}).Exists()
		switch {
		case exists && !o.Force:
			return res, fmt.Errorf("machine %s exists here already (%s): restore with --force to replace it", m, r.Rel(p.Dir))
		case exists:
			res.Changes = append(res.Changes, fmt.Sprintf("~ machine %s: replaced by the backup's (machine file, vars, history, keys)", m))
		default:
			res.Changes = append(res.Changes, fmt.Sprintf("+ machine %s (machine file, vars, history, keys)", m))
		}
	}
	users, err := newUsers(r, man, files)
	if err != nil {
		return res, err
	}
	others := 0
	for _, u := range users {
		keys, err := repo.ParseKeyFile("repo/sops/users/"+u+"/key.json", files["repo/sops/users/"+u+"/key.json"])
		if err != nil {
			return res, fmt.Errorf("the backup's user %s: %w; nothing was restored", u, err)
		}
		note := "registered: it reads what the backup's links and groups grant it, and whatever they grant it from now on"
		if !slices.ContainsFunc(keys, func(k sops.Recipient) bool {
			return !slices.ContainsFunc(o.Self, func(s string) bool { return repo.SameKey(s, k.Key) })
		}) {
			note = "your own key"
		} else {
			others++
		}
		var shown []string
		for _, k := range keys {
			shown = append(shown, k.String())
		}
		res.Changes = append(res.Changes, fmt.Sprintf("+ user %s (%s): %s", u, strings.Join(shown, ", "), note))
		res.NewUsers = append(res.NewUsers, u)
	}
	if others > 0 && !o.AcceptRecipients {
		return res, &repo.ConfirmationError{Op: "restore", Changes: res.Changes, Flag: "--accept-recipients", Kind: AcceptUsers,
			Why: fmt.Sprintf("the backup would add %s to this repository's users", words.Plural(others, "user", "users"))}
	}
	if err := writeTrees(r, man, files, o.Force); err != nil {
		return res, err
	}
	current := slices.DeleteFunc(res.paths(r, man), func(p string) bool { return strings.HasPrefix(r.Rel(p), repo.HistoryDir) })
	res.Unreadable = nonNil(r.NotReadableBy(current, o.Self))
	if err := restoreRegistrations(r, man, files, o.StateRoot); err != nil {
		return res, err
	}
	return res, restoreVolumes(res, o.spooled, o.StateRoot)
}

func nonNil(s []string) []string {
	if s == nil {
		return []string{}
	}
	return s
}

// restoreVolumes moves the spooled volumes into their machines' state
// directories (replacing what is there: restoring over a machine takes
// --force), each by one rename.
func restoreVolumes(res *RestoreResult, spooled map[string]string, stateRoot string) error {
	res.Volumes = []string{}
	for _, member := range slices.Sorted(maps.Keys(spooled)) {
		parts := strings.Split(member, "/") // state/<m>/volumes/<image>
		s := vm.StateDir{Root: stateRoot, Name: parts[1]}
		if err := s.Ensure(); err != nil {
			return err
		}
		if err := os.Rename(spooled[member], s.File(parts[3])); err != nil {
			return fmt.Errorf("volume %s of %s: %w", parts[3], parts[1], err)
		}
		delete(spooled, member)
		res.Volumes = append(res.Volumes, parts[1]+"/"+parts[3])
		res.Changes = append(res.Changes, fmt.Sprintf("+ volume %s of %s", parts[3], parts[1]))
	}
	return nil
}

// newUsers lists the backup's users this repository does not have.
func newUsers(r *repo.Repo, man *Manifest, files map[string][]byte) ([]string, error) {
	var out []string
	for _, e := range man.Entries {
		parts := strings.Split(e.Path, "/")
		if len(parts) == 5 && parts[1] == "sops" && parts[2] == "users" && parts[4] == "key.json" && !r.Exists(r.Path("sops", "users", parts[3])) {
			out = append(out, parts[3])
		}
	}
	return out, nil
}

// writeTrees assembles the backup's trees in a staging directory of the
// repository and moves each into place: a machine's paths (replacing them
// with force), shared generators and users only where the repository has
// none.
func writeTrees(r *repo.Repo, man *Manifest, files map[string][]byte, force bool) error {
	stage := r.Path(".credvm-restore-" + randomID())
	defer r.RemoveAll(stage)
	for _, e := range man.Entries {
		rel, ok := strings.CutPrefix(e.Path, "repo/")
		if !ok {
			continue
		}
		dst := filepath.Join(stage, filepath.FromSlash(rel))
		var err error
		switch e.Type {
		case "dir":
			err = r.MkdirAll(dst, 0o755)
		case "symlink":
			if err = r.MkdirAll(filepath.Dir(dst), 0o755); err == nil {
				err = r.Symlink(e.Target, dst)
			}
		case "file":
			if err = r.MkdirAll(filepath.Dir(dst), 0o755); err == nil {
				err = r.WriteFile(dst, files[e.Path], fs.FileMode(e.Mode)&0o755)
			}
		}
		if err != nil {
			return err
		}
	}
	var moves [][2]string // staged, target (both absolute in the repository)
	for _, m := range man.Machines {
		for _, p := range repo.PathsOf(m).All() {
			moves = append(moves, [2]string{filepath.Join(stage, filepath.FromSlash(p)), r.Path(filepath.FromSlash(p))})
		}
	}
	for _, dir := range []string{"vars/shared", repo.HistoryDir + "/shared", "sops/users"} {
		entries, _ := r.ReadDir(filepath.Join(stage, dir))
		for _, ent := range entries {
			target := r.Path(filepath.FromSlash(dir), ent.Name())
			if !r.Exists(target) {
				moves = append(moves, [2]string{filepath.Join(stage, filepath.FromSlash(dir), ent.Name()), target})
			}
		}
	}
	for _, mv := range moves {
		if !r.Exists(mv[0]) {
			continue
		}
		if force {
			if err := r.RemoveAll(mv[1]); err != nil {
				return err
			}
		}
		if err := r.MkdirAll(filepath.Dir(mv[1]), 0o755); err != nil {
			return err
		}
		if err := r.Rename(mv[0], mv[1]); err != nil {
			return err
		}
	}
	return nil
}

// restoreRegistrations writes the VMs' registrations, pointed at this
// repository: their machine file is this repository's, whatever the
// backup's record says.
func restoreRegistrations(r *repo.Repo, man *Manifest, files map[string][]byte, stateRoot string) error {
	for _, m := range man.Machines {
		b, ok := files[path.Join("state", m, "vm.json")]
		if !ok {
			continue
		}
		var reg vm.Registration
		if err := json.Unmarshal(b, &reg); err != nil {
			return fmt.Errorf("machine %s: its registration is unreadable: %w", m, err)
		}
		file := spec.MachineFiles[0]
		if strings.HasSuffix(reg.Current.File, ".json") {
			file = spec.MachineFiles[1]
		}
		reg.Name, reg.Repo, reg.Current.File = m, r.Root, filepath.Join(r.MachinePaths(m).Dir, file)
		s := vm.StateDir{Root: stateRoot, Name: m}
		if err := s.Ensure(); err != nil {
			return err
		}
		nb, _ := json.MarshalIndent(&reg, "", "  ")
		if err := atomicfile.Write(s.File("vm.json"), append(nb, '\n'), 0o600); err != nil {
			return err
		}
	}
	return nil
}
