// Package repo is the on-disk repository a user works in, laid out as clan
// lays out a clan directory so that clan and credvm can share one:
//
//	credvm.toml or inventory.toml          marks the root (either is enough)
//	machines/<m>/machine.toml              a machine (or machine.json)
//	vars/per-machine/<m>/<gen>/<file>/     a machine's var: secret (sops) or value
//	vars/shared/<gen>/<file>/              a shared generator's var
//	sops/users/<u>/key.json                a user's age public key(s)
//	sops/machines/<m>/key.json             a machine's age public key
//	sops/secrets/<m>-age.key/secret        the machine's private key, sops-encrypted to the users
//	.credvm/                               credvm's own lock and scratch space (git-ignored)
//
// The package knows where things live and who may read them (recipients);
// what the vars mean is package vars's business.
package repo

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/credvm/credvm/internal/spec"
	"github.com/credvm/credvm/internal/words"
)

// EnvRepo names the repository when --repo is not given.
const EnvRepo = "CREDVM_REPO"

// Repo is an opened repository.
type Repo struct {
	Root      string
	Inventory *spec.Inventory
	Settings  *spec.Settings // credvm.toml

	fs rootFS // every file access goes through it (fs.go)
}

// ErrNotFound is returned by Find when no repository encloses the directory.
var ErrNotFound = errors.New("no credvm repository here")

// Find returns the repository enclosing dir: the nearest directory upward
// that holds credvm.toml or inventory.toml, or both sops/ and vars/ (a
// clan directory).
func Find(dir string) (*Repo, error) {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return nil, err
	}
	for d := abs; ; d = filepath.Dir(d) {
		if isRoot(d) {
			return Open(d)
		}
		if filepath.Dir(d) == d {
			return nil, fmt.Errorf("%w: no credvm.toml or inventory.toml in %s or any parent (create one, or pass --repo or set $%s)", ErrNotFound, abs, EnvRepo)
		}
	}
}

func isRoot(d string) bool {
	for _, f := range []string{"credvm.toml", "inventory.toml"} {
		if fi, err := os.Stat(filepath.Join(d, f)); err == nil && fi.Mode().IsRegular() {
			return true
		}
	}
	return isDir(filepath.Join(d, "sops")) && isDir(filepath.Join(d, "vars"))
}

func isDir(p string) bool {
	fi, err := os.Stat(p)
	return err == nil && fi.IsDir()
}

// Open opens the repository rooted at root, which must exist.
func Open(root string) (*Repo, error) {
	abs, err := filepath.Abs(root)
	if err != nil {
		return nil, err
	}
	if fi, err := os.Stat(abs); errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("repository %s does not exist (check --repo or $%s)", root, EnvRepo)
	} else if err != nil {
		return nil, fmt.Errorf("repository %s: %w", root, err)
	} else if !fi.IsDir() {
		return nil, fmt.Errorf("repository %s is not a directory (check --repo or $%s)", root, EnvRepo)
	}
	r := &Repo{Root: abs}
	settings, err := r.readOptional("credvm.toml")
	if err == nil {
		r.Settings, err = spec.ParseSettings(r.Path("credvm.toml"), settings)
	}
	if err != nil {
		return nil, err
	}
	inv, err := r.readOptional("inventory.toml")
	if err == nil {
		r.Inventory, err = spec.ParseInventory(r.Path("inventory.toml"), inv)
	}
	if err != nil {
		return nil, err
	}
	return r, nil
}

// readOptional reads a file of the root that may be missing (nil, then).
func (r *Repo) readOptional(name string) ([]byte, error) {
	b, err := r.ReadFile(r.Path(name))
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	return b, err
}

// Path joins elements onto the root.
func (r *Repo) Path(elem ...string) string {
	return filepath.Join(append([]string{r.Root}, elem...)...)
}

// Rel returns p relative to the root, for messages.
func (r *Repo) Rel(p string) string {
	if rel, err := filepath.Rel(r.Root, p); err == nil && !strings.HasPrefix(rel, "..") {
		return rel
	}
	return p
}

// MachineNames lists the machines: every machines/<m>/ with a machine file.
func (r *Repo) MachineNames() ([]string, error) {
	entries, err := r.ReadDir(r.Path("machines"))
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var names []string
	for _, e := range entries {
		// Not a machine: a file, or a name no machine can have (a staging
		// directory of an import, ".name.credvm-new-…").
		if !e.IsDir() || spec.CheckMachineName(e.Name()) != nil {
			continue
		}
		for _, f := range spec.MachineFiles {
			if r.Exists(r.Path("machines", e.Name(), f)) {
				names = append(names, e.Name())
				break
			}
		}
	}
	return names, nil
}

// Machine loads and validates a machine.
func (r *Repo) Machine(name string) (*spec.Machine, error) {
	if err := spec.CheckMachineName(name); err != nil {
		return nil, err
	}
	dir := r.Path("machines", name)
	if !r.IsDir(dir) && r.inLayout(name) {
		return nil, fmt.Errorf("machine %s has no machine file, only vars and keys (a clan machine declared in Nix?): this needs its definitions: write %s (vars list, get, set, check and fix work without one)", name, r.Rel(filepath.Join(dir, "machine.toml")))
	}
	if !r.IsDir(dir) {
		known, _ := r.MachineNames()
		hint := "none yet"
		if len(known) > 0 {
			hint = strings.Join(known, ", ")
		}
		return nil, fmt.Errorf("machine %s: not found: no %s%s (machines in this repository: %s)", name, r.Rel(filepath.Join(dir, "machine.toml")), words.DidYouMean(name, known), hint)
	}
	m, err := r.loadMachine(name, dir)
	var ps spec.Problems
	if errors.As(err, &ps) {
		for _, p := range ps {
			p.File = r.Rel(p.File)
		}
	}
	if err != nil {
		return nil, err
	}
	m.File = r.Rel(m.File)
	return m, nil
}

// loadMachine reads machines/<name>/machine.toml or .json (one of them)
// through the root, and parses it.
func (r *Repo) loadMachine(name, dir string) (*spec.Machine, error) {
	return r.readMachine(name, dir, r.SharedGenerator(name))
}

// loadMachineAlone reads a machine file without resolving dependencies on
// other machines' shared generators.
func (r *Repo) loadMachineAlone(name string) (*spec.Machine, error) {
	return r.readMachine(name, r.Path("machines", name), nil)
}

func (r *Repo) readMachine(name, dir string, shared spec.SharedResolver) (*spec.Machine, error) {
	var path string
	var data []byte
	for _, f := range spec.MachineFiles {
		p := filepath.Join(dir, f)
		b, err := r.ReadFile(p)
		switch {
		case err == nil && path != "":
			return nil, fmt.Errorf("machine %s: both %s and %s exist; keep one", name, filepath.Base(path), f)
		case err == nil:
			path, data = p, b
		case !errors.Is(err, os.ErrNotExist):
			return nil, fmt.Errorf("machine %s: %w", name, err)
		}
	}
	if path == "" {
		return nil, fmt.Errorf("machine %s: no machine.toml or machine.json in %s", name, dir)
	}
	return spec.ParseMachineWith(path, name, data, shared)
}

// SharedGenerator resolves dependencies of machine self on shared
// generators declared by the repository's other machines (each machine
// file is read once, its own dependencies not resolved).
func (r *Repo) SharedGenerator(self string) spec.SharedResolver {
	var byName map[string]*spec.Generator
	return func(gen string) *spec.Generator {
		if byName == nil {
			byName = map[string]*spec.Generator{}
			names, _ := r.MachineNames()
			for _, n := range names {
				if n == self {
					continue
				}
				m, err := r.loadMachineAlone(n)
				if err != nil {
					continue
				}
				for _, g := range m.Vars.Generators {
					if g.Share && byName[g.Name] == nil {
						byName[g.Name] = g
					}
				}
			}
		}
		return byName[gen]
	}
}

// Select resolves machine names and tags into a sorted list of machines.
// No names and no tags select every machine.
func (r *Repo) Select(names, tags []string) ([]string, error) {
	all, err := r.MachineNames()
	if err != nil {
		return nil, err
	}
	if len(names) == 0 && len(tags) == 0 {
		return all, nil
	}
	var out []string
	for _, n := range names {
		if !slices.Contains(all, n) {
			if _, err := r.Machine(n); err != nil {
				return nil, err
			}
		}
		out = append(out, n)
	}
	for _, t := range tags {
		tagged := r.Inventory.Tagged(t)
		if len(tagged) == 0 {
			return nil, fmt.Errorf("tag %q: no machine in inventory.toml carries it", t)
		}
		out = append(out, tagged...)
	}
	slices.Sort(out)
	return slices.Compact(out), nil
}

// WriteGeneratedMachine writes machines/<name>/machine.json from a
// guest's NixOS configuration (spec.Machine.Generated set in data),
// atomically. A machine file the user wrote — machine.toml, or a
// machine.json not generated — is never overwritten.
func (r *Repo) WriteGeneratedMachine(name string, data []byte) error {
	if err := spec.CheckMachineName(name); err != nil {
		return err
	}
	dir := r.Path("machines", name)
	if r.Exists(filepath.Join(dir, "machine.toml")) {
		return fmt.Errorf("machine %s: %s exists and was not generated from a flake; remove it to take the machine from the flake, or drop --flake", name, r.Rel(filepath.Join(dir, "machine.toml")))
	}
	if old, err := r.ReadFile(filepath.Join(dir, "machine.json")); err == nil {
		var m struct {
			Generated *spec.Generated `json:"generated"`
		}
		if json.Unmarshal(old, &m) != nil || m.Generated == nil {
			return fmt.Errorf("machine %s: %s exists and was not generated from a flake; remove it to take the machine from the flake, or drop --flake", name, r.Rel(filepath.Join(dir, "machine.json")))
		}
	}
	if err := r.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	return r.WriteFileAtomic(filepath.Join(dir, "machine.json"), data, 0o644)
}
