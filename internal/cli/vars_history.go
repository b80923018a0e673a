package cli

import (
	"fmt"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/credvm/credvm/internal/vars"
)

func newVarsHistoryCmd(g *globals) *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "history MACHINE",
		Short: "List the kept earlier generations of a machine's vars (for rollback) — never a value",
		Long: `Every time vars are regenerated, set or rolled back, the generation they
replace is kept, sops-encrypted as it was, under vars-history/ for the
retention period (credvm.toml [history] retention, default 24h).`,
		Args:              cobra.ExactArgs(1),
		ValidArgsFunction: machineNameCompletion(g),
		RunE: func(cmd *cobra.Command, args []string) error {
			e, m, err := g.engineMachine(args[0])
			if err != nil {
				return err
			}
			if _, err := e.PruneHistory(); err != nil {
				return err
			}
			hist, err := e.History(m)
			if err != nil {
				return err
			}
			if asJSON {
				if hist == nil {
					hist = []vars.HistoryEntry{}
				}
				return g.printJSON(hist)
			}
			if len(hist) == 0 {
				fmt.Fprintf(g.stdout, "%s: no earlier generations kept\n", m.Name)
				return nil
			}
			tw := table(g.stdout)
			fmt.Fprintln(tw, "GENERATOR\tID\tREPLACED\tEXPIRES\tFILES")
			for _, h := range hist {
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", h.Generator, h.ID, h.Replaced.Local().Format(time.DateTime), h.Expires.Local().Format(time.DateTime), strings.Join(h.Files, ", "))
			}
			return tw.Flush()
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print as JSON")
	return cmd
}

func newVarsRollbackCmd(g *globals) *cobra.Command {
	var opts vars.RollbackOptions
	cmd := &cobra.Command{
		Use:   "rollback MACHINE GENERATOR",
		Short: "Restore a generator's previous generation of vars (the current one is kept in turn)",
		Long: `Make the newest kept generation of a generator current again (or the one
named with --to, from ` + "`credvm vars history`" + `). The generation it replaces is
kept in turn, so a rollback can be undone the same way. Restart the VM
(credvm restart MACHINE) for it to get the restored values.`,
		Args:              cobra.ExactArgs(2),
		ValidArgsFunction: machineNameCompletion(g),
		RunE: func(cmd *cobra.Command, args []string) error {
			e, m, err := g.engineMachine(args[0])
			if err != nil {
				return err
			}
			res, err := e.Rollback(m, args[1], opts)
			if res == nil {
				return err
			}
			fmt.Fprintf(g.stdout, "%s/%s: rolled back to the generation replaced at %s (%s)\n", res.Machine, res.Generator, res.Restored.Replaced.Local().Format(time.DateTime), res.Restored.ID)
			if len(res.Dependents) > 0 {
				fmt.Fprintf(g.stdout, "generators depending on it are now outdated: %s (roll them back too, or regenerate them)\n", strings.Join(res.Dependents, ", "))
			}
			fmt.Fprintf(g.stdout, "restart the VM for it to use the restored values: credvm restart %s\n", res.Machine)
			return err
		},
	}
	cmd.Flags().StringVar(&opts.To, "to", "", "the kept generation's ID (default: the newest)")
	cmd.Flags().BoolVar(&opts.NoCommit, "no-commit", false, "do not git-commit the change")
	return cmd
}
