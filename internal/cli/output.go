package cli

import (
	"errors"
	"io"
	"os"
	"sync"
	"text/tabwriter"

	"github.com/spf13/cobra"
	"golang.org/x/term"

	"github.com/credvm/credvm/internal/vm"
)

// table is a tab-aligned table on w.
func table(w io.Writer) *tabwriter.Writer { return tabwriter.NewWriter(w, 0, 4, 2, ' ', 0) }

func isTTY(w any) bool {
	f, ok := w.(*os.File)
	return ok && term.IsTerminal(int(f.Fd()))
}

// colorize colors a VM status on a terminal (unless $NO_COLOR).
func colorize(w io.Writer, status string) string {
	if !isTTY(w) || os.Getenv("NO_COLOR") != "" {
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
