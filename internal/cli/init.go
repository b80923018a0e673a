package cli

import (
	"fmt"
	"path/filepath"

	"github.com/spf13/cobra"

	"github.com/credvm/credvm/internal/guestimage"
	"github.com/credvm/credvm/internal/repo"
)

func newInitCmd(g *globals) *cobra.Command {
	var o repo.InitOptions
	var images string
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "init [DIR]",
		Short: "Start a repository: credvm.toml and a commented machine that boots the guest credvm image built",
		Long: `Make DIR (default: the current directory) a credvm repository with one
machine, machines/<name>/machine.toml, commented: it boots the guest
` + "`credvm image`" + ` builds, has a generator with a secret and a public file,
and passes three credentials. Nothing existing is overwritten: a directory
that is a repository already is refused.`,
		Example: `  credvm init my-vms
  credvm init --machine web-01 --images ./images`,
		Args: cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			dir := "."
			if len(args) == 1 {
				dir = args[0]
			}
			im := guestimage.Images{Dir: images}
			abs, err := filepath.Abs(im.Dir)
			if err != nil {
				return err
			}
			im.Dir = abs
			o.Kernel, o.Initrd, o.Cmdline = im.Kernel(), im.Initrd(), guestimage.Cmdline
			res, err := repo.Init(dir, o)
			if err != nil {
				return err
			}
			if asJSON {
				return g.printJSON(res)
			}
			g.printInit(res, dir, im.Dir)
			return nil
		},
	}
	cmd.Flags().StringVar(&o.Machine, "machine", "my-vm", "the machine's name")
	cmd.Flags().StringVar(&images, "images", guestimage.DefaultDir, "the directory credvm image built the guest in")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print what was written as JSON")
	return cmd
}

func (g *globals) printInit(res *repo.InitResult, dir, images string) {
	fmt.Fprintf(g.stdout, "created a credvm repository in %s:\n", res.Root)
	for _, f := range res.Files {
		fmt.Fprintf(g.stdout, "  %s\n", f)
	}
	if res.ImageMissing {
		fmt.Fprintf(g.stdout, "\nits machine boots the guest in %s, which is not built yet: sudo credvm image --dir %s\n", images, images)
	}
	fmt.Fprintf(g.stdout, "\nnext:\n")
	if dir != "." {
		fmt.Fprintf(g.stdout, "  cd %s\n", dir)
	}
	for _, step := range [][2]string{
		{"credvm vars keygen", "your age key, once per user"},
		{"credvm vars generate " + res.Machine, "its secrets, encrypted under vars/"},
		{"credvm create " + res.Machine, "register it as a VM"},
		{"credvm start " + res.Machine, "boot it"},
		{"credvm logs " + res.Machine, "the guest lists the credentials that arrived"},
		{"credvm stop " + res.Machine, ""},
	} {
		if step[1] == "" {
			fmt.Fprintf(g.stdout, "  %s\n", step[0])
			continue
		}
		fmt.Fprintf(g.stdout, "  %-34s # %s\n", step[0], step[1])
	}
}
