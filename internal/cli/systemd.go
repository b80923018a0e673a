package cli

import (
	"fmt"
	"os"
	"time"

	"github.com/spf13/cobra"

	"github.com/credvm/credvm/internal/vm"
)

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
