package vars

import (
	"fmt"
	"path/filepath"
	"slices"
	"strings"

	"github.com/credvm/credvm/internal/repo"
	"github.com/credvm/credvm/internal/spec"
)

// Toggling a generator's share flag moves where clan keeps its vars
// (vars/per-machine/<m>/<g> ↔ vars/shared/<g>). The values are kept, not
// regenerated — a CA made shared keeps its key — and the old copy goes,
// so that no stale secret stays readable where nothing uses it:
//
//   - made shared: the per-machine values move to vars/shared, deployed to
//     every machine sharing it. When vars/shared already holds values
//     (another machine shared it first) those win, and the per-machine
//     copy is removed.
//   - made per-machine: a machine the shared values were deployed to (its
//     machines/<m> link says so) takes a copy of them; the shared copy is
//     removed once no machine shares the generator any more. A shared
//     generator with no secret records no machine, so there the
//     per-machine generator runs afresh.

// move is one toggled generator of one machine.
type move struct {
	label    string
	from, to string
	machines []string // where to's secrets are deployed
	g        *spec.Generator
	machine  string // decrypts from when the user cannot
}

// moveToggled moves the vars of the machines' toggled generators in one
// transaction, commits it, and returns one line per move.
func (e *Engine) moveToggled(machines []*spec.Machine, noCommit bool) ([]string, error) {
	moves, removals, err := e.toggled(machines)
	if err != nil || len(moves)+len(removals) == 0 {
		return nil, err
	}
	t := newTxn(e.Repo)
	t.noHistory = true
	var done, paths []string
	movedFrom := map[string]bool{}
	for _, mv := range moves {
		movedFrom[mv.from] = true
		if err := e.stageMove(t, mv); err != nil {
			t.abort()
			return nil, err
		}
		done = append(done, fmt.Sprintf("%s: moved %s to %s (share changed; values kept)", mv.label, e.Repo.Rel(mv.from), e.Repo.Rel(mv.to)))
		paths = append(paths, mv.to)
	}
	for _, dir := range removals {
		if err := t.remove(dir); err != nil {
			t.abort()
			return nil, err
		}
		if !movedFrom[dir] {
			done = append(done, fmt.Sprintf("removed %s: nothing uses it there any more (share changed)", e.Repo.Rel(dir)))
		}
		paths = append(paths, dir)
	}
	if err := t.commit(); err != nil {
		return nil, err
	}
	return done, e.commitGit(noCommit, paths, "vars: move vars whose generator's share changed")
}

// toggled finds the moves and removals the machines' share flags call for.
func (e *Engine) toggled(machines []*spec.Machine) ([]move, []string, error) {
	var sharedTo map[string][]string
	machinesOf := func(g string) ([]string, error) {
		if sharedTo == nil {
			var err error
			if sharedTo, err = e.sharedMachines(); err != nil {
				return nil, err
			}
		}
		return sharedTo[g], nil
	}
	var moves []move
	var removals []string
	planned := map[string]bool{}
	remove := func(dir string) {
		if !planned[dir] {
			planned[dir] = true
			removals = append(removals, dir)
		}
	}
	for _, m := range machines {
		for _, g := range m.SortedGenerators() {
			if g.Imported {
				continue
			}
			per := e.Repo.GeneratorDir(m.Name, g.Name, false)
			shared := e.Repo.GeneratorDir(m.Name, g.Name, true)
			switch {
			case g.Share && e.Repo.Exists(per):
				if !e.Repo.Exists(shared) && !planned[shared] {
					to, err := machinesOf(g.Name)
					if err != nil {
						return nil, nil, err
					}
					planned[shared] = true
					moves = append(moves, move{label: m.Name + "/" + g.Name, from: per, to: shared, machines: to, g: g, machine: m.Name})
				}
				remove(per)
			case !g.Share && !e.Repo.Exists(per) && e.deployedTo(shared, m.Name):
				moves = append(moves, move{label: m.Name + "/" + g.Name, from: shared, to: per, machines: []string{m.Name}, g: g, machine: m.Name})
				planned[per] = true
				if users, err := machinesOf(g.Name); err != nil {
					return nil, nil, err
				} else if len(users) == 0 {
					remove(shared)
				}
			}
		}
	}
	return moves, removals, nil
}

// deployedTo reports whether a generator directory holds a secret linked
// to machine m.
func (e *Engine) deployedTo(dir, m string) bool {
	entries, err := e.Repo.ReadDir(dir)
	if err != nil {
		return false
	}
	for _, ent := range entries {
		if ent.IsDir() && slices.Contains(e.Repo.AccessOf(filepath.Join(dir, ent.Name())).Machines, m) {
			return true
		}
	}
	return false
}

// stageMove copies mv.from to mv.to in t, re-encrypting each secret to
// the same users and groups and to the machines mv.to deploys to.
func (e *Engine) stageMove(t *txn, mv move) error {
	staging, err := t.stage(mv.to)
	if err != nil {
		return err
	}
	entries, err := e.Repo.ReadDir(mv.from)
	if err != nil {
		return err
	}
	secret := map[string]bool{}
	for _, ent := range entries {
		if ent.IsDir() && e.Repo.Exists(filepath.Join(mv.from, ent.Name(), "secret")) {
			secret[ent.Name()] = true
		}
	}
	if err := copyTree(e.Repo, mv.from, staging, func(rel string) bool { return rel == markerFile || secret[rel] }); err != nil {
		return err
	}
	for name := range secret {
		dir := filepath.Join(mv.from, name)
		v, err := e.Repo.DecryptSecret(dir, mv.machine, e.User)
		if err != nil {
			return fmt.Errorf("vars %s: moving %s (its generator's share changed) needs its value: %w; one of the users who can read it (%s) must run `credvm vars generate %s`", mv.label, strings.TrimPrefix(e.Repo.Rel(dir), "vars/"), err, whoCanRead(e.Repo, dir), mv.machine)
		}
		cur := e.Repo.AccessOf(dir)
		access := repo.Access{Users: cur.Users, Groups: cur.Groups}
		if f := mv.g.Files[name]; f == nil || f.IsDeployed() {
			access.Machines = mv.machines
		}
		err = e.Repo.StageSecret(filepath.Join(staging, name), v, access.Union(repo.Access{Groups: e.Repo.DefaultGroups()}))
		clear(v)
		if err != nil {
			return fmt.Errorf("vars %s: %w", mv.label, err)
		}
	}
	return nil
}
