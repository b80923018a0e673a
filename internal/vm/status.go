package vm

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"

	"github.com/credvm/credvm/internal/hypervisor"
	"github.com/credvm/credvm/internal/repo"
	"github.com/credvm/credvm/internal/spec"
	"github.com/credvm/credvm/internal/vars"
)

// Statuses, as `credvm list` shows them.
const (
	// Current: running the configuration and vars it should.
	StatusCurrent = "current"
	// Outdated: the repository's machine file changed since `update`.
	StatusOutdated = "outdated"
	// Stale: running an older configuration or older vars than current.
	StatusStale = "stale"
	// NotBooted: not running.
	StatusNotBooted = "not booted"
	// Failed: the last run ended in an error.
	StatusFailed = "failed"
)

// Status is one VM's state. It never holds a secret.
type Status struct {
	Name    string     `json:"name"`
	Repo    string     `json:"repository"`
	Running bool       `json:"running"`
	PID     int        `json:"supervisor_pid,omitempty"`
	QEMU    int        `json:"qemu_pid,omitempty"`
	Status  string     `json:"status"`
	Reasons []string   `json:"reasons,omitempty"`
	Fix     string     `json:"fix,omitempty"`
	Current string     `json:"current_config,omitempty"`
	Run     *RunRecord `json:"last_run,omitempty"`
	// Hypervisor is what the running hypervisor itself reports.
	Hypervisor string `json:"hypervisor_state,omitempty"`
	ConsoleLog string `json:"console_log"`
}

// Inspect computes a VM's status; see Inspector.
func Inspect(s StateDir, probe bool) (*Status, error) {
	return (&Inspector{Probe: probe}).Inspect(s)
}

// Inspector computes VMs' statuses. It reads small files only — the VM's
// records, its machine file in the repository and the vars' metadata — and
// opens each repository once, so that listing hundreds of VMs stays fast.
// With Probe, it also asks a running hypervisor for its VM's state (one
// round trip on its socket). It is safe for concurrent use.
type Inspector struct {
	Probe bool
	mu    sync.Mutex
	repos map[string]*repoResult
}

type repoResult struct {
	r   *repo.Repo
	err error
}

func (in *Inspector) repo(root string) (*repo.Repo, error) {
	in.mu.Lock()
	defer in.mu.Unlock()
	if in.repos == nil {
		in.repos = map[string]*repoResult{}
	}
	if rr, ok := in.repos[root]; ok {
		return rr.r, rr.err
	}
	r, err := repo.Open(root)
	in.repos[root] = &repoResult{r, err}
	return r, err
}

// Inspect computes one VM's status.
func (in *Inspector) Inspect(s StateDir) (*Status, error) {
	probe := in.Probe
	reg, err := s.Registration()
	if err != nil {
		return nil, err
	}
	st := &Status{Name: s.Name, Repo: reg.Repo, Current: reg.Current.Hash, ConsoleLog: s.Console()}
	st.Running, st.PID = s.Running()
	var rec *RunRecord
	if _, err := os.Stat(s.RunLock()); err == nil {
		// A VM that never ran has no run lock (nor run record).
		if rec, err = s.RunRecord(); err != nil {
			return nil, err
		}
	}
	st.Run = rec
	if rec != nil && st.Running {
		st.QEMU = rec.QEMU
	}

	// Outdated: the repository moved on since `update`.
	r, err := in.repo(reg.Repo)
	if err != nil {
		st.Reasons = append(st.Reasons, "repository unreadable: "+err.Error())
	}
	if r != nil && !reg.Current.unchanged(r.Path("machines", s.Name, filepath.Base(reg.Current.File))) {
		repoMachine, err := r.Machine(s.Name)
		if err != nil {
			st.Reasons = append(st.Reasons, "machine file unreadable: "+firstLine(err))
		} else if ConfigHash(repoMachine) != reg.Current.Hash {
			st.Reasons = append(st.Reasons, "configuration changed since the last update")
		}
	}
	outdated := len(st.Reasons) > 0

	switch {
	case st.Running:
		cur, err := reg.Machine()
		if err != nil {
			return nil, err
		}
		if d, err := hypervisor.For(cur); err == nil && probe {
			if p, ok := d.(hypervisor.Prober); ok {
				if state, err := p.Probe(s.Path()); err == nil {
					st.Hypervisor = state
				} else {
					st.Hypervisor = "unreachable: " + err.Error()
				}
			}
		}
		stale := false
		if rec == nil || rec.ConfigHash != reg.Current.Hash {
			st.Reasons = append(st.Reasons, "running an older configuration")
			stale = true
		}
		if r != nil {
			e := &vars.Engine{Repo: r}
			if rec == nil || rec.VarsHash != VarsHash(e, cur) {
				st.Reasons = append(st.Reasons, "running with older vars (secrets were rotated)")
				stale = true
			}
		}
		switch {
		case outdated:
			st.Status, st.Fix = StatusOutdated, "credvm update -R "+s.Name
		case stale:
			st.Status, st.Fix = StatusStale, "credvm restart "+s.Name
		default:
			st.Status = StatusCurrent
		}
	case rec != nil && (rec.State == RunFailed || rec.State == RunRunning):
		st.Status, st.Fix = StatusFailed, "credvm start "+s.Name
		if rec.State == RunRunning {
			// The record says running but nobody holds the lock: the
			// supervisor itself died.
			rec.State, rec.Error = RunFailed, "credvm's supervisor ended without recording why (killed?)"
		}
		if outdated {
			st.Fix = "credvm update " + s.Name + " && credvm start " + s.Name
		}
	case outdated:
		st.Status, st.Fix = StatusOutdated, "credvm update "+s.Name
	default:
		st.Status, st.Fix = StatusNotBooted, "credvm start "+s.Name
	}
	return st, nil
}

func firstLine(err error) string {
	msg := err.Error()
	for i, c := range msg {
		if c == '\n' {
			return msg[:i]
		}
	}
	return msg
}

// Create registers a machine of a repository as a VM.
func Create(s StateDir, r *repo.Repo, m *spec.Machine) error {
	if err := s.Ensure(); err != nil {
		return err
	}
	l, err := s.LockState()
	if err != nil {
		return err
	}
	defer l.Release()
	if s.Exists() {
		return fmt.Errorf("vm %s already exists (%s); `credvm update %s` applies a changed configuration", s.Name, s.Path(), s.Name)
	}
	cfg, err := NewConfig(m, r.Path(m.File))
	if err != nil {
		return err
	}
	return s.SaveRegistration(&Registration{Name: s.Name, Repo: r.Root, Created: cfg.Updated, Current: cfg})
}

// Destroy removes the VM's state directory; it must not be running.
func Destroy(s StateDir) error {
	if running, pid := s.Running(); running {
		return fmt.Errorf("vm %s is running (pid %d): stop it first", s.Name, pid)
	}
	if !s.Exists() {
		return fmt.Errorf("vm %s does not exist in %s", s.Name, s.Root)
	}
	l, err := s.LockState()
	if err != nil {
		return err
	}
	defer l.Release()
	// Only what credvm put there; anything else stays and is reported.
	for _, f := range []string{"vm.json", "run.json", "run.lock", "state.lock", "console.log", "console.log.1", "console.log.2", "console.log.3", "supervisor.log", "qmp.sock", "ch.sock", "fc.sock", "serial.sock", "vsock.sock", "double.jsonl"} {
		if err := os.Remove(s.File(f)); err != nil && !errors.Is(err, os.ErrNotExist) {
			return err
		}
	}
	if err := os.Remove(s.Path()); err != nil {
		left, _ := filepath.Glob(filepath.Join(s.Path(), "*"))
		return fmt.Errorf("vm %s: state removed, but %s holds other files: %v", s.Name, s.Path(), left)
	}
	return nil
}
