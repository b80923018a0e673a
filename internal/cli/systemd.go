package cli

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"text/template"
	"time"

	"github.com/spf13/cobra"

	"github.com/credvm/credvm/internal/atomicfile"
)

// unitTemplate is credvm@.service. credvm runs the VM in the foreground
// under systemd (Type=notify: ready once QEMU runs); SIGTERM from `systemctl
// stop` makes it power the guest off over QMP and quit QEMU after the
// shutdown timeout, inside TimeoutStopSec.
var unitTemplate = template.Must(template.New("unit").Parse(`# credvm@.service — written by ` + "`credvm systemd install`" + `.
# A VM created with ` + "`credvm create NAME`" + ` runs as credvm@NAME.service.
[Unit]
Description=credvm VM %i
Documentation=https://github.com/credvm/credvm#readme
Wants=network-online.target
After=network-online.target

[Service]
Type=notify
NotifyAccess=main
Environment=CREDVM_STATE_DIR={{.StateDir}}
ExecStart={{.Binary}} run --systemd --quiet --shutdown-timeout {{.Shutdown}} %i
KillMode=mixed
TimeoutStopSec={{.StopTimeout}}
Restart=on-failure
RestartSec=5s
NoNewPrivileges=yes
PrivateTmp=yes
# To decrypt with the machine's own key instead of a user key, store it
# encrypted with systemd-creds and pass it as the credential "age-key":
#LoadCredentialEncrypted=age-key:/etc/credstore.encrypted/credvm-%i.age-key

[Install]
WantedBy=multi-user.target
`))

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
foreground, tells systemd it is ready once QEMU runs, powers the guest off
on stop, and is restarted on failure. Secrets are decrypted as in
` + "`credvm run`" + `; with the credential "age-key"
(LoadCredentialEncrypted=), the machine's own key is used instead.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			self, err := os.Executable()
			if err != nil {
				return err
			}
			var b strings.Builder
			err = unitTemplate.Execute(&b, map[string]string{
				"Binary":      self,
				"StateDir":    stateRoot(g.stateDir),
				"Shutdown":    shutdown.String(),
				"StopTimeout": fmt.Sprint(int((shutdown + 30*time.Second).Seconds())),
			})
			if err != nil {
				return err
			}
			if print {
				_, err := fmt.Fprint(g.stdout, b.String())
				return err
			}
			p := filepath.Join(dir, "credvm@.service")
			if err := os.MkdirAll(dir, 0o755); err != nil {
				return err
			}
			if err := atomicfile.Write(p, []byte(b.String()), 0o644); err != nil {
				return err
			}
			fmt.Fprintf(g.stdout, "wrote %s\n", p)
			if _, err := os.Stat("/run/systemd/system"); err == nil {
				if out, err := exec.Command("systemctl", "daemon-reload").CombinedOutput(); err != nil {
					return fmt.Errorf("systemctl daemon-reload: %v: %s", err, out)
				}
				fmt.Fprintf(g.stdout, "reloaded systemd; start a VM with: systemctl enable --now credvm@NAME\n")
			}
			return nil
		},
	}
	install.Flags().StringVar(&dir, "dir", "/etc/systemd/system", "unit directory")
	install.Flags().BoolVar(&print, "print", false, "print the unit instead of writing it")
	install.Flags().DurationVar(&shutdown, "shutdown-timeout", 30*time.Second, "how long a guest gets to power off on stop")
	cmd.AddCommand(install)
	return cmd
}
