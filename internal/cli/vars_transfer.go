package cli

import (
	"errors"
	"fmt"
	"io"
	"os"

	"github.com/spf13/cobra"

	"github.com/credvm/credvm/internal/atomicfile"
	"github.com/credvm/credvm/internal/repo"
	"github.com/credvm/credvm/internal/spec"
	"github.com/credvm/credvm/internal/vars"
	"github.com/credvm/credvm/internal/words"
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
			if b.SignerCreated != "" {
				fmt.Fprintf(g.stderr, "created your bundle signing key %s (public key %s.pub, registered in the repository): give it to the receiver for --from\n", b.SignerCreated, b.SignerCreated)
			}
			fmt.Fprintf(g.stderr, "%s: exported %s from %s (%s), signed with %s\n", b.Machine, words.Plural(b.Vars, "var", "vars"), words.Plural(b.Generators, "generator", "generators"), exportedHow(opts), b.Signer)
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
	f.StringVar(&opts.SignKey, "sign-key", "", "OpenSSH private key to sign the bundle with (default: ssh-agent's first ed25519 key, ~/.ssh/id_ed25519, else credvm's own signing key)")
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
	var from []string
	cmd := &cobra.Command{
		Use:   "import [FILE] --from SENDER",
		Short: "Import a machine's vars from a signed bundle (standard input by default), re-encrypted to this repository",
		Long: `Check a bundle from ` + "`credvm vars export`" + `: its signature must be by a
key you name with --from (an ssh public key, a .pub file, or an
allowed_signers file; without it, a terminal shows the signer's fingerprint
and asks). Decrypt it with your age key (or the keys given with -i: age
identity files or unencrypted OpenSSH ed25519 keys), check it whole, and
show what it changes: a new machine file (and the host files its
credentials read), a machine key, shared vars it would replace — which
needs --replace-shared or a yes. Then re-encrypt every var to this
repository's machine key and users, check that each decrypts back, and
commit the machine file, key and vars in one transaction. A truncated,
altered, unsigned or wrongly signed bundle imports nothing.`,
		Args: cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			e, err := g.engine()
			if err != nil {
				return err
			}
			var data []byte
			switch {
			case len(args) == 1 && args[0] != "-":
				data, err = os.ReadFile(args[0])
			case g.stdinIsTerminal():
				return errors.New("no bundle: name its file (credvm vars import FILE --from SENDER) or pipe it on standard input")
			default:
				data, err = io.ReadAll(g.stdin)
			}
			if err != nil {
				return err
			}
			if opts.From, err = vars.ParseSenders(from); err != nil {
				return err
			}
			replace := opts.ReplaceShared
			return g.confirmed(func(accepted []*repo.ConfirmationError) error {
				if a := accepts(accepted, vars.AcceptSigner); a != nil {
					opts.TrustSigner = a.Token
				}
				opts.ReplaceShared = replace || accepts(accepted, vars.AcceptShared) != nil
				res, err := e.Import(data, opts)
				if err != nil {
					return err
				}
				fmt.Fprintf(g.stdout, "%s: imported %s signed by %s, re-encrypted to this repository and checked\n", res.Machine, words.Plural(res.Vars, "var", "vars"), res.Signer)
				for _, c := range res.Changes {
					fmt.Fprintf(g.stdout, "  %s\n", c)
				}
				return nil
			})
		},
	}
	f := cmd.Flags()
	f.StringArrayVar(&from, "from", nil, "the sender's signing key: \"ssh-ed25519 AAAA…\", a .pub file or an allowed_signers file; repeatable")
	f.BoolVar(&opts.ReplaceShared, "replace-shared", false, "let the bundle replace shared vars that machines here already use")
	f.StringArrayVarP(&opts.IdentityFiles, "identity", "i", nil, "a key to decrypt the bundle with: age identity file or OpenSSH ed25519 private key; repeatable")
	f.BoolVar(&opts.Plaintext, "plaintext", false, "accept an unencrypted bundle")
	f.BoolVar(&opts.NoCommit, "no-commit", false, "do not git-commit the imported vars")
	return cmd
}
