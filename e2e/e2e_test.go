// Package e2e boots real guests under QEMU (TCG) with credentials from
// real vars, and checks from inside the guest — with systemd's own
// LoadCredential= and credvm's manifest — that each credential arrived
// whole, and from the host that no secret touched QEMU's command line,
// its environment or the VM's state directory.
//
// Two guests, from make images (credvm image): the fast guest (credvm as PID 1
// of an initramfs; it reads SMBIOS with one read() as systemd 252 does)
// boots in about 3 s; the systemd guest (Debian bookworm, systemd 252)
// in about 15 s.
package e2e

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/credvm/credvm/internal/faultinject"
	"github.com/credvm/credvm/internal/guestimage"
	"github.com/credvm/credvm/internal/testenv"
)

var (
	credvmBin   string // static credvm built for these tests
	fastInitrd  string
	systemdImg  string
	userImg     string // the user's guest, as credvm image assembles it
	kernel      string
	setupFailed string
)

// TestMain builds credvm and the guest images once, runs the tests and
// removes what it built (testenv.Main), whether they passed or not.
func TestMain(m *testing.M) {
	flag.Parse()
	if skip := setup(); skip != "" {
		setupFailed = skip
	}
	testenv.Main(m)
}

func setup() string {
	if testing.Short() {
		return "short mode"
	}
	tmp, err := testenv.TempDir("credvm-e2e-")
	if err != nil {
		return err.Error()
	}
	credvmBin = filepath.Join(tmp, "credvm")
	if err := goBuild(credvmBin, "./cmd/credvm"); err != nil {
		credvmBin = ""
		return err.Error()
	}
	testGuest := filepath.Join(tmp, "testguest")
	if err := goBuild(testGuest, "./e2e/testguest"); err != nil {
		return err.Error()
	}
	if _, err := exec.LookPath("qemu-system-x86_64"); err != nil {
		return "qemu-system-x86_64 not installed (apt-get install qemu-system-x86)"
	}
	dir := os.Getenv("CREDVM_IMAGES")
	if dir == "" {
		dir = filepath.Join(testenv.Root(), ".cache", "images")
	}
	im := guestimage.Images{Dir: dir}
	if err := im.Check(true); err != nil {
		return err.Error()
	}
	fastInitrd = filepath.Join(tmp, "fast.img")
	systemdImg = filepath.Join(tmp, "systemd.img")
	if err := im.FastInitrd(testGuest, fastInitrd); err != nil {
		return err.Error()
	}
	if err := im.SystemdInitrd(credvmBin, systemdImg); err != nil {
		return err.Error()
	}
	userImg = filepath.Join(tmp, "initrd.img")
	if err := im.UserInitrd(credvmBin, "", userImg); err != nil {
		return err.Error()
	}
	kernel = im.Kernel()
	return ""
}

// goBuild builds a static binary of the module's package pkg — with the
// fault points when this test binary has them (-tags faultinject).
func goBuild(out, pkg string) error {
	args := []string{"build", "-o", out}
	if faultinject.Enabled {
		args = append(args, "-tags", "faultinject")
	}
	build := exec.Command("go", append(args, pkg)...)
	build.Dir = testenv.Root()
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		return fmt.Errorf("build %s: %v\n%s", pkg, err, out)
	}
	return nil
}

// needCredvm is for tests that run credvm without booting a guest.
func needCredvm(t *testing.T) {
	t.Helper()
	if testing.Short() {
		t.Skip("-short")
	}
	if credvmBin == "" {
		testenv.Missing(t, "a credvm build", setupFailed)
	}
}

func needGuests(t *testing.T) {
	t.Helper()
	if testing.Short() {
		t.Skip("real guests are not booted in -short mode")
	}
	if setupFailed != "" {
		testenv.Missing(t, "real-guest setup", setupFailed)
	}
}

// repo is a credvm repository in a temporary directory, with a user key.
type repo struct {
	t     *testing.T
	dir   string
	state string
	env   []string
}

func newRepo(t *testing.T) *repo {
	t.Helper()
	dir := t.TempDir()
	// Unix socket paths are limited to 107 bytes; t.TempDir can be long.
	state, err := os.MkdirTemp("/tmp", "cvs")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(state) })
	r := &repo{t: t, dir: dir, state: state, env: append(os.Environ(),
		"SOPS_AGE_KEY_FILE="+filepath.Join(dir, "key.txt"), "SOPS_AGE_KEY=", "CREDVM_REPO="+dir, "USER=tester",
		"XDG_STATE_HOME="+t.TempDir(), "HOME="+t.TempDir(), "SSH_AUTH_SOCK=", "CREDVM_NO_TTY=1")}
	os.WriteFile(filepath.Join(dir, "credvm.toml"), nil, 0o644)
	r.credvm("vars", "keygen")
	return r
}

func (r *repo) credvm(args ...string) string {
	r.t.Helper()
	out, err := r.credvmErr(args...)
	if err != nil {
		r.t.Fatalf("credvm %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return out
}

func (r *repo) credvmErr(args ...string) (string, error) {
	cmd := exec.Command(credvmBin, args...)
	cmd.Env = r.env
	cmd.Dir = r.dir
	out, err := cmd.CombinedOutput()
	return string(out), err
}

func (r *repo) machine(name, toml string) {
	r.t.Helper()
	d := filepath.Join(r.dir, "machines", name)
	os.MkdirAll(d, 0o755)
	if err := os.WriteFile(filepath.Join(d, "machine.toml"), []byte(toml), 0o644); err != nil {
		r.t.Fatal(err)
	}
}

// vmSection is a [vm] table booting one of the two guests.
func vmSection(guest string, extra ...string) string {
	s := "[vm]\nmem = 1024\nkernel = " + strconv.Quote(kernel) + "\n"
	switch guest {
	case "fast":
		s += "initrd = " + strconv.Quote(fastInitrd) + "\ncmdline = \"console=ttyS0 quiet panic=-1\"\nmem = 256\n"
		s = strings.Replace(s, "mem = 1024\n", "", 1)
	case "systemd":
		s += "initrd = " + strconv.Quote(systemdImg) + "\ncmdline = \"console=ttyS0 rdinit=/lib/systemd/systemd panic=-1\"\n"
	}
	return s + strings.Join(extra, "\n") + "\n"
}

// boot is what a run showed.
type boot struct {
	stderr  string
	console string
	creds   map[string]seen // from the credvm-guest report
	app     map[string]seen // from the systemd guest's app.service
	ok      bool            // credvm guest verify passed
	// checked counts the processes whose argv and environment were
	// searched for secrets while the VM ran.
	checked int
}

type seen struct {
	size   int
	sha    string
	source string
}

var pidRe = regexp.MustCompile(`\w started \(pid (\d+)\)`)

// run boots the machine with `credvm run` and, while QEMU runs, reads its
// command line and environment (and credvm's) looking for any secret.
func (r *repo) run(name string, secrets ...[]byte) *boot {
	r.t.Helper()
	cmd := exec.Command(credvmBin, "run", name, "--state-dir", r.state, "-q", "--shutdown-timeout", "5s")
	cmd.Env = r.env
	cmd.Dir = r.dir
	stderr, _ := cmd.StderrPipe()
	if err := cmd.Start(); err != nil {
		r.t.Fatal(err)
	}
	var errBuf bytes.Buffer
	checked := 0
	sc := bufio.NewScanner(stderr)
	for sc.Scan() {
		line := sc.Text()
		errBuf.WriteString(line + "\n")
		if m := pidRe.FindStringSubmatch(line); m != nil {
			checked += r.checkProcess(m[1], "QEMU", secrets)
			checked += r.checkProcess(strconv.Itoa(cmd.Process.Pid), "credvm", secrets)
		}
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			r.t.Logf("credvm run exited: %v", err)
		}
	case <-time.After(4 * time.Minute):
		cmd.Process.Kill()
		r.t.Fatalf("credvm run did not finish in 4 minutes\n%s", errBuf.String())
	}
	console, _ := os.ReadFile(filepath.Join(r.state, name, "console.log"))
	b := &boot{stderr: errBuf.String(), console: string(console), creds: map[string]seen{}, app: map[string]seen{}, checked: checked}
	for _, l := range strings.Split(b.console, "\n") {
		l = strings.TrimRight(l, "\r")
		f := strings.Fields(l)
		switch {
		case strings.HasPrefix(l, "credvm-guest: cred ") && len(f) >= 6:
			size, _ := strconv.Atoi(f[3])
			b.creds[strings.Join(f[5:], " ")] = seen{size, f[4], f[2]}
		case strings.HasPrefix(l, "app: ") && len(f) == 4:
			size, _ := strconv.Atoi(f[2])
			b.app[f[1]] = seen{size, f[3], "app"}
		case strings.HasPrefix(l, "credvm-guest: verify ok"):
			b.ok = true
		}
	}
	r.checkStateDir(name, secrets)
	return b
}

// checkProcess fails the test if a secret (or its base64 form) appears in
// a process's argv or environment, and returns 1 if it could look (a fast
// guest's hypervisor may be gone before the test gets to it).
func (r *repo) checkProcess(pid, what string, secrets [][]byte) int {
	r.t.Helper()
	cmdline, err := os.ReadFile("/proc/" + pid + "/cmdline")
	environ, err2 := os.ReadFile("/proc/" + pid + "/environ")
	if err != nil || err2 != nil || len(cmdline) == 0 {
		r.t.Logf("%s (pid %s) exited before its argv could be read", what, pid)
		return 0
	}
	for _, s := range secrets {
		if leaks(cmdline, s) {
			r.t.Errorf("a secret appears in %s's argv", what)
		}
		if leaks(environ, s) {
			r.t.Errorf("a secret appears in %s's environment", what)
		}
	}
	return 1
}

func (r *repo) checkStateDir(name string, secrets [][]byte) {
	r.t.Helper()
	filepath.Walk(filepath.Join(r.state, name), func(p string, fi os.FileInfo, err error) error {
		if err != nil || fi.IsDir() {
			return nil
		}
		if fi.Mode().Perm()&0o077 != 0 {
			r.t.Errorf("%s is readable by group or others (%v)", p, fi.Mode().Perm())
		}
		if fi.Mode().IsRegular() && filepath.Base(p) != "console.log" {
			b, _ := os.ReadFile(p)
			for _, s := range secrets {
				if leaks(b, s) {
					r.t.Errorf("a secret appears in the state file %s", p)
				}
			}
		}
		return nil
	})
}

func leaks(haystack, secret []byte) bool {
	if len(secret) < 6 {
		return false
	}
	return bytes.Contains(haystack, secret) || bytes.Contains(haystack, []byte(b64(secret)))
}

func sha(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

func (b *boot) mustVerify(t *testing.T) {
	t.Helper()
	if !b.ok {
		t.Fatalf("the guest did not verify its credentials\ncredvm:\n%s\nconsole (credvm lines):\n%s", b.stderr, grepLines(b.console, "credvm-guest:"))
	}
}

func grepLines(s, prefix string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, prefix) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}
