package repo

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/credvm/credvm/internal/spec"
)

// AddToInventory appends a machine's table to inventory.toml — the user's
// file is kept as written, comments and order included — and returns a
// function that puts the file back as it was. A machine the inventory
// lists already is refused.
func (r *Repo) AddToInventory(name string, tags []string) (undo func() error, err error) {
	if err := spec.CheckMachineName(name); err != nil {
		return nil, err
	}
	if _, ok := r.Inventory.Machines[name]; ok {
		return nil, fmt.Errorf("inventory.toml lists machine %s already", name)
	}
	p := r.Path("inventory.toml")
	old, err := r.ReadFile(p)
	existed := err == nil
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, err
	}
	quoted := make([]string, len(tags))
	for i, t := range tags {
		quoted[i] = fmt.Sprintf("%q", t)
	}
	table := fmt.Sprintf("[machines.%s]\ntags = [%s]\n", name, strings.Join(quoted, ", "))
	content := table
	if trimmed := bytes.TrimRight(old, "\n"); len(trimmed) > 0 {
		content = string(trimmed) + "\n\n" + table
	}
	undo = func() error {
		if !existed {
			return r.Remove(p)
		}
		return r.WriteFileAtomic(p, old, 0o644)
	}
	if err := r.WriteFileAtomic(p, []byte(content), 0o644); err != nil {
		return nil, err
	}
	inv, err := spec.ParseInventory(p, []byte(content))
	if err != nil {
		undo()
		return nil, fmt.Errorf("inventory.toml: adding %s: %w", name, err)
	}
	r.Inventory = inv
	return undo, nil
}

// CopyMachine copies machines/src to machines/dst (which must not exist)
// and returns a function that removes the copy.
func (r *Repo) CopyMachine(src, dst string) (undo func() error, err error) {
	if err := spec.CheckMachineName(dst); err != nil {
		return nil, err
	}
	from, to := r.MachinePaths(src).Dir, r.MachinePaths(dst).Dir
	if r.Exists(to) {
		return nil, fmt.Errorf("machine %s exists already (%s)", dst, r.Rel(to))
	}
	undo = func() error { return r.RemoveAll(to) }
	if err := r.copyTree(from, to); err != nil {
		undo()
		return nil, fmt.Errorf("copy %s to %s: %w", r.Rel(from), r.Rel(to), err)
	}
	return undo, nil
}

// copyTree copies the regular files and directories of a tree of the
// repository to a new place in it; links and other files are left out.
func (r *Repo) copyTree(from, to string) error {
	return r.WalkDir(from, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(from, p)
		dst := filepath.Join(to, rel)
		switch {
		case d.IsDir():
			return r.MkdirAll(dst, 0o755)
		case d.Type().IsRegular():
			b, err := r.ReadFile(p)
			if err != nil {
				return err
			}
			return r.WriteFile(dst, b, 0o644)
		}
		return nil
	})
}

// AddHostToInventory appends a [hosts.<name>] table to inventory.toml
// (the user's file kept as written); a host listed already is left as it
// is.
func (r *Repo) AddHostToInventory(name string, h spec.Host) error {
	if _, ok := r.Inventory.Hosts[name]; ok {
		return nil
	}
	p := r.Path("inventory.toml")
	old, err := r.ReadFile(p)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	table := fmt.Sprintf("[hosts.%s]\nssh = %q\n", name, h.SSH)
	if len(h.SSHOptions) > 0 {
		quoted := make([]string, len(h.SSHOptions))
		for i, o := range h.SSHOptions {
			quoted[i] = fmt.Sprintf("%q", o)
		}
		table += fmt.Sprintf("ssh_options = [%s]\n", strings.Join(quoted, ", "))
	}
	if h.Root != "" {
		table += fmt.Sprintf("root = %q\n", h.Root)
	}
	content := table
	if trimmed := bytes.TrimRight(old, "\n"); len(trimmed) > 0 {
		content = string(trimmed) + "\n\n" + table
	}
	inv, err := spec.ParseInventory(p, []byte(content))
	if err != nil {
		return fmt.Errorf("inventory.toml: adding host %s: %w", name, err)
	}
	if err := r.WriteFileAtomic(p, []byte(content), 0o644); err != nil {
		return err
	}
	r.Inventory = inv
	return nil
}
