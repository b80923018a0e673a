package vars

import (
	"fmt"
	"slices"

	"github.com/credvm/credvm/internal/spec"
)

// runPlan is what one Generate call runs: the shared generators (once,
// whichever machines declare them) and each machine's own.
type runPlan struct {
	shared      []*spec.Generator
	sharedOwner map[string]string // shared generator → the machine asking its prompts
	// allShared holds every shared generator of the machines, run or not,
	// so that a shared generator's inputs can be read from the store.
	allShared *spec.Machine
	machines  []machinePlan
}

type machinePlan struct {
	m    *spec.Machine
	gens []*spec.Generator // its own, in dependency order
}

func (e *Engine) planRun(machines []*spec.Machine, opts GenerateOptions) (*runPlan, error) {
	p := &runPlan{sharedOwner: map[string]string{},
		allShared: &spec.Machine{Name: "shared", Vars: spec.Vars{Generators: map[string]*spec.Generator{}}}}
	for _, m := range machines {
		for _, g := range m.Vars.Generators {
			if g.Share {
				p.allShared.Vars.Generators[g.Name] = g
			}
		}
	}
	shared := map[string]*spec.Generator{}
	for _, m := range machines {
		gens, err := e.plan(m, opts)
		if err != nil {
			return nil, err
		}
		var own []*spec.Generator
		for _, g := range gens {
			if !g.Share {
				own = append(own, g)
				continue
			}
			for _, d := range g.Dependencies {
				if !m.Vars.Generators[d].Share {
					return nil, fmt.Errorf("vars %s/%s: a shared generator cannot depend on the per-machine generator %q; share it too", m.Name, g.Name, d)
				}
			}
			if prev, ok := shared[g.Name]; ok {
				if prev.DefinitionHash() != g.DefinitionHash() {
					return nil, fmt.Errorf("vars: shared generator %q is defined differently in machines %s and %s; make the definitions equal", g.Name, p.sharedOwner[g.Name], m.Name)
				}
				continue
			}
			shared[g.Name], p.sharedOwner[g.Name] = g, m.Name
			p.shared = append(p.shared, g)
		}
		p.machines = append(p.machines, machinePlan{m, own})
	}
	return p, nil
}

// planDependents adds to p, for every other machine of the repository,
// the generators that depend (directly or not) on a shared generator p
// runs: as clan has it, regenerating a shared generator regenerates its
// dependents wherever they are declared. A dependent that is shared joins
// the shared run; a machine whose file cannot be read is named and left.
func (e *Engine) planDependents(p *runPlan, machines []*spec.Machine) error {
	if len(p.shared) == 0 {
		return nil
	}
	inRun := map[string]bool{}
	for _, m := range machines {
		inRun[m.Name] = true
	}
	names, err := e.Repo.MachineNames()
	if err != nil {
		return err
	}
	for _, n := range names {
		if inRun[n] {
			continue
		}
		m, err := e.Repo.Machine(n)
		if err != nil {
			e.logf("machine %s: its dependents of regenerated shared vars are not regenerated: %v", n, err)
			continue
		}
		run := map[string]bool{}
		for _, g := range p.shared {
			run[g.Name] = true
		}
		var own []*spec.Generator
		for _, g := range m.GeneratorOrder() {
			if run[g.Name] {
				continue
			}
			for _, d := range g.Dependencies {
				run[g.Name] = run[g.Name] || run[d]
			}
			switch {
			case !run[g.Name]:
			case g.Share:
				p.shared, p.sharedOwner[g.Name] = append(p.shared, g), n
				p.allShared.Vars.Generators[g.Name] = g
			default:
				own = append(own, g)
			}
		}
		if len(own) > 0 {
			p.machines = append(p.machines, machinePlan{m, own})
		}
	}
	return nil
}

// plan lists the generators of m to run, in dependency order: the chosen
// ones that need it (or all chosen, with Regenerate) and, transitively,
// every generator that depends on one of them.
func (e *Engine) plan(m *spec.Machine, opts GenerateOptions) ([]*spec.Generator, error) {
	for _, name := range opts.Generators {
		if m.Vars.Generators[name] == nil {
			return nil, fmt.Errorf("vars %s: no generator %q (see %s)", m.Name, name, m.File)
		}
	}
	status, err := e.Status(m)
	if err != nil {
		return nil, err
	}
	run := map[string]bool{}
	for _, s := range status {
		named := slices.Contains(opts.Generators, s.Name)
		chosen := len(opts.Generators) == 0 || named
		// A generator named with -g runs, current or not, as clan's does.
		if chosen && (opts.Regenerate || named || s.Status != StatusOK) {
			run[s.Name] = true
		}
	}
	var out []*spec.Generator
	for _, g := range m.GeneratorOrder() {
		for _, d := range g.Dependencies {
			if run[d] {
				run[g.Name] = true
			}
		}
		if run[g.Name] {
			out = append(out, g)
		}
	}
	return out, nil
}

// promptKey names a prompt's answer within a run: a shared generator's
// prompts are asked once, whichever machine declares it.
func promptKey(machine string, g *spec.Generator, p *spec.Prompt) string {
	if g.Share {
		return "shared/" + g.Name + "/" + p.Name
	}
	return machine + "/" + g.Name + "/" + p.Name
}

// askAll asks every prompt of the plan before anything runs, so that
// parallel runs never interleave questions and a missing answer fails
// before any work.
func (e *Engine) askAll(p *runPlan, opts GenerateOptions) (map[string][]byte, error) {
	answers := map[string][]byte{}
	ask := func(machine string, g *spec.Generator) error {
		for _, pr := range g.SortedPrompts() {
			key := promptKey(machine, g, pr)
			if _, ok := answers[key]; ok {
				continue
			}
			v, err := e.answer(opts, machine, g, pr)
			if err != nil {
				return err
			}
			answers[key] = v
		}
		return nil
	}
	for _, g := range p.shared {
		if err := ask(p.sharedOwner[g.Name], g); err != nil {
			return nil, err
		}
	}
	for _, mp := range p.machines {
		for _, g := range mp.gens {
			if err := ask(mp.m.Name, g); err != nil {
				return nil, err
			}
		}
	}
	return answers, nil
}
