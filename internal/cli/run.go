package cli

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/credvm/credvm/internal/spec"
	"github.com/credvm/credvm/internal/vars"
	"github.com/credvm/credvm/internal/vm"
)

func newRunCmd(g *globals) *cobra.Command {
	var (
		o           vm.RunOptions
		quiet       bool
		supervised  bool
		interactive bool
	)
	cmd := &cobra.Command{
		Use:   "run MACHINE",
		Short: "Run a VM in the foreground with its credentials (Ctrl-C powers it off)",
		Long: `Start the machine's hypervisor in the foreground.

A VM created with ` + "`credvm create`" + ` runs its current configuration (the one of
its last ` + "`credvm update`" + `) from its repository; otherwise the machine is read
from the repository found from the current directory (or --repo).

At start, credvm reads the machine's vars (refusing to start if any is
missing or outdated), decrypts the secrets, and passes every credential of
[credentials] to the guest's systemd: over SMBIOS type 11 while everything
fits what the guest can read, over QEMU fw_cfg beyond that (transport =
"auto"), never cut. Secrets reach QEMU only as inherited, sealed in-memory
files: nothing on its command line, in its environment or on disk.

The serial console goes to the terminal and to console.log in the VM's
state directory. Ctrl-C (or SIGTERM) asks the guest to power off, and tells
the hypervisor to quit if the guest has not stopped within --shutdown-timeout.
With --interactive (microvm -r) the terminal is the guest's console both
ways, in raw mode: Ctrl-C goes to the guest, and Ctrl-] powers it off.

With --systemd (the credvm@.service unit), credvm tells systemd the service
is ready once the hypervisor runs, and reads the machine's own age key from
the credential "age-key" ($CREDENTIALS_DIRECTORY/age-key) when the unit
passes one (LoadCredentialEncrypted=age-key:…).`,
		Args:              cobra.ExactArgs(1),
		ValidArgsFunction: machineNameCompletion(g),
		RunE: func(cmd *cobra.Command, args []string) error {
			o.State, o.OpenRepo, o.Notices, o.Supervised, o.Verbose = g.state(args[0]), g.openRepo, g.stderr, supervised, g.verbose
			if !quiet && !supervised {
				o.Console = g.stdout
			}
			ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			var res *vm.Result
			var err error
			if interactive {
				res, err = vm.RunInteractive(ctx, o, g.stdinFile(), g.stdout)
			} else {
				res, err = vm.Run(ctx, o)
			}
			var early *vm.EarlyExitError
			switch {
			case errors.As(err, &early) && early.Code > 0:
				return &exitError{code: early.Code, msg: err.Error()}
			case err == nil && res.ExitCode != 0:
				return &exitError{code: res.ExitCode}
			}
			return err
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.MachineKeyFile, "age-key", "", "the machine's own age key file, to decrypt its vars without a user key")
	f.DurationVar(&o.ShutdownTimeout, "shutdown-timeout", vm.DefaultShutdownTimeout, "how long the guest gets to power off before the hypervisor is told to quit")
	f.BoolVarP(&quiet, "quiet", "q", false, "do not copy the console to the terminal (it still goes to console.log)")
	f.BoolVarP(&interactive, "interactive", "i", false, "attach this terminal to the guest's console (QEMU): typing goes to the guest, Ctrl-] powers it off")
	f.BoolVar(&supervised, "supervised", false, "run as the supervisor of `credvm start` (internal)")
	f.BoolVar(&o.Systemd, "systemd", false, "run under systemd: sd_notify readiness, machine key from $CREDENTIALS_DIRECTORY")
	f.MarkHidden("supervised")
	return cmd
}

// startOptions are the options of a background start by this credvm.
func (g *globals) startOptions(timeout time.Duration) *vm.StartOptions {
	self, _ := os.Executable()
	return &vm.StartOptions{ShutdownTimeout: timeout, Self: self, Wait: vm.DefaultStartWait}
}

func (g *globals) printStarted(st *vm.Started) {
	fmt.Fprintf(g.stdout, "%s: started (supervisor pid %d, %s pid %d); console: credvm logs %s\n", st.Name, st.Supervisor, st.Hypervisor, st.HypervisorPID, st.Name)
}

func newStartCmd(g *globals) *cobra.Command {
	var timeout time.Duration
	var asJSON bool
	cmd := g.newVMsCmd("start NAME...", "Start VMs in the background, supervised (a running VM is reported with its pid)",
		func(names []string) error {
			out := []*vm.Started{}
			err := each(names, func(n string) error {
				st, err := g.start(n, timeout, !asJSON)
				if st != nil {
					out = append(out, st)
				}
				return err
			})
			if asJSON {
				g.printJSON(out)
			}
			return err
		})
	cmd.Flags().BoolVar(&asJSON, "json", false, "print what was started as JSON (a list; an already running VM has already_running)")
	cmd.Long = `Start each VM in the background under a credvm supervisor that holds the
VM's lock, records the run, keeps the console in console.log and, when
stopped, powers the guest off. start returns once the hypervisor runs, or
says why it could not start (missing vars: run ` + "`credvm vars generate NAME`" + ` first).`
	cmd.Flags().DurationVar(&timeout, "shutdown-timeout", vm.DefaultShutdownTimeout, "how long the guest gets to power off when stopped, before the hypervisor is told to quit")
	return cmd
}

func (g *globals) start(name string, timeout time.Duration, text bool) (*vm.Started, error) {
	o := g.startOptions(timeout)
	o.State = g.state(name)
	st, err := vm.Start(*o)
	var re *vm.RunningError
	if errors.As(err, &re) {
		if text {
			fmt.Fprintf(g.stdout, "%s: already running (pid %d)\n", name, re.PID)
		}
		return &vm.Started{Name: name, Supervisor: re.PID, AlreadyRunning: true}, nil
	}
	if err != nil {
		return nil, err
	}
	if text {
		g.printStarted(st)
	}
	return st, nil
}

func newStopCmd(g *globals) *cobra.Command {
	var timeout time.Duration
	cmd := g.newVMsCmd("stop NAME...", "Power VMs off: the guest's power button, then the hypervisor is stopped after the VM's shutdown timeout",
		func(names []string) error { return parallel(names, func(n string) error { return g.stop(n, timeout) }) })
	cmd.Flags().DurationVar(&timeout, "shutdown-timeout", 0, "how long to wait for the guest to power off (default: the timeout it was started with)")
	return cmd
}

func (g *globals) stop(name string, timeout time.Duration) error {
	s := g.state(name)
	if _, err := s.Registration(); err != nil {
		return err
	}
	if running, _ := s.Running(); !running {
		fmt.Fprintf(g.stdout, "%s: not running\n", name)
		return nil
	}
	fmt.Fprintf(g.stderr, "%s: powering off…\n", name)
	if err := vm.Stop(s, timeout); err != nil {
		return err
	}
	fmt.Fprintf(g.stdout, "%s: stopped\n", name)
	return nil
}

func newRestartCmd(g *globals) *cobra.Command {
	var timeout time.Duration
	cmd := g.newVMsCmd("restart NAME...", "Stop and start VMs, so they run their current configuration and vars",
		func(names []string) error {
			return each(names, func(n string) error {
				if err := g.stop(n, 0); err != nil {
					return err
				}
				_, err := g.start(n, timeout, true)
				return err
			})
		})
	cmd.Flags().DurationVar(&timeout, "shutdown-timeout", vm.DefaultShutdownTimeout, "how long the guest gets to power off")
	return cmd
}

func newCredsCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "creds",
		Short: "Show the credentials a VM will receive (names, sources, sizes, transport — never values)",
	}
	var asJSON bool
	var ageKey string
	show := g.newMachinesCmd("show [MACHINE...]", "Show each credential's name, source, size, encoding and transport — and the digest of public ones", false,
		func(e *vars.Engine, ms []*spec.Machine) error {
			reps := []*vm.CredentialsReport{}
			for _, m := range ms {
				rep, err := vm.ShowCredentials(e, m, g.state(m.Name), ageKey)
				if err != nil {
					return err
				}
				reps = append(reps, rep)
			}
			if asJSON {
				return g.printJSON(reps)
			}
			for i, rep := range reps {
				if len(reps) > 1 {
					if i > 0 {
						fmt.Fprintln(g.stdout)
					}
					fmt.Fprintf(g.stdout, "%s:\n", rep.Name)
				}
				g.printCredentials(rep)
			}
			return nil
		})
	show.Long = `Show what each VM would receive if it started now (every machine when
none is named): each credential's name, source, size, encoding and the
transport, and the SHA-256 of public values — the digests credvm guest
verify prints inside the guest. Secrets are decrypted to measure them, but
neither their values nor their digests are printed: a plain digest of a
low-entropy secret (a prompted password) can be brute-forced. --age-key
decrypts with the machine's own key (credvm vars machine-key writes it)
instead of yours.`
	show.Flags().BoolVar(&asJSON, "json", false, "print as JSON (a list, one object per machine)")
	show.Flags().StringVar(&ageKey, "age-key", "", "decrypt with the machine's own age key file instead of your key")
	cmd.AddCommand(show)
	return cmd
}

func (g *globals) printCredentials(rep *vm.CredentialsReport) {
	rep.WriteTable(g.stdout, "")
}

func newSystemdCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "systemd",
		Short: "Run VMs as systemd services (credvm@NAME.service)",
	}
	var dir string
	var print bool
	var shutdown time.Duration
	install := &cobra.Command{
		Use:   "install",
		Short: "Write the credvm@.service template unit (then: systemctl enable --now credvm@NAME)",
		Long: `Write credvm@.service into the systemd unit directory (default
/etc/systemd/system). credvm@NAME runs the VM created as NAME in the
foreground, tells systemd it is ready once the hypervisor runs, powers the
guest off on stop, and is restarted on failure. Secrets are decrypted as in
` + "`credvm run`" + `; with the credential "age-key"
(LoadCredentialEncrypted=), the machine's own key is used instead.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			self, err := os.Executable()
			if err != nil {
				return err
			}
			o := vm.UnitOptions{Binary: self, StateRoot: g.stateRoot(), ShutdownTimeout: shutdown}
			if print {
				unit, err := vm.Unit(o)
				if err == nil {
					_, err = fmt.Fprint(g.stdout, unit)
				}
				return err
			}
			res, err := vm.InstallUnit(dir, o)
			if err != nil {
				return err
			}
			if res.Unchanged {
				fmt.Fprintf(g.stdout, "%s is current (unchanged)\n", res.Path)
				return nil
			}
			fmt.Fprintf(g.stdout, "wrote %s\n", res.Path)
			if res.Reloaded {
				fmt.Fprintf(g.stdout, "reloaded systemd; start a VM with: systemctl enable --now credvm@NAME\n")
			}
			return nil
		},
	}
	install.Flags().StringVar(&dir, "dir", "/etc/systemd/system", "unit directory")
	install.Flags().BoolVar(&print, "print", false, "print the unit instead of writing it")
	install.Flags().DurationVar(&shutdown, "shutdown-timeout", vm.DefaultShutdownTimeout, "how long a guest gets to power off on stop")
	cmd.AddCommand(install)
	return cmd
}
