package vm

import (
	"context"
	"encoding/json"
	"fmt"
	"path/filepath"
	"strings"
	"sync"

	"github.com/credvm/credvm/internal/flake"
	"github.com/credvm/credvm/internal/hypervisor"
	"github.com/credvm/credvm/internal/repo"
	"github.com/credvm/credvm/internal/spec"
	"github.com/credvm/credvm/internal/tail"
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
	// NotBooted: created, never run.
	StatusNotBooted = "not booted"
	// Stopped: its last run ended cleanly (credvm stop, or the guest
	// powered off).
	StatusStopped = "stopped"
	// Failed: the last run ended in an error.
	StatusFailed = "failed"
)

// Status is one VM's state. It never holds a secret.
type Status struct {
	Name string `json:"name"`
	// Host is the host of the inventory the VM runs on, in a list across
	// hosts ("": this one).
	Host    string `json:"host,omitempty"`
	Repo    string `json:"repository"`
	Running bool   `json:"running"`
	// SupervisorPID is the credvm process running the VM; HypervisorPID
	// its hypervisor, Hypervisor the backend's name.
	SupervisorPID int    `json:"supervisor_pid,omitempty"`
	Hypervisor    string `json:"hypervisor,omitempty"`
	HypervisorPID int    `json:"hypervisor_pid,omitempty"`
	Status        string `json:"status"`
	// Reasons say why the status is what it is; Fix is the command that
	// makes the VM current.
	Reasons []string `json:"reasons"`
	Fix     string   `json:"fix,omitempty"`
	// ConfigHash identifies the VM's current configuration.
	ConfigHash string     `json:"current_config,omitempty"`
	Run        *RunRecord `json:"last_run,omitempty"`
	// Delivery is what the running guest said of its credentials:
	// "verified", "credentials cut: NAME", "unverified (…)".
	Delivery string `json:"delivery,omitempty"`
	// HypervisorState is what the running hypervisor itself reports.
	HypervisorState string `json:"hypervisor_state,omitempty"`
	ConsoleLog      string `json:"console_log"`
	// Console holds the console's last lines (with Probe).
	Console []string `json:"console"`
}

// consoleLines is how many of the console's last lines status shows.
const consoleLines = 5

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
	Probe  bool
	mu     sync.Mutex
	repos  map[string]*repoResult
	flakes map[string]string // flake → its current version ("": unreadable)
	// files are boot files' identities, stat'ed once per inspection: a
	// fleet host's thousands of VMs boot the same few kernels.
	files map[string]string
}

// fileIdentity is fileIdentity, once per path per Inspector.
func (in *Inspector) fileIdentity(p string) string {
	in.mu.Lock()
	id, ok := in.files[p]
	in.mu.Unlock()
	if ok {
		return id
	}
	id = fileIdentity(p)
	in.mu.Lock()
	if in.files == nil {
		in.files = map[string]string{}
	}
	in.files[p] = id
	in.mu.Unlock()
	return id
}

// flakeVersion is a flake's current version, asked of nix once per
// flake: a VM from a flake is outdated when its flake moved on.
func (in *Inspector) flakeVersion(ref string) (string, error) {
	in.mu.Lock()
	v, ok := in.flakes[ref]
	in.mu.Unlock()
	if ok {
		return v, nil
	}
	md, err := flake.Metadata(ref)
	if err != nil {
		return "", err
	}
	in.mu.Lock()
	defer in.mu.Unlock()
	if in.flakes == nil {
		in.flakes = map[string]string{}
	}
	in.flakes[ref] = md.Version()
	return md.Version(), nil
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
	st := &Status{Name: s.Name, Repo: reg.Repo, ConfigHash: reg.Current.Hash, ConsoleLog: s.Console(), Reasons: []string{}, Console: []string{}}
	if probe {
		st.Console = s.lastConsoleLines(consoleLines)
	}
	var ran bool
	st.Running, st.SupervisorPID, ran = s.running()
	var rec *RunRecord
	if ran {
		// A VM that never ran has no run lock (nor run record).
		if rec, err = s.RunRecord(); err != nil {
			return nil, err
		}
	}
	st.Run = rec
	if rec != nil && st.Running {
		st.Hypervisor, st.HypervisorPID = rec.Hypervisor, rec.HypervisorPID
		st.Delivery = rec.Receipt.Summary()
		if rec.Receipt == nil {
			st.Delivery = "unverified (no receipt from the guest yet)"
		}
	}

	// Outdated: the repository moved on since `update`.
	r, err := in.repo(reg.Repo)
	if err != nil {
		st.Reasons = append(st.Reasons, "repository unreadable: "+err.Error())
	}
	if r != nil && !reg.Current.unchanged(r.Path("machines", s.Name, filepath.Base(reg.Current.File)), in.fileIdentity) {
		repoMachine, err := r.Machine(s.Name)
		if err != nil {
			st.Reasons = append(st.Reasons, "machine file unreadable: "+FirstLine(err))
		} else if ConfigHash(repoMachine) != reg.Current.Hash {
			st.Reasons = append(st.Reasons, "configuration changed since the last update")
		}
	}
	if gen := generatedFrom(reg); gen != nil {
		switch v, err := in.flakeVersion(gen.Flake); {
		case err != nil:
			st.Reasons = append(st.Reasons, "its flake cannot be read: "+FirstLine(err))
		case v != gen.Version():
			st.Reasons = append(st.Reasons, fmt.Sprintf("its flake %s changed since the last update (%s → %s)", gen.Flake, short(gen.Version()), short(v)))
		}
	}
	outdated := len(st.Reasons) > 0
	fixVars := ""
	if !st.Running && r != nil {
		fixVars = in.varsProblem(st, r, reg)
	}

	switch {
	case st.Running:
		cur, err := reg.Machine()
		if err != nil {
			return nil, err
		}
		if st.Hypervisor == "" {
			st.Hypervisor = cur.VM.Hypervisor
		}
		if d, err := hypervisor.For(cur); err == nil && probe {
			if p, ok := d.(hypervisor.Prober); ok {
				if state, err := p.Probe(s.Sockets()); err == nil {
					st.HypervisorState = state
				} else {
					st.HypervisorState = "unreachable: " + err.Error()
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
	case rec != nil && rec.State == RunExited:
		st.Status, st.Fix = StatusStopped, "credvm start "+s.Name
	default:
		st.Status, st.Fix = StatusNotBooted, "credvm start "+s.Name
	}
	if fixVars != "" && !st.Running {
		// A start would be refused: say what makes it work.
		st.Fix = fixVars + " && " + st.Fix
	}
	return st, nil
}

// varsProblem adds a reason when the VM's vars are missing or outdated —
// a start would be refused — and returns the command that fixes them.
func (in *Inspector) varsProblem(st *Status, r *repo.Repo, reg *Registration) string {
	if !strings.Contains(reg.Current.Content, "generators") {
		return "" // no generators, no vars: not worth a parse per VM
	}
	m, err := reg.Machine()
	if err != nil {
		return ""
	}
	problems, err := (&vars.Engine{Repo: r}).Missing([]*spec.Machine{m})
	if err != nil || len(problems) == 0 {
		return ""
	}
	var gens []string
	for _, p := range problems {
		gens = append(gens, p.Generator+" "+p.Status)
	}
	st.Reasons = append(st.Reasons, "vars not ready, so a start would be refused: "+strings.Join(gens, ", "))
	return "credvm vars generate " + st.Name
}

// lastConsoleLines are the console log's last n lines, terminal escapes
// and blank lines dropped.
func (s StateDir) lastConsoleLines(n int) []string {
	log, err := s.OpenConsole(n + 5)
	if err != nil {
		return []string{}
	}
	defer log.Close()
	t := &tail.Lines{Keep: n}
	if err := log.Copy(context.Background(), t, false); err != nil {
		return []string{}
	}
	var lines []string
	for _, l := range t.Lines() {
		if !strings.HasPrefix(l, "=== credvm:") { // credvm's own start banner
			lines = append(lines, l)
		}
	}
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return append([]string{}, lines...)
}

// FirstLine is an error's first line, for one-line displays.
func FirstLine(err error) string {
	line, _, _ := strings.Cut(err.Error(), "\n")
	return line
}

// short is a revision or hash as people read it.
func short(v string) string {
	v = strings.TrimPrefix(v, "sha256-")
	if len(v) > 12 {
		return v[:12]
	}
	return v
}

// generatedFrom is the flake a VM's machine file was evaluated from (nil:
// none). Only a machine.json can be one, and only its "generated" key is
// read: list inspects thousands of VMs.
func generatedFrom(reg *Registration) *spec.Generated {
	if !strings.HasSuffix(reg.Current.File, ".json") || !strings.Contains(reg.Current.Content, `"generated"`) {
		return nil
	}
	var m struct {
		Generated *spec.Generated `json:"generated"`
	}
	if json.Unmarshal([]byte(reg.Current.Content), &m) != nil {
		return nil
	}
	return m.Generated
}
