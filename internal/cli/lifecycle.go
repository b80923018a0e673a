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
	var asJSON bool
	var flakeRef string
	cmd := g.newMachinesCmd("create MACHINE...", "Register machines of the repository as VMs (their state under the state directory), or one from a flake (--flake)", true,
		func(e *vars.Engine, ms []*spec.Machine) error {
			var errs []error
			out := []*vm.Created{}
			for _, m := range ms {
				res, err := vm.Create(g.state(m.Name), e.Repo, m)
				errs = append(errs, err)
				if res == nil {
					continue
				}
				out = append(out, res)
				if !asJSON {
					g.printCreated(res)
				}
			}
			if asJSON {
				g.printJSON(out)
			}
			return errors.Join(errs...)
		})
	cmd.Flags().BoolVar(&asJSON, "json", false, "print what was created as JSON (a list)")
	cmd.Flags().StringVarP(&flakeRef, "flake", "f", "", "evaluate the machine from this flake: REF#nixosConfigurations.NAME.config.credvm.machine")
	cmd.Long = `Register machines/NAME of the repository (found from the current
directory, or --repo) as a VM: its state directory records the repository
and the machine file as it is now — the VM's current configuration, which
changes only with ` + "`credvm update`" + `. A name that exists is refused.

With --flake REF, the machine is the guest's NixOS configuration: credvm
evaluates REF#nixosConfigurations.NAME.config.credvm.machine (credvm's
nixosModules.guest) with nix eval, builds its kernel and initrd if they are
not in the store yet, writes machines/NAME/machine.json marked as generated
from REF at its locked revision, and registers the VM. ` + "`credvm update NAME`" + `
evaluates it again; list shows it outdated once the flake moves on.`
	machinesRun := cmd.RunE
	cmd.RunE = func(c *cobra.Command, args []string) error {
		if flakeRef == "" {
			return machinesRun(c, args)
		}
		if len(args) != 1 {
			return errors.New("--flake takes one machine: credvm create NAME --flake REF")
		}
		r, err := g.openRepo()
		if err != nil {
			return err
		}
		res, err := vm.CreateFromFlake(g.state(args[0]), r, flakeRef)
		if err != nil {
			return err
		}
		if asJSON {
			return g.printJSON([]*vm.FlakeCreated{res})
		}
		fmt.Fprintf(g.stdout, "%s: evaluated from %s (%s)\n", res.Name, res.Flake.Flake, flakeVersionText(res.Flake))
		for _, p := range res.Built {
			fmt.Fprintf(g.stdout, "  built %s\n", p)
		}
		g.printCreated(res.Created)
		return nil
	}
	return cmd
}

// flakeVersionText says which version of a flake a machine came from.
func flakeVersionText(s spec.Generated) string {
	if s.Revision != "" {
		return "revision " + s.Revision
	}
	return "narHash " + s.NarHash
}

// names are the machines' names.
func names(ms []*spec.Machine) []string {
	out := make([]string, len(ms))
	for i, m := range ms {
		out[i] = m.Name
	}
	return out
}

func (g *globals) printCreated(res *vm.Created) {
	fmt.Fprintf(g.stdout, "%s: created from %s (state %s)\n", res.Name, res.Repo, res.StatePath)
	g.printHostPaths(res.HostPaths)
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
	var restart, asJSON bool
	var timeout time.Duration
	cmd := g.newVMsCmd("update NAME...", "Apply the repository's current machine file to VMs, showing what changed; -R restarts those running something older",
		func(names []string) error {
			if !asJSON {
				return each(names, func(n string) error { return g.update(n, restart, timeout) })
			}
			out := []*vm.UpdateResult{}
			err := each(names, func(n string) error {
				res, err := g.updateOne(n, restart, timeout)
				if res != nil {
					out = append(out, res)
				}
				return err
			})
			g.printJSON(out)
			return err
		})
	cmd.Flags().BoolVar(&asJSON, "json", false, "print what changed as JSON (a list)")
	cmd.Flags().BoolVarP(&restart, "restart", "R", false, "restart VMs whose running configuration or vars differ from the updated ones")
	cmd.Flags().DurationVar(&timeout, "shutdown-timeout", vm.DefaultShutdownTimeout, "how long a guest gets to power off on restart")
	return cmd
}

func (g *globals) update(name string, restart bool, timeout time.Duration) error {
	res, err := g.updateOne(name, restart, timeout)
	if res != nil {
		g.printUpdate(res, restart)
	}
	return err
}

func (g *globals) updateOne(name string, restart bool, timeout time.Duration) (*vm.UpdateResult, error) {
	var o vm.UpdateOptions
	if restart {
		o.Restart = g.startOptions(timeout)
	}
	return vm.Update(g.state(name), o)
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
	var purge, yes, asJSON bool
	var timeout time.Duration
	cmd := g.newVMsCmd("destroy NAME...", "Stop VMs and remove their state; their vars stay in the repository unless --purge-vars",
		func(names []string) error {
			out := []*vm.DestroyResult{}
			err := each(names, func(n string) error {
				res, err := g.destroy(g.state(n), purge, yes, timeout, !asJSON)
				if res != nil {
					out = append(out, res)
				}
				return err
			})
			if asJSON {
				g.printJSON(out)
			}
			return err
		})
	cmd.Flags().BoolVar(&asJSON, "json", false, "print what was removed as JSON (a list)")
	cmd.Flags().BoolVar(&purge, "purge-vars", false, "also delete the machine's vars, their history and its age key from the repository (committed in git; asks first)")
	cmd.Flags().BoolVarP(&yes, "yes", "y", false, "with --purge-vars: do not ask (needed without a terminal)")
	cmd.Flags().DurationVar(&timeout, "shutdown-timeout", 0, "how long the guest gets to power off (default: the timeout it was started with)")
	return cmd
}

func (g *globals) destroy(s vm.StateDir, purge, yes bool, timeout time.Duration, text bool) (*vm.DestroyResult, error) {
	var res *vm.DestroyResult
	err := g.confirmed(func(accepted []*repo.ConfirmationError) error {
		var err error
		res, err = vm.Destroy(s, vm.DestroyOptions{PurgeVars: purge, ConfirmPurge: yes || accepts(accepted, vm.PurgeConfirm) != nil, ShutdownTimeout: timeout,
			Systemd: vm.Systemd{Root: g.systemdRoot}})
		return err
	})
	if res == nil || !text {
		return res, err
	}
	if res.Removed {
		fmt.Fprintf(g.stdout, "%s: destroyed (state %s removed)\n", res.Name, res.StatePath)
	}
	if res.Disabled != "" {
		fmt.Fprintf(g.stdout, "%s: disabled %s (it would have failed at every boot)\n", res.Name, res.Disabled)
	}
	switch {
	case len(res.Purged) > 0:
		fmt.Fprintf(g.stdout, "%s: removed its vars, their history and its machine key (%s); its machine file stays (credvm vars generate %s makes new secrets)\n", res.Name, strings.Join(res.Purged, ", "), res.Name)
	case purge && err == nil:
		fmt.Fprintf(g.stdout, "%s: no vars or machine key to remove\n", res.Name)
	}
	return res, err
}
