package spec

import (
	"errors"
	"fmt"
	"os"
	"slices"
	"time"
)

// Inventory is the repository's inventory.toml: which machines exist
// beyond their directories, and their tags.
//
//	[machines.app-vm-01]
//	tags = ["app", "eu"]
type Inventory struct {
	Machines map[string]*InventoryMachine `toml:"machines" json:"machines"`
}

// InventoryMachine is one machine's inventory entry.
type InventoryMachine struct {
	Tags []string `toml:"tags" json:"tags"`
}

// LoadInventory reads an inventory file; a missing file is an empty
// inventory.
func LoadInventory(path string) (*Inventory, error) {
	data, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return &Inventory{}, nil
	}
	if err != nil {
		return nil, err
	}
	return ParseInventory(path, data)
}

// ParseInventory parses an inventory file's content (nil: none, an empty
// inventory); path names it in messages.
func ParseInventory(path string, data []byte) (*Inventory, error) {
	inv := &Inventory{}
	if data == nil {
		return inv, nil
	}
	doc, err := decodeFile(path, data, inv)
	if err != nil {
		return nil, err
	}
	ps := doc.unknown
	for name, m := range inv.Machines {
		key := "machines." + name
		if err := CheckMachineName(name); err != nil {
			ps = append(ps, doc.problem(key, "%v", err))
		}
		if m == nil {
			inv.Machines[name] = &InventoryMachine{}
			continue
		}
		for i, t := range m.Tags {
			if !isHostname(t) {
				ps = append(ps, doc.problem(fmt.Sprintf("%s.tags[%d]", key, i), "invalid tag %q: letters, digits and '-'", t))
			}
		}
	}
	if len(ps) > 0 {
		return nil, ps
	}
	return inv, nil
}

// Tagged returns the machines carrying tag, sorted.
func (inv *Inventory) Tagged(tag string) []string {
	var out []string
	for name, m := range inv.Machines {
		if slices.Contains(m.Tags, tag) {
			out = append(out, name)
		}
	}
	slices.Sort(out)
	return out
}

// Settings is the repository's optional credvm.toml. It marks the
// repository root and holds repository-wide settings:
//
//	[history]
//	retention = "24h"   # how long replaced vars are kept for rollback
type Settings struct {
	History struct {
		Retention string `toml:"retention" json:"retention"`
	} `toml:"history" json:"history"`

	retention time.Duration
}

// Retention is the parsed [history] retention; 0 when not set.
func (s *Settings) Retention() time.Duration { return s.retention }

// LoadSettings reads credvm.toml strictly; a missing file is no settings.
func LoadSettings(path string) (*Settings, error) {
	data, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return &Settings{}, nil
	}
	if err != nil {
		return nil, err
	}
	return ParseSettings(path, data)
}

// ParseSettings parses credvm.toml's content (nil: none); path names it
// in messages.
func ParseSettings(path string, data []byte) (*Settings, error) {
	s := &Settings{}
	if data == nil {
		return s, nil
	}
	doc, err := decodeFile(path, data, s)
	if err != nil {
		return nil, err
	}
	ps := doc.unknown
	if r := s.History.Retention; r != "" {
		d, err := time.ParseDuration(r)
		if err != nil || d < 0 {
			ps = append(ps, doc.problem("history.retention", "invalid duration %q: write one such as \"24h\" or \"168h\"", r))
		}
		s.retention = d
	}
	if len(ps) > 0 {
		return nil, ps
	}
	return s, nil
}
