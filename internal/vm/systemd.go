package vm

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"text/template"
	"time"

	"github.com/credvm/credvm/internal/atomicfile"
)

// unitTemplate is credvm@.service. credvm runs the VM in the foreground
// under systemd (Type=notify: ready once the hypervisor runs); SIGTERM from
// `systemctl stop` makes it power the guest off and stop the hypervisor
// after the shutdown timeout, inside TimeoutStopSec. It is parsed when a
// unit is written, not at start-up.
const unitTemplate = `# credvm@.service — written by ` + "`credvm systemd install`" + `.
# A VM created with ` + "`credvm create NAME`" + ` runs as credvm@NAME.service.
[Unit]
Description=credvm VM %i
Documentation=https://github.com/credvm/credvm#readme
Wants=network-online.target
After=network-online.target

[Service]
Type=notify
NotifyAccess=main
Environment=CREDVM_STATE_DIR={{.StateDir}}
ExecStart={{.Binary}} run --systemd --quiet --shutdown-timeout {{.Shutdown}} %i
KillMode=mixed
TimeoutStopSec={{.StopTimeout}}
Restart=on-failure
RestartSec=5s
NoNewPrivileges=yes
PrivateTmp=yes
# Hardening that still lets credvm run VMs: it creates taps (netlink),
# starts virtiofsd (namespaces, mounts), drops the hypervisor to its user,
# and opens the devices below. Not MemoryDenyWriteExecute (QEMU's TCG
# generates code), not RestrictNamespaces (virtiofsd's sandbox).
ProtectSystem=full
ProtectKernelTunables=yes
ProtectKernelModules=yes
ProtectKernelLogs=yes
ProtectControlGroups=yes
ProtectClock=yes
ProtectHostname=yes
LockPersonality=yes
RestrictRealtime=yes
RestrictSUIDSGID=yes
SystemCallArchitectures=native
DevicePolicy=closed
DeviceAllow=/dev/kvm rw
DeviceAllow=/dev/net/tun rw
DeviceAllow=/dev/vhost-net rw
DeviceAllow=/dev/vhost-vsock rw
DeviceAllow=/dev/fuse rw
DeviceAllow=char-macvtap rw
# ProtectHome= would hide keys and repositories under /home and /root:
# use it only when the machine key comes as the credential below.
#ProtectHome=read-only
# To decrypt with the machine's own key instead of a user key, store it
# encrypted with systemd-creds and pass it as the credential "age-key":
#LoadCredentialEncrypted=age-key:/etc/credstore.encrypted/credvm-%i.age-key

[Install]
WantedBy=multi-user.target
`

// UnitOptions configure credvm@.service.
type UnitOptions struct {
	// Binary is the credvm executable the unit runs.
	Binary string
	// StateRoot is the VMs' state root.
	StateRoot string
	// ShutdownTimeout is how long a guest gets to power off on stop.
	ShutdownTimeout time.Duration
	// NoReload: never `systemctl daemon-reload` (the unit is written for
	// another root than the running system's).
	NoReload bool
}

// Unit renders credvm@.service.
func Unit(o UnitOptions) (string, error) {
	t, err := template.New("unit").Parse(unitTemplate)
	if err != nil {
		return "", err
	}
	var b strings.Builder
	err = t.Execute(&b, map[string]string{
		"Binary":      o.Binary,
		"StateDir":    o.StateRoot,
		"Shutdown":    o.ShutdownTimeout.String(),
		"StopTimeout": fmt.Sprint(int((o.ShutdownTimeout + stopGrace + 10*time.Second).Seconds())),
	})
	return b.String(), err
}

// InstalledUnit says where InstallUnit wrote the unit, and whether
// systemd reloaded it.
type InstalledUnit struct {
	Path     string `json:"path"`
	Reloaded bool   `json:"reloaded"`
	// Unchanged: the unit there was this one already; nothing was
	// written or reloaded.
	Unchanged bool `json:"unchanged"`
}

// InstallUnit writes credvm@.service into dir and, when systemd runs the
// system, reloads it — unless the unit there is this one already.
func InstallUnit(dir string, o UnitOptions) (*InstalledUnit, error) {
	unit, err := Unit(o)
	if err != nil {
		return nil, err
	}
	p := filepath.Join(dir, "credvm@.service")
	// Every deploy installs it: a daemon-reload each time would cost the
	// host far more than the comparison.
	if cur, err := os.ReadFile(p); err == nil && string(cur) == unit {
		return &InstalledUnit{Path: p, Unchanged: true}, nil
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	if err := atomicfile.Write(p, []byte(unit), 0o644); err != nil {
		return nil, err
	}
	res := &InstalledUnit{Path: p}
	if o.NoReload {
		return res, nil
	}
	if _, err := os.Stat("/run/systemd/system"); err == nil {
		if out, err := exec.Command("systemctl", "daemon-reload").CombinedOutput(); err != nil {
			return res, fmt.Errorf("systemctl daemon-reload: %v: %s", err, out)
		}
		res.Reloaded = true
	}
	return res, nil
}

// UnitName is the systemd unit VM name runs as.
func UnitName(name string) string { return "credvm@" + name + ".service" }

// Systemd is systemd's view of a system root: Root "" is this system;
// another is a system tree systemctl edits offline (--root), as a host's
// root prefix in tests is.
type Systemd struct{ Root string }

// UnitDir is where credvm@.service goes.
func (sd Systemd) UnitDir() string { return filepath.Join(sd.root(), "etc/systemd/system") }

func (sd Systemd) root() string {
	if sd.Root == "" {
		return "/"
	}
	return sd.Root
}

// Booted reports whether systemd runs this system (sd_booted): then
// units are started and restarted through it, not only enabled.
func (sd Systemd) Booted() bool {
	if sd.Root != "" && sd.Root != "/" {
		return false
	}
	fi, err := os.Stat("/run/systemd/system")
	return err == nil && fi.IsDir()
}

// Available reports whether systemctl is installed here.
func (sd Systemd) Available() bool {
	_, err := exec.LookPath("systemctl")
	return err == nil
}

// Args is systemctl's command line for verb on units: against the running
// systemd when it runs this system, else offline on the root's files.
func (sd Systemd) Args(verb string, units ...string) []string {
	args := []string{"systemctl"}
	if !sd.Booted() {
		args = append(args, "--root="+sd.root())
	}
	return append(append(args, verb, "--quiet"), units...)
}

// Enabled reports whether the VM's unit is enabled at boot (its
// multi-user.target.wants link exists: no systemctl call per VM).
func (sd Systemd) Enabled(name string) bool {
	_, err := os.Lstat(filepath.Join(sd.UnitDir(), "multi-user.target.wants", UnitName(name)))
	return err == nil
}

// Run runs systemctl verb on the VM's unit.
func (sd Systemd) Run(verb, name string) error {
	args := sd.Args(verb, UnitName(name))
	if out, err := exec.Command(args[0], args[1:]...).CombinedOutput(); err != nil {
		return fmt.Errorf("%s: %v: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}
