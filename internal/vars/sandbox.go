package vars

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/credvm/credvm/internal/spec"
	"golang.org/x/sys/unix"
)

// Sandbox says how generator scripts are isolated.
type Sandbox string

const (
	// SandboxAuto uses bubblewrap when installed (as clan does), else
	// Linux namespaces.
	SandboxAuto Sandbox = "auto"
	// SandboxBwrap requires bubblewrap: no network, a read-only view of
	// the system's /usr, nothing of the user's home or the repository.
	SandboxBwrap Sandbox = "bwrap"
	// SandboxNamespaces runs the script in fresh network, IPC, UTS, PID
	// and mount namespaces: no network, and the user's home, their age
	// key's directory and the repository hidden under empty tmpfs mounts;
	// the rest of the host's filesystem is visible.
	SandboxNamespaces Sandbox = "namespaces"
	// SandboxNone runs the script directly (--no-sandbox); it still gets
	// a clean environment and the restricted PATH.
	SandboxNone Sandbox = "none"
)

// baseCommands are on every script's PATH, besides its runtime inputs: a
// shell and the few commands needed to write files at all.
var baseCommands = []string{"bash", "sh", "cat", "mkdir", "chmod", "cp", "mv", "rm", "ln", "touch"}

// resolveSandbox turns auto into what this machine offers.
func resolveSandbox(s Sandbox) (Sandbox, string, error) {
	switch s {
	case SandboxAuto, "":
		if p, err := exec.LookPath("bwrap"); err == nil {
			return SandboxBwrap, p, nil
		}
		return SandboxNamespaces, "", nil
	case SandboxBwrap:
		p, err := exec.LookPath("bwrap")
		if err != nil {
			return "", "", errors.New("sandbox bwrap: bubblewrap is not installed (apt-get install bubblewrap, or use --sandbox=namespaces)")
		}
		return s, p, nil
	case SandboxNamespaces, SandboxNone:
		return s, "", nil
	}
	return "", "", fmt.Errorf("unknown sandbox %q: use auto, bwrap, namespaces or none", s)
}

// inputResolver maps runtime inputs to executables: a command on $PATH, or
// else an installed Debian package's commands (so the clan-style
// runtime_inputs = ["coreutils"] works). It also keeps the PATH
// directories it built, one per distinct set of inputs, for the run.
type inputResolver struct {
	mu    sync.Mutex
	cache map[string][]string
	bins  map[string]string // sorted inputs → bin directory
}

// binDir returns a directory holding the base commands and inputs, built
// once per distinct set of inputs under base and shared by the run's
// generators (read-only to them).
func (r *inputResolver) binDir(base string, inputs []string) (string, error) {
	key := strings.Join(slices.Sorted(slices.Values(inputs)), "\x00")
	r.mu.Lock()
	if d, ok := r.bins[key]; ok {
		r.mu.Unlock()
		return d, nil
	}
	r.mu.Unlock()
	// Named like a workspace, so a crashed run's are cleaned the same way.
	d, err := os.MkdirTemp(base, fmt.Sprintf("gen-%d-bin-", os.Getpid()))
	if err != nil {
		return "", err
	}
	if err := r.makeBinDir(d, inputs); err != nil {
		os.RemoveAll(d)
		return "", err
	}
	os.Chmod(d, 0o755)
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.bins == nil {
		r.bins = map[string]string{}
	}
	if prev, ok := r.bins[key]; ok { // built concurrently: keep one
		os.RemoveAll(d)
		return prev, nil
	}
	r.bins[key] = d
	return d, nil
}

// removeBins removes the run's PATH directories.
func (r *inputResolver) removeBins() {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, d := range r.bins {
		os.RemoveAll(d)
	}
	r.bins = nil
}

func (r *inputResolver) resolve(name string) ([]string, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.cache == nil {
		r.cache = map[string][]string{}
	}
	if v, ok := r.cache[name]; ok {
		return v, nil
	}
	var out []string
	if filepath.IsAbs(name) {
		// A package's directory (a Nix store path): its bin/.
		cmds, err := dirCommands(filepath.Join(name, "bin"))
		if err != nil {
			return nil, fmt.Errorf("runtime input %s: %w (a directory input puts its bin/ on PATH)", name, err)
		}
		out = cmds
	} else if p, err := exec.LookPath(name); err == nil {
		out = []string{p}
	} else if cmds := packageCommands(name); len(cmds) > 0 {
		out = cmds
	} else {
		return nil, fmt.Errorf("runtime input %q: no such command on $PATH and no installed package of that name (install it, e.g. apt-get install %s)", name, name)
	}
	r.cache[name] = out
	return out, nil
}

// dirCommands lists the executables in dir.
func dirCommands(dir string) ([]string, error) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	var cmds []string
	for _, e := range entries {
		p := filepath.Join(dir, e.Name())
		if fi, err := os.Stat(p); err == nil && fi.Mode().IsRegular() && fi.Mode()&0o111 != 0 {
			cmds = append(cmds, p)
		}
	}
	return cmds, nil
}

// packageCommands lists the executables an installed Debian package ships
// in a bin directory.
func packageCommands(pkg string) []string {
	if _, err := exec.LookPath("dpkg-query"); err != nil {
		return nil
	}
	out, err := exec.Command("dpkg-query", "-L", pkg).Output()
	if err != nil {
		return nil
	}
	var cmds []string
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		p := sc.Text()
		switch filepath.Dir(p) {
		case "/bin", "/usr/bin", "/sbin", "/usr/sbin":
		default:
			continue
		}
		if fi, err := os.Stat(p); err == nil && fi.Mode().IsRegular() && fi.Mode()&0o111 != 0 {
			cmds = append(cmds, p)
		}
	}
	return cmds
}

// makeBinDir fills dir with links to the base commands and runtime inputs:
// the script's whole PATH.
func (r *inputResolver) makeBinDir(dir string, inputs []string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	var paths []string
	for _, c := range baseCommands {
		if p, err := exec.LookPath(c); err == nil {
			paths = append(paths, p)
		}
	}
	for _, in := range inputs {
		ps, err := r.resolve(in)
		if err != nil {
			return err
		}
		paths = append(paths, ps...)
	}
	for _, p := range paths {
		link := filepath.Join(dir, filepath.Base(p))
		if _, err := os.Lstat(link); err == nil {
			continue
		}
		real, err := filepath.EvalSymlinks(p)
		if err != nil {
			real = p
		}
		// Link to the command's name in its own directory when the real
		// file is a multi-call binary (busybox, coreutils' single binary).
		if filepath.Base(real) != filepath.Base(p) {
			real = p
		}
		if err := os.Symlink(real, link); err != nil {
			return err
		}
	}
	return nil
}

// scriptCmd builds the command that runs a generator's script.
type scriptCmd struct {
	sandbox Sandbox
	bwrap   string
	ws      *workspace
	bin     string // the script's PATH
	env     []string
	limits  spec.GeneratorLimits
	cg      *cgroupLimit // nil without cgroups
	// hide are the directories a namespaces-mode script does not see.
	hide []string
}

func (s *scriptCmd) command(ctx context.Context) *exec.Cmd {
	shell := []string{"bash", "-euo", "pipefail", s.ws.script}
	var argv []string
	var env []string
	dir := ""
	switch s.sandbox {
	case SandboxBwrap:
		args := []string{
			"--unshare-all", "--die-with-parent", "--new-session", "--clearenv",
			"--ro-bind", "/usr", "/usr",
		}
		for _, d := range []string{"/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"} {
			// On merged-/usr systems these are symlinks into /usr.
			if t, err := os.Readlink(d); err == nil {
				args = append(args, "--symlink", t, d)
			} else {
				args = append(args, "--ro-bind-try", d, d)
			}
		}
		// The Nix store, read-only, for runtime inputs given as store
		// paths (a guest's NixOS configuration, issue 16).
		for _, d := range []string{"/etc/alternatives", "/etc/ssl", "/etc/ld.so.cache", "/etc/localtime", "/nix/store"} {
			args = append(args, "--ro-bind-try", d, d)
		}
		args = append(args,
			"--proc", "/proc", "--dev", "/dev", "--size", strconv.FormatInt(s.limits.Output, 10), "--tmpfs", "/tmp",
			"--ro-bind", s.bin, s.bin,
			"--ro-bind", s.ws.root, s.ws.root,
			"--bind", s.ws.out, s.ws.out,
			"--chdir", "/tmp",
		)
		for _, kv := range s.env {
			k, v, _ := strings.Cut(kv, "=")
			args = append(args, "--setenv", k, v)
		}
		args = append(args, "--")
		argv = append(append([]string{s.bwrap}, args...), shell...)
		env = []string{}
	default:
		bash, _ := exec.LookPath("bash")
		argv = append([]string{bash}, shell[1:]...)
		env, dir = s.env, s.ws.root
	}
	argv = bounded(argv, s.limits, s.cg)
	if s.sandbox == SandboxNamespaces {
		// credvm itself first, in the new namespaces, to hide the user's
		// files before the script runs (sandboxinit.go). As /proc/self/exe
		// named "credvm": the running binary, whatever its path.
		init := append([]string{"credvm", SandboxInitArg}, s.hide...)
		argv = append(append(init, "--"), argv...)
	}
	var cmd *exec.Cmd
	if s.sandbox == SandboxNamespaces {
		cmd = exec.CommandContext(ctx, "/proc/self/exe", argv[1:]...)
		cmd.Args[0] = argv[0]
	} else {
		cmd = exec.CommandContext(ctx, argv[0], argv[1:]...)
	}
	cmd.Env, cmd.Dir = env, dir
	// A background job of the script that holds its output open must not
	// keep credvm waiting once the script is gone.
	cmd.WaitDelay = 2 * time.Second
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if s.sandbox == SandboxNamespaces {
		// The script is the init of a PID namespace of its own: when it
		// dies, the kernel kills everything it started, however detached.
		cmd.SysProcAttr.Cloneflags = syscall.CLONE_NEWNET | syscall.CLONE_NEWIPC | syscall.CLONE_NEWUTS | syscall.CLONE_NEWPID | syscall.CLONE_NEWNS
		if os.Geteuid() != 0 {
			cmd.SysProcAttr.Cloneflags |= syscall.CLONE_NEWUSER
			cmd.SysProcAttr.UidMappings = []syscall.SysProcIDMap{{ContainerID: os.Geteuid(), HostID: os.Geteuid(), Size: 1}}
			cmd.SysProcAttr.GidMappings = []syscall.SysProcIDMap{{ContainerID: os.Getegid(), HostID: os.Getegid(), Size: 1}}
			// For the sandbox's init to mount (it clears it before the
			// script runs).
			cmd.SysProcAttr.AmbientCaps = []uintptr{unix.CAP_SYS_ADMIN}
		}
	}
	// On timeout or cancellation kill the whole process group, not just
	// the shell, and everything in the run's cgroups.
	cmd.Cancel = func() error {
		err := syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		s.cg.killAll()
		return err
	}
	return cmd
}
