package cli

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/credvm/credvm/internal/repo"
	"github.com/credvm/credvm/internal/sops"
	"github.com/credvm/credvm/internal/spec"
	"github.com/credvm/credvm/internal/vars"
	"github.com/credvm/credvm/internal/vm"
)

func newRotateCmd(g *globals) *cobra.Command {
	var (
		tags    []string
		gens    []string
		dryRun  bool
		timeout time.Duration
	)
	cmd := &cobra.Command{
		Use:   "rotate [NAME...]",
		Short: "Regenerate VMs' secrets and restart them one at a time, health-checked, stopping at the first failure",
		Long: `Rotate secrets across VMs, one VM at a time: regenerate its generators
(all, or those named with --generator, and their dependents), restart it if
it runs, and wait until it is healthy ([vm.health] in machine.toml: a
console line and/or a TCP port, within a timeout; without one, the VM must
still run a few seconds after its start). The first failure stops the
rollout: the VMs after it keep their old secrets and keep running, and
credvm says exactly what happened and how to roll back or go on.

The previous value of every regenerated var is kept, encrypted, for the
retention period (credvm.toml [history] retention, default 24h): see
` + "`credvm vars history`" + ` and ` + "`credvm vars rollback`" + `.`,
		Example: `  credvm rotate --tag app --dry-run
  credvm rotate --tag app --generator app-vm-secrets`,
		Args: cobra.ArbitraryArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			names, err := g.vmNames(args, tags, false)
			if err != nil {
				return err
			}
			return g.rotate(names, gens, dryRun, timeout)
		},
		ValidArgsFunction: vmCompletion(g),
	}
	f := cmd.Flags()
	f.StringArrayVarP(&tags, "tag", "t", nil, "every VM whose machine carries this inventory tag")
	f.StringArrayVarP(&gens, "generator", "g", nil, "regenerate only this generator (and its dependents); repeatable")
	f.BoolVar(&dryRun, "dry-run", false, "print the plan and change nothing")
	f.DurationVar(&timeout, "shutdown-timeout", 30*time.Second, "how long each guest gets to power off")
	return cmd
}

type rotation struct {
	name    string
	s       vm.StateDir
	m       *spec.Machine
	e       *vars.Engine
	gens    []string
	running bool
	result  string
}

func (g *globals) rotate(names, gens []string, dryRun bool, timeout time.Duration) error {
	ids, err := sops.LoadUserIdentities()
	if err != nil {
		return err
	}
	var steps []*rotation
	for _, n := range names {
		s := g.state(n)
		reg, err := s.Registration()
		if err != nil {
			return err
		}
		r, err := repo.Open(reg.Repo)
		if err != nil {
			return fmt.Errorf("vm %s: %w", n, err)
		}
		m, err := reg.Machine()
		if err != nil {
			return err
		}
		st := &rotation{name: n, s: s, m: m, e: &vars.Engine{Repo: r, User: ids, Log: prefixWriter(g.stderr, "    ")}, result: "untouched: old secrets"}
		for _, gen := range gens {
			if m.Vars.Generators[gen] == nil {
				return fmt.Errorf("vm %s has no generator %q (see %s)", n, gen, reg.Current.File)
			}
		}
		st.gens = gens
		if len(gens) == 0 {
			for _, gen := range m.SortedGenerators() {
				st.gens = append(st.gens, gen.Name)
			}
		}
		if len(st.gens) == 0 {
			return fmt.Errorf("vm %s declares no generators: nothing to rotate", n)
		}
		st.running, _ = s.Running()
		steps = append(steps, st)
	}

	fmt.Fprintf(g.stdout, "rotation plan: %s, one at a time\n", plural(len(steps), "VM", "VMs"))
	for i, st := range steps {
		restart := "not running: new secrets at its next start"
		if st.running {
			h := &st.m.VM.Health
			check := "still running after 3s (no [vm.health])"
			var parts []string
			if h.Console != "" {
				parts = append(parts, fmt.Sprintf("console matches %q", h.Console))
			}
			if h.TCP != "" {
				parts = append(parts, "TCP "+h.TCP+" accepts")
			}
			if len(parts) > 0 {
				check = strings.Join(parts, " and ") + " within " + h.Wait().String()
			}
			restart = "restart, then healthy when " + check
		}
		fmt.Fprintf(g.stdout, "  %d. %s: regenerate %s (and dependents); %s\n", i+1, st.name, strings.Join(st.gens, ", "), restart)
	}
	if dryRun {
		return nil
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	var failure error
	for i, st := range steps {
		fmt.Fprintf(g.stdout, "[%d/%d] %s\n", i+1, len(steps), st.name)
		if _, err := st.e.Generate(ctx, []*spec.Machine{st.m}, vars.GenerateOptions{Generators: st.gens, Regenerate: true}); err != nil {
			st.result, failure = "FAILED to regenerate (vars unchanged): "+err.Error(), err
			break
		}
		if !st.running {
			st.result = "rotated; not running: new secrets at its next start"
			continue
		}
		offset := st.s.ConsoleOffset()
		if err := g.restart(st.name, timeout); err != nil {
			st.result, failure = "rotated, but the restart FAILED: "+err.Error(), err
			break
		}
		if err := vm.WaitHealthy(st.s, st.m, offset); err != nil {
			st.result, failure = "rotated and restarted, but UNHEALTHY: "+err.Error(), err
			break
		}
		st.result = "rotated, restarted, healthy"
		fmt.Fprintf(g.stdout, "    healthy\n")
	}

	fmt.Fprintf(g.stdout, "\nrotation summary:\n")
	var rest []string
	for _, st := range steps {
		fmt.Fprintf(g.stdout, "  %s: %s\n", st.name, st.result)
		if strings.HasPrefix(st.result, "untouched") {
			rest = append(rest, st.name)
		}
	}
	if failure == nil {
		return nil
	}
	var failed *rotation
	for _, st := range steps {
		if !strings.HasPrefix(st.result, "rotated, restarted, healthy") && !strings.HasPrefix(st.result, "untouched") && !strings.HasPrefix(st.result, "rotated; not running") {
			failed = st
			break
		}
	}
	fmt.Fprintf(g.stdout, "\nthe rollout stopped at %s.\n", failed.name)
	if !strings.HasPrefix(failed.result, "FAILED to regenerate") {
		var rb []string
		for _, gen := range failed.gens {
			rb = append(rb, "credvm vars rollback "+failed.name+" "+gen)
		}
		fmt.Fprintf(g.stdout, "  roll %s back:  %s && credvm restart %s\n", failed.name, strings.Join(rb, " && "), failed.name)
	}
	if len(rest) > 0 {
		cmdline := "credvm rotate " + strings.Join(rest, " ")
		for _, gen := range gens {
			cmdline += " --generator " + gen
		}
		fmt.Fprintf(g.stdout, "  go on with the rest (still on their old secrets):  %s\n", cmdline)
	}
	return &exitError{code: 1, msg: fmt.Sprintf("rotation stopped at %s: %v", failed.name, failure)}
}
