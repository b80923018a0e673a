package cli

import (
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/spf13/cobra"
)

// newMicrovmCmd accepts microvm.nix's `microvm` flags with the same
// meanings, so scripts and fingers trained on it keep working. credvm
// also answers to them when its binary is called `microvm`.
func newMicrovmCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "microvm -c NAME [-f REPO] | -u NAME... [-R] | -r NAME | -l",
		Short: "microvm.nix's command line: -c create, -u update (-R restart), -r run, -l list",
		Long: `The flags of microvm.nix's microvm command, with the same meanings:

  -c NAME      create the VM NAME (from the repository, or -f REPO)
  -f REPO      the repository (microvm.nix: the flake) for -c
  -u NAME...   update the VMs' configuration from their repository
  -R           with -u: restart VMs that run an older configuration or vars
  -r NAME      run NAME in the foreground
  -l           list VMs with their status

Installing credvm as (or linking it to) "microvm" makes ` + "`microvm -l`" + ` work.`,
		DisableFlagParsing: true,
		RunE: func(cmd *cobra.Command, args []string) error {
			var create, run, repoFlag string
			var update []string
			var restart, list bool
			for i := 0; i < len(args); i++ {
				a := args[i]
				next := func() (string, error) {
					if i+1 >= len(args) || strings.HasPrefix(args[i+1], "-") {
						return "", fmt.Errorf("microvm: %s needs a name", a)
					}
					i++
					return args[i], nil
				}
				var err error
				switch a {
				case "-c":
					create, err = next()
				case "-f":
					repoFlag, err = next()
				case "-r":
					run, err = next()
				case "-R":
					restart = true
				case "-l":
					list = true
				case "-u":
					for i+1 < len(args) && !strings.HasPrefix(args[i+1], "-") {
						i++
						update = append(update, args[i])
					}
					if len(update) == 0 {
						err = errors.New("microvm: -u needs at least one name")
					}
				case "-h", "--help":
					return cmd.Help()
				default:
					err = fmt.Errorf("microvm: unknown flag %q (see `credvm microvm --help`)", a)
				}
				if err != nil {
					return err
				}
			}
			if repoFlag != "" {
				g.repoPath = repoFlag
			}
			switch {
			case create != "":
				c := newCreateCmd(g)
				return c.RunE(c, []string{create})
			case len(update) > 0:
				var errs []error
				for _, n := range update {
					errs = append(errs, g.update(n, restart, 30*time.Second))
				}
				return errors.Join(errs...)
			case run != "":
				return g.run(run, runFlags{timeout: 30 * time.Second}, func(string) {})
			case list:
				c := newListCmd(g)
				return c.RunE(c, nil)
			}
			return cmd.Help()
		},
	}
}
