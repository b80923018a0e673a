package vars

import (
	"errors"
	"fmt"
	"io/fs"
	"path/filepath"
	"strings"

	"github.com/credvm/credvm/internal/repo"
	"github.com/credvm/credvm/internal/spec"
)

// SetOptions configure Set.
type SetOptions struct {
	// NoCommit skips the git commit.
	NoCommit bool
}

// Set stores value as one file of a generator, keeping the generator's
// other files, in one transaction. The generator gets a new generation, so
// generators depending on it become outdated.
func (e *Engine) Set(m *spec.Machine, gen, file string, value []byte, opts SetOptions) error {
	g := m.Vars.Generators[gen]
	if g == nil {
		return fmt.Errorf("vars %s/%s: no generator %q (see %s)", m.Name, gen, gen, m.File)
	}
	f := g.Files[file]
	if f == nil {
		return fmt.Errorf("vars %s/%s/%s: generator %s declares no file %q", m.Name, gen, file, gen, file)
	}
	return e.locked(func() error { return e.set(m, g, f, value, opts) })
}

func (e *Engine) set(m *spec.Machine, g *spec.Generator, f *spec.File, value []byte, opts SetOptions) error {
	me, err := e.me()
	if err != nil {
		return err
	}
	machines := []string{m.Name}
	if g.Share {
		sm, err := e.sharedMachines()
		if err != nil {
			return err
		}
		machines = sm[g.Name]
	}
	target := e.GeneratorDir(m.Name, g)
	t := newTxn(e.Repo)
	staging, err := t.stage(target)
	if err != nil {
		return err
	}
	fail := func(err error) error {
		t.abort()
		return fmt.Errorf("vars %s/%s/%s: %w", m.Name, g.Name, f.Name, err)
	}
	// Copy the generator's directory but for this file and our metadata.
	if err := copyTree(e.Repo, target, staging, func(rel string) bool {
		return rel == f.Name || rel == MetaFile || rel == markerFile
	}); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fail(err)
	}
	r := &runner{e: e, me: me}
	one := &spec.Generator{Name: g.Name, Files: map[string]*spec.File{f.Name: f}}
	meta, _ := readMeta(e.Repo, target)
	if meta == nil {
		meta = &Meta{Definition: g.DefinitionHash()}
	}
	meta.Generation = randomID()
	if err := r.writeGenerator(staging, target, one, map[string][]byte{f.Name: value}, meta, machines); err != nil {
		return fail(err)
	}
	if err := t.commit(); err != nil {
		return fail(err)
	}
	if err := e.commitGit(opts.NoCommit, []string{target, e.Repo.Path("sops")}, "vars: set %s/%s/%s", m.Name, g.Name, f.Name); err != nil {
		return fmt.Errorf("vars %s/%s/%s: stored, but %w", m.Name, g.Name, f.Name, err)
	}
	return nil
}

// copyTree copies dir src into the existing dir dst: files with their
// modes, symlinks as symlinks. skip is asked about each top-level name.
func copyTree(r *repo.Repo, src, dst string, skip func(rel string) bool) error {
	return r.WalkDir(src, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(src, p)
		if rel == "." {
			return nil
		}
		top, _, _ := strings.Cut(rel, string(filepath.Separator))
		if skip(top) {
			if d.IsDir() {
				return filepath.SkipDir
			}
			return nil
		}
		out := filepath.Join(dst, rel)
		switch {
		case d.Type()&fs.ModeSymlink != 0:
			t, err := r.Readlink(p)
			if err != nil {
				return err
			}
			return r.Symlink(t, out)
		case d.IsDir():
			return r.MkdirAll(out, 0o755)
		default:
			b, err := r.ReadFile(p)
			if err != nil {
				return err
			}
			fi, err := d.Info()
			if err != nil {
				return err
			}
			return r.WriteFile(out, b, fi.Mode().Perm())
		}
	})
}
