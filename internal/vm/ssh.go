package vm

import (
	"fmt"
	"os"
	"strconv"
	"strings"

	"github.com/credvm/credvm/internal/spec"
)

// SSH over vsock, as systemd ≥ 256 sets it up: the guest's
// systemd-ssh-generator puts sshd on AF_VSOCK port 22, and the host's
// systemd-ssh-proxy connects ssh to vsock/CID. No network, no address:
// only the VM's CID.

// sshProxy is systemd's ProxyCommand helper (systemd ≥ 256).
var sshProxy = "/usr/lib/systemd/systemd-ssh-proxy"

// vhostVsock is the host device a vsock needs.
var vhostVsock = "/dev/vhost-vsock"

// SSHArgv is the ssh command that reaches the running VM over its vsock
// (user@vsock/CID through systemd-ssh-proxy), with the arguments to pass
// on; or an error naming what is missing and how to fix it.
func SSHArgv(s StateDir, user string, args []string) ([]string, error) {
	reg, err := s.Registration()
	if err != nil {
		return nil, err
	}
	if running, _ := s.Running(); !running {
		return nil, fmt.Errorf("vm %s is not running: start it first (credvm start %s)", s.Name, s.Name)
	}
	m, err := reg.Machine()
	if err != nil {
		return nil, err
	}
	if err := sshMissing(m, exists); err != nil {
		return nil, err
	}
	target := "vsock/" + strconv.FormatUint(uint64(m.VM.VsockCID), 10)
	if user != "" {
		target = user + "@" + target
	}
	argv := []string{"ssh", "-o", "ProxyCommand=" + sshProxy + " %h %p", "-o", "ProxyUseFdpass=yes",
		"-o", "CheckHostIP=no", target}
	return append(argv, args...), nil
}

func exists(p string) bool { _, err := os.Stat(p); return err == nil }

// sshMissing names what ssh over vsock lacks: the VM's vsock, the
// host's vhost-vsock or systemd-ssh-proxy, a guest systemd ≥ 256.
func sshMissing(m *spec.Machine, has func(string) bool) error {
	var missing []string
	if m.VM.VsockCID == 0 {
		missing = append(missing, "the VM has no vsock: set vsock_cid = 3 (or more, unique on the host) in [vm] and `credvm update -R "+m.Name+"`")
	}
	if !has(vhostVsock) {
		missing = append(missing, "the host has no "+vhostVsock+": modprobe vhost_vsock (it needs KVM's host side)")
	}
	if !has(sshProxy) {
		missing = append(missing, "the host has no "+sshProxy+" (systemd ≥ 256): install a newer systemd, or reach the guest over its network")
	}
	if m.VM.GuestSystemd < 256 {
		missing = append(missing, "the guest's systemd must be 256 or newer (it puts sshd on vsock): declare guest_systemd in [vm] when it is")
	}
	if len(missing) > 0 {
		return fmt.Errorf("vm %s: cannot ssh over vsock: %s", m.Name, strings.Join(missing, "; "))
	}
	return nil
}
