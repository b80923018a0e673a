package vars

import (
	"io/fs"
	"path/filepath"
)

// Group is one of sops/groups, as `vars group list` shows it.
type Group struct {
	Name     string   `json:"name"`
	Users    []string `json:"users"`
	Machines []string `json:"machines"`
	// Secrets counts the secrets linked to the group.
	Secrets int `json:"secrets"`
}

// Groups lists the repository's groups.
func (e *Engine) Groups() ([]Group, error) {
	r := e.Repo
	out := []Group{}
	for _, name := range r.GroupNames() {
		users, machines, err := r.GroupMembers(name)
		if err != nil {
			return nil, err
		}
		g := Group{Name: name, Users: nonNilStrings(users), Machines: nonNilStrings(machines)}
		for _, dir := range e.secretDirs() {
			for _, l := range r.LinkedNames(dir, "groups") {
				if l == name {
					g.Secrets++
				}
			}
		}
		out = append(out, g)
	}
	return out, nil
}

func nonNilStrings(s []string) []string {
	if s == nil {
		return []string{}
	}
	return s
}

// secretDirs lists every secret directory of the repository: the vars'
// and the machine keys'.
func (e *Engine) secretDirs() []string {
	r := e.Repo
	var out []string
	for _, top := range []string{r.Path("vars"), r.Path("sops", "secrets")} {
		r.WalkDir(top, func(p string, d fs.DirEntry, err error) error {
			if err == nil && !d.IsDir() && d.Name() == "secret" {
				out = append(out, filepath.Dir(p))
			}
			return nil
		})
	}
	return out
}

// GroupChange is a member added to or removed from a group.
type GroupChange struct {
	Group            string
	User, Machine    string
	Add              bool
	AcceptRecipients bool
	NoCommit         bool
}

// ChangeGroup adds or removes a group member, then re-encrypts the
// secrets of every machine as their links now grant (Fix, with its
// confirmation of whoever gains access). On a refused confirmation the
// membership change is undone.
func (e *Engine) ChangeGroup(o GroupChange) (*FixResult, error) {
	var res *FixResult
	err := e.locked(func() error {
		r := e.Repo
		kind, name := "users", o.User
		if o.Machine != "" {
			kind, name = "machines", o.Machine
		}
		undo := func() {}
		if o.Add {
			added, err := r.AddGroupMember(o.Group, kind, name)
			if err != nil {
				return err
			}
			if added {
				undo = func() { r.RemoveGroupMember(o.Group, kind, name) }
			}
		} else {
			if err := r.RemoveGroupMember(o.Group, kind, name); err != nil {
				return err
			}
			undo = func() { r.AddGroupMember(o.Group, kind, name) }
		}
		machines, _ := e.allMachines()
		var err error
		res, err = e.fixLocked(machines, FixOptions{AcceptRecipients: o.AcceptRecipients, NoCommit: true})
		if err != nil {
			undo()
			return err
		}
		paths := []string{r.Path("sops", "groups", o.Group)}
		for _, d := range res.Fixed {
			paths = append(paths, d.ref.Target)
		}
		return e.commitGit(o.NoCommit, paths, "vars: %s %s %s group %s", map[bool]string{true: "add", false: "remove"}[o.Add], kind[:len(kind)-1], name, o.Group)
	})
	return res, err
}
