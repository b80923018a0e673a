package e2e

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
)

// testHost is a host of the fleet on this machine: a network namespace
// of the test's own (reached from another, the "laptop", over a veth —
// addresses inside those namespaces only), its own root for credvm's
// paths and /etc/ssh, and its own sshd with its own host key.
type testHost struct {
	t       *testing.T
	ns      *netns
	name    string
	addr    string
	root    string
	cfg     string
	sshd    *exec.Cmd
	hostPub string
}

func startTestHost(t *testing.T, laptop *netns, name, laptopAddr, addr, authorized string) *testHost {
	t.Helper()
	ns := newNetns(t)
	la, ha := "la-"+name, "hv-"+name
	laptop.ip("link", "add", la, "type", "veth", "peer", "name", ha)
	laptop.ip("link", "set", ha, "netns", ns.name)
	laptop.ip("addr", "add", laptopAddr+"/30", "dev", la)
	laptop.ip("link", "set", la, "up")
	ns.ip("addr", "add", addr+"/30", "dev", ha)
	ns.ip("link", "set", ha, "up")
	ns.ip("link", "set", "lo", "up")
	root, err := os.MkdirTemp("/tmp", "cvhost")
	if err != nil {
		t.Fatal(err)
	}
	os.Chmod(root, 0o755)
	t.Cleanup(func() { os.RemoveAll(root) })
	h := &testHost{t: t, ns: ns, name: name, addr: addr, root: root}
	os.MkdirAll(filepath.Join(root, "etc/ssh"), 0o755)
	h.newHostKey()
	os.MkdirAll("/run/sshd", 0o755)
	h.cfg = filepath.Join(root, "sshd_config")
	os.WriteFile(h.cfg, []byte(fmt.Sprintf(`ListenAddress %s
HostKey %s/etc/ssh/ssh_host_ed25519_key
PidFile %s/sshd.pid
AuthorizedKeysFile %s
PermitRootLogin yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
`, addr, root, root, authorized)), 0o600)
	h.start(ns)
	t.Cleanup(h.stop)
	return h
}

func (h *testHost) newHostKey() {
	key := filepath.Join(h.root, "etc/ssh/ssh_host_ed25519_key")
	os.Remove(key)
	os.Remove(key + ".pub")
	if out, err := exec.Command("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", key).CombinedOutput(); err != nil {
		h.t.Fatalf("ssh-keygen: %v\n%s", err, out)
	}
	fp, _ := exec.Command("ssh-keygen", "-lf", key+".pub").Output()
	h.hostPub = strings.Fields(string(fp))[1]
}

func (h *testHost) start(ns *netns) {
	h.sshd = exec.Command("ip", "netns", "exec", ns.name, "/usr/sbin/sshd", "-D", "-e", "-f", h.cfg)
	var log bytes.Buffer
	h.sshd.Stderr = &log
	// Its sessions hold the log pipe too: stopping the listener must not
	// wait for them.
	h.sshd.WaitDelay = time.Second
	if err := h.sshd.Start(); err != nil {
		h.t.Fatal(err)
	}
	for i := 0; i < 100; i++ {
		if out, _ := exec.Command("ip", "netns", "exec", ns.name, "ss", "-ltn").Output(); strings.Contains(string(out), h.addr+":22") {
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	h.t.Fatalf("sshd did not listen on %s:\n%s", h.addr, log.String())
}

// dropSSH is the host's sshd gone at once: the listener and every
// session's sshd in its namespace (the connections this machine's ssh
// multiplexes over die with them); its VMs keep running.
func (h *testHost) dropSSH() {
	out, _ := exec.Command("ip", "netns", "pids", h.ns.name).Output()
	for _, pid := range strings.Fields(string(out)) {
		if comm, _ := os.ReadFile("/proc/" + pid + "/comm"); strings.TrimSpace(string(comm)) == "sshd" {
			exec.Command("kill", "-9", pid).Run()
		}
	}
	h.stop()
}

func (h *testHost) stop() {
	if h.sshd != nil && h.sshd.Process != nil {
		h.sshd.Process.Kill()
		h.sshd.Wait()
		h.sshd = nil
	}
}

// TestFleet: a host added with its fingerprint confirmed (and refused
// unconfirmed); a VM deployed to it over SSH — credvm copied there, its
// vars restored, its machine key sealed to the host key — and started;
// list, status and stop follow the placement; no user key and no
// plaintext machine key on the host's disk or in any argv; a changed
// host key is refused; a host whose sshd is gone is listed unreachable.
func TestFleet(t *testing.T) {
	needGuests(t)
	needRoot(t)
	for _, tool := range []string{"ssh", "ssh-keyscan", "ssh-keygen", "/usr/sbin/sshd", "ss"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s not installed (apt-get install openssh-server openssh-client iproute2)", tool)
		}
	}
	t.Parallel()
	laptop := newNetns(t)
	laptop.ip("link", "set", "lo", "up")
	r := newRepo(t)
	sshDir := t.TempDir()
	id := filepath.Join(sshDir, "id_ed25519")
	if out, err := exec.Command("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", id).CombinedOutput(); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	h1 := startTestHost(t, laptop, "h1", "10.79.0.1", "10.79.0.2", id+".pub")
	runtime := t.TempDir()
	r.env = append(r.env, "XDG_RUNTIME_DIR="+runtime)
	// ssh's multiplexers name themselves by their socket, under runtime.
	t.Cleanup(func() { exec.Command("pkill", "-f", runtime+"/credvm-ssh").Run() })
	onLaptop := func(args ...string) (string, error) { return laptop.credvm(r, args...) }

	// host add: shown, refused without a yes, pinned with one.
	out, err := onLaptop("host", "add", "h1", "root@10.79.0.2", "--ssh-option", "IdentityFile="+id, "--root", h1.root)
	if err == nil || !strings.Contains(out, "+ host h1 (root@10.79.0.2): ssh-ed25519 "+h1.hostPub) {
		t.Fatalf("host add without a yes: %v\n%s", err, out)
	}
	if out, err = onLaptop("host", "add", "h1", "root@10.79.0.2", "--ssh-option", "IdentityFile="+id, "--root", h1.root, "--yes"); err != nil {
		t.Fatalf("host add: %v\n%s", err, out)
	}
	if !strings.Contains(out, "host h1 (root@10.79.0.2): key "+h1.hostPub+" pinned") {
		t.Errorf("host add: %s", out)
	}
	if out, err = onLaptop("host", "list"); err != nil || !regexp.MustCompile(`(?m)^h1 +root@10\.79\.0\.2 +`+regexp.QuoteMeta(h1.hostPub)+` *$`).MatchString(out) {
		t.Errorf("host list: %v\n%s", err, out)
	}

	r.machine("fleet1", fastGuest("credvm.volume=data credvm.idle")+`
[[vm.volumes]]
image = "data.img"
size = 16
[vars.generators.g]
script = 'head -c 24 /dev/urandom | od -An -tx1 | tr -d " \n" > "$out/key"'
files.key = {}
[credentials]
KEY = { var = "g/key" }
`)
	inv, _ := os.ReadFile(filepath.Join(r.dir, "inventory.toml"))
	os.WriteFile(filepath.Join(r.dir, "inventory.toml"), append(inv, []byte("\n[machines.fleet1]\nhost = \"h1\"\n")...), 0o644)
	r.credvm("vars", "generate", "fleet1")
	secret := r.credvm("vars", "get", "fleet1", "g/key")
	machineKey := r.credvm("vars", "machine-key", "fleet1", "-o", "-")
	userKey, _ := os.ReadFile(filepath.Join(r.dir, "key.txt"))

	out, err = onLaptop("deploy", "fleet1")
	t.Cleanup(func() {
		bin := filepath.Join(h1.root, "var/lib/credvm/bin/credvm")
		exec.Command(bin, "stop", "fleet1", "--state-dir", filepath.Join(h1.root, "var/lib/microvms"), "--shutdown-timeout", "1s").Run()
	})
	if err != nil || !strings.Contains(out, "fleet1 on h1: created and started") {
		t.Fatalf("deploy: %v\n%s", err, out)
	}
	// Enabled at boot on the host, by the real systemctl on the host's
	// files (--root: systemd is not PID 1 here), its unit running the
	// host's credvm.
	if !strings.Contains(out, "; credvm@fleet1.service enabled at boot") {
		t.Errorf("deploy did not say it enabled the VM's unit:\n%s", out)
	}
	wants := func(h *testHost, vm string) bool {
		_, err := os.Lstat(filepath.Join(h.root, "etc/systemd/system/multi-user.target.wants", "credvm@"+vm+".service"))
		return err == nil
	}
	if !wants(h1, "fleet1") {
		t.Errorf("credvm@fleet1.service is not enabled on h1")
	}
	if unit, _ := os.ReadFile(filepath.Join(h1.root, "etc/systemd/system/credvm@.service")); !strings.Contains(string(unit), "ExecStart="+h1.root+"/var/lib/credvm/bin/credvm run --systemd") {
		t.Errorf("the host's unit does not run its credvm:\n%s", unit)
	}
	console := filepath.Join(h1.root, "var/lib/microvms/fleet1/console.log")
	deadline := time.Now().Add(2 * time.Minute)
	for {
		b, _ := os.ReadFile(console)
		if bytes.Contains(b, []byte("credvm-guest: idle")) {
			if !bytes.Contains(b, []byte(sha([]byte(secret))+" KEY")) {
				t.Errorf("the guest on h1 did not get its secret:\n%s", grepLines(string(b), "credvm-guest:"))
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the VM on h1 never came up:\n%s", b)
		}
		time.Sleep(300 * time.Millisecond)
	}

	// Lifecycle and list follow the placement.
	out, _ = onLaptop("list")
	if !strings.Contains(out, "host h1:") || !strings.Contains(out, "fleet1") {
		t.Errorf("list:\n%s", out)
	}
	out, _ = onLaptop("list", "--json")
	var rows []map[string]any
	json.Unmarshal([]byte(out), &rows)
	found := false
	for _, row := range rows {
		if row["name"] == "fleet1" && row["host"] == "h1" && row["running"] == true {
			found = true
		}
	}
	if !found {
		t.Errorf("list --json has no running fleet1 on h1:\n%s", out)
	}
	if out, err = onLaptop("status", "fleet1"); err != nil || !strings.Contains(out, "fleet1: current") {
		t.Errorf("status over ssh: %v\n%s", err, out)
	}
	// The console of a VM on a host: this terminal attached to the host's
	// `credvm console` over ssh -t; Ctrl-] reaches it and detaches.
	attachThroughTmux(t, r.env, r.dir, "ip netns exec "+laptop.name+" "+credvmBin+" console fleet1", "fleet1", false)
	if out, _ = onLaptop("status", "fleet1"); !strings.Contains(out, "running") {
		t.Errorf("fleet1 after detaching from its console:\n%s", out)
	}

	// A second deploy of the unchanged VM: nothing copied, nothing restarted.
	if out, err = onLaptop("deploy", "fleet1"); err != nil || !strings.Contains(out, "fleet1 on h1: configuration unchanged") || strings.Contains(out, "created") || strings.Contains(out, "enabled at boot") {
		t.Errorf("deploy again: %v\n%s", err, out)
	}

	// Nothing secret on the host's disk: no user key, no plaintext machine
	// key, no secret; none in the hypervisor's argv either.
	noLeaks(t, map[string][]byte{"the user's key": bytes.TrimSpace(lastLine(userKey)), "the machine key": []byte(strings.TrimSpace(machineKey)), "the secret": []byte(secret)}, h1.root)
	var rec struct {
		PID int `json:"hypervisor_pid"`
	}
	b, _ := os.ReadFile(filepath.Join(h1.root, "var/lib/microvms/fleet1/run.json"))
	json.Unmarshal(b, &rec)
	if rec.PID > 0 {
		r.checkProcess(fmt.Sprint(rec.PID), "QEMU on h1", [][]byte{[]byte(secret), []byte(strings.TrimSpace(machineKey))})
	}

	// A rotation over both hosts, one VM at a time, each health-checked by
	// its guest's receipt on its host; fleet2's guest (declared newer than
	// the systemd it reads SMBIOS as) reports its credential cut, which
	// stops the rollout there.
	h2 := startTestHost(t, laptop, "h2", "10.79.0.5", "10.79.0.6", id+".pub")
	if out, err = onLaptop("host", "add", "h2", "root@10.79.0.6", "--ssh-option", "IdentityFile="+id, "--root", h2.root, "--yes"); err != nil {
		t.Fatalf("host add h2: %v\n%s", err, out)
	}
	r.machine("fleet2", fastGuest("credvm.idle", "guest_systemd = 257")+`
[vars.generators.big]
script = 'head -c 2500 /dev/urandom | od -An -tx1 | tr -d " \n" > "$out/v"'
files.v = {}
[credentials]
BIG = { var = "big/v" }
`)
	// A third VM, on h1: deployed with fleet2 in one command, the two
	// hosts in parallel.
	r.machine("fleet3", fastGuest("credvm.idle")+`
[vars.generators.g]
script = 'head -c 24 /dev/urandom | od -An -tx1 | tr -d " \n" > "$out/key"'
files.key = {}
[credentials]
KEY = { var = "g/key" }
`)
	// And a fourth, on h2.
	r.machine("fleet4", fastGuest("credvm.idle")+`
[vars.generators.g]
script = 'head -c 24 /dev/urandom | od -An -tx1 | tr -d " \n" > "$out/key"'
files.key = {}
[credentials]
KEY = { var = "g/key" }
`)
	inv, _ = os.ReadFile(filepath.Join(r.dir, "inventory.toml"))
	os.WriteFile(filepath.Join(r.dir, "inventory.toml"), append(inv, []byte("\n[machines.fleet2]\nhost = \"h2\"\n\n[machines.fleet3]\nhost = \"h1\"\ntags = [\"web\"]\n\n[machines.fleet4]\nhost = \"h2\"\n")...), 0o644)
	r.credvm("vars", "generate", "fleet2", "fleet3", "fleet4")
	t.Cleanup(func() {
		for _, c := range []struct {
			h  *testHost
			vm string
		}{{h2, "fleet2"}, {h1, "fleet3"}, {h2, "fleet4"}} {
			bin := filepath.Join(c.h.root, "var/lib/credvm/bin/credvm")
			exec.Command(bin, "stop", c.vm, "--state-dir", filepath.Join(c.h.root, "var/lib/microvms"), "--shutdown-timeout", "1s").Run()
		}
	})
	out, err = onLaptop("deploy", "fleet2", "fleet3", "fleet4")
	for _, want := range []string{"fleet2 on h2: created and started (qemu pid ", "fleet3 on h1: created and started (qemu pid ", "fleet4 on h2: created and started (qemu pid "} {
		if err != nil || !strings.Contains(out, want) {
			t.Fatalf("deploy of three VMs to two hosts lacks %q: %v\n%s", want, err, out)
		}
	}
	if out, _ = onLaptop("list"); strings.Count(out, "fleet") != 4 || !strings.Contains(out, "host h2:") {
		t.Errorf("list of four VMs on two hosts:\n%s", out)
	}
	// Filtered by this repository's tags, and by host.
	if out, err = onLaptop("list", "--tag", "web"); err != nil || !strings.Contains(out, "fleet3") || strings.Count(out, "fleet") != 1 {
		t.Errorf("list --tag web (fleet3 only): %v\n%s", err, out)
	}
	if out, err = onLaptop("list", "--host", "h2"); err != nil || !strings.HasPrefix(out, "host h2:\n") || !strings.Contains(out, "fleet2") || !strings.Contains(out, "fleet4") || strings.Count(out, "fleet") != 2 {
		t.Errorf("list --host h2 (fleet2 and fleet4 only): %v\n%s", err, out)
	}
	out, err = onLaptop("rotate", "fleet1", "fleet3", "fleet4", "fleet2")
	for _, want := range []string{
		"1. fleet1 (on h1): regenerate g (and dependents); restart, then healthy when its guest reports its credentials on h1",
		"fleet1: rotated, restarted, healthy",
		"fleet3: rotated, restarted, healthy",
		"fleet4: rotated, restarted, healthy",
		"fleet2: rotated and restarted, but UNHEALTHY: vm fleet2 on h2: its guest reports credentials cut: BIG",
		"roll fleet2 back:  credvm vars rollback fleet2 big && credvm deploy fleet2",
	} {
		if err == nil || !strings.Contains(out, want) {
			t.Errorf("rotation across hosts lacks %q: %v\n%s", want, err, out)
		}
	}
	newSecret := r.credvm("vars", "get", "fleet1", "g/key")
	if b, _ := os.ReadFile(console); newSecret == secret || !bytes.Contains(b, []byte(sha([]byte(newSecret))+" KEY")) {
		t.Errorf("fleet1's guest on h1 did not get its rotated secret")
	}

	// Move fleet1, running, from h1 to h2: the same secret in the guest,
	// gone from h1, placed on h2 in the inventory.
	out, err = onLaptop("move", "fleet1", "--to", "h2")
	if err != nil || !strings.Contains(out, "fleet1: moved from h1 to h2 (running, healthy)") {
		t.Fatalf("move: %v\n%s", err, out)
	}
	t.Cleanup(func() {
		bin := filepath.Join(h2.root, "var/lib/credvm/bin/credvm")
		exec.Command(bin, "stop", "fleet1", "--state-dir", filepath.Join(h2.root, "var/lib/microvms"), "--shutdown-timeout", "1s").Run()
	})
	if b, _ := os.ReadFile(filepath.Join(h2.root, "var/lib/microvms/fleet1/console.log")); !bytes.Contains(b, []byte(sha([]byte(newSecret))+" KEY")) {
		t.Errorf("fleet1's guest on h2 does not have its secret:\n%s", grepLines(string(b), "credvm-guest:"))
	}
	if b, _ := os.ReadFile(filepath.Join(h2.root, "var/lib/microvms/fleet1/console.log")); !bytes.Contains(b, []byte("credvm-guest: volume data count 3")) {
		t.Errorf("fleet1's volume did not move with it (its third boot should count 3):\n%s", grepLines(string(b), "credvm-guest: volume"))
	}
	if _, err := os.Stat(filepath.Join(h1.root, "var/lib/microvms/fleet1/vm.json")); err == nil {
		t.Errorf("fleet1 is still registered on h1 after the move")
	}
	if _, err := os.Stat(filepath.Join(h1.root, "var/lib/microvms/fleet1/data.img")); err != nil {
		t.Errorf("the old host's volume was not kept: %v", err)
	}
	if inv, _ := os.ReadFile(filepath.Join(r.dir, "inventory.toml")); !strings.Contains(string(inv), "[machines.fleet1]\nhost = \"h2\"") {
		t.Errorf("the placement was not recorded:\n%s", inv)
	}
	if wants(h1, "fleet1") || !wants(h2, "fleet1") {
		t.Errorf("after the move, fleet1's unit should be enabled on h2 only (h1 %v, h2 %v)", wants(h1, "fleet1"), wants(h2, "fleet1"))
	}
	console = filepath.Join(h2.root, "var/lib/microvms/fleet1/console.log")

	if out, err = onLaptop("stop", "fleet1"); err != nil {
		t.Errorf("stop over ssh: %v\n%s", err, out)
	}
	if out, _ = onLaptop("status", "fleet1"); !strings.Contains(out, "stopped") {
		t.Errorf("status after a remote stop:\n%s", out)
	}

	// A move that fails its health check on the new host is undone:
	// fleet2 (whose guest reports its credential cut) removed from h1 and
	// running on h2 again, still placed there.
	out, err = onLaptop("move", "fleet2", "--to", "h1")
	if err == nil || !strings.Contains(out, "vm fleet2 on h1: its guest reports credentials cut: BIG; it runs on h2 again") {
		t.Errorf("a failing move: %v\n%s", err, out)
	}
	if _, err := os.Stat(filepath.Join(h1.root, "var/lib/microvms/fleet2/vm.json")); err == nil || wants(h1, "fleet2") {
		t.Errorf("the failed move left fleet2 registered or enabled on h1")
	}
	if out, _ = onLaptop("status", "fleet2"); !strings.Contains(out, "running") {
		t.Errorf("fleet2 after the failed move:\n%s", out)
	}
	if inv, _ := os.ReadFile(filepath.Join(r.dir, "inventory.toml")); !strings.Contains(string(inv), "[machines.fleet2]\nhost = \"h2\"") {
		t.Errorf("the failed move changed the placement:\n%s", inv)
	}

	// A host that drops mid-rollout stops it there, cleanly: h2's sshd
	// (and its sessions, and this machine's connection to it) killed
	// while fleet3's restarted guest on h1 boots; fleet4 on h2 is not
	// regenerated.
	pidOf := func(h *testHost, vm string) int {
		var rec struct {
			PID int `json:"hypervisor_pid"`
		}
		b, _ := os.ReadFile(filepath.Join(h.root, "var/lib/microvms", vm, "run.json"))
		json.Unmarshal(b, &rec)
		return rec.PID
	}
	before3, before4 := pidOf(h1, "fleet3"), r.credvm("vars", "get", "fleet4", "g/key")
	dropped := make(chan bool, 1)
	go func() {
		deadline := time.Now().Add(3 * time.Minute)
		for pidOf(h1, "fleet3") == before3 {
			if time.Now().After(deadline) {
				dropped <- false
				return
			}
			time.Sleep(100 * time.Millisecond)
		}
		h2.dropSSH()
		dropped <- true
	}()
	out, err = onLaptop("rotate", "fleet3", "fleet4")
	if !<-dropped {
		t.Fatalf("fleet3 was never restarted on h1:\n%s", out)
	}
	for _, want := range []string{
		"fleet3: rotated, restarted, healthy",
		"fleet4: NOT rotated: its host cannot be reached (vars unchanged): vm fleet4 on h2: host h2: ssh: connect to host 10.79.0.6 port 22: Connection refused",
		"credvm rotate fleet4",
	} {
		if err == nil || !strings.Contains(out, want) {
			t.Errorf("a rotation whose second host dropped lacks %q: %v\n%s", want, err, out)
		}
	}
	if r.credvm("vars", "get", "fleet4", "g/key") != before4 {
		t.Errorf("fleet4's secret changed though its host was gone")
	}
	h2.start(h2.ns)

	// A host that cannot be reached stops a rollout before it changes
	// anything: no secret is regenerated for a VM that would not get it.
	h2.dropSSH()
	before := r.credvm("vars", "get", "fleet1", "g/key")
	if out, err = onLaptop("rotate", "fleet1"); err == nil || !strings.Contains(out, "vm fleet1 on h2: host h2: ") {
		t.Errorf("rotate with its host down: %v\n%s", err, out)
	}
	if r.credvm("vars", "get", "fleet1", "g/key") != before {
		t.Errorf("a rotation that could not reach its host changed the secret")
	}
	h2.start(h2.ns)

	// fleet1, stopped, moved back to h1 with --purge: stays stopped, its
	// volume copied (the copy h1 kept from the first move replaced), and
	// nothing of it left on h2.
	b, _ = os.ReadFile(filepath.Join(h2.root, "var/lib/microvms/fleet1/data.img"))
	volume := sha(b)
	out, err = onLaptop("move", "fleet1", "--to", "h1", "--purge")
	if err != nil || !strings.Contains(out, "fleet1: moved from h2 to h1 (stopped, as it was)") || !strings.Contains(out, "fleet1: removed its volumes from h2: data.img") {
		t.Errorf("move --purge: %v\n%s", err, out)
	}
	if _, err := os.Stat(filepath.Join(h2.root, "var/lib/microvms/fleet1")); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("move --purge left fleet1's directory on h2: %v", err)
	}
	if b, _ := os.ReadFile(filepath.Join(h1.root, "var/lib/microvms/fleet1/data.img")); sha(b) != volume {
		t.Errorf("fleet1's volume on h1 is not the one it had on h2")
	}
	if out, _ = onLaptop("status", "fleet1"); !strings.Contains(out, "not booted") && !strings.Contains(out, "stopped") {
		t.Errorf("fleet1 moved while stopped should stay stopped:\n%s", out)
	}

	// After all of it, with the VMs on both hosts running: no secret, no
	// machine key and no user key on either host's disk, nor in the argv
	// or environment of any process of the three namespaces (supervisors,
	// hypervisors, sshd sessions, ssh multiplexers).
	all := map[string][]byte{"the user's key": bytes.TrimSpace(lastLine(userKey))}
	for _, v := range []struct{ vm, file string }{{"fleet1", "g/key"}, {"fleet2", "big/v"}, {"fleet3", "g/key"}, {"fleet4", "g/key"}} {
		all[v.vm+"'s secret"] = []byte(r.credvm("vars", "get", v.vm, v.file))
		all[v.vm+"'s machine key"] = []byte(strings.TrimSpace(r.credvm("vars", "machine-key", v.vm, "-o", "-")))
	}
	noLeaks(t, all, h1.root, h2.root)
	var secrets [][]byte
	for _, v := range all {
		secrets = append(secrets, v)
	}
	checked := 0
	for _, ns := range []*netns{laptop, h1.ns, h2.ns} {
		out, _ := exec.Command("ip", "netns", "pids", ns.name).Output()
		for _, pid := range strings.Fields(string(out)) {
			checked += r.checkProcess(pid, "process "+pid+" in "+ns.name, secrets)
		}
	}
	if checked < 6 {
		t.Errorf("only %d processes checked for leaks in the fleet's namespaces", checked)
	}

	// A changed host key is refused, by host add and by ssh itself.
	h1.dropSSH()
	h1.newHostKey()
	h1.start(h1.ns)
	out, err = onLaptop("host", "add", "h1", "root@10.79.0.2", "--ssh-option", "IdentityFile="+id, "--root", h1.root)
	if err == nil || !strings.Contains(out, "~ host h1: its key changed from ") {
		t.Errorf("host add with a changed key: %v\n%s", err, out)
	}
	if out, err = onLaptop("list"); !strings.Contains(out, "host h1: unreachable (") || !strings.Contains(out, "Host key verification failed") {
		t.Errorf("a host whose key changed: %v\n%s", err, out)
	}

	// A host whose sshd is gone: unreachable, and list still answers for
	// the others.
	h1.dropSSH()
	out, err = onLaptop("list")
	if err != nil || !strings.Contains(out, "host h1: unreachable (") || !strings.Contains(out, "host h2:") {
		t.Errorf("list with h1 down: %v\n%s", err, out)
	}
}

// noLeaks fails the test for every file under the roots holding one of
// the values.
func noLeaks(t *testing.T, values map[string][]byte, roots ...string) {
	t.Helper()
	for _, root := range roots {
		filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
			if err != nil || d.IsDir() || strings.HasSuffix(p, ".sock") {
				return nil
			}
			b, _ := os.ReadFile(p)
			for what, v := range values {
				if leaks(b, v) {
					t.Errorf("%s is on a host's disk: %s", what, p)
				}
			}
			return nil
		})
	}
}

func lastLine(b []byte) []byte {
	lines := bytes.Split(bytes.TrimSpace(b), []byte("\n"))
	return lines[len(lines)-1]
}
