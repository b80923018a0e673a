package cli

import (
	"errors"
	"fmt"
	"strings"

	"github.com/spf13/cobra"

	"github.com/credvm/credvm/internal/repo"
	"github.com/credvm/credvm/internal/vars"
)

func newVarsGroupCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "group",
		Short: "List sops groups and change their members (clan's sops/groups), re-encrypting what the group is linked from",
		Long: `A group (sops/groups/<group>/{users,machines}/ links, clan's layout) gives
its members every secret linked to it (<secret>/groups/<group>). Adding a
member re-encrypts those secrets for them — after showing who gains what
and asking (--accept-recipients without a terminal); removing one
re-encrypts them without the member. Committed in git.`,
	}
	var asJSON bool
	list := &cobra.Command{
		Use:   "list",
		Short: "List the groups with their users and machines",
		Args:  cobra.NoArgs,
		RunE: func(*cobra.Command, []string) error {
			e, err := g.engine()
			if err != nil {
				return err
			}
			groups, err := e.Groups()
			if err != nil {
				return err
			}
			if asJSON {
				return g.printJSON(groups)
			}
			if len(groups) == 0 {
				fmt.Fprintln(g.stdout, "no groups (sops/groups is empty)")
			}
			for _, gr := range groups {
				fmt.Fprintf(g.stdout, "%s: users %s; machines %s; linked from %d secrets\n", gr.Name, listOrNone(gr.Users), listOrNone(gr.Machines), gr.Secrets)
			}
			return nil
		},
	}
	list.Flags().BoolVar(&asJSON, "json", false, "print as JSON")
	cmd.AddCommand(list, newGroupChangeCmd(g, true), newGroupChangeCmd(g, false))
	return cmd
}

func listOrNone(names []string) string {
	if len(names) == 0 {
		return "none"
	}
	return strings.Join(names, ", ")
}

// newGroupChangeCmd is `group add` or `group remove`.
func newGroupChangeCmd(g *globals, add bool) *cobra.Command {
	var o vars.GroupChange
	verb, what := "remove", "Remove a user or machine from a group and re-encrypt what the group is linked from without them"
	if add {
		verb, what = "add", "Add a user or machine to a group (created if new) and re-encrypt what the group is linked from for them"
	}
	cmd := &cobra.Command{
		Use:   verb + " GROUP (--user NAME | --machine NAME)",
		Short: what,
		Args:  cobra.ExactArgs(1),
		RunE: func(_ *cobra.Command, args []string) error {
			if (o.User == "") == (o.Machine == "") {
				return errors.New("name one member: --user NAME or --machine NAME")
			}
			e, err := g.engine()
			if err != nil {
				return err
			}
			o.Group, o.Add = args[0], add
			var res *vars.FixResult
			err = g.confirmed(func(accepted []*repo.ConfirmationError) error {
				o.AcceptRecipients = o.AcceptRecipients || accepts(accepted, vars.AcceptRecipients) != nil
				var err error
				res, err = e.ChangeGroup(o)
				return err
			})
			if err != nil {
				return err
			}
			member := "user " + o.User
			if o.Machine != "" {
				member = "machine " + o.Machine
			}
			done := "added to"
			if !add {
				done = "removed from"
			}
			fmt.Fprintf(g.stdout, "%s %s %s; re-encrypted %d secrets\n", member, done, o.Group, len(res.Fixed))
			return nil
		},
	}
	cmd.Flags().StringVar(&o.User, "user", "", "the user (sops/users/NAME)")
	cmd.Flags().StringVar(&o.Machine, "machine", "", "the machine (sops/machines/NAME)")
	cmd.Flags().BoolVar(&o.AcceptRecipients, "accept-recipients", false, "give the new member access without asking")
	cmd.Flags().BoolVar(&o.NoCommit, "no-commit", false, "do not git-commit")
	return cmd
}
