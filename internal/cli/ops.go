package cli

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"strings"

	"github.com/spf13/cobra"

	"github.com/credvm/credvm/internal/backup"
	"github.com/credvm/credvm/internal/repo"
	"github.com/credvm/credvm/internal/sops"
	"github.com/credvm/credvm/internal/vars"
	"github.com/credvm/credvm/internal/vm"
	"github.com/credvm/credvm/internal/words"
)

func newCloneCmd(g *globals) *cobra.Command {
	var noCommit bool
	var prompts promptFlags
	cmd := g.newEngineCmd("clone SRC NEW", "Create machine NEW from SRC's configuration, with its own freshly generated secrets and machine key", 2,
		func(e *vars.Engine, args []string) error {
			e.Log = g.stderr
			ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
			defer stop()
			o := vm.CloneOptions{Engine: e, Src: args[0], Dst: args[1], StateRoot: g.stateRoot(), Generate: vars.GenerateOptions{NoCommit: noCommit}}
			if err := g.promptOptions(prompts, &o.Generate); err != nil {
				return err
			}
			res, err := vm.Clone(ctx, o)
			if res == nil {
				return err
			}
			fmt.Fprintf(g.stdout, "%s: cloned from %s, with its own secrets and machine key\n", res.Name, res.From)
			if res.Created {
				fmt.Fprintf(g.stdout, "%s: created (credvm start %s)\n", res.Name, res.Name)
			}
			return err
		})
	cmd.Long = `Copy machines/SRC to machines/NEW (and SRC's inventory tags), then
generate NEW's vars from scratch: NEW gets its own secrets and its own age
key — never a copy of SRC's. (Shared generators stay shared: that is what
share = true means.) When SRC is a created VM, NEW is created too. If
anything fails, nothing of NEW is left behind.`
	cmd.Flags().BoolVar(&noCommit, "no-commit", false, "do not git-commit")
	prompts.add(cmd)
	return cmd
}

func newBackupCmd(g *globals) *cobra.Command {
	var out string
	var opts backup.Options
	var tags []string
	cmd := &cobra.Command{
		Use:   "backup MACHINE... -o FILE",
		Short: "Write one archive of machines: their files, vars (encrypted as stored), keys metadata and registrations",
		Long: `Write a single archive (gzipped tar, 0600) of the machines' files, their
vars and kept history exactly as stored — secrets stay sops-encrypted; the
archive holds no plaintext secret —, the machine keys as the repository
keeps them (encrypted to the users), the users' public keys, and the VMs'
registrations — and, with --with-volumes, the volumes of stopped VMs
(streamed, never held in memory). A manifest lists every member with its SHA-256;
` + "`credvm restore`" + ` checks all of it before writing anything.`,
		Args: cobra.ArbitraryArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if out == "" {
				return errors.New("name the archive with -o FILE")
			}
			r, err := g.openRepo()
			if err != nil {
				return err
			}
			names, err := r.Select(args, tags)
			if err != nil {
				return err
			}
			if len(names) == 0 {
				return errors.New("name the machines to back up (or --tag)")
			}
			res, err := backup.Create(out, r, g.stateRoot(), names, opts)
			if err != nil {
				return err
			}
			fmt.Fprintf(g.stdout, "backed up %s (%d entries, %d bytes) to %s\n", strings.Join(res.Machines, ", "), res.Entries, res.Bytes, res.Path)
			for _, v := range res.Volumes {
				fmt.Fprintf(g.stdout, "  volume %s of %s: %s\n", v.Image, v.Machine, v.Note)
			}
			return nil
		},
	}
	cmd.Flags().StringVarP(&out, "output", "o", "", "the archive to write")
	cmd.Flags().BoolVar(&opts.WithVolumes, "with-volumes", false, "include the machines' volumes (the guests' data; the VMs must be stopped)")
	tagFlag(cmd, &tags, "every machine with this inventory tag")
	return cmd
}

func newRestoreCmd(g *globals) *cobra.Command {
	var o backup.RestoreOptions
	cmd := &cobra.Command{
		Use:   "restore FILE",
		Short: "Restore machines from a backup archive into this repository and state directory",
		Long: `Read a backup from ` + "`credvm backup`" + `, check every member against its
manifest (a truncated or altered archive restores nothing) and against the
repository layout (a backup holds machines, shared generators, users'
public keys and registrations — nothing else, no git hooks, no link that
leads outside), and put the machines back: files, vars, history, keys, and
registrations pointed at this repository. It prints what it changes.
Machines that exist here are refused unless --force. A backup that would
add users — new recipients of every later secret — is refused unless
--accept-recipients, or a yes on a terminal.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			r, err := g.openRepo()
			if err != nil {
				return err
			}
			o.Repo, o.StateRoot = r, g.stateRoot()
			if ids, err := sops.LoadUserIdentities(); err == nil {
				o.Self = ids.Recipients
			}
			flag := o.AcceptRecipients
			return g.confirmed(func(accepted []*repo.ConfirmationError) error {
				o.AcceptRecipients = flag || accepts(accepted, backup.AcceptUsers) != nil
				res, err := backup.RestoreFile(args[0], o)
				if err != nil {
					return err
				}
				man := res.Manifest
				fmt.Fprintf(g.stdout, "restored %s (backed up %s from %s)\n", strings.Join(man.Machines, ", "), man.Created.Local().Format("2006-01-02 15:04:05"), man.Repo)
				for _, c := range res.Changes {
					fmt.Fprintf(g.stdout, "  %s\n", c)
				}
				if n := len(res.Unreadable); n > 0 {
					fmt.Fprintf(g.stderr, "warning: your key is not a recipient of %s restored (%s): restored as they were, you cannot read %s; someone who can must grant you access (credvm vars group add admins --user YOU) and run `credvm vars fix`\n",
						words.Plural(n, "secret", "secrets"), shortList(res.Unreadable, 3), words.Verb(n, "it", "them"))
				}
				return nil
			})
		},
	}
	cmd.Flags().BoolVar(&o.Force, "force", false, "replace machines that exist here")
	cmd.Flags().BoolVar(&o.AcceptRecipients, "accept-recipients", false, "let the backup add users to this repository (they become recipients of every later secret)")
	return cmd
}

// shortList joins the first n items, saying how many more there are.
func shortList(items []string, n int) string {
	if len(items) <= n {
		return strings.Join(items, ", ")
	}
	return strings.Join(items[:n], ", ") + fmt.Sprintf(" and %d more", len(items)-n)
}
