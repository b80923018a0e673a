package vm

import (
	"context"
	"errors"
	"fmt"

	"github.com/credvm/credvm/internal/spec"
	"github.com/credvm/credvm/internal/vars"
)

// CloneOptions configure Clone.
type CloneOptions struct {
	// Engine holds the repository and the user's keys.
	Engine *vars.Engine
	// Src is the machine to copy, Dst the new one.
	Src, Dst string
	// Generate configures the new machine's generation (prompts, sandbox,
	// commit); its Generators and Regenerate are ignored.
	Generate vars.GenerateOptions
	// StateRoot is where VMs are registered: NEW is created when SRC is
	// a created VM.
	StateRoot string
}

// CloneResult says what Clone made.
type CloneResult struct {
	Name      string   `json:"name"`
	From      string   `json:"from"`
	Generated []string `json:"generated"`
	// Created: NEW was registered as a VM, as SRC is.
	Created bool `json:"created"`
}

// Clone makes machine Dst from Src's machine file and inventory tags, with
// its own freshly generated secrets and machine key — never a copy of
// Src's (shared generators stay shared: that is what share = true means).
// If anything fails, nothing of Dst is left behind.
func Clone(ctx context.Context, o CloneOptions) (*CloneResult, error) {
	e := o.Engine
	src, err := e.Repo.Machine(o.Src)
	if err != nil {
		return nil, err
	}
	undoCopy, err := e.Repo.CopyMachine(o.Src, o.Dst)
	if err != nil {
		return nil, err
	}
	var undos []func() error
	undos = append(undos, undoCopy)
	fail := func(err error) (*CloneResult, error) {
		for i := len(undos) - 1; i >= 0; i-- {
			err = errors.Join(err, undos[i]())
		}
		return nil, fmt.Errorf("clone %s: %w (nothing of %s was kept)", o.Dst, err, o.Dst)
	}
	if inv := e.Repo.Inventory.Machines[o.Src]; inv != nil && len(inv.Tags) > 0 {
		undoInv, err := e.Repo.AddToInventory(o.Dst, inv.Tags)
		if err != nil {
			return fail(err)
		}
		undos = append(undos, undoInv)
	}
	dst, err := e.Repo.Machine(o.Dst)
	if err != nil {
		return fail(err)
	}
	// Only NEW's own generators run; shared ones are kept.
	gen := o.Generate
	gen.Generators, gen.Regenerate = nil, false
	results, err := e.Generate(ctx, []*spec.Machine{dst}, gen)
	if err != nil {
		return fail(fmt.Errorf("generating its vars failed: %w", err))
	}
	res := &CloneResult{Name: o.Dst, From: src.Name, Generated: []string{}}
	for _, r := range results {
		res.Generated = append(res.Generated, r.Ran...)
	}
	if !gen.NoCommit && e.Repo.InGit() {
		paths := []string{e.Repo.MachinePaths(o.Dst).Dir, e.Repo.Path("inventory.toml")}
		if err := e.Repo.Commit(paths, fmt.Sprintf("machines: clone %s from %s", o.Dst, o.Src)); err != nil {
			return res, fmt.Errorf("clone %s: cloned with its vars, but the git commit failed: %w", o.Dst, err)
		}
	}
	if (StateDir{Root: o.StateRoot, Name: o.Src}).Exists() {
		if _, err := Create(StateDir{Root: o.StateRoot, Name: o.Dst}, e.Repo, dst); err != nil {
			return res, err
		}
		res.Created = true
	}
	return res, nil
}
