package vm

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	_ "github.com/credvm/credvm/internal/hypervisor/drivers" // machine files name a hypervisor
	"github.com/credvm/credvm/internal/lock"
	"github.com/credvm/credvm/internal/repo"
	"github.com/credvm/credvm/internal/spec"
	"github.com/credvm/credvm/internal/testenv"
)

// fixture is a repository with machine vm1 and a state root, no guest.
type fixture struct {
	t     *testing.T
	dir   string
	repo  *repo.Repo
	state StateDir
}

const vm1 = "[vm]\nkernel = \"/boot/vmlinuz\"\nmem = 512\n[credentials]\nA = { value = \"a\" }\n"

func newFixture(t *testing.T) *fixture {
	t.Helper()
	testenv.PrivateState(t)
	f := &fixture{t: t, dir: t.TempDir(), state: StateDir{Root: filepath.Join(t.TempDir(), "state"), Name: "vm1"}}
	os.WriteFile(filepath.Join(f.dir, "credvm.toml"), nil, 0o644)
	f.writeMachine(vm1)
	r, err := repo.Open(f.dir)
	if err != nil {
		t.Fatal(err)
	}
	f.repo = r
	return f
}

func (f *fixture) writeMachine(content string) {
	f.t.Helper()
	d := filepath.Join(f.dir, "machines", "vm1")
	os.MkdirAll(d, 0o755)
	if err := os.WriteFile(filepath.Join(d, "machine.toml"), []byte(content), 0o644); err != nil {
		f.t.Fatal(err)
	}
}

func (f *fixture) create() {
	f.t.Helper()
	m, err := f.repo.Machine("vm1")
	if err != nil {
		f.t.Fatal(err)
	}
	if _, err := Create(f.state, f.repo, m); err != nil {
		f.t.Fatal(err)
	}
}

func (f *fixture) status() *Status {
	f.t.Helper()
	st, err := Inspect(f.state, false)
	if err != nil {
		f.t.Fatal(err)
	}
	return st
}

// hold takes the VM's run lock as a running supervisor would, with the
// run record it writes.
func (f *fixture) hold(rec *RunRecord) *lock.Lock {
	f.t.Helper()
	l, err := lock.Acquire(f.state.RunLock(), "VM vm1", 0, nil)
	if err != nil {
		f.t.Fatal(err)
	}
	f.t.Cleanup(func() { l.Release() })
	if rec != nil {
		if err := f.state.SaveRunRecord(rec); err != nil {
			f.t.Fatal(err)
		}
	}
	return l
}

func TestInspectStates(t *testing.T) {
	f := newFixture(t)
	if _, err := Inspect(f.state, false); !errors.As(err, new(*NoVMError)) {
		t.Fatalf("before create: %v, want a NoVMError", err)
	}
	f.create()
	reg, _ := f.state.Registration()
	m, _ := reg.Machine()
	current := &RunRecord{State: RunRunning, Supervisor: os.Getpid(), Hypervisor: "qemu", HypervisorPID: 42,
		ConfigHash: reg.Current.Hash, VarsHash: VarsHash(nil, m), Started: time.Now()}

	tests := []struct {
		name       string
		setup      func()
		status     string
		fix        string
		reasonPart string
	}{
		{"created, never run", func() {}, StatusNotBooted, "credvm start vm1", ""},
		{"running what it should", func() { f.hold(current) }, StatusCurrent, "", ""},
		{"running an older configuration", func() {
			old := *current
			old.ConfigHash = "older"
			f.hold(&old)
		}, StatusStale, "credvm restart vm1", "running an older configuration"},
		{"running, machine file edited", func() {
			f.hold(current)
			f.writeMachine(strings.Replace(vm1, "mem = 512", "mem = 640", 1))
		}, StatusOutdated, "credvm update -R vm1", "configuration changed since the last update"},
		// list trusts the file's recorded inode, size, mtime and ctime:
		// an edit of the same size, mtime set back, still changes ctime.
		{"running, edited to the same size with its mtime set back", func() {
			f.hold(current)
			p := filepath.Join(f.dir, "machines", "vm1", "machine.toml")
			fi, _ := os.Stat(p)
			os.WriteFile(p, []byte(strings.Replace(vm1, "mem = 512", "mem = 513", 1)), 0o644)
			os.Chtimes(p, fi.ModTime(), fi.ModTime())
		}, StatusOutdated, "credvm update -R vm1", "configuration changed since the last update"},
		{"running, rewritten with the same content", func() { f.hold(current) }, StatusCurrent, "", ""},
		{"last run failed", func() {
			rec := *current
			rec.State, rec.Error = RunFailed, "boom"
			f.hold(nil).Release()
			f.state.SaveRunRecord(&rec)
		}, StatusFailed, "credvm start vm1", ""},
		{"supervisor died without a word", func() {
			f.hold(nil).Release()
			f.state.SaveRunRecord(current)
		}, StatusFailed, "credvm start vm1", ""},
		{"stopped cleanly", func() {
			rec := *current
			rec.State, rec.Ended = RunExited, time.Now()
			f.hold(nil).Release()
			f.state.SaveRunRecord(&rec)
		}, StatusStopped, "credvm start vm1", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f.t = t
			f.writeMachine(vm1)
			os.Remove(f.state.File("run.json"))
			os.Remove(f.state.RunLock())
			tt.setup()
			st := f.status()
			if st.Status != tt.status || st.Fix != tt.fix {
				t.Errorf("status %q fix %q (reasons %v), want %q fix %q", st.Status, st.Fix, st.Reasons, tt.status, tt.fix)
			}
			if tt.reasonPart != "" && !slices.ContainsFunc(st.Reasons, func(r string) bool { return strings.Contains(r, tt.reasonPart) }) {
				t.Errorf("reasons %v, want one with %q", st.Reasons, tt.reasonPart)
			}
			if st.Running && (st.SupervisorPID != os.Getpid() || st.HypervisorPID != 42 || st.Hypervisor != "qemu") {
				t.Errorf("running: supervisor %d, %s %d", st.SupervisorPID, st.Hypervisor, st.HypervisorPID)
			}
		})
	}
}

// TestReadJSON: records of every size around readSmall's first read
// (4 KiB), whole or cut.
func TestReadJSON(t *testing.T) {
	dir := t.TempDir()
	for _, n := range []int{0, 10, 4000, 4090, 4096, 4097, 9000, 70000} {
		want := map[string]string{"v": strings.Repeat("x", n)}
		b, _ := json.Marshal(want)
		for _, cut := range []bool{false, true} {
			p := filepath.Join(dir, "r.json")
			data := b
			if cut {
				data = b[:len(b)-2]
			}
			os.WriteFile(p, data, 0o600)
			var got map[string]string
			err := readJSON(p, &got)
			if cut != (err != nil) || !cut && got["v"] != want["v"] {
				t.Errorf("%d bytes (cut %v): %v, %d bytes read back", len(data), cut, err, len(got["v"]))
			}
		}
	}
	if err := readJSON(filepath.Join(dir, "none"), new(any)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("a missing record: %v, want ErrNotExist", err)
	}
}

func TestUpdate(t *testing.T) {
	f := newFixture(t)
	f.create()
	res, err := Update(f.state, UpdateOptions{})
	if err != nil || res.Changed || len(res.Diff) != 0 || res.Stale {
		t.Fatalf("unchanged: %+v, %v", res, err)
	}
	f.writeMachine(strings.Replace(vm1, "mem = 512", "mem = 1024\nvcpu = 2", 1) + "B = { value = \"b\" }\n")
	before, _ := f.state.Registration()
	res, err = Update(f.state, UpdateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"+ credentials.B.value: \"b\"", "~ vm.mem: 512 → 1024", "~ vm.vcpu: 1 → 2"}
	for _, w := range want {
		if !slices.Contains(res.Diff, w) {
			t.Errorf("diff %q lacks %q", res.Diff, w)
		}
	}
	after, _ := f.state.Registration()
	if after.Current.Hash == before.Current.Hash || !strings.Contains(after.Current.Content, "mem = 1024") || !after.Created.Equal(before.Created) {
		t.Errorf("registration not updated: %+v", after.Current)
	}
	if !f.status().Running && f.status().Status != StatusNotBooted {
		t.Errorf("after update: %s", f.status().Status)
	}
	if _, err := Update(StateDir{Root: f.state.Root, Name: "nosuch"}, UpdateOptions{}); !errors.As(err, new(*NoVMError)) {
		t.Errorf("update of a missing VM: %v", err)
	}
}

func TestCreateTwiceAndDestroy(t *testing.T) {
	f := newFixture(t)
	f.create()
	m, _ := f.repo.Machine("vm1")
	if _, err := Create(f.state, f.repo, m); err == nil || !strings.Contains(err.Error(), "vm vm1 already exists") {
		t.Errorf("second create: %v", err)
	}
	for _, p := range []string{f.state.Path(), f.state.File("vm.json")} {
		if fi, err := os.Stat(p); err != nil || fi.Mode().Perm()&0o077 != 0 {
			t.Errorf("%s: %v, mode %v: want private", p, err, fi.Mode())
		}
	}
	os.WriteFile(f.state.Console(), []byte("log"), 0o600)
	res, err := Destroy(f.state, DestroyOptions{})
	if err != nil || !res.Removed || res.Stopped {
		t.Fatalf("destroy: %+v, %v", res, err)
	}
	if _, err := os.Stat(f.state.Path()); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("state dir left: %v", err)
	}
	if _, err := os.Stat(f.repo.Path("machines", "vm1", "machine.toml")); err != nil {
		t.Errorf("destroy without purge touched the repository: %v", err)
	}
}

func TestDestroyLeavesForeignFiles(t *testing.T) {
	f := newFixture(t)
	f.create()
	os.WriteFile(f.state.File("notes.txt"), []byte("mine"), 0o600)
	if _, err := Destroy(f.state, DestroyOptions{}); err == nil || !strings.Contains(err.Error(), "holds other files") {
		t.Errorf("destroy with a foreign file: %v", err)
	}
	if b, _ := os.ReadFile(f.state.File("notes.txt")); string(b) != "mine" {
		t.Error("a file credvm did not write was removed")
	}
}

// TestRunRecordReadsOldQEMUPid: records written before hypervisor_pid.
func TestRunRecordReadsOldQEMUPid(t *testing.T) {
	var rec RunRecord
	if err := json.Unmarshal([]byte(`{"state":"running","supervisor_pid":7,"qemu_pid":99}`), &rec); err != nil {
		t.Fatal(err)
	}
	if rec.HypervisorPID != 99 || rec.Supervisor != 7 || rec.State != RunRunning {
		t.Errorf("old record read as %+v", rec)
	}
	b, _ := json.Marshal(&RunRecord{HypervisorPID: 5, Hypervisor: "firecracker"})
	if strings.Contains(string(b), "qemu_pid") || !strings.Contains(string(b), `"hypervisor_pid":5`) {
		t.Errorf("new record written as %s", b)
	}
}

// TestHandshake: what the supervisor writes, start reads — both ends.
func TestHandshake(t *testing.T) {
	s := StateDir{Root: t.TempDir(), Name: "vm1"}
	tests := []struct {
		report  func(h *handshake)
		started *Started
		err     string
	}{
		{func(h *handshake) { h.started(123, "cloud-hypervisor") }, &Started{Name: "vm1", Hypervisor: "cloud-hypervisor", HypervisorPID: 123}, ""},
		{func(h *handshake) { h.ended(&RunningError{"vm1", 77}) }, nil, "vm vm1 is already running (pid 77)"},
		{func(h *handshake) { h.ended(errors.New("vars not ready:\nrun generate")) }, nil, "vars not ready:; run generate"},
		{func(h *handshake) { h.ended(nil) }, nil, "the supervisor ended without starting the hypervisor"},
	}
	for _, tt := range tests {
		r, w, _ := os.Pipe()
		h := handshake{w}
		tt.report(&h)
		h.report("late lines are ignored")
		w.Close()
		b := make([]byte, 4096)
		n, _ := r.Read(b)
		r.Close()
		line := strings.TrimSpace(strings.SplitN(string(b[:n]), "\n", 2)[0])
		st, err := s.parseReport(line)
		switch {
		case tt.err != "" && (err == nil || !strings.Contains(err.Error(), tt.err)):
			t.Errorf("%q: err %v, want %q", line, err, tt.err)
		case tt.err == "" && (err != nil || *st != *tt.started):
			t.Errorf("%q: %+v %v, want %+v", line, st, err, tt.started)
		}
	}
}

func TestSelect(t *testing.T) {
	f := newFixture(t)
	os.WriteFile(f.repo.Path("inventory.toml"), []byte("[machines.vm1]\ntags = [\"web\"]\n"), 0o644)
	f.create()
	if got, err := Select(f.state.Root, nil, []string{"web"}, false); err != nil || !slices.Equal(got, []string{"vm1"}) {
		t.Errorf("by tag: %v %v", got, err)
	}
	if _, err := Select(f.state.Root, nil, []string{"db"}, false); err == nil || !strings.Contains(err.Error(), "carries tag db") {
		t.Errorf("unknown tag: %v", err)
	}
	if _, err := Select(f.state.Root, nil, nil, false); err == nil || err.Error() != "name at least one VM (or use --tag)" {
		t.Errorf("nothing named: %v", err)
	}
	if got, _ := Select(f.state.Root, []string{"b", "a", "b"}, nil, false); !slices.Equal(got, []string{"a", "b"}) {
		t.Errorf("names: %v", got)
	}
	rows := ListStatuses(f.state.Root, []string{"vm1", "nothing-here"})
	if len(rows) != 1 || rows[0].Status.Status != StatusNotBooted {
		t.Errorf("list: %+v", rows)
	}
}

// logs -n N prints the last N lines as they were when it opened the log,
// even while the guest writes on (TestLifecycle saw a header, then lines
// written after it).
func TestConsoleLastLines(t *testing.T) {
	f := newFixture(t)
	f.create()
	for _, tc := range []struct {
		log   string
		lines int
		want  string
	}{
		{"a\nb\nc\n", 1, "c\n"},
		{"a\nb\nc\n", 2, "b\nc\n"},
		{"a\nb\npartial", 1, "partial"},
		{"a\r\nb\r\n", 1, "b\r\n"},
		{"only", 5, "only"},
		{"a\nb\n", 0, "a\nb\n"},
	} {
		os.WriteFile(f.state.Console(), []byte(tc.log), 0o600)
		log, err := f.state.OpenConsole(tc.lines)
		if err != nil {
			t.Fatal(err)
		}
		w, _ := os.OpenFile(f.state.Console(), os.O_WRONLY|os.O_APPEND, 0)
		w.WriteString("written later\n")
		w.Close()
		var out strings.Builder
		if err := log.Copy(context.Background(), &out, false); err != nil {
			t.Fatal(err)
		}
		log.Close()
		if out.String() != tc.want {
			t.Errorf("%q, last %d: got %q, want %q", tc.log, tc.lines, out.String(), tc.want)
		}
	}
}

// A VM whose vars are missing would be refused at start: the fix says to
// generate them first (list's FIX used to say `credvm start`, which failed
// again).
func TestStatusVarsNotReady(t *testing.T) {
	f := newFixture(t)
	f.writeMachine(vm1 + "[vars.generators.g]\nscript = 'printf x > \"$out/f\"'\nfiles.f = {}\n")
	f.create()
	st := f.status()
	if st.Status != StatusNotBooted || st.Fix != "credvm vars generate vm1 && credvm start vm1" {
		t.Errorf("status %q, fix %q", st.Status, st.Fix)
	}
	if len(st.Reasons) != 1 || st.Reasons[0] != "vars not ready, so a start would be refused: g missing" {
		t.Errorf("reasons %q", st.Reasons)
	}
}

func TestSSHMissing(t *testing.T) {
	all := func(string) bool { return true }
	none := func(string) bool { return false }
	for _, tc := range []struct {
		name string
		vm   spec.VM
		has  func(string) bool
		want string
	}{
		{"ready", spec.VM{VsockCID: 20, GuestSystemd: 256}, all, ""},
		{"nothing", spec.VM{}, none, "vm m: cannot ssh over vsock: the VM has no vsock: set vsock_cid = 3 (or more, unique on the host) in [vm] and `credvm update -R m`; the host has no /dev/vhost-vsock: modprobe vhost_vsock (it needs KVM's host side); the host has no /usr/lib/systemd/systemd-ssh-proxy (systemd ≥ 256): install a newer systemd, or reach the guest over its network; the guest's systemd must be 256 or newer (it puts sshd on vsock): declare guest_systemd in [vm] when it is"},
		{"old guest", spec.VM{VsockCID: 20, GuestSystemd: 252}, all, "vm m: cannot ssh over vsock: the guest's systemd must be 256 or newer (it puts sshd on vsock): declare guest_systemd in [vm] when it is"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := sshMissing(&spec.Machine{Name: "m", VM: tc.vm}, tc.has)
			got := ""
			if err != nil {
				got = err.Error()
			}
			if got != tc.want {
				t.Errorf("got  %s\nwant %s", got, tc.want)
			}
		})
	}
}

// placedStub is a Remote for the rotation's summary commands (never
// called).
type placedStub struct{ Remote }

// TestRotationSummaryCommands: what the summary tells the operator to run
// after a rollout stopped, by how it stopped.
func TestRotationSummaryCommands(t *testing.T) {
	remote := placedStub{}
	tests := []struct {
		name           string
		outcomes       []Outcome
		rollback, cont string
	}{
		{"unhealthy on a host", []Outcome{Healthy, Unhealthy, Untouched},
			"credvm vars rollback b g && credvm deploy b", "credvm rotate c"},
		{"its host dropped before its turn", []Outcome{Healthy, HostUnreachable, Untouched},
			"", "credvm rotate b c"},
		{"generation failed", []Outcome{RegenerateFailed, Untouched, Untouched},
			"", "credvm rotate b c"},
		{"all healthy", []Outcome{Healthy, Healthy, Healthy}, "", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rot := &Rotation{}
			for i, o := range tt.outcomes {
				rot.Steps = append(rot.Steps, &RotationStep{Name: string(rune('a' + i)), Generators: []string{"g"}, Outcome: o, remote: remote})
			}
			if got := rot.RollbackCommand(); got != tt.rollback {
				t.Errorf("rollback %q, want %q", got, tt.rollback)
			}
			if got := rot.ContinueCommand(); got != tt.cont {
				t.Errorf("continue %q, want %q", got, tt.cont)
			}
			if failed := rot.Failed(); (failed == nil) != (tt.rollback == "" && tt.cont == "") {
				t.Errorf("failed step %v", failed)
			}
		})
	}
}

// TestSystemdOffline: a VM's unit enabled and disabled at boot on a
// system tree by the real systemctl (--root: no running systemd needed),
// the way deploy does on a host.
func TestSystemdOffline(t *testing.T) {
	sd := Systemd{Root: t.TempDir()}
	if !sd.Available() {
		t.Skip("systemctl not installed")
	}
	if sd.Booted() {
		t.Fatal("a system tree other than / is never the booted one")
	}
	if got, want := strings.Join(sd.Args("enable", UnitName("app-vm-01")), " "), "systemctl --root="+sd.Root+" enable --quiet credvm@app-vm-01.service"; got != want {
		t.Errorf("args %q, want %q", got, want)
	}
	uo := UnitOptions{Binary: "/usr/bin/credvm", StateRoot: "/var/lib/microvms", ShutdownTimeout: time.Second, NoReload: true}
	if res, err := InstallUnit(sd.UnitDir(), uo); err != nil || res.Unchanged {
		t.Fatalf("install: %+v, %v", res, err)
	}
	if res, err := InstallUnit(sd.UnitDir(), uo); err != nil || !res.Unchanged {
		t.Fatalf("installing the same unit again: %+v, %v (want unchanged)", res, err)
	}
	if sd.Enabled("app-vm-01") {
		t.Fatal("enabled before enable")
	}
	if err := sd.Run("enable", "app-vm-01"); err != nil || !sd.Enabled("app-vm-01") {
		t.Fatalf("enable: %v, enabled %v", err, sd.Enabled("app-vm-01"))
	}
	if err := sd.Run("disable", "app-vm-01"); err != nil || sd.Enabled("app-vm-01") {
		t.Fatalf("disable: %v, enabled %v", err, sd.Enabled("app-vm-01"))
	}
}

// TestDestroyDisablesItsUnit: destroying a VM whose credvm@NAME.service
// is enabled disables it (by the real systemctl, on a system tree).
func TestDestroyDisablesItsUnit(t *testing.T) {
	sd := Systemd{Root: t.TempDir()}
	if !sd.Available() {
		t.Skip("systemctl not installed")
	}
	f := newFixture(t)
	f.create()
	if _, err := InstallUnit(sd.UnitDir(), UnitOptions{Binary: "/usr/bin/credvm", StateRoot: f.state.Root, ShutdownTimeout: time.Second, NoReload: true}); err != nil {
		t.Fatal(err)
	}
	if err := sd.Run("enable", "vm1"); err != nil {
		t.Fatal(err)
	}
	res, err := Destroy(f.state, DestroyOptions{Systemd: sd})
	if err != nil || res.Disabled != "credvm@vm1.service" || sd.Enabled("vm1") {
		t.Fatalf("destroy: %+v, %v; still enabled: %v", res, err, sd.Enabled("vm1"))
	}
	// A VM whose directory keeps a volume: destroyed all the same (the
	// volume reported), its unit disabled.
	f.create()
	sd.Run("enable", "vm1")
	os.WriteFile(f.state.File("data.img"), nil, 0o600)
	res, err = Destroy(f.state, DestroyOptions{Systemd: sd})
	if err == nil || !strings.Contains(err.Error(), "holds other files") || res.Disabled != "credvm@vm1.service" || sd.Enabled("vm1") {
		t.Fatalf("destroy keeping a volume: %+v, %v; still enabled: %v", res, err, sd.Enabled("vm1"))
	}
}
