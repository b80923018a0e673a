package spec

import (
	"fmt"
	"maps"
	"slices"
	"sync"

	"github.com/credvm/credvm/internal/words"
)

// DefaultHypervisor runs a machine whose [vm] names none.
const DefaultHypervisor = "qemu"

// HypervisorRules is what a hypervisor backend knows about machine files:
// which [vm] settings it can carry out, and its defaults for the rest.
// Every backend in package hypervisor registers its own, so that this
// package — which validates machine files — lists no hypervisor, machine
// type or transport itself: adding a backend touches only its package.
type HypervisorRules interface {
	// Name is the value of [vm] hypervisor that selects the backend.
	Name() string
	// CheckVM fills in the backend's defaults and reports, by key
	// ("vm.machine", "vm.transport"), every setting the backend cannot
	// carry out. It runs after the generic checks, on a VM whose paths
	// are already absolute.
	CheckVM(vm *VM, problem ProblemFunc)
}

// ProblemFunc reports one problem at a key of the file being validated;
// the problem gets the key's line.
type ProblemFunc func(key, format string, args ...any)

var (
	rulesMu sync.RWMutex
	rules   = map[string]HypervisorRules{}
)

// RegisterHypervisor makes a backend's rules known to the validator. It
// panics on a second registration of a name: two backends claiming one
// name is a programming error.
func RegisterHypervisor(r HypervisorRules) {
	rulesMu.Lock()
	defer rulesMu.Unlock()
	if _, dup := rules[r.Name()]; dup {
		panic("spec: hypervisor " + r.Name() + " registered twice")
	}
	rules[r.Name()] = r
}

// Hypervisors lists the registered backends' names, sorted.
func Hypervisors() []string {
	rulesMu.RLock()
	defer rulesMu.RUnlock()
	return slices.Sorted(maps.Keys(rules))
}

// LookupHypervisor returns the rules registered under name, or nil.
func LookupHypervisor(name string) HypervisorRules {
	rulesMu.RLock()
	defer rulesMu.RUnlock()
	return rules[name]
}

// checkHypervisor hands the VM to its backend's rules.
func (vm *VM) checkHypervisor(add ProblemFunc) {
	r := LookupHypervisor(vm.Hypervisor)
	if r == nil {
		known := Hypervisors()
		if len(known) == 0 {
			add("vm.hypervisor", "unknown hypervisor %q: this program was built without any hypervisor backend", vm.Hypervisor)
			return
		}
		add("vm.hypervisor", "unknown hypervisor %q: use one of %s%s", vm.Hypervisor, QuoteList(known...), suggest(vm.Hypervisor, known))
		return
	}
	// Each backend's own table may be set only for that backend.
	for table, owner := range map[string]string{"cloud_hypervisor": "cloud-hypervisor", "firecracker": "firecracker"} {
		if vm.hasTable(table) && vm.Hypervisor != owner {
			add("vm."+table, "settings for %s on a %s machine", owner, vm.Hypervisor)
		}
	}
	r.CheckVM(vm, add)
}

func (vm *VM) hasTable(table string) bool {
	switch table {
	case "cloud_hypervisor":
		return vm.CloudHypervisor != CloudHypervisor{}
	case "firecracker":
		return vm.Firecracker != Firecracker{}
	}
	return false
}

// suggest returns ` (did you mean "x"?)` for a near miss among known.
func suggest(got string, known []string) string {
	if best := words.Nearest(got, known); best != "" {
		return fmt.Sprintf(" (did you mean %q?)", best)
	}
	return ""
}
