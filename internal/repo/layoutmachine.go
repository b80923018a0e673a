package repo

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/credvm/credvm/internal/spec"
	"github.com/credvm/credvm/internal/words"
)

// A clan repository whose machines are declared in Nix has no machine
// files, yet its layout says most of what `vars list|get|set|check` need:
// vars/per-machine/<m>/<g>/<f>/ holds a "secret" (encrypted) or a "value"
// (public), and a secret's machines/<m> link says it is deployed. A shared
// generator belongs to a machine when one of its secrets is linked to it;
// a shared generator holding only public files names no machine, so it is
// not attributed to any. What the layout cannot say — scripts, prompts,
// validation — is why such a machine cannot be generated, and why its
// vars cannot be called outdated.

// LayoutMachineNames lists the machines the layout knows that no machine
// file declares: vars/per-machine/<m> and sops/machines/<m>.
func (r *Repo) LayoutMachineNames() ([]string, error) {
	declared, err := r.MachineNames()
	if err != nil {
		return nil, err
	}
	var out []string
	for _, dir := range []string{r.Path("vars", "per-machine"), r.Path("sops", "machines")} {
		entries, err := r.ReadDir(dir)
		if err != nil {
			continue
		}
		for _, e := range entries {
			n := e.Name()
			if e.IsDir() && !slices.Contains(declared, n) && !slices.Contains(out, n) && r.inLayout(n) {
				out = append(out, n)
			}
		}
	}
	slices.Sort(out)
	return out, nil
}

// inLayout reports whether the layout holds vars or a key of machine
// name (an empty directory, left where a transaction staged, is neither).
func (r *Repo) inLayout(name string) bool {
	if spec.CheckMachineName(name) != nil {
		return false
	}
	if r.Exists(r.Path("sops", "machines", name, "key.json")) {
		return true
	}
	entries, _ := r.ReadDir(r.Path("vars", "per-machine", name))
	return slices.ContainsFunc(entries, func(e os.DirEntry) bool { return e.IsDir() && spec.CheckName("generator", e.Name()) == nil })
}

// LayoutMachine is machine name as the layout alone describes it
// (FromLayout set).
func (r *Repo) LayoutMachine(name string) (*spec.Machine, error) {
	if err := spec.CheckMachineName(name); err != nil {
		return nil, err
	}
	m := &spec.Machine{Name: name, FromLayout: true, File: "(no machine file: the repository's layout)",
		Vars: spec.Vars{Generators: map[string]*spec.Generator{}}}
	add := func(dir string, share bool) error {
		g := &spec.Generator{Name: filepath.Base(dir), Share: share, Files: map[string]*spec.File{}}
		entries, err := r.ReadDir(dir)
		if err != nil {
			return err
		}
		linked := false
		for _, e := range entries {
			if !e.IsDir() || spec.CheckName("file", e.Name()) != nil {
				continue
			}
			fdir := filepath.Join(dir, e.Name())
			f := &spec.File{Name: e.Name()}
			switch {
			case r.Exists(filepath.Join(fdir, "secret")):
				deployed := slices.Contains(r.LinkedNames(fdir, "machines"), name)
				linked = linked || deployed
				f.Secret, f.Deploy = ptr(true), ptr(deployed)
			case r.Exists(filepath.Join(fdir, "value")):
				f.Secret = ptr(false)
			default:
				continue
			}
			g.Files[f.Name] = f
		}
		if len(g.Files) > 0 && (!share || linked) {
			m.Vars.Generators[g.Name] = g
		}
		return nil
	}
	per := r.Path("vars", "per-machine", name)
	if !r.inLayout(name) {
		all, _ := r.MachineNames()
		layout, _ := r.LayoutMachineNames()
		all = append(all, layout...)
		slices.Sort(all)
		hint := "none yet"
		if len(all) > 0 {
			hint = strings.Join(all, ", ")
		}
		return nil, fmt.Errorf("machine %s: not found: no machines/%s/machine.toml and no vars or key of it%s (machines in this repository: %s)", name, name, words.DidYouMean(name, all), hint)
	}
	for _, top := range []struct {
		dir   string
		share bool
	}{{per, false}, {r.Path("vars", "shared"), true}} {
		entries, _ := r.ReadDir(top.dir)
		for _, e := range entries {
			if e.IsDir() && spec.CheckName("generator", e.Name()) == nil {
				if err := add(filepath.Join(top.dir, e.Name()), top.share); err != nil {
					return nil, fmt.Errorf("machine %s: %w", name, err)
				}
			}
		}
	}
	return m, nil
}

// VarsMachine is machine name for the commands that work without a
// machine file: its machine file when it has one, else the layout's.
func (r *Repo) VarsMachine(name string) (*spec.Machine, error) {
	if err := spec.CheckMachineName(name); err != nil {
		return nil, err
	}
	if r.IsDir(r.Path("machines", name)) {
		return r.Machine(name)
	}
	return r.LayoutMachine(name)
}

// VarsMachines is Select then VarsMachine: named, tagged, or — with
// neither — every machine of the machine files and of the layout.
func (r *Repo) VarsMachines(names, tags []string) ([]*spec.Machine, error) {
	if len(names) == 0 && len(tags) == 0 {
		declared, err := r.MachineNames()
		if err != nil {
			return nil, err
		}
		layout, err := r.LayoutMachineNames()
		if err != nil {
			return nil, err
		}
		names = append(declared, layout...)
		slices.Sort(names)
	} else if len(tags) > 0 {
		sel, err := r.Select(names, tags)
		if err != nil {
			return nil, err
		}
		names = sel
	}
	var out []*spec.Machine
	for _, n := range names {
		m, err := r.VarsMachine(n)
		if err != nil {
			return nil, err
		}
		out = append(out, m)
	}
	return out, nil
}

func ptr[T any](v T) *T { return &v }
