package vm

import (
	"context"
	"fmt"
	"io"
	"strings"

	"github.com/credvm/credvm/internal/repo"
	"github.com/credvm/credvm/internal/sops"
	"github.com/credvm/credvm/internal/spec"
	"github.com/credvm/credvm/internal/vars"
)

// A rotation regenerates VMs' secrets one VM at a time: regenerate (the
// chosen generators and their dependents), restart the VM if it runs,
// wait until it is healthy. The first failure stops the rollout; the VMs
// after it keep their old secrets and keep running.

// Outcome is how a rotation ended for one VM.
type Outcome int

const (
	// Untouched: not reached (the rollout stopped earlier, or a dry run);
	// the VM keeps its old secrets.
	Untouched Outcome = iota
	// RegenerateFailed: generating failed; its vars are unchanged.
	RegenerateFailed
	// RotatedNotRunning: regenerated; the VM gets them at its next start.
	RotatedNotRunning
	// RestartFailed: regenerated, but the restart failed.
	RestartFailed
	// Unhealthy: regenerated and restarted, but the health check failed.
	Unhealthy
	// Healthy: regenerated, restarted and healthy.
	Healthy
	// HostUnreachable: its host stopped answering before its turn; not
	// regenerated, so its vars are unchanged.
	HostUnreachable
)

var outcomeText = map[Outcome]string{
	Untouched:         "untouched: old secrets",
	RegenerateFailed:  "FAILED to regenerate (vars unchanged)",
	RotatedNotRunning: "rotated; not running: new secrets at its next start",
	RestartFailed:     "rotated, but the restart FAILED",
	Unhealthy:         "rotated and restarted, but UNHEALTHY",
	Healthy:           "rotated, restarted, healthy",
	HostUnreachable:   "NOT rotated: its host cannot be reached (vars unchanged)",
}

func (o Outcome) String() string { return outcomeText[o] }

// MarshalText makes an outcome read as a word in JSON.
func (o Outcome) MarshalText() ([]byte, error) {
	return []byte(map[Outcome]string{Untouched: "untouched", RegenerateFailed: "regenerate-failed",
		RotatedNotRunning: "rotated-not-running", RestartFailed: "restart-failed", Unhealthy: "unhealthy", Healthy: "healthy",
		HostUnreachable: "host-unreachable"}[o]), nil
}

// Failed reports whether the outcome stops a rollout.
func (o Outcome) Failed() bool {
	return o == RegenerateFailed || o == RestartFailed || o == Unhealthy || o == HostUnreachable
}

// RotationStep is one VM of a rotation.
type RotationStep struct {
	Name       string   `json:"name"`
	Generators []string `json:"generators"`
	// Running: the VM ran when the rotation was planned, so it is
	// restarted and health-checked.
	Running bool `json:"running"`
	// Check describes the health check, for the plan.
	Check   string  `json:"health_check,omitempty"`
	Outcome Outcome `json:"outcome"`
	// Err is why it failed.
	Err error `json:"-"`

	// Host is the host the VM is placed on ("": this one).
	Host string `json:"host,omitempty"`

	state   StateDir
	machine *spec.Machine
	repo    *repo.Repo
	remote  Remote
}

// Remote is a VM placed on another host, as a rotation drives it there
// (package fleet implements it over SSH).
type Remote interface {
	// Running reports whether the VM runs on its host.
	Running(ctx context.Context) (bool, error)
	// Deploy sends the VM's new vars and restarts it there if it runs.
	Deploy(ctx context.Context) error
	// WaitHealthy waits for the restarted VM's guest to report its
	// credentials (its receipt) on the host.
	WaitHealthy(ctx context.Context) error
}

// RemoteVM is a placed VM for PlanRotation.
type RemoteVM struct {
	Name, Host string
	Repo       *repo.Repo
	Machine    *spec.Machine
	Remote     Remote
}

// Rotation is a planned or finished rollout.
type Rotation struct {
	Steps []*RotationStep `json:"vms"`
	// Generators are the ones asked for (none: all of each VM's).
	Generators []string `json:"generators"`
	// start configures the restarts.
	start StartOptions
}

// RotateOptions configure a rotation.
type RotateOptions struct {
	States []StateDir
	// Remotes are the VMs placed on other hosts, rotated after the local
	// ones, one at a time too.
	Remotes []RemoteVM
	// Generators limits the rotation to these generators and their
	// dependents; none rotates every generator.
	Generators []string
	Start      StartOptions
	User       *sops.Identities
	Log        io.Writer
	// Generate carries the prompts' answers and terminal (its other
	// fields are set per step).
	Generate vars.GenerateOptions
	// OnStepStart and OnStepFinished, when set, are told of each step.
	OnStepStart    func(i int, step *RotationStep)
	OnStepFinished func(i int, step *RotationStep)
}

// PlanRotation checks that every VM exists and has the generators, and
// returns the plan; nothing changes.
func PlanRotation(o RotateOptions) (*Rotation, error) {
	rot := &Rotation{Generators: o.Generators, start: o.Start}
	for _, s := range o.States {
		reg, r, m, err := s.registered()
		if err != nil {
			return nil, err
		}
		step := &RotationStep{Name: s.Name, state: s, machine: m, repo: r, Generators: o.Generators}
		for _, gen := range o.Generators {
			if m.Vars.Generators[gen] == nil {
				return nil, fmt.Errorf("vm %s has no generator %q (see %s)", s.Name, gen, reg.Current.File)
			}
		}
		if len(o.Generators) == 0 {
			for _, gen := range m.SortedGenerators() {
				step.Generators = append(step.Generators, gen.Name)
			}
		}
		if len(step.Generators) == 0 {
			return nil, fmt.Errorf("vm %s declares no generators: nothing to rotate", s.Name)
		}
		step.Running, _ = s.Running()
		if step.Running {
			step.Check = HealthCheck(m)
		}
		rot.Steps = append(rot.Steps, step)
	}
	for _, rv := range o.Remotes {
		step := &RotationStep{Name: rv.Name, Host: rv.Host, machine: rv.Machine, repo: rv.Repo, remote: rv.Remote, Generators: o.Generators}
		for _, gen := range o.Generators {
			if rv.Machine.Vars.Generators[gen] == nil {
				return nil, fmt.Errorf("vm %s has no generator %q (see %s)", rv.Name, gen, rv.Machine.File)
			}
		}
		if len(o.Generators) == 0 {
			for _, gen := range rv.Machine.SortedGenerators() {
				step.Generators = append(step.Generators, gen.Name)
			}
		}
		running, err := rv.Remote.Running(context.Background())
		if err != nil {
			return nil, fmt.Errorf("vm %s on %s: %w", rv.Name, rv.Host, err)
		}
		step.Running = running
		if running {
			step.Check = "its guest reports its credentials on " + rv.Host
		}
		rot.Steps = append(rot.Steps, step)
	}
	var ms []*spec.Machine
	for _, st := range rot.Steps {
		ms = append(ms, st.machine)
	}
	if err := o.Generate.Answers.Check(ms); err != nil {
		return nil, err
	}
	return rot, nil
}

// HealthCheck describes a machine's health check after a restart.
func HealthCheck(m *spec.Machine) string {
	h := &m.VM.Health
	var parts []string
	if h.Console != "" {
		parts = append(parts, fmt.Sprintf("console matches %q", h.Console))
	}
	if h.TCP != "" {
		parts = append(parts, "TCP "+h.TCP+" accepts")
	}
	if len(parts) == 0 {
		return fmt.Sprintf("still running after %s (no [vm.health])", noCheckGrace)
	}
	return strings.Join(parts, " and ") + " within " + h.CheckTimeout().String()
}

// Run carries out the rotation, one VM at a time, and stops at the first
// failure, which it returns (the steps say what happened to each VM).
func (rot *Rotation) Run(ctx context.Context, o RotateOptions) error {
	for i, step := range rot.Steps {
		if o.OnStepStart != nil {
			o.OnStepStart(i, step)
		}
		step.Outcome, step.Err = rot.rotateOne(ctx, step, o)
		if o.OnStepFinished != nil {
			o.OnStepFinished(i, step)
		}
		if step.Outcome.Failed() {
			return fmt.Errorf("rotation stopped at %s: %w", step.Name, step.Err)
		}
	}
	return nil
}

func (rot *Rotation) rotateOne(ctx context.Context, step *RotationStep, o RotateOptions) (Outcome, error) {
	if step.remote != nil {
		// A host that dropped since the plan stops the rollout before its
		// VM's secrets change: new vars it could not receive would only
		// need rolling back.
		if _, err := step.remote.Running(ctx); err != nil {
			return HostUnreachable, fmt.Errorf("vm %s on %s: %w", step.Name, step.Host, err)
		}
	}
	e := &vars.Engine{Repo: step.repo, User: o.User, Log: o.Log}
	g := o.Generate
	g.Generators, g.Regenerate, g.Answers = step.Generators, true, g.Answers.For([]*spec.Machine{step.machine})
	if _, err := e.Generate(ctx, []*spec.Machine{step.machine}, g); err != nil {
		return RegenerateFailed, err
	}
	if step.remote != nil {
		// Deployed whether it runs or not: its host keeps its vars.
		if err := step.remote.Deploy(ctx); err != nil {
			return RestartFailed, err
		}
		if !step.Running {
			return RotatedNotRunning, nil
		}
		if err := step.remote.WaitHealthy(ctx); err != nil {
			return Unhealthy, err
		}
		return Healthy, nil
	}
	if !step.Running {
		return RotatedNotRunning, nil
	}
	offset := step.state.ConsoleOffset()
	start := rot.start
	start.State = step.state
	if _, err := Restart(start); err != nil {
		return RestartFailed, err
	}
	if err := WaitHealthy(step.state, step.machine, offset); err != nil {
		return Unhealthy, err
	}
	return Healthy, nil
}

// Failed is the step the rollout stopped at, or nil.
func (rot *Rotation) Failed() *RotationStep {
	for _, s := range rot.Steps {
		if s.Outcome.Failed() {
			return s
		}
	}
	return nil
}

// RollbackCommand is the command line that puts the failed VM back on its
// old secrets ("" when its vars were not changed).
func (rot *Rotation) RollbackCommand() string {
	f := rot.Failed()
	if f == nil || f.Outcome == RegenerateFailed || f.Outcome == HostUnreachable {
		return ""
	}
	var rb []string
	for _, gen := range f.Generators {
		rb = append(rb, "credvm vars rollback "+f.Name+" "+gen)
	}
	if f.remote != nil {
		return strings.Join(rb, " && ") + " && credvm deploy " + f.Name
	}
	return strings.Join(rb, " && ") + " && credvm restart " + f.Name
}

// ContinueCommand goes on with the VMs the rollout did not reach ("" when
// there are none).
func (rot *Rotation) ContinueCommand() string {
	var rest []string
	for _, s := range rot.Steps {
		if s.Outcome == Untouched || s.Outcome == HostUnreachable {
			rest = append(rest, s.Name)
		}
	}
	if len(rest) == 0 {
		return ""
	}
	cmd := "credvm rotate " + strings.Join(rest, " ")
	for _, gen := range rot.Generators {
		cmd += " --generator " + gen
	}
	return cmd
}
