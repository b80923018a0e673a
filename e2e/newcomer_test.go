package e2e

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// TestNewcomer follows the README's first steps with the guest credvm
// image builds: credvm init, keygen, generate, create, start — and the
// guest stays up, lists its three credentials on the console, logs root in
// on the serial console, and powers off gracefully at credvm stop.
func TestNewcomer(t *testing.T) {
	needGuests(t)
	r := newRepo(t)
	images := t.TempDir()
	os.Symlink(kernel, filepath.Join(images, "vmlinuz"))
	os.Symlink(userImg, filepath.Join(images, "initrd.img"))
	dir := filepath.Join(t.TempDir(), "mine")
	out := r.credvm("init", dir, "--images", images)
	for _, want := range []string{"created a credvm repository in " + dir, "machines/my-vm/machine.toml", "credvm vars generate my-vm"} {
		if !strings.Contains(out, want) {
			t.Errorf("init output lacks %q:\n%s", want, out)
		}
	}
	if strings.Contains(out, "not built yet") {
		t.Errorf("init says the image is missing:\n%s", out)
	}
	r.dir = dir
	for i, kv := range r.env {
		if strings.HasPrefix(kv, "CREDVM_REPO=") {
			r.env[i] = "CREDVM_REPO=" + dir
		}
	}
	r.credvm("vars", "keygen")
	r.credvm("vars", "generate", "my-vm")
	r.credvm("create", "my-vm", "--state-dir", r.state)
	r.credvm("start", "my-vm", "--state-dir", r.state)
	t.Cleanup(func() { r.credvmErr("stop", "my-vm", "--state-dir", r.state, "--shutdown-timeout", "1s") })

	console := r.waitConsole(t, "my-vm", "(automatic login)", 1)
	for _, want := range []string{"API_KEY", "APP_USER", "ENVIRONMENT", "verify ok: 3 credentials match the manifest"} {
		if !strings.Contains(console, want) {
			t.Errorf("the console lacks %q:\n%s", want, lastLines(console, 30))
		}
	}
	time.Sleep(3 * time.Second) // the demo guest would be powering off by now
	if got := r.list(t)["my-vm"]; !strings.HasPrefix(got, "current|true|") {
		t.Fatalf("after boot the guest is %s, want running", got)
	}
	consoleThroughTmux(t, r, "my-vm")
	if got := r.list(t)["my-vm"]; !strings.HasPrefix(got, "current|true|") {
		t.Fatalf("after detaching from the console the guest is %s, want running", got)
	}
	out = r.credvm("stop", "my-vm", "--state-dir", r.state)
	if !strings.Contains(out, "my-vm: stopped") {
		t.Errorf("stop: %s", out)
	}
	if console := r.waitConsole(t, "my-vm", "reboot: Power down", 1); !strings.Contains(console, "systemd-shutdown") {
		t.Errorf("not a graceful power-off:\n%s", lastLines(console, 10))
	}
	if st := r.credvm("status", "my-vm", "--state-dir", r.state); !strings.Contains(st, "exit status 0") {
		t.Errorf("status after stop:\n%s", st)
	}
}

// consoleThroughTmux attaches `credvm console` on a tmux terminal, runs a
// command in the guest's root shell, sees its output, and detaches with
// Ctrl-].
func consoleThroughTmux(t *testing.T, r *repo, name string) {
	t.Helper()
	attachThroughTmux(t, nil, "", fmt.Sprintf("%s console %s --state-dir %s", credvmBin, name, r.state), name, true)
}

// attachThroughTmux runs command (a `credvm console`) on a tmux terminal
// with env in dir, waits for it to attach, runs a command in the guest's
// root shell when the guest has one, and detaches with Ctrl-].
func attachThroughTmux(t *testing.T, env []string, dir, command, name string, shell bool) {
	t.Helper()
	if _, err := exec.LookPath("tmux"); err != nil {
		t.Log("tmux not installed: the console is not tested")
		return
	}
	sock := "credvm-test-" + strconv.Itoa(os.Getpid()) + "-" + name
	tmux := func(args ...string) string {
		c := exec.Command("tmux", append([]string{"-L", sock}, args...)...)
		c.Env, c.Dir = env, dir
		out, err := c.CombinedOutput()
		if err != nil {
			t.Fatalf("tmux %s: %v\n%s", strings.Join(args, " "), err, out)
		}
		return string(out)
	}
	defer exec.Command("tmux", "-L", sock, "kill-server").Run()
	tmux("new-session", "-d", "-s", "c", "-x", "160", "-y", "40", command+"; echo console-exit=$?; sleep 60")
	pane := func() string { return tmux("capture-pane", "-p", "-t", "c", "-S", "-200") }
	waitFor := func(want string) string {
		deadline := time.Now().Add(60 * time.Second)
		for {
			p := pane()
			if strings.Contains(p, want) {
				return p
			}
			if time.Now().After(deadline) {
				t.Fatalf("the console never showed %q:\n%s", want, p)
			}
			time.Sleep(300 * time.Millisecond)
		}
	}
	waitFor("attached to " + name + "'s console; Ctrl-] detaches")
	if shell {
		tmux("send-keys", "-t", "c", "", "Enter")
		tmux("send-keys", "-t", "c", "echo console-$((6*7))", "Enter")
		waitFor("console-42")
	}
	tmux("send-keys", "-t", "c", "C-]")
	p := waitFor("console-exit=")
	if !strings.Contains(p, "detached from "+name+"'s console; it keeps running") || !strings.Contains(p, "console-exit=0") {
		t.Errorf("detaching:\n%s", p)
	}
}
