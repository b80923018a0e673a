package cli

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"
	"sync"
	"text/tabwriter"

	"github.com/spf13/cobra"
	"golang.org/x/term"

	"github.com/credvm/credvm/internal/repo"
	"github.com/credvm/credvm/internal/spec"
	"github.com/credvm/credvm/internal/vars"
	"github.com/credvm/credvm/internal/vm"
)

// table is a tab-aligned table on w.
// table aligns columns; its Flush writes the whole table at once (the
// tabwriter alone writes every cell on its own: 80,000 writes for a list
// of 10,000 VMs).
func table(w io.Writer) tableWriter {
	buf := bufio.NewWriterSize(w, 64<<10)
	return tableWriter{tabwriter.NewWriter(buf, 0, 4, 2, ' ', 0), buf}
}

type tableWriter struct {
	*tabwriter.Writer
	buf *bufio.Writer
}

func (t tableWriter) Flush() error {
	if err := t.Writer.Flush(); err != nil {
		return err
	}
	return t.buf.Flush()
}

func isTTY(w any) bool {
	f, ok := w.(*os.File)
	return ok && term.IsTerminal(int(f.Fd()))
}

// colors reports whether statuses written to w are colored: on a
// terminal, unless $NO_COLOR.
func colors(w io.Writer) bool { return isTTY(w) && os.Getenv("NO_COLOR") == "" }

// colorize colors a VM status when color is on.
func colorize(color bool, status string) string {
	if !color {
		return status
	}
	code := map[string]string{vm.StatusCurrent: "32", vm.StatusOutdated: "33", vm.StatusStale: "33", vm.StatusFailed: "31", vm.StatusNotBooted: "2"}[status]
	if code == "" {
		return status
	}
	return "\x1b[" + code + "m" + status + "\x1b[0m"
}

// each runs f for each name in turn, going on after a failure, and joins
// the errors.
func each(names []string, f func(string) error) error {
	var errs []error
	for _, n := range names {
		errs = append(errs, f(n))
	}
	return errors.Join(errs...)
}

// parallel runs f for each name at once and joins the errors.
func parallel(names []string, f func(string) error) error {
	errs := make([]error, len(names))
	var wg sync.WaitGroup
	for i, n := range names {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = f(n)
		}()
	}
	wg.Wait()
	return errors.Join(errs...)
}

// tagFlag is --tag, shared by the commands that take machine names.
func tagFlag(cmd *cobra.Command, tags *[]string, what string) {
	cmd.Flags().StringArrayVarP(tags, "tag", "t", nil, what)
}

func vmCompletion(g *globals) func(*cobra.Command, []string, string) ([]string, cobra.ShellCompDirective) {
	return func(*cobra.Command, []string, string) ([]string, cobra.ShellCompDirective) {
		names, _ := vm.List(g.stateRoot())
		return names, cobra.ShellCompDirectiveNoFileComp
	}
}

// machineNameCompletion completes machine names — and, after one, that
// machine's GENERATOR/FILE for vars get and vars set.
func machineNameCompletion(g *globals) func(*cobra.Command, []string, string) ([]string, cobra.ShellCompDirective) {
	return func(cmd *cobra.Command, args []string, _ string) ([]string, cobra.ShellCompDirective) {
		r, err := g.openRepo()
		if err != nil {
			return nil, cobra.ShellCompDirectiveNoFileComp
		}
		if len(args) == 1 && (cmd.Name() == "get" || cmd.Name() == "set") {
			return varRefs(r, args[0]), cobra.ShellCompDirectiveNoFileComp
		}
		names, _ := r.MachineNames()
		return names, cobra.ShellCompDirectiveNoFileComp
	}
}

// varRefs are a machine's GENERATOR/FILE names.
func varRefs(r *repo.Repo, machine string) []string {
	m, err := r.Machine(machine)
	if err != nil {
		return nil
	}
	var out []string
	for _, gen := range m.SortedGenerators() {
		for _, f := range gen.SortedFiles() {
			out = append(out, gen.Name+"/"+f.Name)
		}
	}
	return out
}

// completeFlags registers completions for the flags commands share:
// --tag (the inventory's tags), --generator (the generators of the named
// machines, or of all), --sandbox (its modes).
func completeFlags(g *globals, c *cobra.Command) {
	for _, sub := range c.Commands() {
		completeFlags(g, sub)
	}
	if c.Flags().Lookup("tag") != nil {
		c.RegisterFlagCompletionFunc("tag", func(*cobra.Command, []string, string) ([]string, cobra.ShellCompDirective) {
			r, err := g.openRepo()
			if err != nil {
				return nil, cobra.ShellCompDirectiveNoFileComp
			}
			return r.Inventory.Tags(), cobra.ShellCompDirectiveNoFileComp
		})
	}
	if c.Flags().Lookup("generator") != nil {
		c.RegisterFlagCompletionFunc("generator", func(_ *cobra.Command, args []string, _ string) ([]string, cobra.ShellCompDirective) {
			r, err := g.openRepo()
			if err != nil {
				return nil, cobra.ShellCompDirectiveNoFileComp
			}
			if len(args) == 0 {
				args, _ = r.MachineNames()
			}
			var out []string
			for _, n := range args {
				if m, err := r.Machine(n); err == nil {
					for _, gen := range m.SortedGenerators() {
						out = append(out, gen.Name)
					}
				}
			}
			slices.Sort(out)
			return slices.Compact(out), cobra.ShellCompDirectiveNoFileComp
		})
	}
	if c.Flags().Lookup("sandbox") != nil {
		c.RegisterFlagCompletionFunc("sandbox", cobra.FixedCompletions([]string{"auto", "bwrap", "namespaces", "none"}, cobra.ShellCompDirectiveNoFileComp))
	}
}

// newVMsCmd is a command on VMs named or tagged (NAME... [--tag T]).
func (g *globals) newVMsCmd(use, short string, run func(names []string) error) *cobra.Command {
	var tags []string
	cmd := &cobra.Command{
		Use: use, Short: short,
		Args:              cobra.ArbitraryArgs,
		ValidArgsFunction: vmCompletion(g),
		RunE: func(c *cobra.Command, args []string) error {
			local, remoteErr := g.onHosts(append([]string{strings.Fields(use)[0]}, forwardedFlags(c)...), args)
			if len(args) > 0 && len(local) == 0 {
				return remoteErr
			}
			names, err := vm.Select(g.stateRoot(), local, tags, false)
			if err != nil {
				return errors.Join(remoteErr, err)
			}
			return errors.Join(remoteErr, run(names))
		},
	}
	tagFlag(cmd, &tags, "every VM whose machine carries this inventory tag")
	return cmd
}

// onHosts runs verb on the host of each named VM placed on one (the
// repository's inventory says where) and returns the names that are
// local.
func (g *globals) onHosts(verb []string, names []string) (local []string, err error) {
	r, rerr := g.openRepo() // once for all names
	if rerr != nil || len(names) == 0 {
		return names, nil // no repository: every VM is local
	}
	var errs []error
	for _, n := range names {
		ok, rerr := g.remoteIn(r, n, verb...)
		if !ok {
			local = append(local, n)
		}
		errs = append(errs, rerr)
	}
	return local, errors.Join(errs...)
}

// newVMCmd is a command on one VM, named by its only argument.
func (g *globals) newVMCmd(use, short string, run func(s vm.StateDir) error) *cobra.Command {
	return &cobra.Command{
		Use: use, Short: short,
		Args:              cobra.ExactArgs(1),
		ValidArgsFunction: vmCompletion(g),
		RunE: func(c *cobra.Command, args []string) error {
			if ok, err := g.remote(args[0], append([]string{strings.Fields(use)[0]}, forwardedFlags(c)...)...); ok {
				return err
			}
			return run(g.state(args[0]))
		},
	}
}

// newMachinesCmd is a command on machines of the repository, named or
// tagged (MACHINE... [--tag T]); with neither, every machine, unless
// needNames.
func (g *globals) newMachinesCmd(use, short string, needNames bool, run func(e *vars.Engine, ms []*spec.Machine) error) *cobra.Command {
	return g.machinesCmd(use, short, needNames, machines, run)
}

// newVarsMachinesCmd is newMachinesCmd for the commands that also work on
// machines without a machine file, from the repository's layout alone.
func (g *globals) newVarsMachinesCmd(use, short string, run func(e *vars.Engine, ms []*spec.Machine) error) *cobra.Command {
	return g.machinesCmd(use, short, false, (*repo.Repo).VarsMachines, run)
}

func (g *globals) machinesCmd(use, short string, needNames bool, load func(r *repo.Repo, names, tags []string) ([]*spec.Machine, error), run func(e *vars.Engine, ms []*spec.Machine) error) *cobra.Command {
	var tags []string
	cmd := &cobra.Command{
		Use: use, Short: short,
		Args:              cobra.ArbitraryArgs,
		ValidArgsFunction: machineNameCompletion(g),
		RunE: func(cmd *cobra.Command, args []string) error {
			if needNames && len(args) == 0 && len(tags) == 0 {
				return errors.New("name at least one machine (or use --tag)")
			}
			e, err := g.engine()
			if err != nil {
				return err
			}
			ms, err := load(e.Repo, args, tags)
			if err != nil {
				return err
			}
			if len(ms) == 0 {
				return errors.New("no machines in this repository yet: create machines/<name>/machine.toml")
			}
			return run(e, ms)
		},
	}
	tagFlag(cmd, &tags, "every machine with this inventory tag; repeatable")
	return cmd
}

// newMachineCmd is a command on one machine of the repository, named by
// its first argument (of nargs), run with the engine open and the machine
// loaded.
func (g *globals) newMachineCmd(use, short string, nargs int, run func(e *vars.Engine, m *spec.Machine, args []string) error) *cobra.Command {
	return g.newEngineCmd(use, short, nargs, func(e *vars.Engine, args []string) error {
		m, err := e.Repo.Machine(args[0])
		if err != nil {
			return err
		}
		return run(e, m, args)
	})
}

// newEngineCmd is a command on the repository's machines (nargs
// arguments, the first a machine name), run with the engine open.
func (g *globals) newEngineCmd(use, short string, nargs int, run func(e *vars.Engine, args []string) error) *cobra.Command {
	return &cobra.Command{
		Use: use, Short: short,
		Args:              cobra.ExactArgs(nargs),
		ValidArgsFunction: machineNameCompletion(g),
		RunE: func(_ *cobra.Command, args []string) error {
			e, err := g.engine()
			if err != nil {
				return err
			}
			return run(e, args)
		},
	}
}

// printable makes text another machine sent — a host's list, its
// errors, what its update said — safe to print on this terminal: control
// characters (escape sequences that could rewrite the screen or the
// terminal's title, carriage returns that could hide a line) are shown
// as \xNN instead of acted on.
func printable(s string) string {
	if strings.IndexFunc(s, isControl) < 0 {
		return s
	}
	var b strings.Builder
	for _, r := range s {
		if isControl(r) {
			fmt.Fprintf(&b, "\\x%02x", r)
			continue
		}
		b.WriteRune(r)
	}
	return b.String()
}

func isControl(r rune) bool { return r < 0x20 || r == 0x7f || r >= 0x80 && r < 0xa0 }

// escaping is printable for a stream: lines and tabs pass, every other
// control character — C1 ones too, as UTF-8 (0xc2 0x80–0x9f), even split
// across writes — is written as \xNN.
type escaping struct {
	w   io.Writer
	c2  bool // the last write ended in 0xc2
	buf []byte
}

func (e *escaping) Write(p []byte) (int, error) {
	e.buf = e.buf[:0]
	for _, c := range p {
		if e.c2 {
			e.c2 = false
			if c >= 0x80 && c < 0xa0 {
				e.buf = fmt.Appendf(e.buf, "\\x%02x", c)
				continue
			}
			e.buf = append(e.buf, 0xc2)
		}
		switch {
		case c == 0xc2:
			e.c2 = true
		case c == '\n' || c == '\t':
			e.buf = append(e.buf, c)
		case c < 0x20 || c == 0x7f:
			e.buf = fmt.Appendf(e.buf, "\\x%02x", c)
		default:
			e.buf = append(e.buf, c)
		}
	}
	if _, err := e.w.Write(e.buf); err != nil {
		return 0, err
	}
	return len(p), nil
}
