// Package cli is credvm's command line, and nothing more: each command
// parses its flags, calls one operation of the package that owns the
// data (vm, vars, repo, backup, guest, demo), and prints the operation's
// typed result as text or, with --json, as it is. Exit codes: 0 success,
// 1 failure (the error on stderr, prefixed "credvm: "), a hypervisor's own
// exit status for `run`.
package cli

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/spf13/cobra"

	"github.com/credvm/credvm/internal/repo"
	"github.com/credvm/credvm/internal/vars"
	"github.com/credvm/credvm/internal/vm"
)

// Version is set at build time (-ldflags "-X …cli.Version=…").
var Version = "dev"

// exitError carries an exit code other than 1, with a message that may
// be empty when the command already printed its report.
type exitError struct {
	code int
	msg  string
}

func (e *exitError) Error() string { return e.msg }

// globals are the flags every command shares, and the standard streams.
type globals struct {
	repoPath string
	stateDir string
	// systemdRoot is the system root whose systemd runs the VMs: "" this
	// system's; a fleet host's root prefix in tests.
	systemdRoot string
	verbose     bool
	stdin       io.Reader
	stdout      io.Writer
	stderr      io.Writer
}

// Main runs credvm with os.Args and returns the exit code. Called as
// "microvm", it takes microvm.nix's flags.
func Main() int {
	args := os.Args[1:]
	if len(args) > 0 && args[0] == vars.SandboxInitArg {
		return vars.SandboxInit(args[1:])
	}
	if filepath.Base(os.Args[0]) == "microvm" {
		args = append([]string{"microvm"}, args...)
	}
	return Run(args, os.Stdin, os.Stdout, os.Stderr)
}

// Run runs credvm with args and the given standard streams.
func Run(args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	g := &globals{stdin: stdin, stdout: stdout, stderr: stderr}
	root := newRoot(g)
	root.SetArgs(args)
	root.SetIn(stdin)
	root.SetOut(stdout)
	root.SetErr(stderr)
	err := root.Execute()
	if err == nil {
		return 0
	}
	// Errors quote what others wrote — a host's stderr, a file's name in
	// the repository —: their control characters are shown, not obeyed.
	errOut := &escaping{w: stderr}
	var ee *exitError
	if errors.As(err, &ee) {
		if ee.msg != "" {
			fmt.Fprintf(errOut, "credvm: %s\n", ee.msg)
		}
		return ee.code
	}
	fmt.Fprintf(errOut, "credvm: %s\n", err)
	return 1
}

func newRoot(g *globals) *cobra.Command {
	root := &cobra.Command{
		Use:   "credvm",
		Short: "Imperative microVMs that own their secrets",
		Long: `credvm runs imperative microVMs that own their secrets.

Each VM declares generators for its secrets ("vars") in
machines/<name>/machine.toml. credvm generates them, keeps them encrypted in
the repository in clan's layout (sops + age), and at VM start hands them to
the guest as systemd credentials — never on a command line, never in a
world-readable file.

The repository is found from the current directory upward (a directory
holding credvm.toml or inventory.toml, or a clan directory with sops/ and
vars/), or named with --repo or $CREDVM_REPO.`,
		Version:       Version,
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.PersistentFlags().StringVar(&g.repoPath, "repo", "", "repository root (default: $CREDVM_REPO, else found from the current directory upward)")
	root.PersistentFlags().StringVar(&g.stateDir, "state-dir", "", "root of the VMs' state directories (default $CREDVM_STATE_DIR, /var/lib/microvms as root, else ~/.local/state/credvm)")
	root.PersistentFlags().BoolVarP(&g.verbose, "verbose", "v", false, "print more about what happens (never secret values)")
	root.PersistentFlags().StringVar(&g.systemdRoot, "systemd-root", "", "the system root whose systemd runs the VMs (a fleet host's root prefix, given by deploy)")
	root.PersistentFlags().MarkHidden("systemd-root")
	root.AddCommand(newVarsCmd(g), newGuestCmd(g), newRunCmd(g), newCredsCmd(g), newDemoCmd(g),
		newCreateCmd(g), newUpdateCmd(g), newDestroyCmd(g), newStartCmd(g), newStopCmd(g), newRestartCmd(g),
		newStatusCmd(g), newListCmd(g), newLogsCmd(g), newConsoleCmd(g), newSSHCmd(g), newMicrovmCmd(g), newSystemdCmd(g), newRotateCmd(g), newHostCmd(g), newDeployCmd(g), newMoveCmd(g),
		newCloneCmd(g), newBackupCmd(g), newRestoreCmd(g), newImageCmd(g), newInitCmd(g))
	strictGroups(root)
	completeFlags(g, root)
	return root
}

// strictGroups makes every command that only groups others (vars, creds,
// guest, systemd) refuse an unknown subcommand — cobra would print the
// group's help and exit 0 — naming the nearest one.
func strictGroups(c *cobra.Command) {
	for _, sub := range c.Commands() {
		strictGroups(sub)
	}
	if !c.HasSubCommands() || c.Runnable() || !c.HasParent() {
		return
	}
	c.Args = func(cmd *cobra.Command, args []string) error {
		if len(args) == 0 {
			return nil
		}
		msg := fmt.Sprintf("unknown command %q for %q", args[0], cmd.CommandPath())
		if s := cmd.SuggestionsFor(args[0]); len(s) > 0 {
			msg += fmt.Sprintf("; did you mean %q?", s[0])
		}
		return fmt.Errorf("%s (see `%s --help`)", msg, cmd.CommandPath())
	}
	c.RunE = func(cmd *cobra.Command, args []string) error { return cmd.Help() }
}

// openRepo opens the repository named by --repo, $CREDVM_REPO, or found
// upward from the current directory.
func (g *globals) openRepo() (*repo.Repo, error) {
	switch {
	case g.repoPath != "":
		return repo.Open(g.repoPath)
	case os.Getenv(repo.EnvRepo) != "":
		return repo.Open(os.Getenv(repo.EnvRepo))
	}
	wd, err := os.Getwd()
	if err != nil {
		return nil, err
	}
	return repo.Find(wd)
}

// stateRoot is --state-dir, else the default.
func (g *globals) stateRoot() string {
	if g.stateDir != "" {
		return g.stateDir
	}
	return vm.DefaultStateRoot()
}

func (g *globals) state(name string) vm.StateDir {
	return vm.StateDir{Root: g.stateRoot(), Name: name}
}

// printJSON prints a result as indented JSON.
func (g *globals) printJSON(v any) error {
	enc := json.NewEncoder(g.stdout)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// repoRoot is the repository's root, or "" when none is found.
func (g *globals) repoRoot() string {
	r, err := g.openRepo()
	if err != nil {
		return ""
	}
	return r.Root
}
