package cli

import (
	"fmt"
	"os"
	"text/tabwriter"

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
(/sys/firmware/qemu_fw_cfg/by_name/opt/io.systemd.credentials/) and what
systemd imported (/run/credentials/@system) — and print names, sizes and
SHA-256 digests, never values. Build credvm with CGO_ENABLED=0 to get a
static binary that runs in any guest.`,
	}
	var source string
	var root string
	var whole bool
	read := func() ([]guest.Found, error) {
		r := &guest.Reader{Root: root, SMBIOSSingleRead: !whole}
		switch source {
		case "smbios":
			return r.SMBIOS()
		case "fw_cfg":
			return r.FwCfg()
		case "system":
			return r.System()
		case "firmware":
			return r.Merged()
		case "auto":
			if _, err := os.Stat(root + guest.SystemCreds); err == nil {
				return r.System()
			}
			return r.Merged()
		}
		return nil, fmt.Errorf("unknown source %q: use auto, system, firmware, smbios or fw_cfg", source)
	}
	addFlags := func(c *cobra.Command) {
		c.Flags().StringVar(&source, "source", "auto", "where to read: system (/run/credentials/@system), firmware (fw_cfg then SMBIOS, as systemd merges them), smbios, fw_cfg, or auto (system if present, else firmware)")
		c.Flags().BoolVar(&whole, "smbios-whole", false, "read SMBIOS structures whole (as systemd ≥ 257 does) instead of with one read() as systemd ≤ 252 does")
		c.Flags().StringVar(&root, "root", "/", "filesystem root to read from")
		c.Flags().MarkHidden("root")
	}
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
				return writeJSON(g.stdout, creds)
			}
			tw := tabwriter.NewWriter(g.stdout, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "NAME\tSOURCE\tSIZE\tSHA256")
			for _, c := range creds {
				fmt.Fprintf(tw, "%s\t%s\t%d\t%s\n", c.Name, c.Source, c.Size, c.SHA256)
			}
			return tw.Flush()
		},
	}
	addFlags(list)
	list.Flags().BoolVar(&asJSON, "json", false, "print as JSON")
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
	cmd.AddCommand(list, verify)
	return cmd
}
