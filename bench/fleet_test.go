package bench

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// benchHost is a fleet host on this machine: a network namespace of the
// benchmark's own, reached from a "laptop" namespace over a veth (no
// address outside them), with its own root and sshd.
type benchHost struct {
	laptop, ns, root, cfg, id string
	sshd                      *exec.Cmd
}

func newBenchHost(b *testing.B) *benchHost {
	b.Helper()
	if os.Geteuid() != 0 {
		b.Skip("needs root (network namespaces, sshd)")
	}
	for _, tool := range []string{"/usr/sbin/sshd", "ssh", "ssh-keygen", "ssh-keyscan"} {
		if _, err := exec.LookPath(tool); err != nil {
			b.Skipf("%s not installed", tool)
		}
	}
	rb := make([]byte, 3)
	rand.Read(rb)
	tag := hex.EncodeToString(rb)
	h := &benchHost{laptop: "credvm-bl-" + tag, ns: "credvm-bh-" + tag}
	run := func(args ...string) {
		if out, err := exec.Command(args[0], args[1:]...).CombinedOutput(); err != nil {
			b.Fatalf("%s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
	run("ip", "netns", "add", h.laptop)
	b.Cleanup(func() { exec.Command("ip", "netns", "del", h.laptop).Run() })
	run("ip", "netns", "add", h.ns)
	b.Cleanup(func() { exec.Command("ip", "netns", "del", h.ns).Run() })
	run("ip", "-n", h.laptop, "link", "add", "bl0", "type", "veth", "peer", "name", "bh0")
	run("ip", "-n", h.laptop, "link", "set", "bh0", "netns", h.ns)
	run("ip", "-n", h.laptop, "addr", "add", "10.81.0.1/30", "dev", "bl0")
	run("ip", "-n", h.laptop, "link", "set", "bl0", "up")
	run("ip", "-n", h.ns, "addr", "add", "10.81.0.2/30", "dev", "bh0")
	run("ip", "-n", h.ns, "link", "set", "bh0", "up")
	h.root, _ = os.MkdirTemp("/tmp", "cvbh")
	os.Chmod(h.root, 0o755)
	b.Cleanup(func() { os.RemoveAll(h.root) })
	os.MkdirAll(filepath.Join(h.root, "etc/ssh"), 0o755)
	run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", filepath.Join(h.root, "etc/ssh/ssh_host_ed25519_key"))
	h.id = filepath.Join(h.root, "id_ed25519")
	run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", h.id)
	os.MkdirAll("/run/sshd", 0o755)
	h.cfg = filepath.Join(h.root, "sshd_config")
	os.WriteFile(h.cfg, []byte(fmt.Sprintf("ListenAddress 10.81.0.2\nHostKey %s/etc/ssh/ssh_host_ed25519_key\nPidFile %s/sshd.pid\nAuthorizedKeysFile %s.pub\nPermitRootLogin yes\nPasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\nStrictModes no\n", h.root, h.root, h.id)), 0o600)
	h.sshd = exec.Command("ip", "netns", "exec", h.ns, "/usr/sbin/sshd", "-D", "-f", h.cfg)
	if err := h.sshd.Start(); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { h.sshd.Process.Kill(); h.sshd.Wait() })
	time.Sleep(300 * time.Millisecond)
	return h
}

// inLaptop runs credvm from the laptop namespace.
func (h *benchHost) inLaptop(f *fixture, args ...string) *exec.Cmd {
	c := exec.Command("ip", append([]string{"netns", "exec", h.laptop, credvmBin}, args...)...)
	c.Env, c.Dir = f.env, f.dir
	return c
}

// BenchmarkFleet: from a laptop-side repository, against one host over
// SSH — `list` with 500 VMs registered on the host, and `deploy` of an
// unchanged VM — each as a ratio to `ssh HOST true` over the same pinned,
// multiplexed connection.
func BenchmarkFleet(b *testing.B) {
	h := newBenchHost(b)
	f := newFixture(b)
	runtime := b.TempDir()
	f.env = append(f.env, "XDG_RUNTIME_DIR="+runtime)
	b.Cleanup(func() { exec.Command("pkill", "-f", "ControlPath="+runtime).Run() })
	if out, err := h.inLaptop(f, "host", "add", "hv1", "root@10.81.0.2", "--ssh-option", "IdentityFile="+h.id, "--root", h.root, "--yes").CombinedOutput(); err != nil {
		b.Fatalf("host add: %v\n%s", err, out)
	}
	f.machine(b, "app", "[vm]\nkernel = \"/boot/vmlinuz\"\nmem = 256\n[credentials]\nENV = { value = \"prod\" }\n")
	inv, _ := os.ReadFile(filepath.Join(f.dir, "inventory.toml"))
	os.WriteFile(filepath.Join(f.dir, "inventory.toml"), append(inv, []byte("\n[machines.app]\nhost = \"hv1\"\n")...), 0o644)
	// The first deploy copies credvm and creates the VM (its start fails:
	// no guest is booted here); what is measured is the next ones.
	h.inLaptop(f, "deploy", "app").Run()
	// 500 VMs registered on the host, not booted: a fixture there.
	hostRepo, hostState := filepath.Join(h.root, "var/lib/credvm/repo"), filepath.Join(h.root, "var/lib/microvms")
	var names []string
	for i := range 500 {
		n := fmt.Sprintf("vm%03d", i)
		os.MkdirAll(filepath.Join(hostRepo, "machines", n), 0o755)
		os.WriteFile(filepath.Join(hostRepo, "machines", n, "machine.toml"), []byte("[vm]\nkernel = \"/boot/vmlinuz\"\nmem = 256\n[credentials]\nENV = { value = \"prod\" }\n"), 0o644)
		names = append(names, n)
	}
	c := exec.Command(filepath.Join(h.root, "var/lib/credvm/bin/credvm"), append([]string{"create", "--repo", hostRepo, "--state-dir", hostState}, names...)...)
	if out, err := c.CombinedOutput(); err != nil {
		b.Fatalf("host fixture: %v\n%s", err, out[:min(len(out), 500)])
	}
	dest := []string{"netns", "exec", h.laptop, "ssh", "-o", "BatchMode=yes", "-o", "UserKnownHostsFile=" + filepath.Join(f.dir, "sops/hosts/hv1/known_hosts"),
		"-o", "HostKeyAlias=credvm-host-hv1", "-o", "ControlMaster=auto", "-o", "ControlPath=" + filepath.Join(runtime, "credvm-ssh", "%C"), "-o", "ControlPersist=60",
		"-o", "IdentityFile=" + h.id, "root@10.81.0.2", "true"}
	measure := func(name string, cmd func() *exec.Cmd) time.Duration {
		var ts []time.Duration
		for range 5 {
			d, _ := timeCmd(b, cmd())
			ts = append(ts, d)
		}
		b.ReportMetric(ms(median(ts)), name+"-ms")
		return median(ts)
	}
	b.ResetTimer()
	for range b.N {
		base := measure("ssh-true", func() *exec.Cmd { return exec.Command("ip", dest...) })
		list := measure("list-500", func() *exec.Cmd { return h.inLaptop(f, "list") })
		deploy := measure("deploy-unchanged", func() *exec.Cmd { return h.inLaptop(f, "deploy", "app") })
		b.ReportMetric(float64(list)/float64(base), "list-vs-ssh")
		b.ReportMetric(float64(deploy)/float64(base), "deploy-vs-ssh")
	}
}
