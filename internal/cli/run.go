package cli

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/coreos/go-systemd/v22/daemon"
	"github.com/spf13/cobra"

	"github.com/credvm/credvm/internal/cred"
	"github.com/credvm/credvm/internal/repo"
	"github.com/credvm/credvm/internal/sops"
	"github.com/credvm/credvm/internal/spec"
	"github.com/credvm/credvm/internal/vars"
	"github.com/credvm/credvm/internal/vm"
)

// machineKeyFlag loads --age-key: the machine's own age identity file.
func machineKey(path string) (*sops.Identities, error) {
	if path == "" {
		return nil, nil
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("--age-key: %w", err)
	}
	ids := &sops.Identities{}
	if err := ids.Add(b, path); err != nil {
		return nil, err
	}
	return ids, nil
}

func newRunCmd(g *globals) *cobra.Command {
	var (
		ageKey     string
		timeout    time.Duration
		quiet      bool
		supervised bool
		systemd    bool
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
QEMU to quit if the guest has not stopped within --shutdown-timeout.

With --systemd (the credvm@.service unit), credvm tells systemd the service
is ready once QEMU runs, and reads the machine's own age key from the
credential "age-key" ($CREDENTIALS_DIRECTORY/age-key) when the unit passes
one (LoadCredentialEncrypted=age-key:…).`,
		Args:              cobra.ExactArgs(1),
		ValidArgsFunction: machineNameCompletion(g),
		RunE: func(cmd *cobra.Command, args []string) error {
			var ready *os.File
			if supervised {
				ready = os.NewFile(vm.ReadyFD, "ready")
			}
			report := func(line string) {
				if ready != nil {
					fmt.Fprintln(ready, line)
					ready.Close()
					ready = nil
				}
			}
			err := g.run(args[0], runFlags{ageKey: ageKey, timeout: timeout, quiet: quiet || supervised, systemd: systemd}, report)
			var re *vm.RunningError
			switch {
			case errors.As(err, &re):
				report(fmt.Sprintf("running %d", re.PID))
			case err != nil:
				var ee *exitError
				if !errors.As(err, &ee) {
					report("error: " + strings.ReplaceAll(err.Error(), "\n", "; "))
				}
			}
			return err
		},
	}
	f := cmd.Flags()
	f.StringVar(&ageKey, "age-key", "", "the machine's own age key file, to decrypt its vars without a user key")
	f.DurationVar(&timeout, "shutdown-timeout", 30*time.Second, "how long the guest gets to power off before QEMU is told to quit")
	f.BoolVarP(&quiet, "quiet", "q", false, "do not copy the console to the terminal (it still goes to console.log)")
	f.BoolVar(&supervised, "supervised", false, "run as the supervisor of `credvm start` (internal)")
	f.BoolVar(&systemd, "systemd", false, "run under systemd: sd_notify readiness, machine key from $CREDENTIALS_DIRECTORY")
	f.MarkHidden("supervised")
	return cmd
}

type runFlags struct {
	ageKey  string
	timeout time.Duration
	quiet   bool
	systemd bool
}

func (g *globals) run(name string, fl runFlags, report func(string)) error {
	s := g.state(name)
	var (
		r       *repo.Repo
		m       *spec.Machine
		cfgHash string
		err     error
	)
	if s.Exists() {
		reg, err := s.Registration()
		if err != nil {
			return err
		}
		if r, err = repo.Open(reg.Repo); err != nil {
			return fmt.Errorf("vm %s: %w", name, err)
		}
		if m, err = reg.Machine(); err != nil {
			return err
		}
		cfgHash = reg.Current.Hash
	} else {
		if r, err = g.openRepo(); err != nil {
			return err
		}
		if m, err = r.Machine(name); err != nil {
			return err
		}
		cfgHash = vm.ConfigHash(m)
	}
	if err := vars.RecoverIfNeeded(r); err != nil {
		return err
	}
	ids, err := sops.LoadUserIdentities()
	if err != nil {
		return fmt.Errorf("reading your age key: %w", err)
	}
	e := &vars.Engine{Repo: r, User: ids}
	keyFile := fl.ageKey
	if fl.systemd && keyFile == "" {
		if d := os.Getenv("CREDENTIALS_DIRECTORY"); d != "" {
			if _, err := os.Stat(filepath.Join(d, "age-key")); err == nil {
				keyFile = filepath.Join(d, "age-key")
			}
		}
	}
	mk, err := machineKey(keyFile)
	if err != nil {
		return err
	}
	creds, err := vm.Credentials(e, m, mk)
	if err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	o := vm.RunOptions{
		Machine: m, Credentials: creds, State: s,
		Notices:         g.stderr,
		ShutdownTimeout: fl.timeout,
		ConfigHash:      cfgHash,
		VarsHash:        vm.VarsHash(e, m),
		Started: func(pid int) {
			report(fmt.Sprintf("started %d", pid))
			if fl.systemd {
				daemon.SdNotify(false, fmt.Sprintf("READY=1\nMAINPID=%d\nSTATUS=QEMU running (pid %d)", os.Getpid(), pid))
			}
		},
	}
	if !fl.quiet {
		o.Console = g.stdout
	}
	res, err := vm.Run(ctx, o)
	if err != nil {
		return err
	}
	if fl.systemd {
		daemon.SdNotify(false, "STOPPING=1")
	}
	if res.ExitCode != 0 {
		return &exitError{code: res.ExitCode}
	}
	return nil
}

func stateRoot(flag string) string {
	if flag != "" {
		return flag
	}
	return vm.DefaultStateRoot()
}

func newCredsCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "creds",
		Short: "Show the credentials a VM will receive (names, sources, sizes, transport — never values)",
	}
	var asJSON bool
	var ageKey string
	show := &cobra.Command{
		Use:   "show MACHINE",
		Short: "Show each credential's name, source, size and transport, and the SMBIOS budget used",
		Long: `Show what the VM would receive if it started now: each credential's name,
source, size, encoding and transport, and how much of the guest's SMBIOS
budget the whole set uses. Values are decrypted to measure them exactly, but
never printed.`,
		Args:              cobra.ExactArgs(1),
		ValidArgsFunction: machineNameCompletion(g),
		RunE: func(cmd *cobra.Command, args []string) error {
			e, m, err := g.engineMachine(args[0])
			if err != nil {
				return err
			}
			mk, err := machineKey(ageKey)
			if err != nil {
				return err
			}
			creds, err := vm.Credentials(e, m, mk)
			if err != nil {
				return err
			}
			plan, err := vm.Plan(m, creds)
			if err != nil {
				return err
			}
			type row struct {
				Name     string `json:"name"`
				Source   string `json:"source"`
				Secret   bool   `json:"secret"`
				Size     int    `json:"size"`
				Encoding string `json:"encoding"`
				SHA256   string `json:"sha256"`
			}
			out := struct {
				Machine string `json:"machine"`
				*cred.Plan
				Credentials []row `json:"credentials"`
			}{Machine: m.Name, Plan: plan}
			for _, c := range plan.Credentials {
				enc := "text"
				if c.IsBinary() {
					enc = "base64"
				}
				digest := ""
				if !c.Secret {
					// A secret's digest would let anyone test guesses.
					digest = c.Digest()
				}
				out.Credentials = append(out.Credentials, row{c.Name, c.Source, c.Secret, len(c.Value), enc, digest})
			}
			if asJSON {
				return writeJSON(g.stdout, out)
			}
			tw := tabwriter.NewWriter(g.stdout, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "NAME\tSOURCE\tKIND\tSIZE\tENCODING")
			for _, r := range out.Credentials {
				kind := "public"
				if r.Secret {
					kind = "secret"
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%s\n", r.Name, r.Source, kind, r.Size, r.Encoding)
			}
			tw.Flush()
			fmt.Fprintf(g.stdout, "transport: %s (%s)\n", plan.Transport, plan.Why)
			fmt.Fprintf(g.stdout, "SMBIOS type 11: %d of %d bytes\n", plan.SMBIOSSize, plan.SMBIOSBudget)
			return nil
		},
	}
	show.Flags().BoolVar(&asJSON, "json", false, "print as JSON")
	show.Flags().StringVar(&ageKey, "age-key", "", "the machine's own age key file")
	cmd.AddCommand(show)
	return cmd
}
