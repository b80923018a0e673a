package cli

import (
	"fmt"
	"io"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/credvm/credvm/internal/spec"
	"github.com/credvm/credvm/internal/vars"
	"github.com/credvm/credvm/internal/words"
)

func newVarsListCmd(g *globals) *cobra.Command {
	var asJSON bool
	cmd := g.newVarsMachinesCmd("list [MACHINE...]", "List machines' vars: generator, file, secret or public, and status (never a value)",
		func(e *vars.Engine, ms []*spec.Machine) error {
			files := []vars.FileStatus{}
			for _, m := range ms {
				st, err := e.Status(m)
				if err != nil {
					return err
				}
				for _, gs := range st {
					files = append(files, gs.Files...)
				}
			}
			if asJSON {
				return g.printJSON(files)
			}
			if len(files) == 0 {
				fmt.Fprintf(g.stdout, "%s %s no generators\n", strings.Join(names(ms), ", "), words.Verb(len(ms), "declares", "declare"))
				return nil
			}
			tw := table(g.stdout)
			several := len(ms) > 1
			if several {
				fmt.Fprint(tw, "MACHINE\t")
			}
			fmt.Fprintln(tw, "GENERATOR\tFILE\tKIND\tSTATUS")
			for _, f := range files {
				if several {
					fmt.Fprintf(tw, "%s\t", f.Machine)
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", f.Generator, f.File, fileKind(f), fileStatus(f))
			}
			return tw.Flush()
		})
	cmd.Flags().BoolVar(&asJSON, "json", false, "print as JSON")
	return cmd
}

func fileKind(f vars.FileStatus) string {
	kind := "public"
	if f.Secret {
		kind = "secret"
	}
	if f.Shared {
		kind += ", shared"
	}
	return kind
}

func fileStatus(f vars.FileStatus) string {
	if f.Status == vars.StatusOK && f.Notice != "" {
		return "ok (" + f.Notice + ")"
	}
	if f.Reason != "" {
		return f.Status + " (" + f.Reason + ")"
	}
	return f.Status
}

func newVarsCheckCmd(g *globals) *cobra.Command {
	var asJSON bool
	cmd := g.newVarsMachinesCmd("check [MACHINE...]", "Exit non-zero if any var is missing or outdated or its recipients drifted, saying which and how to fix it",
		func(e *vars.Engine, ms []*spec.Machine) error {
			problems, err := e.Check(ms)
			if err != nil {
				return err
			}
			if asJSON {
				if err := g.printJSON(problems); err != nil {
					return err
				}
			} else {
				for _, p := range problems {
					switch {
					case p.Machine == "":
						fmt.Fprintf(g.stdout, "%s: %s\n", p.Status, p.Reason)
						continue
					case p.Generator == "":
						fmt.Fprintf(g.stdout, "%s: %s (%s)\n", p.Machine, p.Status, p.Reason)
						continue
					}
					fmt.Fprintf(g.stdout, "%s/%s: %s (%s)\n", p.Machine, p.Generator, p.Status, p.Reason)
				}
			}
			if failing := slices.DeleteFunc(slices.Clone(problems), func(p vars.CheckProblem) bool { return p.Status == vars.StatusNotice }); len(failing) > 0 {
				return &exitError{1, checkSummary(failing)}
			}
			if !asJSON {
				fmt.Fprintln(g.stdout, checkOK(ms))
			}
			return nil
		})
	cmd.Long = `Check that every generator of the machines (all when none is named) has
its vars stored and current (clan's rule: present, validation unchanged),
that every secret is encrypted to exactly what its links and groups grant,
and that no registered user is left with nothing granting them access.
Exits 0 when all is well, 1 otherwise, listing each problem with the
command that fixes it (vars generate, vars fix). Notices — a definition
changed since generation, a machine without a machine file whose vars can
only be checked for presence and recipients — never fail.`
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the problems as JSON")
	return cmd
}

// checkOK is check's last line when nothing fails.
func checkOK(ms []*spec.Machine) string {
	var layout []string
	for _, m := range ms {
		if m.FromLayout {
			layout = append(layout, m.Name)
		}
	}
	if len(layout) == 0 {
		return fmt.Sprintf("all vars of %s are up to date", words.Plural(len(ms), "machine", "machines"))
	}
	return fmt.Sprintf("all vars of %s are stored and encrypted to whom their links grant (not checked for being outdated, without a machine file: %s)", words.Plural(len(ms), "machine", "machines"), strings.Join(layout, ", "))
}

// checkSummary is check's error: how many generators need generating and
// how many secrets need fixing, with the commands that do it.
func checkSummary(problems []vars.CheckProblem) string {
	var gen, fix []string
	var parts []string
	nGen, nFix := 0, 0
	for _, p := range problems {
		switch p.Status {
		case vars.StatusUnfixed:
			nFix++
			if !slices.Contains(fix, p.Machine) {
				fix = append(fix, p.Machine)
			}
		case vars.StatusUngranted:
			parts = append(parts, p.Reason+": "+p.Fix)
		default:
			nGen++
			if !slices.Contains(gen, p.Machine) {
				gen = append(gen, p.Machine)
			}
		}
	}
	var out []string
	if nGen > 0 {
		out = append(out, fmt.Sprintf("%s %s generating: run `credvm vars generate %s`", words.Plural(nGen, "generator", "generators"), words.Verb(nGen, "needs", "need"), strings.Join(gen, " ")))
	}
	if nFix > 0 {
		out = append(out, fmt.Sprintf("%s %s fixing: run `credvm vars fix %s`", words.Plural(nFix, "secret", "secrets"), words.Verb(nFix, "needs", "need"), strings.Join(fix, " ")))
	}
	return strings.Join(append(out, parts...), "; ")
}

func newVarsGetCmd(g *globals) *cobra.Command {
	cmd := g.newEngineCmd("get MACHINE GENERATOR/FILE", "Print a var's value to standard output (secrets decrypted with your age key)", 2,
		func(e *vars.Engine, args []string) error {
			v, err := e.GetVar(args[0], args[1])
			if err != nil {
				return err
			}
			_, err = g.stdout.Write(v)
			return err
		})
	cmd.Long = `Print a var's value, byte for byte, to standard output.

A secret is decrypted with your age key ($SOPS_AGE_KEY_FILE, $SOPS_AGE_KEY
or ~/.config/sops/age/keys.txt) or, when you are not one of its recipients,
through the machine's key (sops/secrets/<machine>-age.key), which you can
decrypt. Works on clan repositories too, with or without a machine file.`
	return cmd
}

func newVarsSetCmd(g *globals) *cobra.Command {
	var opts vars.SetOptions
	cmd := g.newEngineCmd("set MACHINE GENERATOR/FILE", "Store a var's value read from standard input (the other files of the generator are kept)", 2,
		func(e *vars.Engine, args []string) error {
			m, err := e.Repo.VarsMachine(args[0])
			if err != nil {
				return err
			}
			gen, file, err := spec.SplitVar(args[1])
			if err != nil {
				return err
			}
			var v []byte
			if g.stdinIsTerminal() {
				// Typed: not echoed, asked twice, one line without its
				// newline (pipe a multi-line value).
				v, err = askHidden(g.stdin.(*os.File), g.stderr, fmt.Sprintf("value for %s/%s", m.Name, args[1]), false)
			} else {
				v, err = io.ReadAll(g.stdin)
			}
			if err != nil {
				return err
			}
			if err := e.Set(m, gen, file, v, opts); err != nil {
				return err
			}
			fmt.Fprintf(g.stdout, "%s: stored %s (%s)\n", m.Name, args[1], words.Plural(len(v), "byte", "bytes"))
			return nil
		})
	cmd.Long = `Store the bytes read from standard input as one file of a generator,
exactly as given (a trailing newline is part of the value). Typed on a
terminal, the value is one line, not echoed, asked twice, and stored
without the Enter's newline; pipe a value that has several lines. The
change is atomic, and generators depending on this one become outdated.`
	cmd.Example = `  printf %s "$NEW_TOKEN" | credvm vars set app-vm-01 api/token`
	cmd.Flags().BoolVar(&opts.NoCommit, "no-commit", false, "do not git-commit the change")
	return cmd
}

func newVarsHistoryCmd(g *globals) *cobra.Command {
	var asJSON bool
	cmd := g.newMachineCmd("history MACHINE", "List the kept earlier generations of a machine's vars (for rollback) — never a value", 1,
		func(e *vars.Engine, m *spec.Machine, _ []string) error {
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
		})
	cmd.Long = `Every time vars are regenerated, set or rolled back, the generation they
replace is kept, sops-encrypted as it was, under vars-history/ for the
retention period (credvm.toml [history] retention, default 24h).`
	cmd.Flags().BoolVar(&asJSON, "json", false, "print as JSON")
	return cmd
}

func newVarsRollbackCmd(g *globals) *cobra.Command {
	var opts vars.RollbackOptions
	cmd := g.newMachineCmd("rollback MACHINE GENERATOR", "Restore a generator's previous generation of vars (the current one is kept in turn)", 2,
		func(e *vars.Engine, m *spec.Machine, args []string) error {
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
		})
	cmd.Long = `Make the newest kept generation of a generator current again (or the one
named with --to, from ` + "`credvm vars history`" + `). The generation it replaces is
kept in turn, so a rollback can be undone the same way. Restart the VM
(credvm restart MACHINE) for it to get the restored values.`
	cmd.Flags().StringVar(&opts.To, "to", "", "the kept generation's ID (default: the newest)")
	cmd.Flags().BoolVar(&opts.NoCommit, "no-commit", false, "do not git-commit the change")
	return cmd
}
