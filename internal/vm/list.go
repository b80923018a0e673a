package vm

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/credvm/credvm/internal/repo"
)

// Select resolves VM names from names and inventory tags (each VM's tags
// come from its own repository's inventory). With neither, all selects
// every VM of the state root, and otherwise it is an error.
func Select(root string, names, tags []string, all bool) ([]string, error) {
	out := slices.Clone(names)
	if len(tags) > 0 || (all && len(names) == 0) {
		vms, err := List(root)
		if err != nil {
			return nil, err
		}
		if len(tags) == 0 {
			return vms, nil
		}
		tagged, err := taggedVMs(root, vms, tags)
		if err != nil {
			return nil, err
		}
		out = append(out, tagged...)
	}
	if len(out) == 0 {
		return nil, errors.New("name at least one VM (or use --tag)")
	}
	slices.Sort(out)
	return slices.Compact(out), nil
}

func taggedVMs(root string, vms, tags []string) ([]string, error) {
	repos := map[string]*repo.Repo{}
	var out []string
	for _, n := range vms {
		reg, err := (StateDir{Root: root, Name: n}).Registration()
		if err != nil {
			continue
		}
		r, ok := repos[reg.Repo]
		if !ok {
			if r, err = repo.Open(reg.Repo); err != nil {
				continue
			}
			repos[reg.Repo] = r
		}
		for _, t := range tags {
			if slices.Contains(r.Inventory.Tagged(t), n) {
				out = append(out, n)
			}
		}
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("no VM in %s carries tag %s", root, strings.Join(tags, " or "))
	}
	return out, nil
}

// Listed is one row of a list: the VM's status, or why it could not be
// had.
type Listed struct {
	Name   string
	Status *Status
	Err    error
}

// ListStatuses inspects the named VMs of a state root, 16 at a time,
// with one Inspector (each repository opened once). Directories of the
// state root that hold no VM are left out.
func ListStatuses(root string, names []string) []Listed {
	rows := make([]Listed, len(names))
	in := &Inspector{}
	// A fixed pool pulling the next index: thousands of goroutines parked
	// on a semaphore cost more in scheduling than the inspection itself.
	var next atomic.Int64
	var wg sync.WaitGroup
	for range min(8, len(names)) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := int(next.Add(1) - 1); i < len(names); i = int(next.Add(1) - 1) {
				st, err := in.Inspect(StateDir{Root: root, Name: names[i]})
				rows[i] = Listed{Name: names[i], Status: st, Err: err}
			}
		}()
	}
	wg.Wait()
	return slices.DeleteFunc(rows, func(l Listed) bool {
		var nv *NoVMError
		return errors.As(l.Err, &nv)
	})
}
