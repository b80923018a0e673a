package cli

import (
	"fmt"

	"github.com/spf13/cobra"

	"github.com/credvm/credvm/internal/vm"
)

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
			rep, err := vm.ShowCredentials(e, m, ageKey)
			if err != nil {
				return err
			}
			if asJSON {
				return g.printJSON(rep)
			}
			tw := table(g.stdout)
			fmt.Fprintln(tw, "NAME\tSOURCE\tKIND\tSIZE\tENCODING")
			for _, r := range rep.Credentials {
				kind := "public"
				if r.Secret {
					kind = "secret"
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%s\n", r.Name, r.Source, kind, r.Size, r.Encoding)
			}
			tw.Flush()
			fmt.Fprintf(g.stdout, "transport: %s (%s)\n", rep.Transport, rep.Why)
			fmt.Fprintf(g.stdout, "SMBIOS type 11: %d of %d bytes\n", rep.SMBIOSSize, rep.SMBIOSBudget)
			return nil
		},
	}
	show.Flags().BoolVar(&asJSON, "json", false, "print as JSON")
	show.Flags().StringVar(&ageKey, "age-key", "", "the machine's own age key file")
	cmd.AddCommand(show)
	return cmd
}
