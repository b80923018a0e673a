package vm

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/credvm/credvm/internal/repo"
	"github.com/credvm/credvm/internal/spec"
	"github.com/credvm/credvm/internal/vars"
)

// Create registers a machine of a repository as a VM.
func Create(s StateDir, r *repo.Repo, m *spec.Machine) (*Created, error) {
	if err := s.Ensure(); err != nil {
		return nil, err
	}
	l, err := s.LockState()
	if err != nil {
		return nil, err
	}
	defer l.Release()
	if s.Exists() {
		return nil, fmt.Errorf("vm %s already exists (%s); `credvm update %s` applies a changed configuration", s.Name, s.Path(), s.Name)
	}
	cfg, err := NewConfig(r, m)
	if err != nil {
		return nil, err
	}
	if err := s.SaveRegistration(&Registration{Name: s.Name, Repo: r.Root, Created: cfg.Updated, Current: cfg}); err != nil {
		return nil, err
	}
	return &Created{Name: s.Name, StatePath: s.Path(), Repo: r.Root, HostPaths: HostPaths(r, m)}, nil
}

// Created says what Create registered.
type Created struct {
	Name      string `json:"name"`
	StatePath string `json:"state"`
	Repo      string `json:"repository"`
	// HostPaths are the files outside the repository the VM reads.
	HostPaths []HostPath `json:"host_paths"`
}

// UpdateOptions configure Update.
type UpdateOptions struct {
	// Start restarts the VM when it runs something older than its
	// updated configuration and vars (update -R); nil never restarts.
	Restart *StartOptions
}

// UpdateResult says what Update did.
type UpdateResult struct {
	Name string `json:"name"`
	// Changed: the configuration changed, as Diff says line by line.
	Changed bool `json:"changed"`
	// Flake is the flake the machine was evaluated from again, when it
	// comes from one.
	Flake *spec.Generated `json:"flake,omitempty"`
	Diff  []string        `json:"diff"`
	// HostPaths are the files outside the repository the updated
	// configuration reads (shown when it changed).
	HostPaths []HostPath `json:"host_paths"`
	// Stale: the VM runs an older configuration or older vars. Restarted
	// says it was restarted for that.
	Stale     bool     `json:"stale"`
	Restarted *Started `json:"restarted,omitempty"`
}

// Update applies the repository's current machine file to a VM: the
// registration takes it as the VM's current configuration, and the
// difference is returned. A running VM left stale is restarted when asked.
func Update(s StateDir, o UpdateOptions) (*UpdateResult, error) {
	res, err := updateRegistration(s)
	if err != nil {
		return nil, err
	}
	st, err := Inspect(s, false)
	if err != nil {
		return nil, err
	}
	res.Stale = st.Status == StatusStale
	if res.Stale && o.Restart != nil {
		o.Restart.State = s
		if res.Restarted, err = Restart(*o.Restart); err != nil {
			return res, err
		}
	}
	return res, nil
}

// updateRegistration takes the machine file as the VM's current
// configuration, under the VM's state lock (released before any restart,
// which must not hold up other updates).
func updateRegistration(s StateDir) (*UpdateResult, error) {
	if !s.Exists() {
		_, err := s.Registration()
		return nil, err
	}
	l, err := s.LockState()
	if err != nil {
		return nil, err
	}
	defer l.Release()
	reg, r, old, err := s.registered()
	if err != nil {
		return nil, err
	}
	m, err := r.Machine(s.Name)
	if err != nil {
		return nil, err
	}
	var evaluated *spec.Generated
	if m.Generated != nil {
		// A machine of a guest's NixOS configuration: evaluate it again.
		ev, err := writeFromFlake(r, s.Name, m.Generated.Flake)
		if err != nil {
			return nil, err
		}
		if m, err = r.Machine(s.Name); err != nil {
			return nil, err
		}
		evaluated = &ev.Source
	}
	cfg, err := NewConfig(r, m)
	if err != nil {
		return nil, err
	}
	res := &UpdateResult{Name: s.Name, Diff: []string{}, HostPaths: HostPaths(r, m), Flake: evaluated}
	if cfg.Hash == reg.Current.Hash {
		return res, nil
	}
	res.Changed, res.Diff = true, Diff(old, reg.Current.Files, m)
	reg.Current = cfg
	return res, s.SaveRegistration(reg)
}

// DestroyOptions configure Destroy.
type DestroyOptions struct {
	// ShutdownTimeout bounds the power-off of a running VM (0: the one it
	// was started with).
	ShutdownTimeout time.Duration
	// PurgeVars also deletes the machine's vars, their history and its
	// key pair from its repository (committed in git).
	PurgeVars bool
	// ConfirmPurge accepts that: without it Destroy changes nothing and
	// returns a *repo.ConfirmationError listing what would go.
	ConfirmPurge bool
	// Systemd is where the VM's credvm@NAME.service may be enabled (the
	// zero value: this system); an enabled unit is disabled, else systemd
	// would try to start a VM that is gone at every boot.
	Systemd Systemd
}

// DestroyResult says what Destroy did.
type DestroyResult struct {
	Name      string `json:"name"`
	StatePath string `json:"state"`
	// Stopped: the VM was running and was powered off first.
	Stopped bool `json:"stopped"`
	// Removed: its state directory is gone.
	Removed bool `json:"removed"`
	// Purged lists the repository paths removed with PurgeVars.
	Purged []string `json:"purged"`
	// Disabled names its systemd unit, which was enabled and is not now.
	Disabled string `json:"disabled,omitempty"`
}

// PurgeConfirm is the ConfirmationError kind of destroy --purge-vars.
const PurgeConfirm = "purge-vars"

// Destroy stops a VM if it runs and removes its state directory; with
// PurgeVars, its vars, their history and its key too — once confirmed,
// and asked before anything is done.
func Destroy(s StateDir, o DestroyOptions) (*DestroyResult, error) {
	reg, err := s.Registration()
	if err != nil {
		return nil, err
	}
	var r *repo.Repo
	if o.PurgeVars {
		if r, err = repo.Open(reg.Repo); err != nil {
			return nil, fmt.Errorf("vm %s: its repository cannot be opened to purge its vars (nothing was changed): %w", s.Name, err)
		}
		if paths := vars.PurgePaths(r, s.Name); len(paths) > 0 && !o.ConfirmPurge {
			return nil, &repo.ConfirmationError{
				Op:      "destroy " + s.Name + " --purge-vars",
				Why:     "this deletes its vars, their history and its machine key for good (committed in git)",
				Changes: prefixed("remove ", paths),
				Flag:    "--yes",
				Kind:    PurgeConfirm,
			}
		}
	}
	res := &DestroyResult{Name: s.Name, StatePath: s.Path(), Purged: []string{}}
	if running, _ := s.Running(); running {
		if err := Stop(s, o.ShutdownTimeout); err != nil {
			return res, err
		}
		res.Stopped = true
	}
	rmErr := removeState(s)
	// Gone once its registration is, even when its directory keeps files
	// not credvm's (a volume): its unit goes with it.
	if !s.Exists() && o.Systemd.Enabled(s.Name) && o.Systemd.Available() {
		if err := o.Systemd.Run("disable", s.Name); err != nil {
			return res, errors.Join(rmErr, fmt.Errorf("vm %s: destroyed, but its unit is still enabled: %w", s.Name, err))
		}
		res.Disabled = UnitName(s.Name)
	}
	if rmErr != nil {
		return res, rmErr
	}
	res.Removed = true
	if !o.PurgeVars {
		return res, nil
	}
	res.Purged, err = vars.Purge(r, s.Name)
	if res.Purged == nil {
		res.Purged = []string{}
	}
	return res, err
}

// prefixed puts prefix before each of items.
func prefixed(prefix string, items []string) []string {
	out := make([]string, len(items))
	for i, it := range items {
		out[i] = prefix + it
	}
	return out
}

// stateFiles are the files credvm puts in a state directory.
var stateFiles = []string{"vm.json", "run.json", "run.lock", "state.lock", "console.log", "console.log.1", "console.log.2", "console.log.3", "supervisor.log", "qmp.sock", "ch.sock", "fc.sock", "serial.sock", "vsock.sock", "double.jsonl", sealedKey, sealedKeyFor}

// removeState removes the VM's state directory; the VM must not run.
func removeState(s StateDir) error {
	if running, pid := s.Running(); running {
		return fmt.Errorf("vm %s is running (pid %d): stop it first", s.Name, pid)
	}
	l, err := s.LockState()
	if err != nil {
		return err
	}
	defer l.Release()
	// Only what credvm put there; anything else stays and is reported.
	for _, f := range stateFiles {
		if err := os.Remove(s.File(f)); err != nil && !errors.Is(err, os.ErrNotExist) {
			return err
		}
	}
	socks, _ := filepath.Glob(filepath.Join(s.Sockets(), "*.sock"))
	for _, f := range socks {
		os.Remove(f)
	}
	if err := os.Remove(s.Sockets()); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("vm %s: %w", s.Name, err)
	}
	if err := os.Remove(s.Path()); err != nil {
		left, _ := filepath.Glob(filepath.Join(s.Path(), "*"))
		return fmt.Errorf("vm %s: state removed, but %s holds other files: %v", s.Name, s.Path(), left)
	}
	return nil
}
