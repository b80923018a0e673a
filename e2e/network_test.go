package e2e

import (
	"crypto/rand"
	"encoding/hex"
	"os/exec"
	"strings"
	"testing"
	"time"
)

// netns is a network namespace the test creates, and removes at its end:
// the only place test traffic goes.
type netns struct {
	t    *testing.T
	name string
}

func newNetns(t *testing.T) *netns {
	t.Helper()
	b := make([]byte, 4)
	rand.Read(b)
	n := &netns{t: t, name: "credvm-t-" + hex.EncodeToString(b)}
	if out, err := exec.Command("ip", "netns", "add", n.name).CombinedOutput(); err != nil {
		t.Skipf("cannot create a network namespace: %v: %s", err, out)
	}
	t.Cleanup(func() { exec.Command("ip", "netns", "del", n.name).Run() })
	return n
}

// ip runs ip(8) in the namespace.
func (n *netns) ip(args ...string) string {
	n.t.Helper()
	out, err := exec.Command("ip", append([]string{"-n", n.name}, args...)...).CombinedOutput()
	if err != nil {
		n.t.Fatalf("ip -n %s %s: %v\n%s", n.name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// credvm runs credvm inside the namespace.
func (n *netns) credvm(r *repo, args ...string) (string, error) {
	cmd := exec.Command("ip", append([]string{"netns", "exec", n.name, credvmBin}, args...)...)
	cmd.Env, cmd.Dir = r.env, r.dir
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// createAndStart creates VM name and starts it inside the namespace,
// stopping it when the test ends.
func (n *netns) createAndStart(r *repo, name string) {
	n.t.Helper()
	r.credvm("create", name, "--state-dir", r.state)
	if out, err := n.credvm(r, "start", name, "--state-dir", r.state, "--shutdown-timeout", "2s"); err != nil {
		n.t.Fatalf("start %s: %v\n%s", name, err, out)
	}
	n.t.Cleanup(func() { n.credvm(r, "stop", name, "--state-dir", r.state) })
}

// TestTapNetwork: a tap that does not exist is created (vnet_hdr, on the
// bridge), the guest gets an address on it and answers the host over it,
// and the tap goes when the VM stops; a tap that existed stays. Everything
// lives in a network namespace the test creates.
func TestTapNetwork(t *testing.T) {
	needGuests(t)
	needRoot(t)
	if _, err := exec.LookPath("busybox"); err != nil {
		t.Skip("busybox not installed (its ping answers the test)")
	}
	t.Parallel()
	ns := newNetns(t)
	ns.ip("link", "add", "br0", "type", "bridge")
	ns.ip("addr", "add", "10.55.0.1/24", "dev", "br0")
	ns.ip("link", "set", "br0", "up")
	ns.ip("tuntap", "add", "mine0", "mode", "tap")
	r := newRepo(t)
	r.machine("net", fastGuest("credvm.ip=10.55.0.2/24 credvm.idle")+`
[[vm.interfaces]]
type = "tap"
id = "vm-net0"
bridge = "br0"
mac = "02:00:00:00:55:02"
[[vm.interfaces]]
type = "tap"
id = "mine0"
[credentials]
A = { value = "a" }
`)
	ns.createAndStart(r, "net")
	link := ns.ip("-d", "link", "show", "vm-net0")
	for _, want := range []string{"master br0", "tun type tap", "vnet_hdr on"} {
		if !strings.Contains(link, want) {
			t.Errorf("the tap is not %q:\n%s", want, link)
		}
	}
	deadline := time.Now().Add(90 * time.Second)
	for {
		out, err := exec.Command("ip", "netns", "exec", ns.name, "busybox", "ping", "-c", "1", "-W", "2", "10.55.0.2").CombinedOutput()
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			console, _ := ns.credvm(r, "logs", "net", "--state-dir", r.state)
			t.Fatalf("the guest never answered over the tap: %s\n%s", out, console)
		}
		time.Sleep(time.Second)
	}
	if out, err := ns.credvm(r, "stop", "net", "--state-dir", r.state); err != nil {
		t.Fatalf("stop: %v\n%s", err, out)
	}
	if out, _ := exec.Command("ip", "-n", ns.name, "link", "show", "vm-net0").CombinedOutput(); !strings.Contains(string(out), "does not exist") {
		t.Errorf("the tap credvm created is still there after stop:\n%s", out)
	}
	ns.ip("link", "show", "mine0") // the user's own tap stays

	// A bridge that does not exist: the error names it and the fix, and
	// the tap made for it is gone again.
	r.machine("nobridge", fastGuest("")+`
[[vm.interfaces]]
type = "tap"
id = "vm-nb0"
bridge = "nope0"
[credentials]
A = { value = "a" }
`)
	r.credvm("create", "nobridge", "--state-dir", r.state)
	out, err := ns.credvm(r, "run", "nobridge", "--state-dir", r.state)
	want := "credvm: vm nobridge: interface vm-nb0: bridge nope0 not found: create it (ip link add nope0 type bridge; ip link set nope0 up) or fix bridge in [[vm.interfaces]]"
	if err == nil || !strings.Contains(out, want) {
		t.Errorf("run with a missing bridge: %v\n%s\nwant %s", err, out, want)
	}
	if out, _ := exec.Command("ip", "-n", ns.name, "link", "show", "vm-nb0").CombinedOutput(); !strings.Contains(string(out), "does not exist") {
		t.Errorf("the tap made for a missing bridge was left:\n%s", out)
	}
}

// TestMacvtap: a macvtap on a link (a veth in the test's namespace) is
// created with the machine's MAC, handed to QEMU as its open /dev/tapN
// (root's, 0600: QEMU could not open it), the guest's interface comes up
// on it, and it goes when the VM stops.
func TestMacvtap(t *testing.T) {
	needGuests(t)
	needRoot(t)
	if _, err := exec.LookPath("busybox"); err != nil {
		t.Skip("busybox not installed")
	}
	t.Parallel()
	ns := newNetns(t)
	ns.ip("link", "add", "up0", "type", "veth", "peer", "name", "peer0")
	ns.ip("addr", "add", "10.56.0.1/24", "dev", "peer0")
	ns.ip("link", "set", "up0", "up")
	ns.ip("link", "set", "peer0", "up")
	r := newRepo(t)
	r.machine("mv", fastGuest("credvm.ip=10.56.0.2/24 credvm.idle")+`
[[vm.interfaces]]
type = "macvtap"
id = "vm-mv0"
link = "up0"
mac = "02:00:00:00:56:02"
[credentials]
A = { value = "a" }
`)
	ns.createAndStart(r, "mv")
	if link := ns.ip("-d", "link", "show", "vm-mv0"); !strings.Contains(link, "macvtap") || !strings.Contains(link, "02:00:00:00:56:02") {
		t.Errorf("the macvtap:\n%s", link)
	}
	// The guest's interface is up on it. (A ping from the veth's peer is
	// not answered in this namespace yet — see the issue 15 note — so the
	// test stops at the device.)
	console := r.waitConsole(t, "mv", "credvm-guest: idle", 1)
	if !strings.Contains(console, "credvm-guest: net eth0 10.56.0.2/24 up") {
		t.Errorf("the guest has no interface on the macvtap:\n%s", grepLines(console, "credvm-guest:"))
	}
	if out, err := ns.credvm(r, "stop", "mv", "--state-dir", r.state); err != nil {
		t.Fatalf("stop: %v\n%s", err, out)
	}
	if out, _ := exec.Command("ip", "-n", ns.name, "link", "show", "vm-mv0").CombinedOutput(); !strings.Contains(string(out), "does not exist") {
		t.Errorf("the macvtap credvm created is still there after stop:\n%s", out)
	}
}
