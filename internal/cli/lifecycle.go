package cli

import (
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"
	"sync"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/term"

	"github.com/credvm/credvm/internal/repo"
	"github.com/credvm/credvm/internal/vm"
)

func (g *globals) state(name string) vm.StateDir {
	return vm.StateDir{Root: stateRoot(g.stateDir), Name: name}
}

// vmNames resolves VM names from arguments and --tag (tags from each VM's
// repository inventory); with all and neither, every VM.
func (g *globals) vmNames(args, tags []string, all bool) ([]string, error) {
	root := stateRoot(g.stateDir)
	names := slices.Clone(args)
	if len(tags) > 0 || (all && len(args) == 0) {
		vms, err := vm.List(root)
		if err != nil {
			return nil, err
		}
		if len(tags) == 0 {
			return vms, nil
		}
		for _, n := range vms {
			reg, err := g.state(n).Registration()
			if err != nil {
				continue
			}
			r, err := repo.Open(reg.Repo)
			if err != nil {
				continue
			}
			for _, t := range tags {
				if slices.Contains(r.Inventory.Tagged(t), n) {
					names = append(names, n)
				}
			}
		}
		if len(names) == 0 {
			return nil, fmt.Errorf("no VM in %s carries tag %s", root, strings.Join(tags, " or "))
		}
	}
	if len(names) == 0 {
		return nil, errors.New("name at least one VM (or use --tag)")
	}
	slices.Sort(names)
	return slices.Compact(names), nil
}

func vmCompletion(g *globals) func(*cobra.Command, []string, string) ([]string, cobra.ShellCompDirective) {
	return func(*cobra.Command, []string, string) ([]string, cobra.ShellCompDirective) {
		names, _ := vm.List(stateRoot(g.stateDir))
		return names, cobra.ShellCompDirectiveNoFileComp
	}
}

func newCreateCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "create NAME",
		Short: "Register a machine of the repository as a VM (its state under the state directory)",
		Long: `Register machines/NAME of the repository (found from the current
directory, or --repo) as a VM: its state directory records the repository
and the machine file as it is now — the VM's current configuration, which
changes only with ` + "`credvm update`" + `. A name that exists is refused.`,
		Args:              cobra.ExactArgs(1),
		ValidArgsFunction: machineNameCompletion(g),
		RunE: func(cmd *cobra.Command, args []string) error {
			r, err := g.openRepo()
			if err != nil {
				return err
			}
			m, err := r.Machine(args[0])
			if err != nil {
				return err
			}
			s := g.state(m.Name)
			if err := vm.Create(s, r, m); err != nil {
				return err
			}
			fmt.Fprintf(g.stdout, "%s: created from %s (state %s)\n", m.Name, r.Root, s.Path())
			return nil
		},
	}
}

func newUpdateCmd(g *globals) *cobra.Command {
	var restart bool
	var tags []string
	var timeout time.Duration
	cmd := &cobra.Command{
		Use:   "update NAME...",
		Short: "Apply the repository's current machine file to VMs, showing what changed; -R restarts those running something older",
		Args:  cobra.ArbitraryArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			names, err := g.vmNames(args, tags, false)
			if err != nil {
				return err
			}
			return each(names, func(n string) error { return g.update(n, restart, timeout) })
		},
		ValidArgsFunction: vmCompletion(g),
	}
	cmd.Flags().BoolVarP(&restart, "restart", "R", false, "restart VMs whose running configuration or vars differ from the updated ones")
	cmd.Flags().StringArrayVarP(&tags, "tag", "t", nil, "every VM whose machine carries this inventory tag")
	cmd.Flags().DurationVar(&timeout, "shutdown-timeout", 30*time.Second, "how long a guest gets to power off on restart")
	return cmd
}

func (g *globals) update(name string, restart bool, timeout time.Duration) error {
	s := g.state(name)
	if !s.Exists() {
		_, err := s.Registration()
		return err
	}
	l, err := s.LockState()
	if err != nil {
		return err
	}
	defer l.Release()
	reg, err := s.Registration()
	if err != nil {
		return err
	}
	r, err := repo.Open(reg.Repo)
	if err != nil {
		return fmt.Errorf("vm %s: %w", name, err)
	}
	m, err := r.Machine(name)
	if err != nil {
		return err
	}
	old, err := reg.Machine()
	if err != nil {
		return err
	}
	cfg, err := vm.NewConfig(m, r.Path(m.File))
	if err != nil {
		return err
	}
	if cfg.Hash == reg.Current.Hash {
		fmt.Fprintf(g.stdout, "%s: configuration unchanged\n", name)
	} else {
		fmt.Fprintf(g.stdout, "%s: configuration changed:\n", name)
		for _, l := range vm.Diff(old, m) {
			fmt.Fprintf(g.stdout, "  %s\n", l)
		}
		reg.Current = cfg
		if err := s.SaveRegistration(reg); err != nil {
			return err
		}
	}
	l.Release() // a restart below must not hold up other updates
	st, err := vm.Inspect(s, false)
	if err != nil {
		return err
	}
	switch {
	case st.Status == vm.StatusStale && restart:
		return g.restart(name, timeout)
	case st.Status == vm.StatusStale:
		fmt.Fprintf(g.stdout, "%s: running an older configuration or vars; `credvm restart %s` (or update -R) applies it\n", name, name)
	}
	return nil
}

func newDestroyCmd(g *globals) *cobra.Command {
	var purge bool
	var timeout time.Duration
	cmd := &cobra.Command{
		Use:   "destroy NAME",
		Short: "Stop a VM and remove its state; its vars stay in the repository unless --purge-vars",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			s := g.state(args[0])
			reg, err := s.Registration()
			if err != nil {
				return err
			}
			if running, _ := s.Running(); running {
				if err := vm.Stop(s, timeout+20*time.Second); err != nil {
					fmt.Fprintf(g.stderr, "credvm: %v\n", err)
				}
			}
			if err := vm.Destroy(s); err != nil {
				return err
			}
			fmt.Fprintf(g.stdout, "%s: destroyed (state %s removed)\n", args[0], s.Path())
			if purge {
				r, err := repo.Open(reg.Repo)
				if err != nil {
					return err
				}
				removed, err := purgeVars(r, args[0])
				if err != nil {
					return err
				}
				fmt.Fprintf(g.stdout, "%s: removed its vars and machine key (%s)\n", args[0], strings.Join(removed, ", "))
			}
			return nil
		},
		ValidArgsFunction: vmCompletion(g),
	}
	cmd.Flags().BoolVar(&purge, "purge-vars", false, "also delete the machine's vars and age key from the repository (committed in git)")
	cmd.Flags().DurationVar(&timeout, "shutdown-timeout", 30*time.Second, "how long the guest gets to power off")
	return cmd
}

func purgeVars(r *repo.Repo, name string) ([]string, error) {
	l, err := r.Lock(nil)
	if err != nil {
		return nil, err
	}
	defer l.Release()
	var removed []string
	for _, p := range []string{r.Path("vars", "per-machine", name), r.Path("sops", "machines", name), r.Path("sops", "secrets", name+"-age.key")} {
		if _, err := os.Lstat(p); err == nil {
			if err := os.RemoveAll(p); err != nil {
				return removed, err
			}
			removed = append(removed, r.Rel(p))
		}
	}
	if len(removed) > 0 && r.InGit() {
		if err := r.Commit(removed, "vars: purge "+name); err != nil {
			return removed, err
		}
	}
	return removed, nil
}

func newStartCmd(g *globals) *cobra.Command {
	var tags []string
	var timeout time.Duration
	cmd := &cobra.Command{
		Use:   "start NAME...",
		Short: "Start VMs in the background, supervised (a running VM is reported with its pid)",
		Long: `Start each VM in the background under a credvm supervisor that holds the
VM's lock, records the run, keeps the console in console.log and, when
stopped, powers the guest off. start returns once QEMU runs, or says why it
could not start (missing vars: run ` + "`credvm vars generate NAME`" + ` first).`,
		Args: cobra.ArbitraryArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			names, err := g.vmNames(args, tags, false)
			if err != nil {
				return err
			}
			return each(names, func(n string) error { return g.start(n, timeout) })
		},
		ValidArgsFunction: vmCompletion(g),
	}
	cmd.Flags().StringArrayVarP(&tags, "tag", "t", nil, "every VM whose machine carries this inventory tag")
	cmd.Flags().DurationVar(&timeout, "shutdown-timeout", 30*time.Second, "how long the guest gets to power off when stopped, before QEMU is told to quit")
	return cmd
}

func (g *globals) start(name string, timeout time.Duration) error {
	s := g.state(name)
	if !s.Exists() {
		_, err := s.Registration()
		return err
	}
	self, err := os.Executable()
	if err != nil {
		return err
	}
	st, err := vm.Start(vm.StartOptions{State: s, ShutdownTimeout: timeout, Self: self})
	var re *vm.RunningError
	if errors.As(err, &re) {
		fmt.Fprintf(g.stdout, "%s: already running (pid %d)\n", name, re.PID)
		return nil
	}
	if err != nil {
		return err
	}
	fmt.Fprintf(g.stdout, "%s: started (supervisor pid %d, QEMU pid %d); console: credvm logs %s\n", name, st.Supervisor, st.QEMU, name)
	return nil
}

func (g *globals) stop(name string) error {
	s := g.state(name)
	if _, err := s.Registration(); err != nil {
		return err
	}
	running, _ := s.Running()
	if !running {
		fmt.Fprintf(g.stdout, "%s: not running\n", name)
		return nil
	}
	grace := 50 * time.Second
	if rec, _ := s.RunRecord(); rec != nil && rec.ShutdownTimeout > 0 {
		grace = rec.ShutdownTimeout + 20*time.Second
	}
	fmt.Fprintf(g.stderr, "%s: powering off…\n", name)
	if err := vm.Stop(s, grace); err != nil {
		return err
	}
	fmt.Fprintf(g.stdout, "%s: stopped\n", name)
	return nil
}

func (g *globals) restart(name string, timeout time.Duration) error {
	if err := g.stop(name); err != nil {
		return err
	}
	return g.start(name, timeout)
}

func newStopCmd(g *globals) *cobra.Command {
	var tags []string
	cmd := &cobra.Command{
		Use:   "stop NAME...",
		Short: "Power VMs off: QMP system_powerdown, then quit after the VM's shutdown timeout",
		Args:  cobra.ArbitraryArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			names, err := g.vmNames(args, tags, false)
			if err != nil {
				return err
			}
			return parallel(names, g.stop)
		},
		ValidArgsFunction: vmCompletion(g),
	}
	cmd.Flags().StringArrayVarP(&tags, "tag", "t", nil, "every VM whose machine carries this inventory tag")
	return cmd
}

func newRestartCmd(g *globals) *cobra.Command {
	var tags []string
	var timeout time.Duration
	cmd := &cobra.Command{
		Use:   "restart NAME...",
		Short: "Stop and start VMs, so they run their current configuration and vars",
		Args:  cobra.ArbitraryArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			names, err := g.vmNames(args, tags, false)
			if err != nil {
				return err
			}
			return each(names, func(n string) error { return g.restart(n, timeout) })
		},
		ValidArgsFunction: vmCompletion(g),
	}
	cmd.Flags().StringArrayVarP(&tags, "tag", "t", nil, "every VM whose machine carries this inventory tag")
	cmd.Flags().DurationVar(&timeout, "shutdown-timeout", 30*time.Second, "how long the guest gets to power off")
	return cmd
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

func newStatusCmd(g *globals) *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "status NAME",
		Short: "Show a VM's state: running or not, current/outdated/stale/failed, pids, last exit and console lines",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			st, err := vm.Inspect(g.state(args[0]), true)
			if err != nil {
				return err
			}
			if asJSON {
				return writeJSON(g.stdout, st)
			}
			w := g.stdout
			fmt.Fprintf(w, "%s: %s\n", st.Name, st.Status)
			if st.Running {
				fmt.Fprintf(w, "  running: supervisor pid %d, QEMU pid %d, since %s\n", st.PID, st.QEMU, st.Run.Started.Local().Format(time.RFC3339))
				fmt.Fprintf(w, "  transport: %s\n", st.Run.Transport)
				if st.Hypervisor != "" {
					fmt.Fprintf(w, "  hypervisor reports: %s\n", st.Hypervisor)
				}
			} else {
				fmt.Fprintf(w, "  not running\n")
			}
			for _, r := range st.Reasons {
				fmt.Fprintf(w, "  - %s\n", r)
			}
			if st.Run != nil && !st.Running {
				how := fmt.Sprintf("exit status %d", st.Run.ExitCode)
				if st.Run.Signal != "" {
					how = "killed by " + st.Run.Signal
				}
				if !st.Run.Ended.IsZero() {
					fmt.Fprintf(w, "  last run: %s, ended %s (%s)\n", st.Run.State, st.Run.Ended.Local().Format(time.RFC3339), how)
				} else {
					fmt.Fprintf(w, "  last run: %s\n", st.Run.State)
				}
				if st.Run.Error != "" {
					fmt.Fprintf(w, "  error: %s\n", st.Run.Error)
				}
				if len(st.Run.LastConsole) > 0 {
					fmt.Fprintf(w, "  last console lines:\n")
					for _, l := range st.Run.LastConsole {
						fmt.Fprintf(w, "    | %s\n", l)
					}
				}
			}
			fmt.Fprintf(w, "  repository: %s\n  console log: %s\n", st.Repo, st.ConsoleLog)
			if st.Fix != "" {
				fmt.Fprintf(w, "  fix: %s\n", st.Fix)
			}
			return nil
		},
		ValidArgsFunction: vmCompletion(g),
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print as JSON")
	return cmd
}

func newListCmd(g *globals) *cobra.Command {
	var asJSON bool
	var tags []string
	cmd := &cobra.Command{
		Use:   "list",
		Short: "List VMs: running or not, and current / outdated / stale / not booted / failed, with the command that fixes it",
		Long: `List every VM of the state directory with its status:

  current     running the configuration and vars it should
  outdated    the machine file changed since the last update   → credvm update -R NAME
  stale       running an older configuration, or vars older
              than the repository's (a rotated secret)         → credvm restart NAME
  not booted  not running                                      → credvm start NAME
  failed      the last run ended in an error                   → credvm start NAME

It reads small files only (no VM is contacted, nothing is decrypted), so it
stays fast with hundreds of VMs.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			names, err := g.vmNames(nil, tags, true)
			if err != nil {
				return err
			}
			sts := make([]*vm.Status, len(names))
			errs := make([]error, len(names))
			var wg sync.WaitGroup
			sem := make(chan struct{}, 16)
			inspector := &vm.Inspector{}
			for i, n := range names {
				wg.Add(1)
				go func() {
					defer wg.Done()
					sem <- struct{}{}
					defer func() { <-sem }()
					sts[i], errs[i] = inspector.Inspect(g.state(n))
				}()
			}
			wg.Wait()
			// Directories in the state root that hold no VM are not VMs.
			for i := range names {
				var nv *vm.NoVMError
				if errors.As(errs[i], &nv) {
					sts[i], errs[i] = nil, nil
				}
			}
			if asJSON {
				out := []*vm.Status{}
				for i, st := range sts {
					if errs[i] == nil && st != nil {
						out = append(out, st)
					}
				}
				if err := writeJSON(g.stdout, out); err != nil {
					return err
				}
				return errors.Join(errs...)
			}
			shown := 0
			for i := range names {
				if sts[i] != nil || errs[i] != nil {
					shown++
				}
			}
			if shown == 0 {
				fmt.Fprintf(g.stdout, "no VMs in %s (credvm create NAME)\n", stateRoot(g.stateDir))
				return nil
			}
			color := isTTY(g.stdout)
			tw := tabwriter.NewWriter(g.stdout, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "NAME\tRUNNING\tSTATUS\tFIX")
			for i, st := range sts {
				if errs[i] != nil {
					fmt.Fprintf(tw, "%s\t?\terror\t%s\n", names[i], firstLineOf(errs[i]))
					continue
				}
				if st == nil {
					continue
				}
				running := "no"
				if st.Running {
					running = fmt.Sprintf("yes (pid %d)", st.PID)
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", st.Name, running, colorize(color, st.Status), st.Fix)
			}
			return tw.Flush()
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print as JSON")
	cmd.Flags().StringArrayVarP(&tags, "tag", "t", nil, "only VMs whose machine carries this inventory tag")
	return cmd
}

func firstLineOf(err error) string {
	s := err.Error()
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		return s[:i]
	}
	return s
}

func isTTY(w io.Writer) bool {
	f, ok := w.(*os.File)
	return ok && term.IsTerminal(int(f.Fd())) && os.Getenv("NO_COLOR") == ""
}

func colorize(on bool, status string) string {
	if !on {
		return status
	}
	code := map[string]string{vm.StatusCurrent: "32", vm.StatusOutdated: "33", vm.StatusStale: "33", vm.StatusFailed: "31", vm.StatusNotBooted: "2"}[status]
	if code == "" {
		return status
	}
	return "\x1b[" + code + "m" + status + "\x1b[0m"
}

func newLogsCmd(g *globals) *cobra.Command {
	var follow bool
	var lines int
	cmd := &cobra.Command{
		Use:   "logs NAME",
		Short: "Print a VM's console log (-f follows it)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			s := g.state(args[0])
			if _, err := s.Registration(); err != nil {
				return err
			}
			f, err := os.Open(s.Console())
			if errors.Is(err, os.ErrNotExist) {
				return fmt.Errorf("vm %s has no console log yet (it never ran): credvm start %s", args[0], args[0])
			}
			if err != nil {
				return err
			}
			defer f.Close()
			if lines > 0 {
				if err := seekLastLines(f, lines); err != nil {
					return err
				}
			}
			if _, err := io.Copy(g.stdout, f); err != nil {
				return err
			}
			for follow {
				time.Sleep(200 * time.Millisecond)
				if _, err := io.Copy(g.stdout, f); err != nil {
					return err
				}
			}
			return nil
		},
		ValidArgsFunction: vmCompletion(g),
	}
	cmd.Flags().BoolVarP(&follow, "follow", "f", false, "keep printing as the console writes (Ctrl-C to stop)")
	cmd.Flags().IntVarP(&lines, "lines", "n", 0, "start with the last N lines only")
	return cmd
}

// seekLastLines positions f at the start of its last n lines.
func seekLastLines(f *os.File, n int) error {
	fi, err := f.Stat()
	if err != nil {
		return err
	}
	size := fi.Size()
	start := max(0, size-int64(n)*512-4096)
	buf := make([]byte, size-start)
	if _, err := f.ReadAt(buf, start); err != nil && !errors.Is(err, io.EOF) {
		return err
	}
	idx := len(buf)
	if idx > 0 && buf[idx-1] == '\n' {
		idx--
	}
	for i := 0; i < n; i++ {
		j := strings.LastIndexByte(string(buf[:idx]), '\n')
		if j < 0 {
			idx = 0
			break
		}
		idx = j
	}
	if idx > 0 {
		idx++
	}
	_, err = f.Seek(start+int64(idx), io.SeekStart)
	return err
}
