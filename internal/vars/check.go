package vars

import (
	"fmt"
	"io/fs"
	"path/filepath"
	"slices"
	"strings"

	"github.com/credvm/credvm/internal/spec"
)

// CheckProblem is one generator whose vars are not ready.
type CheckProblem struct {
	Machine   string `json:"machine"`
	Generator string `json:"generator"`
	Status    string `json:"status"`
	Reason    string `json:"reason"`
	Fix       string `json:"fix"`
}

// Check lists, with the command that fixes each: every generator of the
// machines whose vars are missing or outdated (Missing), every secret
// whose recipients drifted from what its links grant (Drift), and every
// registered user nothing grants access to — a directory that appeared in
// sops/users on its own, which clan's rules give nothing.
func (e *Engine) Check(machines []*spec.Machine) ([]CheckProblem, error) {
	problems, err := e.Missing(machines)
	if err != nil {
		return nil, err
	}
	drifts, err := e.Drift(machines)
	if err != nil {
		return nil, err
	}
	for _, d := range drifts {
		machine, gen := d.ref.Machine, strings.TrimPrefix(d.Label, d.ref.Machine+"/")
		if d.ref.File == "" {
			machine, gen = strings.TrimPrefix(d.Label, "the machine key of "), "machine key"
		}
		problems = append(problems, CheckProblem{machine, gen, StatusUnfixed, "its recipients differ from what its links and groups grant: " + d.Change, "credvm vars fix " + machine})
	}
	for _, m := range machines {
		if m.FromLayout {
			problems = append(problems, CheckProblem{m.Name, "", StatusNotice, "no machine file: checked that its vars are stored and encrypted to whom their links grant; whether they are outdated needs its generators' definitions", "write machines/" + m.Name + "/machine.toml (or machine.json)"})
		}
		st, err := e.Status(m)
		if err != nil {
			return nil, err
		}
		for _, gs := range st {
			if gs.Status == StatusOK && gs.Notice != "" {
				problems = append(problems, CheckProblem{m.Name, gs.Name, StatusNotice, gs.Notice, "credvm vars generate " + m.Name + " -g " + gs.Name})
			}
		}
	}
	for _, u := range e.ungrantedUsers() {
		problems = append(problems, CheckProblem{"", "", StatusUngranted,
			fmt.Sprintf("user %s is in sops/users, but no link or group grants them anything (it takes a link or a group: a directory alone grants nothing)", u),
			fmt.Sprintf("credvm vars group add admins --user %s, or remove sops/users/%s", u, u)})
	}
	return problems, nil
}

// Statuses of Check beyond a generator's.
const (
	// StatusUnfixed: a secret's recipients differ from its links' (clan:
	// "Unfixed secret vars").
	StatusUnfixed = "unfixed"
	// StatusUngranted: a registered user nothing grants access to.
	StatusUngranted = "ungranted"
	// StatusNotice: valid vars with something to tell (a changed
	// definition): never a failure.
	StatusNotice = "notice"
)

// ungrantedUsers are the users of sops/users in no group and linked from
// no secret.
func (e *Engine) ungrantedUsers() []string {
	r := e.Repo
	users, _ := r.Users()
	granted := map[string]bool{}
	for _, g := range r.GroupNames() {
		us, _, _ := r.GroupMembers(g)
		for _, u := range us {
			granted[u] = true
		}
	}
	for _, top := range []string{r.Path("vars"), r.Path("sops", "secrets")} {
		r.WalkDir(top, func(p string, d fs.DirEntry, err error) error {
			if err == nil && d.Name() == "users" && d.IsDir() {
				for _, u := range r.LinkedNames(filepath.Dir(p), "users") {
					granted[u] = true
				}
				return fs.SkipDir
			}
			return nil
		})
	}
	var out []string
	for u := range users {
		if !granted[u] {
			out = append(out, u)
		}
	}
	slices.Sort(out)
	return out
}

// Missing lists every generator of the machines whose vars are missing or
// outdated, with the command that fixes it: what a start refuses.
func (e *Engine) Missing(machines []*spec.Machine) ([]CheckProblem, error) {
	problems := []CheckProblem{}
	for _, m := range machines {
		st, err := e.Status(m)
		if err != nil {
			return nil, err
		}
		for _, gs := range st {
			if gs.Status != StatusOK {
				problems = append(problems, CheckProblem{m.Name, gs.Name, gs.Status, gs.Reason, "credvm vars generate " + m.Name})
			}
		}
	}
	return problems, nil
}

// GetVar is Get for "GENERATOR/FILE" of a machine named by the user: by
// its machine file when the repository has one, else from the layout
// alone (a clan repository without credvm's machine files).
func (e *Engine) GetVar(machine, ref string) ([]byte, error) {
	gen, file, err := spec.SplitVar(ref)
	if err != nil {
		return nil, err
	}
	if err := spec.CheckMachineName(machine); err != nil {
		return nil, err
	}
	var m *spec.Machine
	paths := e.Repo.MachinePaths(machine)
	switch {
	case e.Repo.Exists(paths.Dir):
		if m, err = e.Repo.Machine(machine); err != nil {
			return nil, err
		}
	case !e.Repo.Exists(paths.Vars) && !e.Repo.Exists(paths.PublicKey):
		// Neither a machine file nor clan's vars or key: a typo, most
		// likely — never "not generated yet".
		_, err := e.Repo.Machine(machine)
		return nil, err
	}
	return e.Get(machine, m, gen, file)
}
