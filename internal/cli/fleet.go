package cli

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"strings"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/credvm/credvm/internal/fleet"
	"github.com/credvm/credvm/internal/repo"
	"github.com/credvm/credvm/internal/sops"
	"github.com/credvm/credvm/internal/vm"
)

func newHostCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{Use: "host", Short: "The hosts VMs are placed on: add (pin its SSH host key), list"}
	var o fleet.AddOptions
	var asJSON bool
	add := &cobra.Command{
		Use:   "add NAME USER@ADDRESS[:PORT]",
		Short: "Fetch a host's ssh-ed25519 key (ssh-keyscan), show its fingerprint, and pin it once confirmed",
		Long: `Fetch the host's ssh-ed25519 host key with ssh-keyscan, show its
fingerprint, and — once you confirm it is the host's (compare with
ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub on it; --yes, or a yes on a
terminal) — pin it in sops/hosts/NAME/ and list the host in inventory.toml
([hosts.NAME] ssh = …). credvm reaches the host with that key only, and
seals its VMs' machine keys to it. A host known with another key is
refused until confirmed again.`,
		Args: cobra.ExactArgs(2),
		RunE: func(_ *cobra.Command, args []string) error {
			r, err := g.openRepo()
			if err != nil {
				return err
			}
			flag := o.Accept
			return g.confirmed(func(accepted []*repo.ConfirmationError) error {
				o.Accept = flag || accepts(accepted, fleet.AcceptHostKey) != nil
				res, err := fleet.AddHost(r, args[0], args[1], o)
				if err != nil {
					return err
				}
				if asJSON {
					return g.printJSON(res)
				}
				switch {
				case res.Unchanged:
					fmt.Fprintf(g.stdout, "host %s: key %s, pinned already\n", res.Name, res.Fingerprint)
				case res.Changed:
					fmt.Fprintf(g.stdout, "host %s: key changed, now %s (sops/hosts/%s/key.pub)\n", res.Name, res.Fingerprint, res.Name)
				default:
					fmt.Fprintf(g.stdout, "host %s (%s): key %s pinned (sops/hosts/%s/key.pub)\n", res.Name, res.SSH, res.Fingerprint, res.Name)
				}
				return nil
			})
		},
	}
	add.Flags().BoolVarP(&o.Accept, "yes", "y", false, "trust the key shown (or the changed key) without asking")
	add.Flags().StringArrayVar(&o.SSHOptions, "ssh-option", nil, "an ssh -o option for this host (Key=value); repeatable")
	add.Flags().StringVar(&o.Root, "root", "", "a prefix for the host's paths (tests run hosts side by side)")
	add.Flags().BoolVar(&asJSON, "json", false, "print what was pinned as JSON")

	var hostKey string
	receive := &cobra.Command{
		Use:    "receive --host-key FILE",
		Short:  "On a host: take a deploy's shipment (standard input) and create, start or update its VMs",
		Hidden: true, // run by deploy over ssh
		Args:   cobra.NoArgs,
		RunE: func(_ *cobra.Command, _ []string) error {
			if g.repoPath == "" {
				return errors.New("host receive: --repo names the host's repository (deploy passes it)")
			}
			self, _ := os.Executable()
			res, err := fleet.Receive(g.stdin, fleet.ReceiveOptions{
				Repo: g.repoPath, StateRoot: g.stateRoot(), HostKey: hostKey,
				Start:   vm.StartOptions{ShutdownTimeout: vm.DefaultShutdownTimeout, Self: self, Wait: vm.DefaultStartWait},
				Systemd: vm.Systemd{Root: g.systemdRoot},
			})
			if err != nil {
				return err
			}
			return g.printJSON(res)
		},
	}
	receive.Flags().StringVar(&hostKey, "host-key", vm.DefaultHostKey, "the host key the sealed machine keys open with")
	var listJSON bool
	list := &cobra.Command{
		Use:   "list",
		Short: "List the inventory's hosts: address, pinned key's fingerprint, VMs placed there",
		Args:  cobra.NoArgs,
		RunE: func(_ *cobra.Command, _ []string) error {
			r, err := g.openRepo()
			if err != nil {
				return err
			}
			hosts := fleet.Hosts(r)
			if listJSON {
				return g.printJSON(hosts)
			}
			if len(hosts) == 0 {
				fmt.Fprintln(g.stdout, "no hosts in inventory.toml (credvm host add NAME USER@ADDRESS)")
				return nil
			}
			tw := table(g.stdout)
			fmt.Fprintln(tw, "HOST\tSSH\tKEY\tVMS")
			for _, h := range hosts {
				fp := h.Fingerprint
				if fp == "" {
					fp = "not pinned: credvm host add " + h.Name + " " + h.SSH
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", h.Name, h.SSH, fp, strings.Join(h.Machines, ", "))
			}
			return tw.Flush()
		},
	}
	list.Flags().BoolVar(&listJSON, "json", false, "print as JSON")
	cmd.AddCommand(add, list, receive)
	return cmd
}

func newDeployCmd(g *globals) *cobra.Command {
	var tags, hosts []string
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "deploy [NAME...] [--tag T] [--host H]",
		Short: "Send VMs to their hosts over SSH (credvm, machine file, encrypted vars, sealed machine key) and create or update them there",
		Long: `For each VM placed on a host (inventory.toml: [machines.NAME] host = "H"),
over your OpenSSH client — your ~/.ssh/config and agent, the host key pinned
by credvm host add, one session per host, hosts in parallel —: send the
machine files, their encrypted vars and the users' public keys as a backup
archive the host's credvm checks and restores into /var/lib/credvm/repo,
and each machine key sealed to the host's ssh-ed25519 key; the host then
creates and starts each new VM, and updates the others (restarting a VM
that runs older vars or configuration). Where the host has systemctl, each
VM's credvm@NAME.service is enabled so that it starts at boot (and, when
systemd runs the host, new VMs start and stale ones restart through it).
This credvm is copied to the host first when the host's is missing or
differs. Nothing plaintext crosses the wire. With no name, tag or host:
every placed VM.`,
		Args: cobra.ArbitraryArgs,
		RunE: func(_ *cobra.Command, args []string) error {
			r, err := g.openRepo()
			if err != nil {
				return err
			}
			names, err := fleet.Select(r, args, tags, hosts)
			if err != nil {
				return err
			}
			ids, err := sops.LoadUserIdentities()
			if err != nil {
				return err
			}
			ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
			defer stop()
			res, err := fleet.Deploy(ctx, r, ids, names, func(f string, a ...any) { fmt.Fprintf(g.stderr, f+"\n", a...) })
			if asJSON {
				if jerr := g.printJSON(res); jerr != nil {
					return jerr
				}
			} else {
				for _, d := range res {
					switch {
					case d.Err != "":
						fmt.Fprintf(g.stdout, "%s on %s: FAILED: %s\n", d.Machine, d.Host, printable(d.Err))
					case d.Created && d.Started != nil:
						fmt.Fprintf(g.stdout, "%s on %s: created and started (%s pid %d)%s\n", d.Machine, d.Host, printable(d.Started.Hypervisor), d.Started.HypervisorPID, printable(enabledSuffix(d)))
					case d.Created:
						fmt.Fprintf(g.stdout, "%s on %s: created%s\n", d.Machine, d.Host, printable(enabledSuffix(d)))
					default:
						fmt.Fprintf(g.stdout, "%s on %s: %s%s\n", d.Machine, d.Host, printable(updateSummary(d.Update)), printable(enabledSuffix(d)))
					}
				}
			}
			return err
		},
	}
	tagFlag(cmd, &tags, "every VM with this inventory tag")
	cmd.Flags().StringArrayVar(&hosts, "host", nil, "every VM placed on this host (repeatable)")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print what was deployed as JSON")
	return cmd
}

// remote runs a lifecycle command of a VM placed on a host there, with
// its output as ours; ok is false when the VM is not placed (or there is
// no repository to say so), and the caller acts locally.
func (g *globals) remote(name string, args ...string) (ok bool, err error) {
	r, err := g.openRepo()
	if err != nil {
		return false, nil
	}
	return g.remoteIn(r, name, args...)
}

// remoteIn is remote with the repository open.
func (g *globals) remoteIn(r *repo.Repo, name string, args ...string) (ok bool, err error) {
	if r.Inventory.HostOf(name) == "" {
		return false, nil
	}
	h, err := fleet.HostOf(r, r.Inventory.HostOf(name))
	if err != nil {
		return true, err
	}
	if len(args) > 0 && args[0] == "console" {
		return true, h.ConsoleOn(context.Background(), g.stdinFile(), g.stdout, g.stderr, name)
	}
	// Streamed, not collected: logs -f follows the host's console, raw
	// as a console is; the other commands' answers are the host's word,
	// printed with their control characters escaped.
	out := g.stdout
	if len(args) == 0 || args[0] != "logs" {
		out = &escaping{w: g.stdout}
	}
	return true, h.LifecycleStream(context.Background(), out, append(args, name)...)
}

// forwardedFlags are the flags a command was given that its host's
// credvm takes too (the command's own, not the global ones, nor --tag:
// the names are resolved here), as --name=value arguments.
func forwardedFlags(cmd *cobra.Command) []string {
	var out []string
	cmd.Flags().Visit(func(f *pflag.Flag) {
		switch f.Name {
		case "repo", "state-dir", "systemd-root", "verbose", "tag":
			return
		}
		if sv, ok := f.Value.(pflag.SliceValue); ok {
			for _, v := range sv.GetSlice() {
				out = append(out, "--"+f.Name+"="+v)
			}
			return
		}
		out = append(out, "--"+f.Name+"="+f.Value.String())
	})
	return out
}

func newMoveCmd(g *globals) *cobra.Command {
	var o fleet.MoveOptions
	var to string
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "move NAME --to HOST",
		Short: "Move a VM to another host: deploy there, stop here, start there, wait for its receipt, then remove it here",
		Long: `Move a VM placed on a host to another: deploy it to the new host
(created, not started), stop it on the old one, start it on the new one
and wait until its guest reports its credentials; only then record the new
placement in inventory.toml (committed in git) and remove it from the old
host. A VM that was stopped is moved and stays stopped. If anything fails
after the stop, what the move made on the new host is removed and the VM
is started again on the old host. Its secrets are not regenerated: the
guest gets the same values. Its volumes (those in its state directory) are
copied while it is stopped, through this machine, and checked by SHA-256
at both ends; the old host keeps its copies unless --purge.
--without-volumes starts it with fresh ones instead.`,
		Args: cobra.ExactArgs(1),
		RunE: func(_ *cobra.Command, args []string) error {
			if to == "" {
				return errors.New("name the host with --to HOST")
			}
			r, err := g.openRepo()
			if err != nil {
				return err
			}
			ids, err := sops.LoadUserIdentities()
			if err != nil {
				return err
			}
			o.Log = func(f string, a ...any) { fmt.Fprintf(g.stderr, f+"\n", a...) }
			res, err := fleet.Move(context.Background(), r, ids, args[0], to, o)
			if asJSON {
				if jerr := g.printJSON(res); jerr != nil {
					return jerr
				}
				return err
			}
			if err != nil {
				return err
			}
			how := "stopped, as it was"
			if res.Started {
				how = "running, healthy"
			}
			fmt.Fprintf(g.stdout, "%s: moved from %s to %s (%s)\n", res.Machine, res.From, res.To, how)
			if len(res.Purged) > 0 {
				fmt.Fprintf(g.stdout, "%s: removed its volumes from %s: %s\n", res.Machine, res.From, strings.Join(res.Purged, ", "))
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&to, "to", "", "the host to move the VM to")
	cmd.Flags().BoolVar(&o.WithoutVolumes, "without-volumes", false, "start it on the new host with fresh volumes instead of copies")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print what was done as JSON (also when it failed)")
	cmd.Flags().BoolVar(&o.Purge, "purge", false, "once moved, remove its volumes from the old host (else they stay there)")
	return cmd
}

// updateSummary is one line of what an update did on a host.
func updateSummary(u *vm.UpdateResult) string {
	if u == nil {
		return "updated"
	}
	line := "configuration unchanged"
	if u.Changed {
		line = "configuration changed: " + strings.Join(u.Diff, "; ")
	}
	switch {
	case u.Restarted != nil:
		line += fmt.Sprintf("; restarted (%s pid %d)", u.Restarted.Hypervisor, u.Restarted.HypervisorPID)
	case u.Stale:
		line += "; running older vars or configuration"
	}
	return line
}

// enabledSuffix says that a deploy enabled the VM's unit at boot.
func enabledSuffix(d fleet.Deployed) string {
	if d.Enabled == "" {
		return ""
	}
	return "; " + d.Enabled + " enabled at boot"
}
