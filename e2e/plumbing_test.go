package e2e

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// fastGuest is the fast guest's [vm] with more kernel command-line words
// (the test guest's actions: credvm.mount, credvm.volume, credvm.ip).
func fastGuest(extra string, more ...string) string {
	s := vmSection("fast", more...)
	return strings.Replace(s, `cmdline = "console=ttyS0 quiet panic=-1"`, `cmdline = "console=ttyS0 quiet panic=-1 `+extra+`"`, 1)
}

func needRoot(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root (virtiofsd, taps, network namespaces)")
	}
}

// TestVirtiofsAndVolumes: credvm starts one virtiofsd per share (QEMU
// 7.2's, as root), the guest mounts both, reads what the host wrote,
// writes to the read-write one and is refused by the read-only one; a
// volume is created and formatted on the first start, mounted by label,
// and keeps its data across a restart; nothing of virtiofsd is left.
func TestVirtiofsAndVolumes(t *testing.T) {
	needGuests(t)
	needRoot(t)
	if _, err := os.Stat("/usr/lib/qemu/virtiofsd"); err != nil {
		t.Skip("no /usr/lib/qemu/virtiofsd (apt-get install qemu-system-common)")
	}
	t.Parallel()
	r := newRepo(t)
	rw, ro := filepath.Join(r.dir, "rw"), filepath.Join(r.dir, "ro")
	for _, d := range []string{rw, ro} {
		os.Mkdir(d, 0o755)
		os.WriteFile(filepath.Join(d, "hello"), []byte("hello from "+filepath.Base(d)+"\n"), 0o644)
	}
	r.machine("plumbed", fastGuest("credvm.mount=rw credvm.mount=ro credvm.volume=data")+`
[[vm.shares]]
source = "`+rw+`"
tag = "rw"
[[vm.shares]]
source = "`+ro+`"
tag = "ro"
read_only = true
[[vm.volumes]]
image = "data.img"
size = 16
[credentials]
A = { value = "a" }
`)
	b := r.run("plumbed")
	b.mustVerify(t)
	for _, want := range []string{
		`credvm-guest: share rw read "hello from rw" <nil>`,
		`credvm-guest: share rw write ok`,
		`credvm-guest: share ro read "hello from ro" <nil>`,
		`credvm-guest: share ro write refused: open /mnt/ro/from-guest: read-only file system`,
		`credvm-guest: volume data count 1`,
	} {
		if !strings.Contains(b.console, want) {
			t.Errorf("the guest did not say %q:\n%s\n%s", want, grepLines(b.console, "credvm-guest: "), b.stderr)
		}
	}
	if got, err := os.ReadFile(filepath.Join(rw, "from-guest")); err != nil || string(got) != "written by the guest\n" {
		t.Errorf("the guest's write to the rw share: %q, %v", got, err)
	}
	if _, err := os.Stat(filepath.Join(ro, "from-guest")); err == nil {
		t.Errorf("the guest wrote to the read-only share")
	}
	img := filepath.Join(r.state, "plumbed", "data.img")
	fi, err := os.Stat(img)
	if err != nil || fi.Size() != 16<<20 || fi.Mode().Perm() != 0o600 {
		t.Fatalf("volume image: %v %v", fi, err)
	}
	if !strings.Contains(b.stderr, "created volume "+img+" (16 MiB, ext4, label data)") {
		t.Errorf("no notice of the volume's creation:\n%s", b.stderr)
	}
	if out, _ := exec.Command("pgrep", "-f", "virtiofsd.*"+r.state).Output(); len(out) > 0 {
		t.Errorf("virtiofsd left running: %s", out)
	}
	socks, _ := filepath.Glob(filepath.Join(r.state, "plumbed", "virtiofs-*.sock"))
	if len(socks) > 0 {
		t.Errorf("virtiofsd sockets left: %v", socks)
	}

	// The second start uses the volume as it is: the guest's data stays.
	b = r.run("plumbed")
	if !strings.Contains(b.console, "credvm-guest: volume data count 2") {
		t.Errorf("the volume lost its data across a restart:\n%s", grepLines(b.console, "credvm-guest: volume"))
	}
	if strings.Contains(b.stderr, "created volume") {
		t.Errorf("the volume was made again:\n%s", b.stderr)
	}
}

// TestVirtiofsdDeath: a virtiofsd that dies while the VM runs stops the
// VM, saying which share.
func TestVirtiofsdDeath(t *testing.T) {
	needGuests(t)
	needRoot(t)
	if _, err := os.Stat("/usr/lib/qemu/virtiofsd"); err != nil {
		t.Skip("no /usr/lib/qemu/virtiofsd")
	}
	t.Parallel()
	r := newRepo(t)
	dir := filepath.Join(r.dir, "share")
	os.Mkdir(dir, 0o755)
	r.machine("share", fastGuest("credvm.idle")+`
[[vm.shares]]
source = "`+dir+`"
tag = "s"
[credentials]
A = { value = "a" }
`)
	r.credvm("create", "share", "--state-dir", r.state)
	r.credvm("start", "share", "--state-dir", r.state, "--shutdown-timeout", "2s")
	defer r.credvmErr("stop", "share", "--state-dir", r.state)
	deadline := time.Now().Add(30 * time.Second)
	for {
		out, _ := exec.Command("pgrep", "-f", "virtiofsd --socket-path="+filepath.Join(r.state, "share")).Output()
		if pids := strings.Fields(string(out)); len(pids) > 0 {
			exec.Command("kill", "-9", pids[0]).Run()
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("no virtiofsd for the share")
		}
		time.Sleep(100 * time.Millisecond)
	}
	for time.Now().Before(deadline.Add(30 * time.Second)) {
		st := r.credvm("status", "share", "--state-dir", r.state, "--json")
		if strings.Contains(st, `"running": false`) {
			if !strings.Contains(st, `virtiofsd of share \"s\"`) {
				t.Errorf("status does not say which share's virtiofsd died:\n%s", st)
			}
			return
		}
		time.Sleep(200 * time.Millisecond)
	}
	t.Errorf("the VM still runs after its virtiofsd died:\n%s", r.credvm("status", "share", "--state-dir", r.state))
}

// TestRunInteractive: `run --interactive` makes the terminal the guest's
// console; Ctrl-] powers the guest off and ends the run.
func TestRunInteractive(t *testing.T) {
	needGuests(t)
	if _, err := exec.LookPath("tmux"); err != nil {
		t.Skip("tmux not installed")
	}
	t.Parallel()
	r := newRepo(t)
	r.machine("inter", fastGuest("credvm.idle")+`
[credentials]
A = { value = "a" }
`)
	sock := "credvm-inter-" + strconv.Itoa(os.Getpid())
	defer exec.Command("tmux", "-L", sock, "kill-server").Run()
	cmd := exec.Command("tmux", "-L", sock, "new-session", "-d", "-s", "i", "-x", "160", "-y", "40",
		credvmBin+" run inter -i --state-dir "+r.state+" --shutdown-timeout 2s; echo run-exit=$?; sleep 60")
	cmd.Env, cmd.Dir = r.env, r.dir
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("tmux: %v\n%s", err, out)
	}
	pane := func() string {
		out, _ := exec.Command("tmux", "-L", sock, "capture-pane", "-p", "-t", "i", "-S", "-200").Output()
		return string(out)
	}
	deadline := time.Now().Add(90 * time.Second)
	for !strings.Contains(pane(), "credvm-guest: idle") {
		if time.Now().After(deadline) {
			t.Fatalf("the interactive run never showed the guest:\n%s", pane())
		}
		time.Sleep(300 * time.Millisecond)
	}
	exec.Command("tmux", "-L", sock, "send-keys", "-t", "i", "C-]").Run()
	for !strings.Contains(pane(), "run-exit=") {
		if time.Now().After(deadline) {
			t.Fatalf("Ctrl-] did not end the run:\n%s", pane())
		}
		time.Sleep(300 * time.Millisecond)
	}
	if p := pane(); !strings.Contains(p, "Ctrl-]: powering the guest off") {
		t.Errorf("no word of the power-off:\n%s", p)
	}
	if qemuCount("inter") != 0 {
		t.Errorf("QEMU still runs after the interactive run ended")
	}
}

// TestUnprivilegedQEMU: as root, with [vm] user, QEMU runs as that user
// (credentials set at exec), under its seccomp sandbox; it gets its disks
// and volumes as descriptors and still delivers every credential.
func TestUnprivilegedQEMU(t *testing.T) {
	needGuests(t)
	needRoot(t)
	t.Parallel()
	r := newRepo(t)
	boot, err := os.MkdirTemp("/tmp", "cvboot") // t.TempDir's parent is 0700
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(boot) })
	os.Chmod(boot, 0o755)
	initrd := filepath.Join(boot, "fast.img")
	if b, err := os.ReadFile(fastInitrd); err != nil || os.WriteFile(initrd, b, 0o644) != nil {
		t.Fatal(err)
	}
	disk := filepath.Join(r.dir, "disk.img")
	os.WriteFile(disk, make([]byte, 1<<20), 0o600) // root's: QEMU gets it open
	toml := strings.Replace(fastGuest("credvm.volume=vol credvm.idle"), strconv.Quote(fastInitrd), strconv.Quote(initrd), 1) + `user = "nobody"
[[vm.disks]]
image = "` + disk + `"
[[vm.volumes]]
image = "vol.img"
size = 8
[credentials]
A = { value = "a" }
B = { value = "bee" }
`
	r.machine("unpriv", toml)
	os.Chmod(r.state, 0o755) // as /var/lib/microvms is (MkdirTemp made it 0700)
	r.credvm("create", "unpriv", "--state-dir", r.state)
	r.credvm("start", "unpriv", "--state-dir", r.state, "--shutdown-timeout", "2s")
	defer r.credvmErr("stop", "unpriv", "--state-dir", r.state)
	console := r.waitConsole(t, "unpriv", "credvm-guest: idle", 1)
	if !strings.Contains(console, "credvm-guest: verify ok") || !strings.Contains(console, "credvm-guest: volume vol count 1") {
		t.Errorf("the unprivileged guest:\n%s", grepLines(console, "credvm-guest: "))
	}
	var rec struct {
		PID int `json:"hypervisor_pid"`
	}
	b, _ := os.ReadFile(filepath.Join(r.state, "unpriv", "run.json"))
	json.Unmarshal(b, &rec)
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", rec.PID))
	if err != nil {
		t.Fatal(err)
	}
	if !regexp.MustCompile(`(?m)^Uid:\s+65534\s+65534\s+65534\s+65534$`).Match(status) {
		t.Errorf("QEMU does not run as nobody:\n%s", grepLines(string(status), "Uid"))
	}
	if !regexp.MustCompile(`(?m)^Seccomp:\s+2$`).Match(status) {
		t.Errorf("QEMU runs without its seccomp filter:\n%s", grepLines(string(status), "Seccomp"))
	}
	cmdline, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", rec.PID))
	if !strings.Contains(string(cmdline), "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny") {
		t.Errorf("no -sandbox on QEMU's command line: %q", cmdline)
	}
	fi, _ := os.Stat(filepath.Join(r.state, "unpriv", "sockets"))
	if st, ok := fi.Sys().(*syscall.Stat_t); !ok || st.Uid != 65534 || fi.Mode().Perm() != 0o700 {
		t.Errorf("the socket directory is not nobody's 0700: %v", fi.Mode())
	}
	fi, _ = os.Stat(filepath.Join(r.state, "unpriv"))
	if st, ok := fi.Sys().(*syscall.Stat_t); !ok || st.Uid != 0 {
		t.Errorf("the state directory is not root's")
	}

	// A kernel that user cannot read is named before anything starts.
	r.credvm("stop", "unpriv", "--state-dir", r.state)
	os.Chmod(initrd, 0o600)
	out, err := r.credvmErr("run", "unpriv", "--state-dir", r.state)
	if err == nil || !strings.Contains(out, "initrd "+initrd+": the hypervisor runs as nobody, who cannot read it (not readable): make it readable (chmod o+r, and o+x on its directories), or set [vm] user = \"root\"") {
		t.Errorf("run with an unreadable initrd: %v\n%s", err, out)
	}
}
