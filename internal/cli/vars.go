package cli

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"slices"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/credvm/credvm/internal/repo"
	"github.com/credvm/credvm/internal/sops"
	"github.com/credvm/credvm/internal/spec"
	"github.com/credvm/credvm/internal/vars"
)

func newVarsCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "vars",
		Short: "Generate, list, check and read a machine's vars (its secrets and public values)",
		Long: `A machine's vars are the files its generators produce
([vars.generators.<name>] in machine.toml). Secret files are stored
sops-encrypted under vars/per-machine/<machine>/<generator>/<file>/secret,
readable by the machine's own age key and every user in sops/users;
public files in plain text next to them, as .../value. Shared generators
(share = true) store under vars/shared/<generator>/.`,
	}
	cmd.AddCommand(newVarsGenerateCmd(g), newVarsListCmd(g), newVarsCheckCmd(g), newVarsMachineKeyCmd(g), newVarsFixCmd(g), newVarsGroupCmd(g),
		newVarsGetCmd(g), newVarsSetCmd(g), newVarsKeygenCmd(g), newVarsHistoryCmd(g), newVarsRollbackCmd(g), newVarsExportCmd(g), newVarsImportCmd(g))
	return cmd
}

// engine opens the repository, finishes any transaction a crashed credvm
// left, and loads the user's age identities.
func (g *globals) engine() (*vars.Engine, error) {
	r, err := g.openRepo()
	if err != nil {
		return nil, err
	}
	if err := vars.RecoverIfNeeded(r); err != nil {
		return nil, err
	}
	ids, err := sops.LoadUserIdentities()
	if err != nil {
		return nil, fmt.Errorf("reading your age key: %w", err)
	}
	e := &vars.Engine{Repo: r, User: ids}
	if g.verbose {
		e.Log = g.stderr
		fmt.Fprintf(g.stderr, "repository: %s\n", r.Root)
		if len(ids.Sources) > 0 {
			fmt.Fprintf(g.stderr, "your age key: %s\n", strings.Join(slices.Compact(slices.Clone(ids.Sources)), ", "))
		} else {
			fmt.Fprintf(g.stderr, "your age key: none (%s)\n", sops.NoKeyFix())
		}
	}
	return e, nil
}

// machines loads the named (or tagged, or all) machines.
func machines(r *repo.Repo, names, tags []string) ([]*spec.Machine, error) {
	selected, err := r.Select(names, tags)
	if err != nil {
		return nil, err
	}
	if len(selected) == 0 {
		return nil, errors.New("no machines in this repository yet: create machines/<name>/machine.toml")
	}
	var out []*spec.Machine
	for _, n := range selected {
		m, err := r.Machine(n)
		if err != nil {
			return nil, err
		}
		out = append(out, m)
	}
	return out, nil
}

func newVarsGenerateCmd(g *globals) *cobra.Command {
	var (
		opts      vars.GenerateOptions
		tags      []string
		prompts   promptFlags
		noSandbox bool
		sandbox   string
		asJSON    bool
	)
	cmd := &cobra.Command{
		Use:   "generate [MACHINE...]",
		Short: "Run the generators whose vars are missing or outdated (all machines when none is named)",
		Long: `Run a machine's generators and store their outputs.

Without --regenerate only generators whose vars are missing or outdated run,
with every generator that depends on one of them. Machines run in parallel
(--jobs at once); each machine's run is one transaction: if any script
fails, writes an undeclared file or misses a declared one — or credvm is
killed — the stored vars stay exactly as they were.

Scripts run with a clean environment: $out (write each declared file
there), $in/<generator>/<file> (dependencies' outputs), $prompts/<name>
(answers), and a PATH holding only the runtime_inputs and a shell. The
--sandbox modes:

  bwrap       no network, read-only /usr, none of your home or the
              repository, a PID namespace (the timeout kills all of it),
              /tmp a tmpfs of [limits] output bytes
  namespaces  fresh network, IPC, UTS and PID namespaces (the timeout
              kills all of it); the host's files are visible
  none        the clean environment only; the timeout kills the process
              group (as root: every process of its cgroup)
  auto        bwrap when installed, else namespaces (the default)

In every mode [limits] in credvm.toml bound each file the script writes
and its outputs together (output, default 64MiB, by RLIMIT_FSIZE), their
number (files, 1000), its processes (processes, 512) and memory (memory,
2GiB) — by the pids and memory cgroups as root, by RLIMIT_NPROC (no memory
bound) otherwise. What a successful script leaves running is killed.

Prompts are asked on the terminal; without one, answer them with
--prompt GEN/NAME=@FILE (or =@- for standard input, or =VALUE — but a value
on the command line is visible to every local user) or --prompts-file.

Inside a git work tree the changed vars are committed ("vars: update …");
--no-commit leaves them uncommitted.`,
		Example: `  credvm vars generate app-vm-01
  credvm vars generate app-vm-01 --generator app-vm-secrets --regenerate
  credvm vars generate --tag app
  credvm vars generate db-01 --prompt db-admin/password=@- < password.txt`,
		ValidArgsFunction: machineNameCompletion(g),
		RunE: func(cmd *cobra.Command, args []string) error {
			if noSandbox {
				sandbox = string(vars.SandboxNone)
			}
			opts.Sandbox = vars.Sandbox(sandbox)
			return g.generate(args, tags, opts, prompts, asJSON)
		},
	}
	f := cmd.Flags()
	f.StringArrayVarP(&opts.Generators, "generator", "g", nil, "run only this generator (and its dependents); repeatable")
	tagFlag(cmd, &tags, "every machine with this inventory tag; repeatable")
	f.BoolVar(&opts.Regenerate, "regenerate", false, "run the chosen generators even when their vars are current (rotation)")
	prompts.add(cmd)
	f.BoolVar(&noSandbox, "no-sandbox", false, "run scripts without a sandbox (clean environment and PATH still apply)")
	f.StringVar(&sandbox, "sandbox", "auto", "sandbox: auto, bwrap, namespaces or none")
	f.BoolVar(&opts.NoCommit, "no-commit", false, "do not git-commit the changed vars")
	f.BoolVar(&asJSON, "json", false, "print what was generated as JSON")
	f.IntVarP(&opts.Jobs, "jobs", "j", 0, "machines generated at once (default: one per CPU, at least 2)")
	f.BoolVar(&opts.ShowOutput, "show-output", false, "show a failing script's last output lines, scrubbed of every value it could see (by default only their number)")
	return cmd
}

func (g *globals) generate(names, tags []string, opts vars.GenerateOptions, prompts promptFlags, asJSON bool) error {
	e, err := g.engine()
	if err != nil {
		return err
	}
	e.Log = g.stderr
	if err := g.promptOptions(prompts, &opts); err != nil {
		return err
	}
	ms, err := machines(e.Repo, names, tags)
	if err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	start := time.Now()
	results, err := e.Generate(ctx, ms, opts)
	if err != nil {
		return err
	}
	if asJSON {
		return g.printJSON(results)
	}
	g.printGenerated(results, time.Since(start))
	return nil
}

func (g *globals) printGenerated(results []vars.Result, took time.Duration) {
	total := 0
	for _, r := range results {
		total += len(r.Ran)
		if len(r.Ran) == 0 {
			fmt.Fprintf(g.stdout, "%s: vars up to date\n", r.Machine)
		} else {
			fmt.Fprintf(g.stdout, "%s: generated %s\n", r.Machine, strings.Join(r.Ran, ", "))
		}
	}
	if total > 0 && g.verbose {
		fmt.Fprintf(g.stderr, "done in %s\n", took.Round(time.Millisecond))
	}
}
