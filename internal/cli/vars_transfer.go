package cli

import (
	"fmt"
	"io"
	"os"

	"github.com/spf13/cobra"

	"github.com/credvm/credvm/internal/atomicfile"
	"github.com/credvm/credvm/internal/spec"
	"github.com/credvm/credvm/internal/vars"
)

func newVarsExportCmd(g *globals) *cobra.Command {
	var opts vars.ExportOptions
	var out string
	cmd := g.newMachineCmd("export MACHINE --to RECIPIENT [-o FILE]", "Write a machine's vars as a bundle encrypted to the receiving host's key (migration)", 1,
		func(e *vars.Engine, m *spec.Machine, _ []string) error {
			if opts.Plaintext {
				fmt.Fprintf(g.stderr, "credvm: warning: writing %s's secrets UNENCRYPTED (--plaintext)\n", m.Name)
			}
			b, err := e.ExportBundle(m, opts)
			if err != nil {
				return err
			}
			if out != "" {
				err = atomicfile.Write(out, b.Data, 0o600)
			} else {
				_, err = g.stdout.Write(b.Data)
			}
			if err != nil {
				return err
			}
			fmt.Fprintf(g.stderr, "%s: exported %s from %s (%s)\n", b.Machine, plural(b.Vars, "var", "vars"), plural(b.Generators, "generator", "generators"), exportedHow(opts))
			return nil
		})
	cmd.Long = `Write one machine's vars — every value, its machine file and, with
--with-machine-key, its own age key — as a bundle encrypted with age to the
receiving host: an age recipient (age1…) or an ssh-ed25519 public key (or a
file holding one). On the other host, ` + "`credvm vars import`" + ` re-encrypts
them to that repository's keys. age authenticates the bundle: a truncated
or altered one is refused whole.

--plaintext writes the bundle unencrypted, every secret readable: only for
a channel you trust completely.`
	cmd.Example = `  credvm vars export app-vm-01 --to age1qyqszqgpqyqszqgpqyqszqgpqyqszqgpqyqszqgpqyqszqgpqysg0v5jf > app-vm-01.bundle
  credvm vars export app-vm-01 --to ~/.ssh/newhost_ed25519.pub -o app-vm-01.bundle`
	f := cmd.Flags()
	f.StringVar(&opts.To, "to", "", "receiving host's key: age1… recipient, ssh-ed25519 public key, or a file holding one")
	f.StringVarP(&out, "output", "o", "", "write to FILE (0600) instead of standard output")
	f.BoolVar(&opts.WithMachineKey, "with-machine-key", false, "include the machine's own age key (the VM keeps its identity)")
	f.BoolVar(&opts.Plaintext, "plaintext", false, "write the bundle unencrypted (every secret readable!)")
	return cmd
}

func exportedHow(opts vars.ExportOptions) string {
	what := "encrypted to " + opts.To
	if opts.Plaintext {
		what = "unencrypted"
	}
	if opts.WithMachineKey {
		what += ", with the machine key"
	}
	return what
}

func newVarsImportCmd(g *globals) *cobra.Command {
	var opts vars.ImportOptions
	cmd := &cobra.Command{
		Use:   "import [FILE]",
		Short: "Import a machine's vars from a bundle (standard input by default), re-encrypted to this repository",
		Long: `Decrypt a bundle from ` + "`credvm vars export`" + ` with your age key (or the
keys given with -i: age identity files or unencrypted OpenSSH ed25519 keys),
check it whole, re-encrypt every var to this repository's machine key and
users, check that each decrypts back, and commit all of it in one
transaction. The machine file is written when this repository has none for
the machine; otherwise the bundle must match it. A truncated or altered
bundle is refused and nothing is imported.`,
		Args: cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			e, err := g.engine()
			if err != nil {
				return err
			}
			var data []byte
			if len(args) == 1 && args[0] != "-" {
				data, err = os.ReadFile(args[0])
			} else {
				data, err = io.ReadAll(g.stdin)
			}
			if err != nil {
				return err
			}
			res, err := e.Import(data, opts)
			if err != nil {
				return err
			}
			fmt.Fprintf(g.stdout, "%s: imported %s, re-encrypted to this repository and checked\n", res.Machine, plural(res.Vars, "var", "vars"))
			return nil
		},
	}
	f := cmd.Flags()
	f.StringArrayVarP(&opts.IdentityFiles, "identity", "i", nil, "a key to decrypt the bundle with: age identity file or OpenSSH ed25519 private key; repeatable")
	f.BoolVar(&opts.Plaintext, "plaintext", false, "accept an unencrypted bundle")
	f.BoolVar(&opts.NoCommit, "no-commit", false, "do not git-commit the imported vars")
	return cmd
}
