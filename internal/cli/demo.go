package cli

import (
	"context"
	"os"
	"os/signal"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/credvm/credvm/internal/demo"
)

func newDemoCmd(g *globals) *cobra.Command {
	var o demo.Options
	cmd := &cobra.Command{
		Use:   "demo",
		Short: "Boot a real guest with generated secrets and show, from inside it, that each credential arrived",
		Long: `Run the whole workflow on the example machine app-vm-01, in a temporary
directory that is removed afterwards (your own age key and repositories are
not touched):

  1. create a repository with the example machine and a user age key
  2. credvm vars generate app-vm-01 (secrets encrypted with sops + age)
  3. credvm creds show app-vm-01 (sizes and transport, never values)
  4. credvm run app-vm-01: a Debian guest with systemd boots under QEMU;
     its app.service reads API_KEY, JWT_SECRET, DB_PASSWORD, DB_USER and
     ENVIRONMENT with LoadCredential= and prints each one's size and SHA-256,
     and credvm guest verify checks all of them against the manifest
  5. compare the guest's digests with the host's

It needs QEMU and the guest images built by ` + "`make images`" + ` (` + "`make demo`" + ` does
everything).`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			o.Out = g.stdout
			ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			return demo.Run(ctx, o)
		},
	}
	cmd.Flags().StringVar(&o.Images, "images", os.Getenv("CREDVM_IMAGES"), "directory of guest images from make images (credvm image) (default $CREDVM_IMAGES, else .cache/images)")
	cmd.Flags().BoolVar(&o.Keep, "keep", false, "keep the temporary directory (repository, state, console log)")
	return cmd
}
