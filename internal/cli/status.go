package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/credvm/credvm/internal/console"
	"github.com/credvm/credvm/internal/fleet"
	"github.com/credvm/credvm/internal/indent"
	"github.com/credvm/credvm/internal/vm"
)

func newStatusCmd(g *globals) *cobra.Command {
	var asJSON bool
	var tags []string
	cmd := &cobra.Command{
		Use:   "status [NAME...]",
		Short: "Show VMs' state: running or not, current/outdated/stale/failed, pids, what they booted with, last exit and console lines",
		Long: `Show each VM's state (every VM when none is named): whether it runs, its
status and why, its pids, what it booted with, its last exit and the last
lines of its console. --json prints a list, one object per VM.`,
		Args:              cobra.ArbitraryArgs,
		ValidArgsFunction: vmCompletion(g),
		RunE: func(cmd *cobra.Command, args []string) error {
			local, remoteErr := g.onHosts(append([]string{"status"}, forwardedFlags(cmd)...), args)
			if len(args) > 0 && len(local) == 0 {
				return remoteErr
			}
			names, err := vm.Select(g.stateRoot(), local, tags, true)
			if err != nil {
				return errors.Join(remoteErr, err)
			}
			out := []*vm.Status{}
			for _, n := range names {
				st, err := vm.Inspect(g.state(n), true)
				if err != nil {
					return err
				}
				out = append(out, st)
			}
			if asJSON {
				return g.printJSON(out)
			}
			if len(out) == 0 {
				fmt.Fprintf(g.stdout, "no VMs in %s (credvm create NAME)\n", g.stateRoot())
			}
			for i, st := range out {
				if i > 0 {
					fmt.Fprintln(g.stdout)
				}
				g.printStatus(st)
			}
			return nil
		},
	}
	tagFlag(cmd, &tags, "every VM whose machine carries this inventory tag")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print as JSON (a list)")
	return cmd
}

func (g *globals) printStatus(st *vm.Status) {
	w := g.stdout
	fmt.Fprintf(w, "%s: %s\n", st.Name, st.Status)
	if st.Running {
		fmt.Fprintf(w, "  running: supervisor pid %d, %s pid %d, since %s\n", st.SupervisorPID, st.Hypervisor, st.HypervisorPID, st.Run.Started.Local().Format(time.RFC3339))
		if st.Delivery != "" {
			fmt.Fprintf(w, "  credentials: %s\n", st.Delivery)
		}
		if st.HypervisorState != "" {
			fmt.Fprintf(w, "  hypervisor reports: %s\n", st.HypervisorState)
		}
	} else {
		fmt.Fprintf(w, "  not running\n")
	}
	if st.Run != nil {
		fmt.Fprintf(w, "  booted with: configuration %s, vars %s, credentials via %s\n", short(st.Run.ConfigHash), short(st.Run.VarsHash), st.Run.Transport)
	}
	for _, r := range st.Reasons {
		fmt.Fprintf(w, "  - %s\n", r)
	}
	if st.Run != nil && !st.Running {
		g.printLastRun(st.Run)
	}
	if len(st.Console) > 0 && (st.Run == nil || len(st.Run.LastConsole) == 0 || st.Running) {
		fmt.Fprintf(w, "  console, last lines:\n")
		for _, l := range st.Console {
			fmt.Fprintf(w, "    | %s\n", l)
		}
	}
	fmt.Fprintf(w, "  repository: %s\n  console log: %s\n", st.Repo, st.ConsoleLog)
	if st.Fix != "" {
		fmt.Fprintf(w, "  fix: %s\n", st.Fix)
	}
}

// short is a hash's first 12 characters, as git shows them.
func short(hash string) string {
	if len(hash) > 12 {
		return hash[:12]
	}
	return hash
}

func (g *globals) printLastRun(run *vm.RunRecord) {
	w := g.stdout
	how := fmt.Sprintf("exit status %d", run.ExitCode)
	if run.Signal != "" {
		how = "killed by " + run.Signal
	}
	if !run.Ended.IsZero() {
		fmt.Fprintf(w, "  last run: %s, ended %s (%s)\n", run.State, run.Ended.Local().Format(time.RFC3339), how)
	} else {
		fmt.Fprintf(w, "  last run: %s\n", run.State)
	}
	if run.Error != "" {
		fmt.Fprintf(w, "  error: %s\n", run.Error)
	}
	if len(run.LastConsole) > 0 {
		fmt.Fprintf(w, "  console, last lines:\n")
		for _, l := range run.LastConsole {
			fmt.Fprintf(w, "    | %s\n", l)
		}
	}
}

func newListCmd(g *globals) *cobra.Command {
	var asJSON bool
	var tags, hosts []string
	cmd := &cobra.Command{
		Use:   "list",
		Short: "List VMs: running or not, and current / outdated / stale / not booted / stopped / failed, with the command that fixes it",
		Long: `List every VM of the state directory with its status:

  current     running the configuration and vars it should
  outdated    the machine file changed since the last update   → credvm update -R NAME
  stale       running an older configuration, or vars older
              than the repository's (a rotated secret)         → credvm restart NAME
  not booted  created, never run                                → credvm start NAME
  stopped     its last run ended cleanly                       → credvm start NAME
  failed      the last run ended in an error                   → credvm start NAME

A VM whose vars are missing or outdated has "credvm vars generate NAME &&"
before its fix: a start would be refused.

It reads small files only (no VM is contacted, nothing is decrypted), so it
stays fast with hundreds of VMs.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			return g.list(tags, hosts, asJSON)
		},
	}
	cmd.Flags().StringArrayVar(&hosts, "host", nil, "only the VMs on this host of the inventory (repeatable)")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print as JSON")
	tagFlag(cmd, &tags, "only VMs whose machine carries this inventory tag")
	return cmd
}

func (g *globals) list(tags, only []string, asJSON bool) error {
	// The hosts are asked while this one's VMs are inspected.
	hostsc := make(chan []fleet.Listing, 1)
	go func() { hostsc <- g.listHosts(fleet.ListOptions{Hosts: only, Tags: tags}) }()
	var rows []vm.Listed
	var localErr error
	if len(only) == 0 {
		var names []string
		if names, localErr = vm.Select(g.stateRoot(), nil, tags, true); localErr == nil {
			rows = vm.ListStatuses(g.stateRoot(), names)
		}
	}
	hosts := <-hostsc
	if localErr != nil {
		// A tag none of this host's VMs carries may be on the hosts'.
		if len(tags) == 0 || !slices.ContainsFunc(hosts, func(h fleet.Listing) bool { return len(h.Statuses) > 0 }) {
			return localErr
		}
	}
	if len(only) > 0 && len(hosts) == 1 && hosts[0].Err != nil && !asJSON {
		return hosts[0].Err
	}
	if asJSON {
		return g.printListJSON(rows, hosts)
	}
	showLocal := len(only) == 0 && localErr == nil
	if showLocal {
		if err := g.printTable(g.stdout, rows, fmt.Sprintf("no VMs in %s (credvm create NAME)", g.stateRoot())); err != nil {
			return err
		}
	}
	for i, h := range hosts {
		if i > 0 || showLocal {
			fmt.Fprintln(g.stdout)
		}
		if h.Err != nil {
			fmt.Fprintf(g.stdout, "host %s: unreachable (%s)\n", h.Host, printable(vm.FirstLine(h.Err)))
			continue
		}
		fmt.Fprintf(g.stdout, "host %s:\n", h.Host)
		if h.Warning != "" {
			fmt.Fprintf(g.stdout, "  warning: %s\n", printable(h.Warning))
		}
		rows := make([]vm.Listed, len(h.Statuses))
		for i, st := range h.Statuses {
			rows[i] = vm.Listed{Name: st.Name, Status: st}
		}
		if err := g.printTable(indent.Writer(g.stdout, "  "), rows, "no VMs"); err != nil {
			return err
		}
	}
	return nil
}

// listHosts asks the inventory's hosts for their lists, in parallel (none
// when there is no repository or no host).
func (g *globals) listHosts(o fleet.ListOptions) []fleet.Listing {
	r, err := g.openRepo()
	if err != nil {
		if len(o.Hosts) > 0 {
			return []fleet.Listing{{Host: o.Hosts[0], Err: err}}
		}
		return nil
	}
	return fleet.List(context.Background(), r, o)
}

func (g *globals) printListJSON(rows []vm.Listed, hosts []fleet.Listing) error {
	out := []any{}
	var errs []error
	for _, r := range rows {
		if r.Err != nil {
			errs = append(errs, r.Err)
			continue
		}
		out = append(out, r.Status)
	}
	for _, h := range hosts {
		if h.Err != nil {
			out = append(out, map[string]any{"host": h.Host, "status": "unreachable", "reasons": []string{vm.FirstLine(h.Err)}})
			continue
		}
		for _, st := range h.Statuses {
			out = append(out, st)
		}
	}
	if err := g.printJSON(out); err != nil {
		return err
	}
	return errors.Join(errs...)
}

// printTable prints rows of a list to w, or empty when there are none.
func (g *globals) printTable(w io.Writer, rows []vm.Listed, empty string) error {
	if len(rows) == 0 {
		fmt.Fprintln(w, empty)
		return nil
	}
	tw := table(w)
	color := colors(g.stdout)
	fmt.Fprintln(tw, "NAME\tRUNNING\tSTATUS\tFIX")
	for _, r := range rows {
		if r.Err != nil {
			fmt.Fprintf(tw, "%s\t?\terror\t%s\n", printable(r.Name), printable(vm.FirstLine(r.Err)))
			continue
		}
		running := "no"
		if r.Status.Running {
			running = fmt.Sprintf("yes (pid %d)", r.Status.SupervisorPID)
			if d := r.Status.Delivery; d != "" {
				running += ", " + strings.TrimSuffix(d, " (no receipt from the guest yet)")
			}
		}
		// A host's rows are its credvm's word: printed, never obeyed.
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", printable(r.Name), printable(running), colorize(color, printable(r.Status.Status)), printable(r.Status.Fix))
	}
	return tw.Flush()
}

func newLogsCmd(g *globals) *cobra.Command {
	var follow bool
	var lines int
	cmd := g.newVMCmd("logs NAME", "Print a VM's console log (-f follows it)", func(s vm.StateDir) error {
		log, err := s.OpenConsole(lines)
		if err != nil {
			return err
		}
		defer log.Close()
		ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
		defer stop()
		return log.Copy(ctx, g.stdout, follow)
	})
	cmd.Flags().BoolVarP(&follow, "follow", "f", false, "keep printing as the console writes (Ctrl-C to stop)")
	cmd.Flags().IntVarP(&lines, "lines", "n", 0, "start with the last N lines only")
	return cmd
}

func newConsoleCmd(g *globals) *cobra.Command {
	cmd := g.newVMCmd("console NAME", "Attach this terminal to a running VM's serial console (Ctrl-] detaches)", func(s vm.StateDir) error {
		ended, err := vm.AttachConsole(s, g.stdinFile(), g.stdout, g.stderr)
		if err != nil {
			return err
		}
		if ended == console.Detached {
			fmt.Fprintf(g.stderr, "\r\ndetached from %s's console; it keeps running\n", s.Name)
		} else {
			fmt.Fprintf(g.stderr, "\r\n%s's console closed: the VM stopped\n", s.Name)
		}
		return nil
	})
	cmd.Long = `Attach this terminal to a running VM's serial console, as virsh console
does: what you type goes to the guest (the terminal is in raw mode, so
Ctrl-C reaches the guest's shell), what the guest prints comes back, and
the console log is still written. Ctrl-] detaches and leaves the VM
running. One terminal at a time. QEMU VMs; for the others, logs -f.
A VM placed on a host is attached there: its host's credvm console, on a
terminal of its own over ssh -t (ssh's escape character off, so Ctrl-]
reaches it).`
	return cmd
}

func newSSHCmd(g *globals) *cobra.Command {
	var user string
	cmd := &cobra.Command{
		Use:   "ssh NAME [-- SSH-ARGS...]",
		Short: "ssh into a running VM over its vsock (systemd ≥ 256 in the guest, systemd-ssh-proxy on the host)",
		Long: `Run ssh to a running VM over its vsock — user@vsock/CID through systemd's
systemd-ssh-proxy — with no network and no address: the guest's systemd
(256 or newer) puts sshd on vsock by itself. It needs the VM's vsock_cid,
the host's /dev/vhost-vsock and systemd-ssh-proxy; without one of them it
says which is missing, and what to do.`,
		Args:              cobra.MinimumNArgs(1),
		ValidArgsFunction: vmCompletion(g),
		RunE: func(_ *cobra.Command, args []string) error {
			argv, err := vm.SSHArgv(g.state(args[0]), user, args[1:])
			if err != nil {
				return err
			}
			ssh, err := exec.LookPath(argv[0])
			if err != nil {
				return fmt.Errorf("ssh is not installed (apt-get install openssh-client)")
			}
			return syscall.Exec(ssh, argv, os.Environ())
		},
	}
	cmd.Flags().StringVarP(&user, "login", "l", "root", "the guest user to log in as")
	return cmd
}
