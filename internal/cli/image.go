package cli

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/credvm/credvm/internal/guestimage"
)

func newImageCmd(g *globals) *cobra.Command {
	o := guestimage.BuildOptions{}
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "image",
		Short: "Build a guest for your own machines: a Debian kernel and a systemd initramfs with credvm inside",
		Long: `Build a guest from Debian packages, on a Debian or Ubuntu host, and print
the lines that boot it from a machine's [vm]:

  vmlinuz      Debian's cloud kernel (apt-get download: nothing is
               installed on the host), with the modules a microVM needs
               (fw_cfg, virtio block/net/console/fs/vsock, the ACPI button)
  initrd.img   a Debian root (debootstrap minbase) with systemd, udev and
               dbus, packed as an initramfs, with credvm inside:
               credvm-report.service prints and verifies the credentials
               that arrived (names, sizes and digests, never values) on the
               serial console, where root is logged in.
               The guest stays up until credvm stop.

Your services go in with --overlay DIR (its files are copied over the
root: DIR/etc/systemd/system/myapp.service with LoadCredential=API_KEY,
and the link in DIR/etc/systemd/system/multi-user.target.wants/) and your
Debian packages with --include. The first build takes a minute or two;
later ones reuse the kernel and root and only assemble initrd.img.

Needs root (debootstrap) and the debootstrap package. On NixOS the guest's
NixOS configuration builds the guest instead (microvm.nix).`,
		Example: `  sudo credvm image
  sudo credvm image --include nginx --overlay ./guest-files
  sudo credvm image --dir ./images --rebuild`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			o.Log = g.stderr
			res, err := guestimage.Build(ctx, o)
			if err != nil {
				return err
			}
			if asJSON {
				return g.printJSON(res)
			}
			fmt.Fprintf(g.stdout, "guest ready in %s: Debian %s with systemd and credvm, kernel %s (built now: %s)\n\n",
				res.Dir, res.Suite, res.KernelVersion, strings.Join(res.Built, ", "))
			fmt.Fprintf(g.stdout, "Boot it from a machine's [vm] (credvm init writes a machine that does):\n\n")
			fmt.Fprintf(g.stdout, "kernel = %q\ninitrd = %q\ncmdline = %q\n", res.Kernel, res.Initrd, res.Cmdline)
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.Dir, "dir", guestimage.DefaultDir, "where to put the images")
	f.StringVar(&o.Suite, "suite", "bookworm", "Debian release of the guest's root")
	f.StringVar(&o.Mirror, "mirror", "", "Debian mirror (default $DEBIAN_MIRROR, else http://deb.debian.org/debian)")
	f.StringSliceVar(&o.Include, "include", nil, "more Debian packages in the guest (comma-separated or repeated)")
	f.StringVar(&o.Overlay, "overlay", "", "a directory whose files are copied over the guest's root (your units and programs)")
	f.BoolVar(&o.Rebuild, "rebuild", false, "fetch the kernel and debootstrap the root again even when cached")
	f.BoolVar(&asJSON, "json", false, "print what was built as JSON")
	return cmd
}
