package cli

import (
	"errors"
	"fmt"
	"os"
	"os/user"

	"github.com/spf13/cobra"

	"github.com/credvm/credvm/internal/repo"
	"github.com/credvm/credvm/internal/sops"
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
				User string `json:"user,omitempty"`
				Repo string `json:"repository,omitempty"`
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
			if key.Created != "" {
				fmt.Fprintf(g.stdout, "created age key %s\n", key.Created)
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
