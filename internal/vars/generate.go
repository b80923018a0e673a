package vars

import (
	"context"
	"errors"
	"runtime"
	"sync"

	"github.com/credvm/credvm/internal/spec"
)

// GenerateOptions choose what Generate runs and how. They are per call:
// the Engine holds only the repository and the user's keys.
type GenerateOptions struct {
	// Generators limits the run to these generators (and their dependents).
	Generators []string
	// Regenerate runs the chosen generators even when their vars are
	// current; without it only missing or outdated ones run.
	Regenerate bool
	// Answers to prompts given non-interactively.
	Answers Answers
	// Terminal, when not nil, is where prompts without an answer are asked.
	Terminal Terminal
	// Sandbox for generator scripts (default auto).
	Sandbox Sandbox
	// Jobs bounds how many machines generate at once (0: one per CPU,
	// at least two).
	Jobs int
	// NoCommit skips the git commit of changed vars.
	NoCommit bool
	// ShowOutput shows a failing script's last output lines, scrubbed of
	// every value it could see; by default only their number is given.
	ShowOutput bool
}

// Result says what a Generate run did for one machine.
type Result struct {
	Machine string   `json:"name"`
	Ran     []string `json:"generated"`
}

// Generate brings the vars of the given machines up to date. Shared
// generators run first, once, in their own transaction; then the machines
// run in parallel, each in its own transaction. Every prompt is asked
// before anything runs.
func (e *Engine) Generate(ctx context.Context, machines []*spec.Machine, opts GenerateOptions) ([]Result, error) {
	var results []Result
	err := e.locked(func() error {
		var err error
		results, err = e.generateLocked(ctx, machines, opts)
		return err
	})
	return results, err
}

func (e *Engine) generateLocked(ctx context.Context, machines []*spec.Machine, opts GenerateOptions) ([]Result, error) {
	if n, err := e.PruneHistory(); err != nil {
		return nil, err
	} else if n > 0 {
		e.logf("pruned %d expired generations from %s", n, HistoryDir)
	}
	if err := opts.Answers.Check(machines); err != nil {
		return nil, err
	}
	cleanStaleWorkspaces()
	sandbox, bwrap, err := resolveSandbox(opts.Sandbox)
	if err != nil {
		return nil, err
	}
	defer e.inputs.removeBins()
	me, err := e.me()
	if err != nil {
		return nil, err
	}
	moved, err := e.moveToggled(machines, opts.NoCommit)
	if err != nil {
		return nil, err
	}
	for _, line := range moved {
		e.logf("%s", line)
	}
	p, err := e.planRun(machines, opts)
	if err != nil {
		return nil, err
	}
	if err := e.planDependents(p, machines); err != nil {
		return nil, err
	}
	if err := e.refuseDrift(machines); err != nil {
		return nil, err
	}
	answers, err := e.askAll(p, opts)
	if err != nil {
		return nil, err
	}
	r := &runner{e: e, sandbox: sandbox, bwrap: bwrap, me: me, answers: answers, noCommit: opts.NoCommit, showOutput: opts.ShowOutput}
	if len(p.allShared.Vars.Generators) > 0 {
		machinesOf, err := e.sharedMachines()
		if err != nil {
			return nil, err
		}
		if len(p.shared) > 0 {
			if err := r.runTxn(ctx, "shared", p.shared, p.allShared, machinesOf); err != nil {
				return nil, err
			}
		}
		if err := r.fixSharedRecipients(p.allShared, machinesOf); err != nil {
			return nil, err
		}
	}
	return r.runMachines(ctx, p, opts.Jobs)
}

// runMachines runs each machine's own generators, machines in parallel.
func (r *runner) runMachines(ctx context.Context, p *runPlan, jobs int) ([]Result, error) {
	results := make([]Result, len(p.machines))
	errs := make([]error, len(p.machines))
	if jobs <= 0 {
		jobs = max(2, runtime.NumCPU())
	}
	sem := make(chan struct{}, jobs)
	var wg sync.WaitGroup
	for i, mp := range p.machines {
		results[i] = Result{Machine: mp.m.Name, Ran: []string{}}
		for _, g := range p.shared {
			if mp.m.Vars.Generators[g.Name] != nil {
				results[i].Ran = append(results[i].Ran, g.Name)
			}
		}
		if len(mp.gens) == 0 {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			sem <- struct{}{}
			defer func() { <-sem }()
			if errs[i] = r.runTxn(ctx, mp.m.Name, mp.gens, mp.m, nil); errs[i] == nil {
				for _, g := range mp.gens {
					results[i].Ran = append(results[i].Ran, g.Name)
				}
			}
		}()
	}
	wg.Wait()
	return results, errors.Join(errs...)
}
