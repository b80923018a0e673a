package cli

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/credvm/credvm/internal/vm"
)

// microvmArgs are microvm.nix's flags, parsed.
type microvmArgs struct {
	create, run, repo string
	update            []string
	restart, list     bool
}

// newMicrovmCmd accepts microvm.nix's `microvm` flags with the same
// meanings, so scripts and fingers trained on it keep working. credvm
// also answers to them when its binary is called `microvm`.
func newMicrovmCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "microvm -c NAME [-f FLAKE|REPO] | -u NAME... [-R] | -r NAME | -l",
		Short: "microvm.nix's command line: -c create, -u update (-R restart), -r run, -l list",
		Long: `The flags of microvm.nix's microvm command, with the same meanings:

  -c NAME      create the VM NAME (from the repository, or -f)
  -f FLAKE     for -c: the flake whose nixosConfigurations.NAME is the
               guest (as microvm.nix has it; a directory with flake.nix
               is path:DIR), or a credvm repository directory
  -u NAME...   update the VMs' configuration from their repository
  -R           with -u: restart VMs that run an older configuration or vars
  -r NAME      run NAME in the foreground
  -l           list VMs with their status

Installing credvm as (or linking it to) "microvm" makes ` + "`microvm -l`" + ` work.`,
		DisableFlagParsing: true,
		RunE: func(cmd *cobra.Command, args []string) error {
			a, help, err := parseMicrovm(args)
			if err != nil || help {
				if help {
					return cmd.Help()
				}
				return err
			}
			flakeRef := ""
			if a.repo != "" {
				if flakeRef = asFlakeRef(a.repo); flakeRef == "" {
					g.repoPath = a.repo // a plain credvm repository directory
				}
			}
			switch {
			case a.create != "" && flakeRef != "":
				r, err := g.openRepo()
				if err != nil {
					return err
				}
				res, err := vm.CreateFromFlake(g.state(a.create), r, flakeRef)
				if err != nil {
					return err
				}
				fmt.Fprintf(g.stdout, "%s: evaluated from %s (%s)\n", res.Name, res.Flake.Flake, flakeVersionText(res.Flake))
				g.printCreated(res.Created)
				return nil
			case a.create != "":
				r, err := g.openRepo()
				if err != nil {
					return err
				}
				m, err := r.Machine(a.create)
				if err != nil {
					return err
				}
				res, err := vm.Create(g.state(m.Name), r, m)
				if err != nil {
					return err
				}
				g.printCreated(res)
				return nil
			case len(a.update) > 0:
				return each(a.update, func(n string) error { return g.update(n, a.restart, vm.DefaultShutdownTimeout) })
			case a.run != "":
				return g.microvmRun(a.run)
			case a.list:
				return g.list(nil, nil, false)
			}
			return cmd.Help()
		},
	}
}

func parseMicrovm(args []string) (a microvmArgs, help bool, err error) {
	for i := 0; i < len(args); i++ {
		flag := args[i]
		next := func() (string, error) {
			if i+1 >= len(args) || strings.HasPrefix(args[i+1], "-") {
				return "", fmt.Errorf("microvm: %s needs a name", flag)
			}
			i++
			return args[i], nil
		}
		switch flag {
		case "-c":
			a.create, err = next()
		case "-f":
			a.repo, err = next()
		case "-r":
			a.run, err = next()
		case "-R":
			a.restart = true
		case "-l":
			a.list = true
		case "-u":
			for i+1 < len(args) && !strings.HasPrefix(args[i+1], "-") {
				i++
				a.update = append(a.update, args[i])
			}
			if len(a.update) == 0 {
				err = errors.New("microvm: -u needs at least one name")
			}
		case "-h", "--help":
			return a, true, nil
		default:
			err = fmt.Errorf("microvm: unknown flag %q (see `credvm microvm --help`)", flag)
		}
		if err != nil {
			return a, false, err
		}
	}
	return a, false, nil
}

func (g *globals) microvmRun(name string) error {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	res, err := vm.Run(ctx, vm.RunOptions{State: g.state(name), OpenRepo: g.openRepo, Console: g.stdout, Notices: g.stderr, ShutdownTimeout: vm.DefaultShutdownTimeout})
	if err == nil && res.ExitCode != 0 {
		return &exitError{code: res.ExitCode}
	}
	return err
}

// asFlakeRef is microvm -f's argument as a flake reference, or "" when it
// is a credvm repository directory (a directory without flake.nix).
func asFlakeRef(arg string) string {
	fi, err := os.Stat(arg)
	if err != nil || !fi.IsDir() {
		return arg // a flake reference: github:…, path:…, git+…
	}
	if _, err := os.Stat(filepath.Join(arg, "flake.nix")); err != nil {
		return ""
	}
	abs, err := filepath.Abs(arg)
	if err != nil {
		return arg
	}
	return "path:" + abs
}
