package vm

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/credvm/credvm/internal/atomicfile"
	"github.com/credvm/credvm/internal/lock"
	"github.com/credvm/credvm/internal/receipt"
	"github.com/credvm/credvm/internal/repo"
	"github.com/credvm/credvm/internal/spec"
)

// Registration is vm.json: the VM as created and last updated. It holds
// the machine file as it was at the last `update` — the VM's current
// generation — so that editing the repository changes nothing until the
// user applies it, as with microvm.nix. No secret is in it: machine files
// hold none.
type Registration struct {
	Name    string    `json:"name"`
	Repo    string    `json:"repository"`
	Created time.Time `json:"created"`
	Current Config    `json:"current"`
}

// Config is one generation of a VM's configuration.
type Config struct {
	// File is the machine file's path (relative paths in it resolve
	// against its directory); Content is its text at the time.
	File    string    `json:"file"`
	Content string    `json:"content"`
	Hash    string    `json:"hash"`
	Updated time.Time `json:"updated"`
	// Files are the identities (size, mtime) of the files the VM boots
	// from, as the hash covered them: with the machine file's content,
	// they let `list` see "unchanged" without parsing anything.
	Files map[string]string `json:"files,omitempty"`
	// FileStat is the machine file's inode, size, mtime and ctime when it
	// was read: while they stay the same, `list` knows the file unchanged
	// with one lstat and no read (ctime cannot be set back by its owner).
	FileStat string `json:"file_stat,omitempty"`
}

// RunRecord is run.json: the VM's current or last run, kept by the
// process that runs it.
type RunRecord struct {
	State      string `json:"state"` // running, exited, failed
	Supervisor int    `json:"supervisor_pid"`
	// Hypervisor is the backend's name, HypervisorPID its process.
	Hypervisor    string    `json:"hypervisor,omitempty"`
	HypervisorPID int       `json:"hypervisor_pid,omitempty"`
	Started       time.Time `json:"started"`
	Ended         time.Time `json:"ended,omitzero"`
	ExitCode      int       `json:"exit_code,omitempty"`
	Signal        string    `json:"signal,omitempty"`
	// ConfigHash and VarsHash are what the VM booted with.
	ConfigHash string `json:"config_hash"`
	VarsHash   string `json:"vars_hash"`
	Transport  string `json:"transport"`
	// ShutdownTimeout is how long the guest gets to power off.
	ShutdownTimeout Duration `json:"shutdown_timeout"`
	// LastConsole holds the console's last lines when the run failed.
	LastConsole []string `json:"last_console,omitempty"`
	Error       string   `json:"error,omitempty"`
	// Receipt is the guest's last word about its credentials (package
	// receipt), when it sent one.
	Receipt *receipt.Receipt `json:"receipt,omitempty"`
}

// UnmarshalJSON reads run.json, also as credvm ≤ 0.9 wrote it: the
// hypervisor's pid as "qemu_pid", whatever the hypervisor.
func (r *RunRecord) UnmarshalJSON(b []byte) error {
	type current RunRecord // without this method
	var v struct {
		current
		QEMUPID int `json:"qemu_pid"`
	}
	if err := json.Unmarshal(b, &v); err != nil {
		return err
	}
	*r = RunRecord(v.current)
	if r.HypervisorPID == 0 && v.QEMUPID != 0 {
		r.HypervisorPID = v.QEMUPID
	}
	return nil
}

// Duration is a time.Duration that JSON writes as Go's duration text
// ("30s") — a number of nanoseconds means nothing to a reader — and reads
// from that or, as credvm ≤ 0.9 wrote it, from nanoseconds.
type Duration time.Duration

func (d Duration) MarshalJSON() ([]byte, error) { return json.Marshal(time.Duration(d).String()) }

func (d *Duration) UnmarshalJSON(b []byte) error {
	var ns int64
	if err := json.Unmarshal(b, &ns); err == nil {
		*d = Duration(ns)
		return nil
	}
	var text string
	if err := json.Unmarshal(b, &text); err != nil {
		return fmt.Errorf("a duration: %w", err)
	}
	v, err := time.ParseDuration(text)
	if err != nil {
		return err
	}
	*d = Duration(v)
	return nil
}

// Run states.
const (
	RunRunning = "running"
	RunExited  = "exited"
	RunFailed  = "failed"
)

func (s StateDir) registrationPath() string { return s.File("vm.json") }
func (s StateDir) runPath() string          { return s.File("run.json") }

// RunLock is held by the process running the VM for as long as it runs.
func (s StateDir) RunLock() string { return s.File("run.lock") }

// Running reports whether a process runs the VM, and its pid.
func (s StateDir) Running() (bool, int) {
	running, pid, _ := s.running()
	return running, pid
}

// running is Running, and whether the VM ever ran (has a run lock).
func (s StateDir) running() (running bool, pid int, ran bool) {
	ran, held := lock.Probe(s.RunLock())
	if !held {
		return false, 0, ran
	}
	return true, lock.Holder(s.RunLock()), true
}

// Exists reports whether the VM was created.
func (s StateDir) Exists() bool {
	_, err := os.Stat(s.registrationPath())
	return err == nil
}

// Registration reads vm.json.
func (s StateDir) Registration() (*Registration, error) {
	var r Registration
	if err := readJSON(s.registrationPath(), &r); err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil, &NoVMError{s.Name, s.Root}
		}
		return nil, fmt.Errorf("vm %s: %w", s.Name, err)
	}
	return &r, nil
}

// registered loads a created VM: its registration, its repository, and
// the machine as it was at the VM's last update.
func (s StateDir) registered() (*Registration, *repo.Repo, *spec.Machine, error) {
	reg, err := s.Registration()
	if err != nil {
		return nil, nil, nil, err
	}
	r, err := repo.Open(reg.Repo)
	if err != nil {
		return nil, nil, nil, fmt.Errorf("vm %s: %w", s.Name, err)
	}
	m, err := reg.Machine()
	if err != nil {
		return nil, nil, nil, err
	}
	return reg, r, m, nil
}

// SaveRegistration writes vm.json atomically. The caller holds the state
// lock (LockState).
func (s StateDir) SaveRegistration(r *Registration) error {
	atomicfile.RemoveStale(s.registrationPath())
	return writeJSON(s.registrationPath(), r)
}

// LockState serialises changes to the VM's registration (create, update,
// destroy, restore); readers need no lock, every write being atomic.
func (s StateDir) LockState() (*lock.Lock, error) {
	if err := s.Ensure(); err != nil {
		return nil, err
	}
	return lock.Acquire(s.File("state.lock"), "VM "+s.Name, 30*time.Second, nil)
}

// RunRecord reads run.json; nil when the VM never ran.
func (s StateDir) RunRecord() (*RunRecord, error) {
	var r RunRecord
	if err := readJSON(s.runPath(), &r); err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil, nil
		}
		return nil, err
	}
	return &r, nil
}

// SaveRunRecord writes run.json atomically. Only the holder of the run
// lock writes it.
func (s StateDir) SaveRunRecord(r *RunRecord) error {
	atomicfile.RemoveStale(s.runPath())
	return writeJSON(s.runPath(), r)
}

func readJSON(path string, v any) error {
	parsed := false
	b, err := readSmall(path, func(b []byte) bool {
		// A prefix of a JSON document never parses whole: what does is
		// the file (credvm writes its records by rename, all at once).
		parsed = json.Unmarshal(b, v) == nil
		return parsed
	})
	if err != nil || parsed {
		return err
	}
	if err := json.Unmarshal(b, v); err != nil {
		return fmt.Errorf("%s is corrupt: %w", path, err)
	}
	return nil
}

func writeJSON(path string, v any) error {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	return atomicfile.Write(path, append(b, '\n'), 0o600)
}

// NoVMError says a name has no VM in a state root.
type NoVMError struct{ Name, Root string }

func (e *NoVMError) Error() string {
	return fmt.Sprintf("vm %s does not exist in %s: create it with `credvm create %s`", e.Name, e.Root, e.Name)
}

// List returns the names of the VMs in a state root.
func List(root string) ([]string, error) {
	entries, err := os.ReadDir(root)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	// Every directory is a candidate; one without vm.json reports a
	// NoVMError when inspected (no stat here: list stays one read per VM).
	var names []string
	for _, e := range entries {
		if e.IsDir() {
			names = append(names, e.Name())
		}
	}
	return names, nil
}

// rotateConsole keeps the console log from growing without bound: at a
// start, a log over 1 MiB becomes console.log.1 (and so on, three kept).
func (s StateDir) rotateConsole() {
	fi, err := os.Stat(s.Console())
	if err != nil || fi.Size() < 1<<20 {
		return
	}
	for i := 2; i >= 1; i-- {
		os.Rename(fmt.Sprintf("%s.%d", s.Console(), i), fmt.Sprintf("%s.%d", s.Console(), i+1))
	}
	os.Rename(s.Console(), s.Console()+".1")
}
