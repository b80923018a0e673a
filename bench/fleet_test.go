package bench

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

// benchHost is a fleet host on this machine: a network namespace of the
// benchmark's own, reached from a "laptop" namespace over a veth (no
// address outside them), with its own root and sshd.
type benchHost struct {
	laptop, ns, addr, root, cfg, id string
	sshd                            *exec.Cmd
}

// benchLaptop is the namespace the "laptop" side runs in.
func benchLaptop(b *testing.B) string {
	b.Helper()
	if os.Geteuid() != 0 {
		b.Skip("needs root (network namespaces, sshd)")
	}
	for _, tool := range []string{"/usr/sbin/sshd", "ssh", "ssh-keygen", "ssh-keyscan"} {
		if _, err := exec.LookPath(tool); err != nil {
			b.Skipf("%s not installed", tool)
		}
	}
	laptop := "credvm-bl-" + randomTag()
	benchRun(b, "ip", "netns", "add", laptop)
	b.Cleanup(func() { exec.Command("ip", "netns", "del", laptop).Run() })
	return laptop
}

func randomTag() string {
	rb := make([]byte, 3)
	rand.Read(rb)
	return hex.EncodeToString(rb)
}

func benchRun(b *testing.B, args ...string) {
	b.Helper()
	if out, err := exec.Command(args[0], args[1:]...).CombinedOutput(); err != nil {
		b.Fatalf("%s: %v\n%s", strings.Join(args, " "), err, out)
	}
}

// newBenchHost is host number n (its addresses 10.81.n.1 on the laptop's
// side, 10.81.n.2 on its own), reached from laptop.
func newBenchHost(b *testing.B, laptop string, n int) *benchHost {
	b.Helper()
	h := &benchHost{laptop: laptop, ns: "credvm-bh-" + randomTag(), addr: fmt.Sprintf("10.81.%d.2", n)}
	run := func(args ...string) { benchRun(b, args...) }
	run("ip", "netns", "add", h.ns)
	b.Cleanup(func() { exec.Command("ip", "netns", "del", h.ns).Run() })
	la, ha := fmt.Sprintf("bl%d", n), fmt.Sprintf("bh%d", n)
	run("ip", "-n", h.laptop, "link", "add", la, "type", "veth", "peer", "name", ha)
	run("ip", "-n", h.laptop, "link", "set", ha, "netns", h.ns)
	run("ip", "-n", h.laptop, "addr", "add", fmt.Sprintf("10.81.%d.1/30", n), "dev", la)
	run("ip", "-n", h.laptop, "link", "set", la, "up")
	run("ip", "-n", h.ns, "addr", "add", h.addr+"/30", "dev", ha)
	run("ip", "-n", h.ns, "link", "set", ha, "up")
	h.root, _ = os.MkdirTemp("/tmp", "cvbh")
	os.Chmod(h.root, 0o755)
	b.Cleanup(func() { os.RemoveAll(h.root) })
	os.MkdirAll(filepath.Join(h.root, "etc/ssh"), 0o755)
	run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", filepath.Join(h.root, "etc/ssh/ssh_host_ed25519_key"))
	h.id = filepath.Join(h.root, "id_ed25519")
	run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", h.id)
	os.MkdirAll("/run/sshd", 0o755)
	h.cfg = filepath.Join(h.root, "sshd_config")
	os.WriteFile(h.cfg, []byte(fmt.Sprintf("ListenAddress %s\nHostKey %s/etc/ssh/ssh_host_ed25519_key\nPidFile %s/sshd.pid\nAuthorizedKeysFile %s.pub\nPermitRootLogin yes\nPasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\nStrictModes no\n", h.addr, h.root, h.root, h.id)), 0o600)
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

// register puts n VMs (not booted) on the host, with the host's credvm
// (copied there by a first deploy).
func (h *benchHost) register(b *testing.B, n int) {
	b.Helper()
	hostRepo, hostState := filepath.Join(h.root, "var/lib/credvm/repo"), filepath.Join(h.root, "var/lib/microvms")
	var names []string
	for i := range n {
		name := fmt.Sprintf("vm%03d", i)
		os.MkdirAll(filepath.Join(hostRepo, "machines", name), 0o755)
		os.WriteFile(filepath.Join(hostRepo, "machines", name, "machine.toml"), []byte("[vm]\nkernel = \"/boot/vmlinuz\"\nmem = 256\n[credentials]\nENV = { value = \"prod\" }\n"), 0o644)
		names = append(names, name)
	}
	c := exec.Command(filepath.Join(h.root, "var/lib/credvm/bin/credvm"), append([]string{"create", "--repo", hostRepo, "--state-dir", hostState}, names...)...)
	if out, err := c.CombinedOutput(); err != nil {
		b.Fatalf("host fixture: %v\n%s", err, out[:min(len(out), 500)])
	}
}

// BenchmarkFleet: from a laptop-side repository, against hosts over SSH —
// `list` with 500 VMs registered on one host and on each of two, and
// `deploy` of an unchanged VM — each as a ratio to `ssh HOST true` over
// the same pinned, multiplexed connection.
func BenchmarkFleet(b *testing.B) {
	laptop := benchLaptop(b)
	hosts := []*benchHost{newBenchHost(b, laptop, 1), newBenchHost(b, laptop, 2)}
	f := newFixture(b)
	runtime := b.TempDir()
	f.env = append(f.env, "XDG_RUNTIME_DIR="+runtime, "XDG_CACHE_HOME="+b.TempDir())
	b.Cleanup(func() { exec.Command("pkill", "-f", runtime+"/credvm-ssh").Run() })
	var inv strings.Builder
	for i, h := range hosts {
		hn := fmt.Sprintf("hv%d", i+1)
		if out, err := h.inLaptop(f, "host", "add", hn, "root@"+h.addr, "--ssh-option", "IdentityFile="+h.id, "--root", h.root, "--yes").CombinedOutput(); err != nil {
			b.Fatalf("host add: %v\n%s", err, out)
		}
		fmt.Fprintf(&inv, "\n[machines.app%d]\nhost = %q\n", i+1, hn)
		f.machine(b, fmt.Sprintf("app%d", i+1), "[vm]\nkernel = \"/boot/vmlinuz\"\nmem = 256\n[credentials]\nENV = { value = \"prod\" }\n")
	}
	old, _ := os.ReadFile(filepath.Join(f.dir, "inventory.toml"))
	os.WriteFile(filepath.Join(f.dir, "inventory.toml"), append(old, inv.String()...), 0o644)
	// The first deploy copies credvm and creates the VMs (their start
	// fails: no guest is booted here); what is measured is the next ones.
	for i, h := range hosts {
		h.inLaptop(f, "deploy", fmt.Sprintf("app%d", i+1)).Run()
		h.register(b, 500)
	}
	h1 := hosts[0]
	dest := []string{"netns", "exec", laptop, "ssh", "-o", "BatchMode=yes", "-o", "UserKnownHostsFile=" + filepath.Join(f.dir, "sops/hosts/hv1/known_hosts"),
		"-o", "HostKeyAlias=credvm-host-hv1", "-o", "ControlMaster=auto", "-o", "ControlPath=" + filepath.Join(runtime, "credvm-ssh", "%C"), "-o", "ControlPersist=60",
		"-o", "IdentityFile=" + h1.id, "root@" + h1.addr, "true"}
	// Both hosts at once, as list asks them: the baseline of list over two.
	both := func() *exec.Cmd {
		d2 := slices.Clone(dest)
		for i, a := range d2 {
			switch {
			case strings.Contains(a, "hv1"):
				d2[i] = strings.ReplaceAll(a, "hv1", "hv2")
			case a == "IdentityFile="+h1.id:
				d2[i] = "IdentityFile=" + hosts[1].id
			case a == "root@"+h1.addr:
				d2[i] = "root@" + hosts[1].addr
			}
		}
		script := "ip " + shellJoin(dest) + " & ip " + shellJoin(d2) + "; wait"
		return exec.Command("sh", "-c", script)
	}
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
		deploy := measure("deploy-unchanged", func() *exec.Cmd { return h1.inLaptop(f, "deploy", "app1") })
		b.ReportMetric(float64(deploy)/float64(base), "deploy-vs-ssh")
		base2 := measure("ssh-true-both", both)
		list2 := measure("list-2x500", func() *exec.Cmd { return h1.inLaptop(f, "list") })
		b.ReportMetric(float64(list2)/float64(base), "list-2x500-vs-ssh")
		b.ReportMetric(float64(list2)/float64(base2), "list-2x500-vs-ssh-both")
	}
}

// shellJoin quotes args for sh.
func shellJoin(args []string) string {
	q := make([]string, len(args))
	for i, a := range args {
		q[i] = "'" + strings.ReplaceAll(a, "'", `'\''`) + "'"
	}
	return strings.Join(q, " ")
}
