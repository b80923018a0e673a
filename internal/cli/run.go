package cli

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/credvm/credvm/internal/cred"
	"github.com/credvm/credvm/internal/sops"
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
		stateDir string
		ageKey   string
		timeout  time.Duration
		quiet    bool
	)
	cmd := &cobra.Command{
		Use:   "run MACHINE",
		Short: "Run a VM in the foreground with its credentials (Ctrl-C powers it off)",
		Long: `Start the machine's hypervisor in the foreground.

At start, credvm reads the machine's vars (refusing to start if any is
missing or outdated), decrypts the secrets, and passes every credential of
[credentials] to the guest's systemd: over SMBIOS type 11 while everything
fits what the guest can read, over QEMU fw_cfg beyond that (transport =
"auto"), never cut. Secrets reach QEMU only as inherited, sealed in-memory
files: nothing on its command line, in its environment or on disk.

The serial console goes to the terminal and to console.log in the VM's
state directory. Ctrl-C (or SIGTERM) asks the guest to power off, and tells
QEMU to quit if the guest has not stopped within --shutdown-timeout.`,
		Args:              cobra.ExactArgs(1),
		ValidArgsFunction: machineNameCompletion(g),
		RunE: func(cmd *cobra.Command, args []string) error {
			e, err := g.engine()
			if err != nil {
				return err
			}
			m, err := e.Repo.Machine(args[0])
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
			ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			o := vm.RunOptions{
				Machine: m, Credentials: creds,
				State:           vm.StateDir{Root: stateRoot(stateDir), Name: m.Name},
				Notices:         g.stderr,
				ShutdownTimeout: timeout,
			}
			if !quiet {
				o.Console = g.stdout
			}
			res, err := vm.Run(ctx, o)
			if err != nil {
				return err
			}
			if res.ExitCode != 0 {
				return &exitError{code: res.ExitCode}
			}
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&stateDir, "state-dir", "", "root of the VMs' state directories (default $CREDVM_STATE_DIR, /var/lib/microvms as root, else ~/.local/state/credvm)")
	f.StringVar(&ageKey, "age-key", "", "the machine's own age key file, to decrypt its vars without a user key")
	f.DurationVar(&timeout, "shutdown-timeout", 30*time.Second, "how long the guest gets to power off before QEMU is told to quit")
	f.BoolVarP(&quiet, "quiet", "q", false, "do not copy the console to the terminal (it still goes to console.log)")
	return cmd
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
			e, err := g.engine()
			if err != nil {
				return err
			}
			m, err := e.Repo.Machine(args[0])
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
