package cli

import (
	"fmt"

	"github.com/spf13/cobra"

	"github.com/credvm/credvm/internal/guest"
	"github.com/credvm/credvm/internal/receipt"
)

func newGuestCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "guest",
		Short: "Inside a guest: list the credentials that arrived and verify them against credvm's manifest",
		Long: `Commands to run inside a VM started by credvm. They read the credentials
the hypervisor passed, by the rules systemd uses — SMBIOS type 11
(/sys/firmware/dmi/entries/11-*/raw), QEMU fw_cfg
(/sys/firmware/qemu_fw_cfg/by_name/opt/io.systemd.credentials/), the kernel
command line, and what systemd imported (/run/credentials/@system) — and
print names, sizes and SHA-256 digests, never values. Build credvm with
CGO_ENABLED=0 to get a static binary that runs in any guest.`,
	}
	var asJSON bool
	list := newGuestReadCmd("list", "List the credentials that arrived: source, size, SHA-256, name", func(creds []guest.Found) error {
		creds = guest.Classify(creds)
		if asJSON {
			out := []guest.Found{}
			for _, c := range creds {
				if c.Secret {
					c.SHA256 = ""
				}
				out = append(out, c)
			}
			return g.printJSON(out)
		}
		tw := table(g.stdout)
		fmt.Fprintln(tw, "NAME\tSOURCE\tSIZE\tSHA256")
		for _, c := range creds {
			fmt.Fprintf(tw, "%s\t%s\t%d\t%s\n", c.Name, c.Source, c.Size, c.Shown(false))
		}
		return tw.Flush()
	})
	list.Flags().BoolVar(&asJSON, "json", false, "print as JSON")
	verify := newGuestReadCmd("verify", "Check the credentials against credvm's manifest; exit 1 naming any that is missing or cut", func(creds []guest.Found) error {
		if !guest.Report(g.stdout, creds, false) {
			return &exitError{code: 1}
		}
		return nil
	})
	report := newGuestReadCmd("report", "Verify the credentials and send the result to the host (credvm's io.credvm.0 port): booted, each credential ok/missing/cut, ready", func(creds []guest.Found) error {
		ok := guest.Report(g.stdout, creds, false)
		port, err := receipt.FindPort("/")
		if err != nil {
			return err
		}
		if err := receipt.Send(port, receipt.FromVerify(creds)); err != nil {
			return fmt.Errorf("sending the receipt to the host through %s: %w", port, err)
		}
		fmt.Fprintf(g.stdout, "%sreceipt sent\n", guest.ReportPrefix)
		if !ok {
			return &exitError{code: 1}
		}
		return nil
	})
	report.Long = `Verify the credentials that arrived against credvm's manifest, print the
result as verify does, and send it to the host over the virtio-serial port
io.credvm.0 that credvm gives every QEMU VM: that the guest booted, each
credential's status (ok, missing, cut, differs — never a value), and that
it is ready. The host shows it in list and status ("verified",
"credentials cut: NAME"), tells systemd the VM is ready, and rotate waits
for it. The guest image runs it once, after multi-user.target.`
	cmd.AddCommand(list, verify, report)
	return cmd
}

// newGuestReadCmd is a guest command that reads the credentials that
// arrived, from the source its flags choose.
func newGuestReadCmd(use, short string, run func([]guest.Found) error) *cobra.Command {
	var source string
	var whole bool
	cmd := &cobra.Command{
		Use: use, Short: short, Args: cobra.NoArgs,
		RunE: func(*cobra.Command, []string) error {
			creds, err := (&guest.Reader{Root: "/", SMBIOSSingleRead: !whole}).Read(source)
			if err != nil {
				return err
			}
			return run(creds)
		},
	}
	cmd.Flags().StringVar(&source, "source", "auto", "where to read: system (/run/credentials/@system), firmware (fw_cfg, SMBIOS, then the kernel command line, as systemd merges them), smbios, fw_cfg, cmdline, or auto (system if present, else firmware)")
	cmd.Flags().BoolVar(&whole, "smbios-whole", false, "read SMBIOS structures whole (as systemd ≥ 257 does) instead of with one read() as systemd ≤ 252 does")
	return cmd
}
