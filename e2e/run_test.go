package e2e

import (
	"bufio"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestInterruptPowersOff: Ctrl-C (SIGINT) on `credvm run` asks the guest to
// power off over QMP; the systemd guest shuts down cleanly, well before the
// timeout after which QEMU would be told to quit. Meanwhile a second run of
// the same VM is refused.
func TestInterruptPowersOff(t *testing.T) {
	needGuests(t)
	t.Parallel()
	r := newRepo(t)
	// Keep the guest up: its report unit would power it off by itself.
	toml := strings.Replace(vmSection("systemd"), "panic=-1", "panic=-1 systemd.mask=credvm-report.service", 1)
	r.machine("idle", toml+"[credentials]\nAPI_KEY = { value = \"k\" }\n")

	cmd := exec.Command(credvmBin, "run", "idle", "--state-dir", r.state, "-q", "--shutdown-timeout", "90s")
	cmd.Env, cmd.Dir = r.env, r.dir
	stderr, _ := cmd.StderrPipe()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	lines := make(chan string, 100)
	go func() {
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
	}()
	// Wait until the guest's service ran: it is fully up.
	console := filepath.Join(r.state, "idle", "console.log")
	deadline := time.Now().Add(3 * time.Minute)
	for {
		b, _ := os.ReadFile(console)
		if strings.Contains(string(b), "app: done") && strings.Contains(string(b), "Reached target") {
			break
		}
		if time.Now().After(deadline) {
			cmd.Process.Kill()
			t.Fatalf("the guest did not come up:\n%s", b)
		}
		time.Sleep(500 * time.Millisecond)
	}
	time.Sleep(3 * time.Second) // let logind start watching the power button

	out, err := r.credvmErr("run", "idle", "--state-dir", r.state)
	if err == nil || !strings.Contains(out, "vm idle is already running") {
		t.Errorf("second run of a running VM: %v\n%s", err, out)
	}

	start := time.Now()
	cmd.Process.Signal(syscall.SIGINT)
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	var err2 error
	select {
	case err2 = <-done:
	case <-time.After(2 * time.Minute):
		cmd.Process.Kill()
		t.Fatal("credvm run did not end after SIGINT")
	}
	var all []string
	for l := range lines {
		all = append(all, l)
	}
	if err2 != nil {
		t.Errorf("credvm run after SIGINT: %v\n%s", err2, strings.Join(all, "\n"))
	}
	text := strings.Join(all, "\n")
	if !strings.Contains(text, "powering the guest off") || strings.Contains(text, "telling QEMU to quit") {
		t.Errorf("want a graceful power-off without quit:\n%s", text)
	}
	b, _ := os.ReadFile(console)
	if !strings.Contains(string(b), "reboot: Power down") {
		t.Errorf("the guest did not shut down cleanly:\n%s", lastLines(string(b), 15))
	}
	t.Logf("graceful power-off took %s", time.Since(start).Round(100*time.Millisecond))
}

func lastLines(s string, n int) string {
	l := strings.Split(s, "\n")
	if len(l) > n {
		l = l[len(l)-n:]
	}
	return strings.Join(l, "\n")
}

// TestDevices: the disks, 9p shares and network interfaces of [vm] reach
// the guest as virtio devices (QEMU accepts the options credvm builds).
func TestDevices(t *testing.T) {
	needGuests(t)
	t.Parallel()
	r := newRepo(t)
	disk, disk2 := filepath.Join(r.dir, "disk.img"), filepath.Join(r.dir, "disk2.img")
	os.WriteFile(disk, make([]byte, 1<<20), 0o600)
	os.WriteFile(disk2, make([]byte, 1<<20), 0o600)
	share := filepath.Join(r.dir, "share")
	os.Mkdir(share, 0o755)
	toml := vmSection("fast") + `
[[vm.disks]]
image = "` + disk + `"
[[vm.disks]]
image = "` + disk2 + `"
read_only = true
[[vm.shares]]
proto = "9p"
source = "` + share + `"
tag = "data"
[[vm.interfaces]]
type = "user"
mac = "02:00:00:00:00:01"
[credentials]
A = { value = "a" }
`
	r.machine("devices", toml)
	b := r.run("devices")
	b.mustVerify(t)
	// virtio PCI device IDs (transitional): 0x1000 net, 0x1001 block, 0x1009 9p.
	for id, n := range map[string]int{"0x1000": 1, "0x1001": 2, "0x1009": 1} {
		if got := strings.Count(b.console, "credvm-guest: device virtio "+id); got != n {
			t.Errorf("virtio device %s: %d in the guest, want %d\n%s", id, got, n, grepLines(b.console, "device"))
		}
	}
}
