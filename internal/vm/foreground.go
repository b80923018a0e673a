package vm

import (
	"context"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"sync"
	"time"

	"github.com/coreos/go-systemd/v22/daemon"

	"github.com/credvm/credvm/internal/receipt"
	"github.com/credvm/credvm/internal/repo"
	"github.com/credvm/credvm/internal/sops"
	"github.com/credvm/credvm/internal/spec"
	"github.com/credvm/credvm/internal/vars"
)

// RunOptions configure a run in the foreground: `credvm run`, the
// supervisor of `credvm start`, and credvm@.service.
type RunOptions struct {
	State StateDir
	// OpenRepo opens the repository of a machine that is not a created
	// VM (`credvm run` in a repository, without `create`).
	OpenRepo func() (*repo.Repo, error)
	// User are the user's age identities; nil loads them as sops does.
	User *sops.Identities
	// MachineKeyFile is the machine's own age key, to decrypt its vars
	// without a user key ("": none; with Systemd, the unit's credential
	// "age-key" when it passes one).
	MachineKeyFile string
	// ShutdownTimeout is how long the guest gets to power off when the
	// run is cancelled, before the hypervisor is told to quit.
	ShutdownTimeout time.Duration
	// Console receives the guest's serial console besides console.log.
	Console io.Writer
	// Notices receives credvm's one-line messages.
	Notices io.Writer
	// Supervised reports to `credvm start` on ReadyFD (see supervise.go).
	Supervised bool
	// Systemd tells systemd the service is ready once the hypervisor
	// runs (sd_notify), and stopping when it ends.
	Systemd bool
	// Verbose adds details to the notices: the hypervisor's command line.
	Verbose bool
}

// Target is the machine a VM command acts on: a created VM runs its
// current configuration (its last `update`) from its repository; a
// machine that is not a VM runs its repository's machine file as it is.
type Target struct {
	Repo       *repo.Repo
	Machine    *spec.Machine
	ConfigHash string
	// Edited: the repository's machine file differs from the created
	// VM's configuration, which is what runs until `credvm update`.
	Edited bool
}

// EditedNotice is what run and creds show say about an Edited target.
func (t *Target) EditedNotice() string {
	file := path.Join(repo.PathsOf(t.Machine.Name).Dir, filepath.Base(t.Machine.File))
	return fmt.Sprintf("%s changed since the VM's last create or update; the VM uses the configuration it has (credvm update %s applies the edit)", file, t.Machine.Name)
}

// Resolve finds the target for a name.
func Resolve(s StateDir, openRepo func() (*repo.Repo, error)) (*Target, error) {
	if s.Exists() {
		reg, r, m, err := s.registered()
		if err != nil {
			return nil, err
		}
		t := &Target{Repo: r, Machine: m, ConfigHash: reg.Current.Hash}
		if edited, err := r.Machine(s.Name); err == nil && ConfigHash(edited) != reg.Current.Hash {
			t.Edited = true
		}
		return t, nil
	}
	r, err := openRepo()
	if err != nil {
		return nil, err
	}
	m, err := r.Machine(s.Name)
	if err != nil {
		return nil, err
	}
	return &Target{Repo: r, Machine: m, ConfigHash: ConfigHash(m)}, nil
}

// Run boots the VM in the foreground with its credentials and waits for
// it. Cancelling ctx powers the guest off. It reads the vars at start
// time and refuses to start when any is missing or outdated.
func Run(ctx context.Context, o RunOptions) (res *Result, err error) {
	var hs handshake
	if o.Supervised {
		hs = supervisorHandshake()
		defer func() { hs.ended(err) }()
	}
	t, err := Resolve(o.State, o.OpenRepo)
	if err != nil {
		return nil, err
	}
	if err := vars.RecoverIfNeeded(t.Repo); err != nil {
		return nil, err
	}
	if t.Edited && o.Notices != nil {
		fmt.Fprintf(o.Notices, "%s: %s\n", t.Machine.Name, t.EditedNotice())
	}
	user := o.User
	if user == nil {
		if user, err = sops.LoadUserIdentities(); err != nil {
			return nil, fmt.Errorf("reading your age key: %w", err)
		}
	}
	keyFile := o.MachineKeyFile
	if keyFile == "" && o.Systemd {
		keyFile = systemdMachineKey()
	}
	var machineKey *sops.Identities
	if keyFile != "" {
		if machineKey, err = sops.LoadIdentityFile(keyFile); err != nil {
			return nil, fmt.Errorf("the machine's age key: %w", err)
		}
	}
	if machineKey == nil {
		// On a fleet host: the machine key a deploy sealed to its host key.
		if machineKey, err = o.State.SealedKey(); err != nil {
			return nil, fmt.Errorf("vm %s: %w", o.State.Name, err)
		}
	}
	e := &vars.Engine{Repo: t.Repo, User: user}
	creds, err := Credentials(e, t.Machine, machineKey)
	if err != nil {
		return nil, err
	}
	ready := &readiness{}
	res, err = boot(ctx, bootOptions{
		Machine: t.Machine, Credentials: creds, State: o.State,
		Console: o.Console, Notices: o.Notices, ShutdownTimeout: o.ShutdownTimeout,
		ConfigHash: t.ConfigHash, VarsHash: VarsHash(e, t.Machine), Verbose: o.Verbose,
		Started: func(pid int, hypervisor string) {
			hs.started(pid, hypervisor)
			if !o.Systemd {
				return
			}
			if t.Machine.VM.Ready != "receipt" {
				ready.notify(fmt.Sprintf("STATUS=%s running (pid %d)", hypervisor, pid))
				return
			}
			daemon.SdNotify(false, fmt.Sprintf("MAINPID=%d\nSTATUS=%s running (pid %d), waiting for the guest's receipt", os.Getpid(), hypervisor, pid))
			time.AfterFunc(t.Machine.VM.ReadyWait(), func() {
				ready.notify(fmt.Sprintf("STATUS=%s running (pid %d), credentials unverified: no receipt from the guest in %s", hypervisor, pid, t.Machine.VM.ReadyWait()))
			})
		},
		Receipt: func(rc receipt.Receipt) {
			if o.Systemd {
				ready.notify("STATUS=running, credentials " + rc.Summary())
			}
		},
	})
	if o.Systemd && err == nil {
		daemon.SdNotify(false, "STOPPING=1")
	}
	return res, err
}

// systemdMachineKey is the machine key a unit passes as the credential
// "age-key" (LoadCredentialEncrypted=age-key:…), or "".
func systemdMachineKey() string {
	d := os.Getenv("CREDENTIALS_DIRECTORY")
	if d == "" {
		return ""
	}
	p := filepath.Join(d, "age-key")
	if _, err := os.Stat(p); err != nil {
		return ""
	}
	return p
}

// readiness sends systemd READY=1 once: when the guest's receipt comes,
// or the wait for it ends (ready = "receipt"), or the hypervisor runs
// (ready = "started").
type readiness struct{ once sync.Once }

func (r *readiness) notify(status string) {
	r.once.Do(func() {
		daemon.SdNotify(false, fmt.Sprintf("READY=1\nMAINPID=%d\n%s", os.Getpid(), status))
	})
}
