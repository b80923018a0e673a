package cli

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"

	"filippo.io/age"
	"filippo.io/age/agessh"
	"github.com/spf13/cobra"

	"github.com/credvm/credvm/internal/atomicfile"
	"github.com/credvm/credvm/internal/vars"
)

func newVarsExportCmd(g *globals) *cobra.Command {
	var (
		to         string
		out        string
		machineKey bool
		plaintext  bool
	)
	cmd := &cobra.Command{
		Use:   "export MACHINE --to RECIPIENT [-o FILE]",
		Short: "Write a machine's vars as a bundle encrypted to the receiving host's key (migration)",
		Long: `Write one machine's vars — every value, its machine file and, with
--with-machine-key, its own age key — as a bundle encrypted with age to the
receiving host: an age recipient (age1…) or an ssh-ed25519 public key (or a
file holding one). On the other host, ` + "`credvm vars import`" + ` re-encrypts
them to that repository's keys. age authenticates the bundle: a truncated
or altered one is refused whole.

--plaintext writes the bundle unencrypted, every secret readable: only for
a channel you trust completely.`,
		Example: `  credvm vars export app-vm-01 --to age1qyqszqgpqyqszqgpqyqszqgpqyqszqgpqyqszqgpqyqszqgpqysg0v5jf > app-vm-01.bundle
  credvm vars export app-vm-01 --to ~/.ssh/newhost_ed25519.pub -o app-vm-01.bundle`,
		Args:              cobra.ExactArgs(1),
		ValidArgsFunction: machineNameCompletion(g),
		RunE: func(cmd *cobra.Command, args []string) error {
			if (to == "") == !plaintext {
				return errors.New("give --to RECIPIENT (the receiving host's age or ssh-ed25519 public key), or --plaintext")
			}
			e, m, err := g.engineMachine(args[0])
			if err != nil {
				return err
			}
			var rcpt age.Recipient
			if to != "" {
				if rcpt, err = vars.ParseRecipient(to); err != nil {
					return err
				}
			}
			b, err := e.Export(m, machineKey)
			if err != nil {
				return err
			}
			var data []byte
			if plaintext {
				fmt.Fprintf(g.stderr, "credvm: warning: writing %s's secrets UNENCRYPTED (--plaintext)\n", m.Name)
				if data, err = jsonIndent(b); err != nil {
					return err
				}
			} else if data, err = vars.Seal(b, rcpt); err != nil {
				return err
			}
			n := 0
			for _, bg := range b.Generators {
				n += len(bg.Files)
			}
			if out != "" {
				if err := atomicfile.Write(out, data, 0o600); err != nil {
					return err
				}
			} else if _, err := g.stdout.Write(data); err != nil {
				return err
			}
			what := "encrypted to " + to
			if plaintext {
				what = "unencrypted"
			}
			if machineKey {
				what += ", with the machine key"
			}
			fmt.Fprintf(g.stderr, "%s: exported %s from %s (%s)\n", m.Name, plural(n, "var", "vars"), plural(len(b.Generators), "generator", "generators"), what)
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&to, "to", "", "receiving host's key: age1… recipient, ssh-ed25519 public key, or a file holding one")
	f.StringVarP(&out, "output", "o", "", "write to FILE (0600) instead of standard output")
	f.BoolVar(&machineKey, "with-machine-key", false, "include the machine's own age key (the VM keeps its identity)")
	f.BoolVar(&plaintext, "plaintext", false, "write the bundle unencrypted (every secret readable!)")
	return cmd
}

func newVarsImportCmd(g *globals) *cobra.Command {
	var (
		identities []string
		plaintext  bool
		noCommit   bool
	)
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
			e.NoCommit = noCommit
			var data []byte
			if len(args) == 1 && args[0] != "-" {
				data, err = os.ReadFile(args[0])
			} else {
				data, err = io.ReadAll(g.stdin)
			}
			if err != nil {
				return err
			}
			ids := append([]age.Identity(nil), e.User.List...)
			for _, p := range identities {
				more, err := loadIdentityFile(p)
				if err != nil {
					return err
				}
				ids = append(ids, more...)
			}
			b, err := vars.Open(data, ids, plaintext)
			if err != nil {
				return err
			}
			m, err := e.Import(b)
			if err != nil {
				return err
			}
			n := 0
			for _, bg := range b.Generators {
				n += len(bg.Files)
			}
			fmt.Fprintf(g.stdout, "%s: imported %s, re-encrypted to this repository and checked\n", m.Name, plural(n, "var", "vars"))
			return nil
		},
	}
	f := cmd.Flags()
	f.StringArrayVarP(&identities, "identity", "i", nil, "a key to decrypt the bundle with: age identity file or OpenSSH ed25519 private key; repeatable")
	f.BoolVar(&plaintext, "plaintext", false, "accept an unencrypted bundle")
	f.BoolVar(&noCommit, "no-commit", false, "do not git-commit the imported vars")
	return cmd
}

func loadIdentityFile(p string) ([]age.Identity, error) {
	b, err := os.ReadFile(p)
	if err != nil {
		return nil, fmt.Errorf("-i %s: %w", p, err)
	}
	if bytes.Contains(b, []byte("AGE-SECRET-KEY-")) {
		ids, err := age.ParseIdentities(bytes.NewReader(b))
		if err != nil {
			return nil, fmt.Errorf("-i %s: %w", p, err)
		}
		return ids, nil
	}
	id, err := agessh.ParseIdentity(b)
	if err != nil {
		return nil, fmt.Errorf("-i %s: not an age identity file or an unencrypted OpenSSH key: %w", p, err)
	}
	return []age.Identity{id}, nil
}

func jsonIndent(v any) ([]byte, error) {
	var buf bytes.Buffer
	if err := writeJSON(&buf, v); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}
