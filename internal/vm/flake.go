package vm

import (
	"fmt"

	"github.com/credvm/credvm/internal/flake"
	"github.com/credvm/credvm/internal/repo"
)

// FlakeCreated is a VM created from a guest's NixOS configuration.
type FlakeCreated struct {
	*Created
	Flake flake.Source `json:"flake"`
	// Built are the boot files nix built for it.
	Built []string `json:"built"`
}

// CreateFromFlake evaluates machine name of flake ref (its NixOS
// configuration with credvm's guest module), writes
// machines/<name>/machine.json marked as generated from the flake, and
// registers the VM.
func CreateFromFlake(s StateDir, r *repo.Repo, ref string) (*FlakeCreated, error) {
	if s.Exists() {
		return nil, fmt.Errorf("vm %s already exists (%s); `credvm update %s` evaluates its flake again", s.Name, s.Path(), s.Name)
	}
	ev, err := writeFromFlake(r, s.Name, ref)
	if err != nil {
		return nil, err
	}
	m, err := r.Machine(s.Name)
	if err != nil {
		return nil, err
	}
	c, err := Create(s, r, m)
	if err != nil {
		return nil, err
	}
	built := ev.Built
	if built == nil {
		built = []string{}
	}
	return &FlakeCreated{Created: c, Flake: ev.Source, Built: built}, nil
}

// writeFromFlake evaluates and writes the machine file.
func writeFromFlake(r *repo.Repo, name, ref string) (*flake.Evaluated, error) {
	ev, err := flake.Eval(ref, name)
	if err != nil {
		return nil, err
	}
	return ev, r.WriteGeneratedMachine(name, ev.JSON)
}
