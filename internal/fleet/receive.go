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
	Err     string           `json:"error,omitempty"`
}

// ReceiveOptions are where a host keeps what it receives.
type ReceiveOptions struct {
	Repo, StateRoot string
	// HostKey opens the sealed machine keys.
	HostKey string
	// Start starts and restarts VMs (the StartOptions' State is set per VM).
	Start vm.StartOptions
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
	out := make([]Received, 0, len(sh.Machines))
	for _, m := range sh.Machines {
		rc := Received{Machine: m}
		if err := receiveMachine(r, m, sh.Sealed[m], sh.Start, o, &rc); err != nil {
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

func receiveMachine(r *repo.Repo, name string, sealed []byte, start bool, o ReceiveOptions, rc *Received) error {
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
	so := o.Start
	so.State = s
	if rc.Created {
		if !start {
			return nil
		}
		st, err := vm.Start(so)
		rc.Started = st
		return err
	}
	res, err := vm.Update(s, vm.UpdateOptions{Restart: &so})
	rc.Update = res
	return err
}
