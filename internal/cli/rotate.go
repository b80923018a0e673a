package cli

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/signal"
	"slices"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/credvm/credvm/internal/fleet"
	"github.com/credvm/credvm/internal/indent"
	"github.com/credvm/credvm/internal/sops"
	"github.com/credvm/credvm/internal/vm"
	"github.com/credvm/credvm/internal/words"
)

func newRotateCmd(g *globals) *cobra.Command {
	var (
		tags    []string
		gens    []string
		dryRun  bool
		timeout time.Duration
		prompts promptFlags
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
			user, err := sops.LoadUserIdentities()
			if err != nil {
				return err
			}
			// VMs placed on hosts (the inventory says so) rotate there.
			local, placedNames := args, []string(nil)
			var remotes []vm.RemoteVM
			if r, rerr := g.openRepo(); rerr == nil && len(r.Inventory.Hosts) > 0 {
				all := args
				if len(args) == 0 || len(tags) > 0 {
					if all, err = r.Select(args, tags); err != nil {
						return err
					}
				}
				if remotes, err = fleet.Remotes(r, user, all, func(f string, a ...any) { fmt.Fprintf(g.stderr, "    "+f+"\n", a...) }); err != nil {
					return err
				}
				for _, rv := range remotes {
					placedNames = append(placedNames, rv.Name)
				}
				local = slices.DeleteFunc(slices.Clone(args), func(n string) bool { return slices.Contains(placedNames, n) })
			}
			var names []string
			if len(args) == 0 || len(local) > 0 || len(tags) > 0 {
				if names, err = vm.Select(g.stateRoot(), local, tags, false); err != nil && len(remotes) == 0 {
					return err
				}
			}
			o := vm.RotateOptions{Generators: gens, Start: *g.startOptions(timeout), User: user, Log: indent.Writer(g.stderr, "    "), Remotes: remotes}
			if err := g.promptOptions(prompts, &o.Generate); err != nil {
				return err
			}
			for _, n := range names {
				o.States = append(o.States, g.state(n))
			}
			return g.rotate(o, dryRun)
		},
		ValidArgsFunction: vmCompletion(g),
	}
	f := cmd.Flags()
	tagFlag(cmd, &tags, "every VM whose machine carries this inventory tag")
	f.StringArrayVarP(&gens, "generator", "g", nil, "regenerate only this generator (and its dependents); repeatable")
	f.BoolVar(&dryRun, "dry-run", false, "print the plan and change nothing")
	f.DurationVar(&timeout, "shutdown-timeout", vm.DefaultShutdownTimeout, "how long each guest gets to power off")
	prompts.add(cmd)
	return cmd
}

func (g *globals) rotate(o vm.RotateOptions, dryRun bool) error {
	rot, err := vm.PlanRotation(o)
	if err != nil {
		return err
	}
	printRotationPlan(g.stdout, rot)
	if dryRun {
		return nil
	}
	o.OnStepStart = func(i int, s *vm.RotationStep) { fmt.Fprintf(g.stdout, "[%d/%d] %s\n", i+1, len(rot.Steps), s.Name) }
	o.OnStepFinished = func(i int, s *vm.RotationStep) {
		if s.Outcome == vm.Healthy {
			fmt.Fprintf(g.stdout, "    healthy\n")
		}
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	runErr := rot.Run(ctx, o)
	fmt.Fprintf(g.stdout, "\nrotation summary:\n")
	for _, s := range rot.Steps {
		if s.Err != nil {
			fmt.Fprintf(g.stdout, "  %s: %s: %s\n", s.Name, s.Outcome, printable(s.Err.Error()))
		} else {
			fmt.Fprintf(g.stdout, "  %s: %s\n", s.Name, s.Outcome)
		}
	}
	failed := rot.Failed()
	if failed == nil {
		return runErr
	}
	fmt.Fprintf(g.stdout, "\nthe rollout stopped at %s.\n", failed.Name)
	if cmd := rot.RollbackCommand(); cmd != "" {
		fmt.Fprintf(g.stdout, "  roll %s back:  %s\n", failed.Name, cmd)
	}
	if cmd := rot.ContinueCommand(); cmd != "" {
		fmt.Fprintf(g.stdout, "  go on with the rest (still on their old secrets):  %s\n", cmd)
	}
	return &exitError{code: 1, msg: runErr.Error()}
}

func printRotationPlan(w io.Writer, rot *vm.Rotation) {
	fmt.Fprintf(w, "rotation plan: %s, one at a time\n", words.Plural(len(rot.Steps), "VM", "VMs"))
	for i, s := range rot.Steps {
		restart := "not running: new secrets at its next start"
		if s.Running {
			restart = "restart, then healthy when " + s.Check
		}
		where := ""
		if s.Host != "" {
			where = " (on " + s.Host + ")"
			if !s.Running {
				restart = "not running there: deployed, new secrets at its next start"
			}
		}
		fmt.Fprintf(w, "  %d. %s%s: regenerate %s (and dependents); %s\n", i+1, s.Name, where, strings.Join(s.Generators, ", "), restart)
	}
}
