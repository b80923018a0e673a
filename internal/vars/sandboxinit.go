package vars

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"golang.org/x/sys/unix"
)

// SandboxInitArg, as credvm's first argument, makes it the first process
// of a namespaces-mode generator sandbox (SandboxInit). Go cannot mount
// anything between the clone of the script's namespaces and its exec, so
// credvm is exec'd there first, does the mounts, and execs the script.
const SandboxInitArg = "__sandbox-init"

// SandboxInit runs in the sandbox's fresh mount (and PID, network, IPC,
// UTS) namespaces: it makes every mount private to them, hides each
// directory before "--" under an empty read-only tmpfs — the user's home,
// the directory of their age key, the repository —, then becomes the
// command after "--". It returns only on failure, with the exit status
// the script's failure is reported with.
func SandboxInit(args []string) int {
	i := slices.Index(args, "--")
	if i < 0 || i == len(args)-1 {
		fmt.Fprintln(os.Stderr, "credvm sandbox: no command after --")
		return 125
	}
	if err := unix.Mount("", "/", "", unix.MS_REC|unix.MS_PRIVATE, ""); err != nil {
		fmt.Fprintf(os.Stderr, "credvm sandbox: making mounts private: %v\n", err)
		return 125
	}
	for _, d := range args[:i] {
		if err := unix.Mount("credvm-hidden", d, "tmpfs", unix.MS_RDONLY|unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, "size=4k,mode=0555"); err != nil {
			fmt.Fprintf(os.Stderr, "credvm sandbox: hiding %s: %v\n", d, err)
			return 125
		}
	}
	// The host's /proc would show credvm's own process, whose
	// /proc/PID/root leads to everything just hidden: a /proc of this
	// PID namespace only.
	if err := unix.Mount("proc", "/proc", "proc", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, ""); err != nil {
		fmt.Fprintf(os.Stderr, "credvm sandbox: mounting /proc: %v\n", err)
		return 125
	}
	// The script must not undo the mounts: no CAP_SYS_ADMIN for it. As
	// root, dropped from the bounding set; as a user, the ambient one that
	// let this process mount is cleared, and exec drops the rest.
	if os.Getuid() == 0 {
		if err := unix.Prctl(unix.PR_CAPBSET_DROP, unix.CAP_SYS_ADMIN, 0, 0, 0); err != nil {
			fmt.Fprintf(os.Stderr, "credvm sandbox: dropping CAP_SYS_ADMIN: %v\n", err)
			return 125
		}
	}
	if err := unix.Prctl(unix.PR_CAP_AMBIENT, unix.PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0); err != nil {
		fmt.Fprintf(os.Stderr, "credvm sandbox: clearing ambient capabilities: %v\n", err)
		return 125
	}
	argv := args[i+1:]
	err := unix.Exec(argv[0], argv, os.Environ())
	fmt.Fprintf(os.Stderr, "credvm sandbox: %s: %v\n", argv[0], err)
	return 125
}

// hiddenDirs are the directories a namespaces-mode script must not see:
// the user's home, their age key's directory, the repository — less any
// that holds what the script needs (its workspace, PATH, temporary
// directory), which stays visible with everything in it.
func hiddenDirs(repoRoot string, needed ...string) []string {
	var cands []string
	if h, err := os.UserHomeDir(); err == nil {
		cands = append(cands, h)
	}
	if f := os.Getenv("SOPS_AGE_KEY_FILE"); f != "" {
		cands = append(cands, filepath.Dir(f))
	}
	cands = append(cands, repoRoot)
	// Parents first: a directory inside one already hidden is hidden with
	// it (and could not be mounted over: it is not there any more).
	slices.SortFunc(cands, func(a, b string) int { return len(a) - len(b) })
	var out []string
	for _, c := range cands {
		if c == "" || !filepath.IsAbs(c) {
			continue
		}
		c = filepath.Clean(c)
		if c == "/" || slices.ContainsFunc(out, func(o string) bool { return within(c, o) }) {
			continue
		}
		if fi, err := os.Stat(c); err != nil || !fi.IsDir() {
			continue
		}
		if slices.ContainsFunc(needed, func(n string) bool { return within(n, c) }) {
			continue
		}
		out = append(out, c)
	}
	return out
}

// within reports whether path is dir or under it.
func within(path, dir string) bool {
	return path == dir || strings.HasPrefix(path, dir+string(filepath.Separator))
}
