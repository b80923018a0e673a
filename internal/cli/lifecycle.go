package cli

import (
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/credvm/credvm/internal/repo"
	"github.com/credvm/credvm/internal/spec"
	"github.com/credvm/credvm/internal/vars"
	"github.com/credvm/credvm/internal/vm"
)

func newCreateCmd(g *globals) *cobra.Command {
	cmd := g.newMachinesCmd("create MACHINE...", "Register machines of the repository as VMs (their state under the state directory)", true,
		func(e *vars.Engine, ms []*spec.Machine) error {
			var errs []error
			for _, m := range ms {
				errs = append(errs, g.create(e.Repo, m))
			}
			return errors.Join(errs...)
		})
	cmd.Long = `Register machines/NAME of the repository (found from the current
directory, or --repo) as a VM: its state directory records the repository
and the machine file as it is now — the VM's current configuration, which
changes only with ` + "`credvm update`" + `. A name that exists is refused.`
	return cmd
}

// names are the machines' names.
func names(ms []*spec.Machine) []string {
	out := make([]string, len(ms))
	for i, m := range ms {
		out[i] = m.Name
	}
	return out
}

func (g *globals) create(r *repo.Repo, m *spec.Machine) error {
	s := g.state(m.Name)
	if err := vm.Create(s, r, m); err != nil {
		return err
	}
	fmt.Fprintf(g.stdout, "%s: created from %s (state %s)\n", m.Name, r.Root, s.Path())
	g.printHostPaths(vm.HostPaths(r, m))
	return nil
}

// printHostPaths shows the host files outside the repository a VM reads.
func (g *globals) printHostPaths(paths []vm.HostPath) {
	if len(paths) == 0 {
		return
	}
	fmt.Fprintf(g.stdout, "  host files this VM reads (outside the repository):\n")
	for _, p := range paths {
		fmt.Fprintf(g.stdout, "    %s: %s\n", p.What, p.Path)
	}
}

func newUpdateCmd(g *globals) *cobra.Command {
	var restart bool
	var timeout time.Duration
	cmd := g.newVMsCmd("update NAME...", "Apply the repository's current machine file to VMs, showing what changed; -R restarts those running something older",
		func(names []string) error {
			return each(names, func(n string) error { return g.update(n, restart, timeout) })
		})
	cmd.Flags().BoolVarP(&restart, "restart", "R", false, "restart VMs whose running configuration or vars differ from the updated ones")
	cmd.Flags().DurationVar(&timeout, "shutdown-timeout", vm.DefaultShutdownTimeout, "how long a guest gets to power off on restart")
	return cmd
}

func (g *globals) update(name string, restart bool, timeout time.Duration) error {
	var o vm.UpdateOptions
	if restart {
		o.Restart = g.startOptions(timeout)
	}
	res, err := vm.Update(g.state(name), o)
	if res != nil {
		g.printUpdate(res, restart)
	}
	return err
}

func (g *globals) printUpdate(res *vm.UpdateResult, restart bool) {
	if !res.Changed {
		fmt.Fprintf(g.stdout, "%s: configuration unchanged\n", res.Name)
	} else {
		fmt.Fprintf(g.stdout, "%s: configuration changed:\n", res.Name)
		for _, l := range res.Diff {
			fmt.Fprintf(g.stdout, "  %s\n", l)
		}
		g.printHostPaths(res.HostPaths)
	}
	switch {
	case res.Restarted != nil:
		g.printStarted(res.Restarted)
	case res.Stale && !restart:
		fmt.Fprintf(g.stdout, "%s: running an older configuration or vars; `credvm restart %s` (or update -R) applies it\n", res.Name, res.Name)
	}
}

func newDestroyCmd(g *globals) *cobra.Command {
	var purge, yes bool
	var timeout time.Duration
	cmd := g.newVMsCmd("destroy NAME...", "Stop VMs and remove their state; their vars stay in the repository unless --purge-vars",
		func(names []string) error {
			return each(names, func(n string) error { return g.destroy(g.state(n), purge, yes, timeout) })
		})
	cmd.Flags().BoolVar(&purge, "purge-vars", false, "also delete the machine's vars, their history and its age key from the repository (committed in git; asks first)")
	cmd.Flags().BoolVarP(&yes, "yes", "y", false, "with --purge-vars: do not ask (needed without a terminal)")
	cmd.Flags().DurationVar(&timeout, "shutdown-timeout", 0, "how long the guest gets to power off (default: the timeout it was started with)")
	return cmd
}

func (g *globals) destroy(s vm.StateDir, purge, yes bool, timeout time.Duration) error {
	var res *vm.DestroyResult
	err := g.confirmed(func(accepted []*repo.ConfirmationError) error {
		var err error
		res, err = vm.Destroy(s, vm.DestroyOptions{PurgeVars: purge, ConfirmPurge: yes || accepts(accepted, vm.PurgeConfirm) != nil, ShutdownTimeout: timeout})
		return err
	})
	if res == nil {
		return err
	}
	if res.Removed {
		fmt.Fprintf(g.stdout, "%s: destroyed (state %s removed)\n", res.Name, res.StatePath)
	}
	switch {
	case len(res.Purged) > 0:
		fmt.Fprintf(g.stdout, "%s: removed its vars, their history and its machine key (%s); its machine file stays (credvm vars generate %s makes new secrets)\n", res.Name, strings.Join(res.Purged, ", "), res.Name)
	case purge && err == nil:
		fmt.Fprintf(g.stdout, "%s: no vars or machine key to remove\n", res.Name)
	}
	return err
}
