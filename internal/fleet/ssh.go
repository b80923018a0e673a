// Package fleet drives VMs placed on other hosts, over the engines this
// ecosystem already runs: the user's OpenSSH client (their ~/.ssh/config
// and agent, one multiplexed connection per host), credvm itself on each
// host, and the repository as the shared record. There is no daemon of
// credvm's own and no protocol of its own: a host is reached by running
// credvm there over ssh. A deploy is one session per host: its shipment —
// a backup archive the host's credvm checks as any restore, and the
// machine keys sealed to the host key — on the standard input of `credvm
// host receive` (receive.go, the host's side).
//
// A host's key is pinned when it is added (`credvm host add`, the
// fingerprint shown and confirmed) and stored in the repository
// (sops/hosts/<h>/): ssh is told to trust that key only, under an alias,
// whatever the user's known_hosts says.
package fleet

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/credvm/credvm/internal/repo"
	"github.com/credvm/credvm/internal/spec"
)

// Host is a host of the inventory with what reaching it needs.
type Host struct {
	Name string
	spec.Host
	// KnownHosts is the pinned key's known_hosts file in the repository.
	KnownHosts string
}

// Hosts returns the named host of the repository's inventory.
func HostOf(r *repo.Repo, name string) (*Host, error) {
	h := r.Inventory.Hosts[name]
	if h == nil {
		return nil, noHostError(name)
	}
	kh := r.Path("sops", "hosts", name, "known_hosts")
	if !r.Exists(kh) {
		return nil, fmt.Errorf("host %s has no pinned host key (sops/hosts/%s/known_hosts): `credvm host add %s %s` fetches and pins it", name, name, name, h.SSH)
	}
	return &Host{Name: name, Host: *h, KnownHosts: kh}, nil
}

// noHostError says the inventory has no host name, and how to add it.
func noHostError(name string) error {
	return fmt.Errorf("no host %q in inventory.toml: add it with `credvm host add %s USER@ADDRESS`", name, name)
}

// unplacedError says machine m is on no host, and how to place it.
func unplacedError(m string) error {
	return fmt.Errorf("machine %s has no host: place it with host = \"NAME\" under [machines.%s] in inventory.toml", m, m)
}

// alias is the name ssh knows the host's pinned key by.
func (h *Host) alias() string { return "credvm-host-" + h.Name }

// controlDir holds the multiplexed connections' sockets (the user's, 0700).
func controlDir() (string, error) {
	d := filepath.Join(os.TempDir(), fmt.Sprintf("credvm-ssh-%d", os.Getuid()))
	if rd := os.Getenv("XDG_RUNTIME_DIR"); rd != "" {
		d = filepath.Join(rd, "credvm-ssh")
	}
	if err := os.MkdirAll(d, 0o700); err != nil {
		return "", err
	}
	fi, err := os.Lstat(d)
	if err != nil || !fi.IsDir() || fi.Mode().Perm() != 0o700 {
		return "", fmt.Errorf("%s is not a 0700 directory of yours: remove it", d)
	}
	return d, nil
}

// sshArgs are ssh's arguments for the host: the pinned key only, batch
// mode (never a password prompt), one connection shared by every command.
func (h *Host) sshArgs() ([]string, error) {
	cd, err := controlDir()
	if err != nil {
		return nil, err
	}
	dest, port := h.Address()
	a := []string{
		"-o", "BatchMode=yes",
		"-o", "StrictHostKeyChecking=yes",
		"-o", "UserKnownHostsFile=" + h.KnownHosts,
		"-o", "GlobalKnownHostsFile=/dev/null",
		"-o", "HostKeyAlias=" + h.alias(),
		"-o", "ControlMaster=auto",
		"-o", "ControlPath=" + filepath.Join(cd, "%C"),
		"-o", "ControlPersist=60",
		"-o", "ConnectTimeout=10",
	}
	for _, o := range h.SSHOptions {
		a = append(a, "-o", o)
	}
	if port != "" {
		a = append(a, "-p", port)
	}
	return append(a, "--", dest), nil
}

// Path is a host path under the host's root.
func (h *Host) Path(p string) string {
	if h.Root == "" {
		return p
	}
	return filepath.Join(h.Root, p)
}

// Run runs argv on the host (each argument quoted for its shell), with
// stdin, and returns its standard output; the error carries its standard
// error's last lines.
func (h *Host) Run(ctx context.Context, stdin io.Reader, argv ...string) ([]byte, error) {
	cmd, err := h.command(ctx, argv)
	if err != nil {
		return nil, err
	}
	cmd.Stdin = stdin
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	cmd.WaitDelay = 5 * time.Second
	out, err := cmd.Output()
	if err != nil {
		msg := strings.TrimSpace(stderr.String())
		if lines := strings.Split(msg, "\n"); len(lines) > 3 {
			msg = strings.Join(lines[len(lines)-3:], " ")
		}
		if msg == "" {
			msg = err.Error()
		}
		return out, fmt.Errorf("host %s: %s", h.Name, strings.ReplaceAll(msg, "\n", " "))
	}
	return out, nil
}

// Stream runs argv on the host with stdin and stdout streamed, never held
// in memory (a volume's image).
func (h *Host) Stream(ctx context.Context, stdin io.Reader, stdout io.Writer, argv ...string) error {
	cmd, err := h.command(ctx, argv)
	if err != nil {
		return err
	}
	cmd.Stdin, cmd.Stdout = stdin, stdout
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("host %s: %v: %s", h.Name, err, strings.TrimSpace(stderr.String()))
	}
	return nil
}

// Interactive runs argv on the host on a terminal of its own (ssh -t)
// wired to this one, with ssh's escape character off: every key reaches
// the host's command (`credvm console`, whose Ctrl-] detaches).
func (h *Host) Interactive(ctx context.Context, stdin io.Reader, stdout, stderr io.Writer, argv ...string) error {
	cmd, err := h.command(ctx, argv, "-t", "-e", "none")
	if err != nil {
		return err
	}
	cmd.Stdin, cmd.Stdout, cmd.Stderr = stdin, stdout, stderr
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("host %s: %w", h.Name, err)
	}
	return nil
}

// command is ssh (with extra options first) running argv on the host,
// each argument quoted for its shell.
func (h *Host) command(ctx context.Context, argv []string, extra ...string) (*exec.Cmd, error) {
	args, err := h.sshArgs()
	if err != nil {
		return nil, err
	}
	args = append(slices.Clone(extra), args...)
	return exec.CommandContext(ctx, "ssh", append(args, shellJoin(argv))...), nil
}

// shellJoin is argv as one POSIX shell command line.
func shellJoin(argv []string) string {
	quoted := make([]string, len(argv))
	for i, a := range argv {
		quoted[i] = shellQuote(a)
	}
	return strings.Join(quoted, " ")
}

// shellQuote quotes s for a POSIX shell.
func shellQuote(s string) string {
	if s != "" && strings.Trim(s, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_./=:@,+%") == "" {
		return s
	}
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}
