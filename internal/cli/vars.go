package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"os/user"
	"path/filepath"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"filippo.io/age"
	"github.com/spf13/cobra"
	"golang.org/x/term"

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
	cmd.AddCommand(newVarsGenerateCmd(g), newVarsListCmd(g), newVarsCheckCmd(g),
		newVarsGetCmd(g), newVarsSetCmd(g), newVarsKeygenCmd(g), newVarsHistoryCmd(g), newVarsRollbackCmd(g), newVarsExportCmd(g), newVarsImportCmd(g))
	return cmd
}

// engine opens the repository and the user's age identities.
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
		e.Log = g.progress()
	}
	return e, nil
}

// engineMachine opens the repository and the user's keys, and loads a
// machine.
func (g *globals) engineMachine(name string) (*vars.Engine, *spec.Machine, error) {
	e, err := g.engine()
	if err != nil {
		return nil, nil, err
	}
	m, err := e.Repo.Machine(name)
	if err != nil {
		return nil, nil, err
	}
	return e, m, nil
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

func machineNameCompletion(g *globals) func(*cobra.Command, []string, string) ([]string, cobra.ShellCompDirective) {
	return func(cmd *cobra.Command, args []string, _ string) ([]string, cobra.ShellCompDirective) {
		r, err := g.openRepo()
		if err != nil {
			return nil, cobra.ShellCompDirectiveNoFileComp
		}
		names, _ := r.MachineNames()
		return names, cobra.ShellCompDirectiveNoFileComp
	}
}

func newVarsGenerateCmd(g *globals) *cobra.Command {
	var (
		gens        []string
		tags        []string
		regenerate  bool
		prompts     []string
		promptsFile string
		noSandbox   bool
		sandbox     string
		noCommit    bool
		asJSON      bool
		jobs        int
	)
	cmd := &cobra.Command{
		Use:   "generate [MACHINE...]",
		Short: "Run the generators whose vars are missing or outdated (all machines when none is named)",
		Long: `Run a machine's generators and store their outputs.

Without --regenerate only generators whose vars are missing or outdated run,
with every generator that depends on one of them. Machines run in parallel;
each machine's run is one transaction: if any script fails, writes an
undeclared file or misses a declared one — or credvm is killed — the stored
vars stay exactly as they were.

Scripts run in a sandbox without network (bubblewrap when installed, else
Linux namespaces) with a clean environment: $out (write each declared file
there), $in/<generator>/<file> (dependencies' outputs), $prompts/<name>
(answers), and a PATH holding only the runtime_inputs and a shell.

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
			e, err := g.engine()
			if err != nil {
				return err
			}
			e.Log = g.progress()
			e.NoCommit = noCommit
			e.Jobs = jobs
			e.Sandbox = vars.Sandbox(sandbox)
			if noSandbox {
				e.Sandbox = vars.SandboxNone
			}
			e.Answers = vars.Answers{}
			if promptsFile != "" {
				a, err := vars.LoadAnswers(promptsFile)
				if err != nil {
					return err
				}
				e.Answers = a
			}
			for _, p := range prompts {
				k, v, err := vars.ParseAnswer(p, g.stdin)
				if err != nil {
					return err
				}
				e.Answers[k] = v
			}
			if f, ok := g.stdin.(*os.File); ok && term.IsTerminal(int(f.Fd())) {
				e.Terminal = &ttyPrompter{in: f, out: g.stderr}
			}
			ms, err := machines(e.Repo, args, tags)
			if err != nil {
				return err
			}
			ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
			defer stop()
			start := time.Now()
			results, err := e.Generate(ctx, ms, vars.GenerateOptions{Generators: gens, Regenerate: regenerate})
			if err != nil {
				return err
			}
			if asJSON {
				return writeJSON(g.stdout, results)
			}
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
				fmt.Fprintf(g.stderr, "done in %s\n", time.Since(start).Round(time.Millisecond))
			}
			return nil
		},
	}
	f := cmd.Flags()
	f.StringArrayVarP(&gens, "generator", "g", nil, "run only this generator (and its dependents); repeatable")
	f.StringArrayVarP(&tags, "tag", "t", nil, "every machine with this inventory tag; repeatable")
	f.BoolVar(&regenerate, "regenerate", false, "run the chosen generators even when their vars are current (rotation)")
	f.StringArrayVar(&prompts, "prompt", nil, "answer a prompt: GEN/NAME=VALUE, GEN/NAME=@FILE or GEN/NAME=@- (stdin); repeatable")
	f.StringVar(&promptsFile, "prompts-file", "", `JSON file of answers: {"GEN/NAME": "value"}`)
	f.BoolVar(&noSandbox, "no-sandbox", false, "run scripts without a sandbox (clean environment and PATH still apply)")
	f.StringVar(&sandbox, "sandbox", "auto", "sandbox: auto, bwrap, namespaces or none")
	f.BoolVar(&noCommit, "no-commit", false, "do not git-commit the changed vars")
	f.BoolVar(&asJSON, "json", false, "print what was generated as JSON")
	f.IntVarP(&jobs, "jobs", "j", 0, "machines generated at once (default: one per CPU, at least 2)")
	return cmd
}

// ttyPrompter asks prompts on a terminal.
type ttyPrompter struct {
	in  *os.File
	out io.Writer
}

func (t *ttyPrompter) Ask(machine, gen string, p *spec.Prompt) ([]byte, error) {
	desc := p.Description
	if desc == "" {
		desc = p.Name
	}
	switch p.Type {
	case "hidden":
		fmt.Fprintf(t.out, "%s/%s: %s (hidden): ", machine, gen, desc)
		b, err := term.ReadPassword(int(t.in.Fd()))
		fmt.Fprintln(t.out)
		return b, err
	case "multiline":
		fmt.Fprintf(t.out, "%s/%s: %s (end with Ctrl-D on an empty line):\n", machine, gen, desc)
		return io.ReadAll(t.in)
	default:
		fmt.Fprintf(t.out, "%s/%s: %s: ", machine, gen, desc)
		var line []byte
		buf := make([]byte, 1)
		for {
			n, err := t.in.Read(buf)
			if n == 1 {
				if buf[0] == '\n' {
					break
				}
				line = append(line, buf[0])
			}
			if err != nil {
				if errors.Is(err, io.EOF) {
					break
				}
				return nil, err
			}
		}
		return line, nil
	}
}

func newVarsListCmd(g *globals) *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:               "list MACHINE",
		Short:             "List a machine's vars: generator, file, secret or public, and status (never a value)",
		Args:              cobra.ExactArgs(1),
		ValidArgsFunction: machineNameCompletion(g),
		RunE: func(cmd *cobra.Command, args []string) error {
			e, m, err := g.engineMachine(args[0])
			if err != nil {
				return err
			}
			st, err := e.Status(m)
			if err != nil {
				return err
			}
			var files []vars.FileStatus
			for _, gs := range st {
				files = append(files, gs.Files...)
			}
			if asJSON {
				if files == nil {
					files = []vars.FileStatus{}
				}
				return writeJSON(g.stdout, files)
			}
			if len(files) == 0 {
				fmt.Fprintf(g.stdout, "%s declares no generators\n", m.Name)
				return nil
			}
			tw := tabwriter.NewWriter(g.stdout, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "GENERATOR\tFILE\tKIND\tSTATUS")
			for _, f := range files {
				kind := "public"
				if f.Secret {
					kind = "secret"
				}
				if f.Shared {
					kind += ", shared"
				}
				status := f.Status
				if f.Reason != "" {
					status += " (" + f.Reason + ")"
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", f.Generator, f.File, kind, status)
			}
			return tw.Flush()
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print as JSON")
	return cmd
}

func newVarsCheckCmd(g *globals) *cobra.Command {
	var tags []string
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "check [MACHINE...]",
		Short: "Exit non-zero if any var is missing or outdated, saying which and how to fix it",
		Long: `Check that every generator of the machines (all when none is named) has
its vars stored and current. Exits 0 when all are, 1 otherwise, listing
each missing or outdated generator with the command that fixes it.`,
		ValidArgsFunction: machineNameCompletion(g),
		RunE: func(cmd *cobra.Command, args []string) error {
			e, err := g.engine()
			if err != nil {
				return err
			}
			ms, err := machines(e.Repo, args, tags)
			if err != nil {
				return err
			}
			type problem struct {
				Machine   string `json:"machine"`
				Generator string `json:"generator"`
				Status    string `json:"status"`
				Reason    string `json:"reason"`
				Fix       string `json:"fix"`
			}
			problems := []problem{}
			for _, m := range ms {
				st, err := e.Status(m)
				if err != nil {
					return err
				}
				for _, gs := range st {
					if gs.Status != vars.StatusOK {
						problems = append(problems, problem{m.Name, gs.Name, gs.Status, gs.Reason, "credvm vars generate " + m.Name})
					}
				}
			}
			if asJSON {
				if err := writeJSON(g.stdout, problems); err != nil {
					return err
				}
			} else {
				for _, p := range problems {
					fmt.Fprintf(g.stdout, "%s/%s: %s (%s)\n", p.Machine, p.Generator, p.Status, p.Reason)
				}
			}
			if len(problems) > 0 {
				fixes := map[string]bool{}
				var fixList []string
				for _, p := range problems {
					if !fixes[p.Machine] {
						fixes[p.Machine] = true
						fixList = append(fixList, p.Machine)
					}
				}
				return &exitError{1, fmt.Sprintf("%s need generating: run `credvm vars generate %s`", plural(len(problems), "generator", "generators"), strings.Join(fixList, " "))}
			}
			if !asJSON {
				fmt.Fprintf(g.stdout, "all vars of %s are up to date\n", plural(len(ms), "machine", "machines"))
			}
			return nil
		},
	}
	cmd.Flags().StringArrayVarP(&tags, "tag", "t", nil, "every machine with this inventory tag; repeatable")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the problems as JSON")
	return cmd
}

func newVarsGetCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "get MACHINE GENERATOR/FILE",
		Short: "Print a var's value to standard output (secrets decrypted with your age key)",
		Long: `Print a var's value, byte for byte, to standard output.

A secret is decrypted with your age key ($SOPS_AGE_KEY_FILE, $SOPS_AGE_KEY
or ~/.config/sops/age/keys.txt) or, when you are not one of its recipients,
through the machine's key (sops/secrets/<machine>-age.key), which you can
decrypt. Works on clan repositories too, with or without a machine file.`,
		Args:              cobra.ExactArgs(2),
		ValidArgsFunction: machineNameCompletion(g),
		RunE: func(cmd *cobra.Command, args []string) error {
			e, err := g.engine()
			if err != nil {
				return err
			}
			gen, file, err := spec.SplitVar(args[1])
			if err != nil {
				return err
			}
			var m *spec.Machine
			if _, err := os.Stat(e.Repo.Path("machines", args[0])); err == nil {
				if m, err = e.Repo.Machine(args[0]); err != nil {
					return err
				}
			} else if err := spec.CheckMachineName(args[0]); err != nil {
				return err
			}
			v, err := e.Get(args[0], m, gen, file)
			if err != nil {
				return err
			}
			_, err = g.stdout.Write(v)
			return err
		},
	}
}

func newVarsSetCmd(g *globals) *cobra.Command {
	var noCommit bool
	cmd := &cobra.Command{
		Use:   "set MACHINE GENERATOR/FILE",
		Short: "Store a var's value read from standard input (the other files of the generator are kept)",
		Long: `Store the bytes read from standard input as one file of a generator,
exactly as given (a trailing newline is part of the value). The change is
atomic, and generators depending on this one become outdated.`,
		Example:           `  printf %s "$NEW_TOKEN" | credvm vars set app-vm-01 api/token`,
		Args:              cobra.ExactArgs(2),
		ValidArgsFunction: machineNameCompletion(g),
		RunE: func(cmd *cobra.Command, args []string) error {
			e, m, err := g.engineMachine(args[0])
			if err != nil {
				return err
			}
			e.NoCommit = noCommit
			gen, file, err := spec.SplitVar(args[1])
			if err != nil {
				return err
			}
			if f, ok := g.stdin.(*os.File); ok && term.IsTerminal(int(f.Fd())) {
				fmt.Fprintf(g.stderr, "value for %s/%s (end with Ctrl-D):\n", m.Name, args[1])
			}
			v, err := io.ReadAll(g.stdin)
			if err != nil {
				return err
			}
			if err := e.Set(m, gen, file, v); err != nil {
				return err
			}
			fmt.Fprintf(g.stdout, "%s: stored %s (%s)\n", m.Name, args[1], plural(len(v), "byte", "bytes"))
			return nil
		},
	}
	cmd.Flags().BoolVar(&noCommit, "no-commit", false, "do not git-commit the change")
	return cmd
}

func newVarsKeygenCmd(g *globals) *cobra.Command {
	var userName string
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "keygen",
		Short: "Create your age key (if you have none) and register it as a user of the repository",
		Long: `Create your age key where sops looks for it — $SOPS_AGE_KEY_FILE, else
~/.config/sops/age/keys.txt (0600, in a 0700 directory) — unless you
already have one, and register its public key as sops/users/<user>/key.json
in the repository, so that secrets are encrypted to you.

The user name defaults to $USER. Run it again after cloning a repository on
a new computer to add that computer's key.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			ids, err := sops.LoadUserIdentities()
			if err != nil {
				return err
			}
			created := ""
			pub := ""
			if len(ids.Recipients) > 0 {
				pub = ids.Recipients[0]
			} else {
				p, err := sops.UserKeyFile()
				if err != nil {
					return err
				}
				if pub, err = createKeyFile(p); err != nil {
					return err
				}
				created = p
			}
			if userName == "" {
				userName = currentUser()
			}
			r, rerr := g.openRepo()
			out := struct {
				PublicKey string `json:"public_key"`
				Created   string `json:"created,omitempty"`
				User      string `json:"user,omitempty"`
				Repo      string `json:"repository,omitempty"`
			}{PublicKey: pub, Created: created}
			if rerr == nil {
				if existing, _ := r.UserFor([]string{pub}); existing != "" {
					userName = existing
				} else if err := r.AddUser(userName, pub); err != nil {
					return err
				}
				out.User, out.Repo = userName, r.Root
			}
			if asJSON {
				return writeJSON(g.stdout, out)
			}
			if created != "" {
				fmt.Fprintf(g.stdout, "created age key %s\n", created)
			}
			fmt.Fprintf(g.stdout, "public key: %s\n", pub)
			if rerr == nil {
				fmt.Fprintf(g.stdout, "registered as user %s (sops/users/%s/key.json)\n", userName, userName)
			} else if errors.Is(rerr, repo.ErrNotFound) {
				fmt.Fprintf(g.stdout, "not inside a repository: run `credvm vars keygen` in one (or with --repo) to register this key\n")
			} else {
				return rerr
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&userName, "user", "", "user name to register the key under (default $USER)")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the result as JSON")
	return cmd
}

// createKeyFile writes a new age identity to p (0600, never overwriting).
func createKeyFile(p string) (string, error) {
	id, err := age.GenerateX25519Identity()
	if err != nil {
		return "", err
	}
	if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
		return "", err
	}
	f, err := os.OpenFile(p, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return "", fmt.Errorf("create age key: %w", err)
	}
	content := fmt.Sprintf("# created: %s\n# public key: %s\n%s\n", time.Now().UTC().Format(time.RFC3339), id.Recipient(), id)
	if _, err := f.WriteString(content); err != nil {
		f.Close()
		os.Remove(p)
		return "", err
	}
	if err := f.Close(); err != nil {
		return "", err
	}
	return id.Recipient().String(), nil
}

func currentUser() string {
	if u := os.Getenv("USER"); u != "" {
		return u
	}
	if u, err := user.Current(); err == nil {
		return u.Username
	}
	return "admin"
}

func writeJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

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
				return writeJSON(g.stdout, hist)
			}
			if len(hist) == 0 {
				fmt.Fprintf(g.stdout, "%s: no earlier generations kept\n", m.Name)
				return nil
			}
			tw := tabwriter.NewWriter(g.stdout, 0, 4, 2, ' ', 0)
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
	var id string
	var noCommit bool
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
			e.NoCommit = noCommit
			h, err := e.Rollback(m, args[1], id)
			if err != nil {
				return err
			}
			fmt.Fprintf(g.stdout, "%s/%s: rolled back to the generation replaced at %s (%s)\n", m.Name, args[1], h.Replaced.Local().Format(time.DateTime), h.ID)
			var deps []string
			for _, other := range m.SortedGenerators() {
				if slices.Contains(other.Dependencies, args[1]) {
					deps = append(deps, other.Name)
				}
			}
			if len(deps) > 0 {
				fmt.Fprintf(g.stdout, "generators depending on it are now outdated: %s (roll them back too, or regenerate them)\n", strings.Join(deps, ", "))
			}
			fmt.Fprintf(g.stdout, "restart the VM for it to use the restored values: credvm restart %s\n", m.Name)
			return nil
		},
	}
	cmd.Flags().StringVar(&id, "to", "", "the kept generation's ID (default: the newest)")
	cmd.Flags().BoolVar(&noCommit, "no-commit", false, "do not git-commit the change")
	return cmd
}
