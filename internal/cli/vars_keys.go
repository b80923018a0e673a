package cli

import (
	"errors"
	"fmt"
	"io"
	"os"
	"os/user"

	"github.com/spf13/cobra"

	"github.com/credvm/credvm/internal/repo"
	"github.com/credvm/credvm/internal/sops"
	"github.com/credvm/credvm/internal/spec"
	"github.com/credvm/credvm/internal/vars"
)

func newVarsKeygenCmd(g *globals) *cobra.Command {
	var userName string
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "keygen",
		Short: "Create your age key (if you have none) and register it as a user of the repository",
		Long: `Create your age key where sops looks for it — $SOPS_AGE_KEY_FILE, else
~/.config/sops/age/keys.txt (0600, in a 0700 directory) — unless you
already have one, and register its public key as sops/users/<user>/key.json
in the repository, so that secrets are encrypted to you.

The user name defaults to $USER. Run it again after cloning a repository on
a new computer to add that computer's key.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			key, err := sops.EnsureUserKey()
			if err != nil {
				return err
			}
			out := struct {
				*sops.UserKey
				// User and Repo are "" outside a repository.
				User string `json:"user"`
				Repo string `json:"repository"`
			}{UserKey: key}
			r, rerr := g.openRepo()
			if rerr != nil && !errors.Is(rerr, repo.ErrNotFound) {
				return rerr
			}
			if rerr == nil {
				if userName == "" {
					userName = currentUser()
				}
				if out.User, err = r.RegisterUser(userName, key.PublicKey); err != nil {
					return err
				}
				out.Repo = r.Root
			}
			if asJSON {
				return g.printJSON(out)
			}
			if key.Created {
				fmt.Fprintf(g.stdout, "created age key %s\n", key.File)
			}
			fmt.Fprintf(g.stdout, "public key: %s\n", key.PublicKey)
			if rerr != nil {
				fmt.Fprintf(g.stdout, "not inside a repository: run `credvm vars keygen` in one (or with --repo) to register this key\n")
				return nil
			}
			fmt.Fprintf(g.stdout, "registered as user %s (sops/users/%s/key.json)\n", out.User, out.User)
			return nil
		},
	}
	cmd.Flags().StringVar(&userName, "user", "", "user name to register the key under (default $USER)")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the result as JSON")
	return cmd
}

func currentUser() string {
	if u := os.Getenv("USER"); u != "" {
		return u
	}
	if u, err := user.Current(); err == nil {
		return u.Username
	}
	return "admin"
}

func newVarsMachineKeyCmd(g *globals) *cobra.Command {
	var out string
	cmd := g.newMachineCmd("machine-key MACHINE -o FILE", "Write a machine's private age key (decrypted with yours) to a new 0600 file, for run --age-key or systemd-creds", 1,
		func(e *vars.Engine, m *spec.Machine, _ []string) error {
			if out == "" {
				return errors.New("name the file to write with -o FILE (or -o - to pipe it, e.g. into systemd-creds encrypt)")
			}
			if out == "-" && isTTY(g.stdout) {
				return errors.New("refusing to print a private key on a terminal: pipe it (-o - | systemd-creds encrypt - …) or write a file with -o FILE")
			}
			ids, err := e.Repo.MachineIdentity(m.Name, e.User)
			if err != nil {
				return err
			}
			if out == "-" {
				_, err := io.WriteString(g.stdout, ids.Raw())
				return err
			}
			f, err := os.OpenFile(out, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
			if err != nil {
				return fmt.Errorf("machine key of %s: %w (the file must not exist)", m.Name, err)
			}
			_, werr := io.WriteString(f, ids.Raw())
			if err := errors.Join(werr, f.Close()); err != nil {
				os.Remove(out)
				return err
			}
			fmt.Fprintf(g.stdout, "%s: machine key (public %s) written to %s (0600)\n", m.Name, ids.Recipients[0], out)
			return nil
		})
	cmd.Long = `Decrypt the machine's private age key (sops/secrets/<machine>-age.key,
encrypted to the repository's users) with your key and write it to FILE,
created 0600 (an existing file is never overwritten). With it, credvm run
--age-key FILE and creds show --age-key FILE decrypt the machine's vars
without a user key — on a host that runs the VM as a systemd service:

  credvm vars machine-key app-vm-01 -o - | systemd-creds encrypt --name=age-key - /etc/credstore.encrypted/app-vm-01.age-key

Anyone holding this key reads every secret of the machine.`
	cmd.Flags().StringVarP(&out, "output", "o", "", "file to create (- for standard output, when it is not a terminal)")
	return cmd
}
