package cli

import (
	"fmt"

	"github.com/spf13/cobra"

	"github.com/credvm/credvm/internal/guest"
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
	var source string
	var whole bool
	read := func() ([]guest.Found, error) {
		return (&guest.Reader{Root: "/", SMBIOSSingleRead: !whole}).Read(source)
	}
	addFlags := func(c *cobra.Command) {
		c.Flags().StringVar(&source, "source", "auto", "where to read: system (/run/credentials/@system), firmware (fw_cfg, SMBIOS, then the kernel command line, as systemd merges them), smbios, fw_cfg, cmdline, or auto (system if present, else firmware)")
		c.Flags().BoolVar(&whole, "smbios-whole", false, "read SMBIOS structures whole (as systemd ≥ 257 does) instead of with one read() as systemd ≤ 252 does")
	}
	cmd.AddCommand(newGuestListCmd(g, read, addFlags), newGuestVerifyCmd(g, read, addFlags))
	return cmd
}

func newGuestListCmd(g *globals, read func() ([]guest.Found, error), addFlags func(*cobra.Command)) *cobra.Command {
	var asJSON bool
	list := &cobra.Command{
		Use:   "list",
		Short: "List the credentials that arrived: source, size, SHA-256, name",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			creds, err := read()
			if err != nil {
				return err
			}
			if asJSON {
				if creds == nil {
					creds = []guest.Found{}
				}
				return g.printJSON(creds)
			}
			tw := table(g.stdout)
			fmt.Fprintln(tw, "NAME\tSOURCE\tSIZE\tSHA256")
			for _, c := range creds {
				fmt.Fprintf(tw, "%s\t%s\t%d\t%s\n", c.Name, c.Source, c.Size, c.SHA256)
			}
			return tw.Flush()
		},
	}
	addFlags(list)
	list.Flags().BoolVar(&asJSON, "json", false, "print as JSON")
	return list
}

func newGuestVerifyCmd(g *globals, read func() ([]guest.Found, error), addFlags func(*cobra.Command)) *cobra.Command {
	verify := &cobra.Command{
		Use:   "verify",
		Short: "Check the credentials against credvm's manifest; exit 1 naming any that is missing or cut",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			creds, err := read()
			if err != nil {
				return err
			}
			if !guest.Report(g.stdout, creds) {
				return &exitError{code: 1}
			}
			return nil
		},
	}
	addFlags(verify)
	return verify
}
