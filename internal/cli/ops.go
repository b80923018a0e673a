package cli

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"slices"
	"strings"

	"github.com/spf13/cobra"

	"github.com/credvm/credvm/internal/atomicfile"
	"github.com/credvm/credvm/internal/backup"
	"github.com/credvm/credvm/internal/spec"
	"github.com/credvm/credvm/internal/vars"
	"github.com/credvm/credvm/internal/vm"
)

func newCloneCmd(g *globals) *cobra.Command {
	var noCommit bool
	cmd := &cobra.Command{
		Use:   "clone SRC NEW",
		Short: "Create machine NEW from SRC's configuration, with its own freshly generated secrets and machine key",
		Long: `Copy machines/SRC to machines/NEW (and SRC's inventory tags), then
generate NEW's vars from scratch: NEW gets its own secrets and its own age
key — never a copy of SRC's. (Shared generators stay shared: that is what
share = true means.) When SRC is a created VM, NEW is created too.`,
		Args:              cobra.ExactArgs(2),
		ValidArgsFunction: machineNameCompletion(g),
		RunE: func(cmd *cobra.Command, args []string) error {
			src, dst := args[0], args[1]
			e, m, err := g.engineMachine(src)
			if err != nil {
				return err
			}
			e.NoCommit, e.Log = noCommit, g.progress()
			if err := spec.CheckMachineName(dst); err != nil {
				return err
			}
			dstDir := e.Repo.Path("machines", dst)
			if _, err := os.Stat(dstDir); err == nil {
				return fmt.Errorf("machine %s exists already (%s)", dst, e.Repo.Rel(dstDir))
			}
			if err := os.CopyFS(dstDir, os.DirFS(e.Repo.Path("machines", src))); err != nil {
				return err
			}
			if inv := e.Repo.Inventory.Machines[src]; inv != nil && len(inv.Tags) > 0 {
				p := e.Repo.Path("inventory.toml")
				old, _ := os.ReadFile(p)
				q := make([]string, len(inv.Tags))
				for i, t := range inv.Tags {
					q[i] = fmt.Sprintf("%q", t)
				}
				add := fmt.Sprintf("\n[machines.%s]\ntags = [%s]\n", dst, strings.Join(q, ", "))
				if err := atomicfile.Write(p, append(bytes.TrimRight(old, "\n"), []byte("\n"+add)...), 0o644); err != nil {
					return err
				}
			}
			nm, err := e.Repo.Machine(dst)
			if err != nil {
				os.RemoveAll(dstDir)
				return err
			}
			// Only NEW's own generators run; shared ones are kept.
			if _, err := e.Generate(context.Background(), []*spec.Machine{nm}, vars.GenerateOptions{}); err != nil {
				return fmt.Errorf("clone %s: machine file copied to %s, but generating its vars failed: %w", dst, e.Repo.Rel(dstDir), err)
			}
			if !noCommit && e.Repo.InGit() {
				e.Repo.Commit([]string{dstDir, e.Repo.Path("inventory.toml")}, fmt.Sprintf("machines: clone %s from %s", dst, src))
			}
			fmt.Fprintf(g.stdout, "%s: cloned from %s, with its own secrets and machine key\n", dst, m.Name)
			if g.state(src).Exists() {
				if err := vm.Create(g.state(dst), e.Repo, nm); err != nil {
					return err
				}
				fmt.Fprintf(g.stdout, "%s: created (credvm start %s)\n", dst, dst)
			}
			return nil
		},
	}
	cmd.Flags().BoolVar(&noCommit, "no-commit", false, "do not git-commit")
	return cmd
}

func newBackupCmd(g *globals) *cobra.Command {
	var out string
	var tags []string
	cmd := &cobra.Command{
		Use:   "backup MACHINE... -o FILE",
		Short: "Write one archive of machines: their files, vars (encrypted as stored), keys metadata and registrations",
		Long: `Write a single archive (gzipped tar, 0600) of the machines' files, their
vars and kept history exactly as stored — secrets stay sops-encrypted; the
archive holds no plaintext secret —, the machine keys as the repository
keeps them (encrypted to the users), the users' public keys, and the VMs'
registrations. A manifest lists every member with its SHA-256;
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
			var buf bytes.Buffer
			man, err := backup.Write(&buf, r, stateRoot(g.stateDir), names)
			if err != nil {
				return err
			}
			if err := atomicfile.Write(out, buf.Bytes(), 0o600); err != nil {
				return err
			}
			fmt.Fprintf(g.stdout, "backed up %s (%d entries, %d bytes) to %s\n", strings.Join(names, ", "), len(man.Entries), buf.Len(), out)
			return nil
		},
	}
	cmd.Flags().StringVarP(&out, "output", "o", "", "the archive to write")
	cmd.Flags().StringArrayVarP(&tags, "tag", "t", nil, "every machine with this inventory tag")
	return cmd
}

func newRestoreCmd(g *globals) *cobra.Command {
	var force bool
	cmd := &cobra.Command{
		Use:   "restore FILE",
		Short: "Restore machines from a backup archive into this repository and state directory",
		Long: `Read a backup from ` + "`credvm backup`" + `, check every member against its
manifest (a truncated or altered archive restores nothing), and put the
machines back: files, vars, history, keys, and registrations pointed at
this repository. Machines that exist here are refused unless --force.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			r, err := g.openRepo()
			if err != nil {
				return err
			}
			f, err := os.Open(args[0])
			if err != nil {
				return err
			}
			defer f.Close()
			man, files, err := backup.Read(f)
			if err != nil {
				return err
			}
			l, err := r.Lock(nil)
			if err != nil {
				return err
			}
			defer l.Release()
			if err := backup.Restore(man, files, backup.RestoreOptions{Repo: r, StateRoot: stateRoot(g.stateDir), Force: force}); err != nil {
				return err
			}
			if r.InGit() {
				var paths []string
				for _, m := range man.Machines {
					paths = append(paths, r.Path("machines", m), r.Path("vars"), r.Path("sops"), r.Path(vars.HistoryDir))
				}
				slices.Sort(paths)
				r.Commit(slices.Compact(paths), "restore "+strings.Join(man.Machines, ", ")+" from backup")
			}
			fmt.Fprintf(g.stdout, "restored %s (backed up %s from %s)\n", strings.Join(man.Machines, ", "), man.Created.Local().Format("2006-01-02 15:04:05"), man.Repo)
			return nil
		},
	}
	cmd.Flags().BoolVar(&force, "force", false, "replace machines that exist here")
	return cmd
}
