package cli

import (
	"errors"
	"fmt"
	"io"
	"os"
	"os/user"
	"strings"

	"github.com/spf13/cobra"

	"github.com/credvm/credvm/internal/repo"
	"github.com/credvm/credvm/internal/sops"
	"github.com/credvm/credvm/internal/spec"
	"github.com/credvm/credvm/internal/vars"
	"github.com/credvm/credvm/internal/words"
)

func newVarsKeygenCmd(g *globals) *cobra.Command {
	var o vars.JoinOptions
	var key string
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "keygen",
		Short: "Create your age key (if you have none), register it in the repository and give it access (default groups)",
		Long: `Create your age key where sops looks for it — $SOPS_AGE_KEY_FILE, else
~/.config/sops/age/keys.txt (0600, in a 0700 directory) — unless you
already have one, and register it as sops/users/<user>/key.json, in the
repository's default groups (credvm.toml [sops] default_groups, default
admins: sops/groups/admins/users/<user>, as clan with defaultGroups writes
it). --key registers someone else's public key instead (age1…, an age
plugin's, ssh-ed25519 …, or pgp:FINGERPRINT).

Then the secrets those groups are linked from are re-encrypted for the new
key — after showing who gains access and asking (--accept-recipients
without a terminal) — if you can read them. A newcomer cannot: keygen says
who can, and they run ` + "`credvm vars fix`" + `. A user registered with another
key is refused unless --force (which replaces it). Committed in git.`,
		Example: `  credvm vars keygen                                  # a newcomer, on their computer
  credvm vars keygen --user bob --key age1…           # an admin, for bob`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			var created *sops.UserKey
			if key == "" {
				k, err := sops.EnsureUserKey()
				if err != nil {
					return err
				}
				created, key = k, k.PublicKey
			} else if o.User == "" {
				return errors.New("--key registers someone else's key: name them with --user")
			}
			typ, pub := "age", key
			if p, ok := strings.CutPrefix(key, "pgp:"); ok {
				typ, pub = "pgp", p
			}
			var err error
			if o.Key, err = sops.ParseRecipient(typ, pub); err != nil {
				return fmt.Errorf("--key: %w", err)
			}
			o.Named = o.User != ""
			if o.User == "" {
				o.User = currentUser()
			}
			r, rerr := g.openRepo()
			if rerr != nil && !errors.Is(rerr, repo.ErrNotFound) {
				return rerr
			}
			if rerr != nil {
				return g.printKeygen(created, nil, asJSON)
			}
			e, err := g.engine()
			if err != nil {
				return err
			}
			e.Repo = r
			var res *vars.JoinResult
			err = g.confirmed(func(accepted []*repo.ConfirmationError) error {
				o.AcceptRecipients = o.AcceptRecipients || accepts(accepted, vars.AcceptRecipients) != nil
				res, err = e.Join(o)
				return err
			})
			if res == nil {
				return err
			}
			if perr := g.printKeygen(created, res, asJSON); perr != nil {
				return perr
			}
			return err
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.User, "user", "", "user name to register the key under (default $USER)")
	f.StringVar(&key, "key", "", "register this public key instead of yours: age1…, an age plugin's, ssh-ed25519 …, or pgp:FINGERPRINT")
	f.BoolVar(&o.Force, "force", false, "replace the key of a user registered with another")
	f.BoolVar(&o.AcceptRecipients, "accept-recipients", false, "re-encrypt for the new key (and any other pending recipient) without asking")
	f.BoolVar(&o.NoCommit, "no-commit", false, "do not git-commit")
	f.BoolVar(&asJSON, "json", false, "print the result as JSON")
	return cmd
}

func (g *globals) printKeygen(created *sops.UserKey, res *vars.JoinResult, asJSON bool) error {
	if asJSON {
		out := struct {
			sops.UserKey
			Repo string `json:"repository"`
			*vars.JoinResult
		}{JoinResult: res}
		if created != nil {
			out.UserKey = *created
		}
		if res == nil {
			out.JoinResult = &vars.JoinResult{Groups: []string{}, Fixed: []string{}, Pending: []string{}, FixBy: []string{}, Skipped: []string{}}
		} else {
			out.Repo = g.repoRoot()
			if created == nil {
				out.PublicKey = res.Key
			}
		}
		return g.printJSON(out)
	}
	if created != nil {
		if created.Created {
			fmt.Fprintf(g.stdout, "created age key %s\n", created.File)
		}
		fmt.Fprintf(g.stdout, "public key: %s\n", created.PublicKey)
	}
	if res == nil {
		fmt.Fprintf(g.stdout, "not inside a repository: run `credvm vars keygen` in one (or with --repo) to register this key\n")
		return nil
	}
	line := fmt.Sprintf("registered as user %s (sops/users/%s/key.json)", res.User, res.User)
	if !res.Registered {
		line = fmt.Sprintf("already registered as user %s (sops/users/%s/key.json)", res.User, res.User)
	}
	if len(res.Groups) > 0 {
		line += ", added to " + strings.Join(res.Groups, ", ")
	}
	fmt.Fprintln(g.stdout, line)
	switch {
	case len(res.Fixed) > 0:
		fmt.Fprintf(g.stdout, "re-encrypted %s for them\n", words.Plural(len(res.Fixed), "secret", "secrets"))
	case len(res.Pending) > 0:
		fmt.Fprintf(g.stdout, "%s %s not encrypted to them yet, and you cannot read %s: %s must run `credvm vars fix`\n",
			words.Plural(len(res.Pending), "secret", "secrets"), words.Verb(len(res.Pending), "is", "are"), words.Verb(len(res.Pending), "it", "them"), orList(res.FixBy))
	}
	return nil
}

// orList writes "alice", "alice or bob", "alice, bob or carol".
func orList(names []string) string {
	switch len(names) {
	case 0:
		return "a user who can read them"
	case 1:
		return names[0]
	}
	return strings.Join(names[:len(names)-1], ", ") + " or " + names[len(names)-1]
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

func newVarsFixCmd(g *globals) *cobra.Command {
	var o vars.FixOptions
	var asJSON bool
	cmd := g.newVarsMachinesCmd("fix [MACHINE...]", "Re-encrypt secrets to exactly whom their links and groups grant (clan's vars fix), showing who gains access first",
		func(e *vars.Engine, ms []*spec.Machine) error {
			var res *vars.FixResult
			err := g.confirmed(func(accepted []*repo.ConfirmationError) error {
				o.AcceptRecipients = o.AcceptRecipients || accepts(accepted, vars.AcceptRecipients) != nil
				var err error
				res, err = e.Fix(ms, o)
				return err
			})
			if err != nil {
				return err
			}
			if asJSON {
				return g.printJSON(res)
			}
			if len(res.Fixed) == 0 {
				fmt.Fprintf(g.stdout, "the recipients of every secret of %s are as their links grant\n", words.Plural(len(ms), "machine", "machines"))
				return nil
			}
			for _, d := range res.Fixed {
				fmt.Fprintf(g.stdout, "%s: %s\n", d.Label, d.Change)
			}
			fmt.Fprintf(g.stdout, "re-encrypted %s\n", words.Plural(len(res.Fixed), "secret", "secrets"))
			return nil
		})
	cmd.Long = `Re-encrypt every secret of the machines (all when none is named) — their
own vars, the shared vars they use, their machine keys — whose recipients
differ from what it should have: the keys its links grant (users/,
machines/, groups/ and the groups' members), its machines linked when it is
deployed and only then, and the default groups linked ([sops]
default_groups). Dangling links (a removed user, a purged machine) are
dropped. Values do not change; all of it is one transaction, committed.

Giving someone access to a secret they cannot read now is shown first and
needs a yes on a terminal, or --accept-recipients: a link or group member
someone committed is not trusted by itself. You must be able to read each
secret to re-encrypt it; one you cannot read is an error naming who can.`
	cmd.Flags().BoolVar(&o.AcceptRecipients, "accept-recipients", false, "give the new recipients access without asking")
	cmd.Flags().BoolVar(&o.NoCommit, "no-commit", false, "do not git-commit")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print what was fixed as JSON")
	return cmd
}
