package fleet

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/credvm/credvm/internal/backup"
	"github.com/credvm/credvm/internal/repo"
	"github.com/credvm/credvm/internal/spec"
	"github.com/credvm/credvm/internal/vm"
)

// Shipment is what a deploy sends a host, in one stream on the standard
// input of its `credvm host receive`: one SSH session per host and
// deploy, whatever the number of VMs. Nothing in it is plaintext: the
// archive holds machine files, encrypted vars and public keys, the
// sealed keys open only with the host's key.
type Shipment struct {
	Format   int      `json:"format"`
	Machines []string `json:"machines"`
	// Start: start a VM that was not there (a move starts it later).
	Start bool `json:"start"`
	// Archive is a backup archive of the machines (backup.Write).
	Archive []byte `json:"archive"`
	// Sealed are the machines' keys sealed to the host key (absent for a
	// machine without vars).
	Sealed map[string][]byte `json:"sealed,omitempty"`
}

// shipmentFormat is the Shipment format this credvm writes and reads; a
// deploy copies its own credvm first, so both ends agree.
const shipmentFormat = 1

// maxShipment bounds what receive reads: machine files and encrypted
// vars, not volumes.
const maxShipment = 256 << 20

// Received is the host's account of one VM of a shipment.
type Received struct {
	Machine string           `json:"name"`
	Created bool             `json:"created"`
	Started *vm.Started      `json:"started,omitempty"`
	Update  *vm.UpdateResult `json:"update,omitempty"`
	// Enabled names the systemd unit this deploy enabled at boot.
	Enabled string `json:"enabled,omitempty"`
	Err     string `json:"error,omitempty"`
}

// ReceiveOptions are where a host keeps what it receives.
type ReceiveOptions struct {
	Repo, StateRoot string
	// HostKey opens the sealed machine keys.
	HostKey string
	// Start starts and restarts VMs (the StartOptions' State is set per VM).
	Start vm.StartOptions
	// Systemd is the host's systemd: each VM's credvm@NAME.service is
	// enabled there so that it starts at boot — and, when systemd runs the
	// host, started and restarted through it. Without systemctl, VMs run
	// under credvm's supervisor only.
	Systemd vm.Systemd
}

// Receive is the host side of a deploy: the shipment's archive restored
// into the host's repository (checked whole first, as any restore), then
// each VM created if new, its sealed key kept, and started (new) or
// updated with a restart of what runs older vars or configuration.
func Receive(in io.Reader, o ReceiveOptions) ([]Received, error) {
	b, err := io.ReadAll(io.LimitReader(in, maxShipment+1))
	if err != nil {
		return nil, err
	}
	if len(b) > maxShipment {
		return nil, fmt.Errorf("receive: the shipment is over %d MiB", maxShipment>>20)
	}
	var sh Shipment
	if err := json.Unmarshal(b, &sh); err != nil {
		return nil, fmt.Errorf("receive: the shipment is not one: %w", err)
	}
	if sh.Format != shipmentFormat {
		return nil, fmt.Errorf("receive: shipment format %d, this credvm reads %d", sh.Format, shipmentFormat)
	}
	for _, m := range sh.Machines {
		if err := spec.CheckMachineName(m); err != nil {
			return nil, fmt.Errorf("receive: %w", err)
		}
	}
	r, err := openHostRepo(o.Repo)
	if err != nil {
		return nil, err
	}
	if _, err := backup.Restore(bytes.NewReader(sh.Archive), backup.RestoreOptions{
		Repo: r, StateRoot: o.StateRoot, Force: true, AcceptRecipients: true,
	}); err != nil {
		return nil, fmt.Errorf("restoring the shipment's archive: %w", err)
	}
	units := o.Systemd.Available()
	if units {
		if _, err := vm.InstallUnit(o.Systemd.UnitDir(), vm.UnitOptions{
			Binary: o.Start.Self, StateRoot: o.StateRoot, ShutdownTimeout: o.Start.ShutdownTimeout, NoReload: !o.Systemd.Booted(),
		}); err != nil {
			return nil, fmt.Errorf("installing credvm@.service: %w", err)
		}
	}
	out := make([]Received, 0, len(sh.Machines))
	for _, m := range sh.Machines {
		rc := Received{Machine: m}
		if err := receiveMachine(r, m, sh.Sealed[m], sh.Start, units, o, &rc); err != nil {
			rc.Err = err.Error()
		}
		out = append(out, rc)
	}
	return out, nil
}

// openHostRepo opens the host's repository, made on the first deploy.
func openHostRepo(dir string) (*repo.Repo, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	toml := filepath.Join(dir, "credvm.toml")
	if _, err := os.Lstat(toml); errors.Is(err, os.ErrNotExist) {
		if err := os.WriteFile(toml, nil, 0o644); err != nil {
			return nil, err
		}
	}
	return repo.Open(dir)
}

func receiveMachine(r *repo.Repo, name string, sealed []byte, start, units bool, o ReceiveOptions, rc *Received) error {
	s := vm.StateDir{Root: o.StateRoot, Name: name}
	if !s.Exists() {
		m, err := r.Machine(name)
		if err != nil {
			return err
		}
		if _, err := vm.Create(s, r, m); err != nil {
			return err
		}
		rc.Created = true
	}
	if sealed != nil {
		if err := s.InstallSealedKey(sealed, o.HostKey); err != nil {
			return err
		}
	}
	sd := o.Systemd
	byUnit := units && sd.Booted()
	so := o.Start
	so.State = s
	switch {
	case rc.Created && !start:
		// A move starts it later, itself.
	case rc.Created && byUnit:
		if err := sd.Run("start", name); err != nil {
			return err
		}
		rc.Started = startedFrom(s)
	case rc.Created:
		st, err := vm.Start(so)
		rc.Started = st
		if err != nil {
			return err
		}
	default:
		uo := vm.UpdateOptions{Restart: &so}
		if byUnit && sd.Run("is-active", name) == nil {
			uo.Restart = nil // systemd's to restart, below
		}
		res, err := vm.Update(s, uo)
		rc.Update = res
		if err != nil {
			return err
		}
		if uo.Restart == nil && res.Stale {
			if err := sd.Run("restart", name); err != nil {
				return err
			}
			res.Restarted = startedFrom(s)
		}
	}
	if units && !sd.Enabled(name) {
		if err := sd.Run("enable", name); err != nil {
			return err
		}
		rc.Enabled = vm.UnitName(name)
	}
	return nil
}

// startedFrom says what runs, from the VM's run record, after systemd
// started it (systemctl returns once the unit is ready: the record is
// written).
func startedFrom(s vm.StateDir) *vm.Started {
	st := &vm.Started{Name: s.Name}
	_, st.Supervisor = s.Running()
	if rec, err := s.RunRecord(); err == nil && rec != nil {
		st.Hypervisor, st.HypervisorPID = rec.Hypervisor, rec.HypervisorPID
	}
	return st
}
