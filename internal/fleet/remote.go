package fleet

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/credvm/credvm/internal/repo"
	"github.com/credvm/credvm/internal/sops"
	"github.com/credvm/credvm/internal/spec"
	"github.com/credvm/credvm/internal/vm"
)

// Placed is a VM on its host, as a rotation drives it (vm.Remote).
type Placed struct {
	Repo    *repo.Repo
	User    *sops.Identities
	Machine *spec.Machine
	Host    *Host
	Log     func(string, ...any)
}

// status is what the host's `credvm status NAME --json` says.
func (p *Placed) status(ctx context.Context) (*vm.Status, error) {
	out, err := p.Host.credvm(ctx, nil, "status", p.Machine.Name, "--json")
	if err != nil {
		return nil, err
	}
	var sts []vm.Status
	if err := json.Unmarshal(out, &sts); err != nil || len(sts) != 1 {
		return nil, fmt.Errorf("host %s: its status of %s is unreadable", p.Host.Name, p.Machine.Name)
	}
	return &sts[0], nil
}

// Running implements vm.Remote.
func (p *Placed) Running(ctx context.Context) (bool, error) {
	st, err := p.status(ctx)
	if err != nil {
		return false, err
	}
	return st.Running, nil
}

// Deploy implements vm.Remote: the new vars sent, the VM updated -R.
func (p *Placed) Deploy(ctx context.Context) error {
	logf := p.Log
	if logf == nil {
		logf = func(string, ...any) {}
	}
	for _, d := range deployHost(ctx, p.Repo, p.User, p.Host.Name, []string{p.Machine.Name}, true, logf) {
		if d.Err != "" {
			return errors.New(d.Err)
		}
	}
	return nil
}

// WaitHealthy implements vm.Remote: the guest's receipt for the new run,
// read from the host's status; a guest that never reports is healthy
// (unverified) after its ready_timeout, as on this host.
func (p *Placed) WaitHealthy(ctx context.Context) error {
	deadline := time.Now().Add(p.Machine.VM.ReadyWait())
	for {
		st, err := p.status(ctx)
		switch {
		case err != nil:
			return err
		case !st.Running:
			return fmt.Errorf("vm %s stopped on %s before its guest reported its credentials", p.Machine.Name, p.Host.Name)
		case st.Delivery == "verified":
			return nil
		case strings.HasPrefix(st.Delivery, "credentials "):
			return fmt.Errorf("vm %s on %s: its guest reports %s", p.Machine.Name, p.Host.Name, st.Delivery)
		}
		if time.Now().After(deadline) {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(500 * time.Millisecond):
		}
	}
}

// Remotes are the named machines placed on hosts, for a rotation.
func Remotes(r *repo.Repo, user *sops.Identities, names []string, logf func(string, ...any)) ([]vm.RemoteVM, error) {
	var out []vm.RemoteVM
	for _, n := range names {
		hn := r.Inventory.HostOf(n)
		if hn == "" {
			continue
		}
		h, err := HostOf(r, hn)
		if err != nil {
			return nil, err
		}
		m, err := r.Machine(n)
		if err != nil {
			return nil, err
		}
		out = append(out, vm.RemoteVM{Name: n, Host: hn, Repo: r, Machine: m,
			Remote: &Placed{Repo: r, User: user, Machine: m, Host: h, Log: logf}})
	}
	return out, nil
}

// Select names the placed VMs among names, tags and hosts: the named VMs
// (each must be placed), those with one of the tags, and those on one of
// the hosts; with none of them, every placed VM.
func Select(r *repo.Repo, names, tags, hosts []string) ([]string, error) {
	for _, h := range hosts {
		if r.Inventory.Hosts[h] == nil {
			return nil, noHostError(h)
		}
	}
	var out []string
	if len(names) > 0 || len(tags) > 0 {
		sel, err := r.Select(names, tags)
		if err != nil {
			return nil, err
		}
		for _, n := range sel {
			if r.Inventory.HostOf(n) == "" {
				if slices.Contains(names, n) {
					return nil, unplacedError(n)
				}
				continue
			}
			out = append(out, n)
		}
	}
	if len(hosts) > 0 || len(names) == 0 && len(tags) == 0 {
		all, err := r.MachineNames()
		if err != nil {
			return nil, err
		}
		for _, n := range all {
			if h := r.Inventory.HostOf(n); h != "" && (len(hosts) == 0 || slices.Contains(hosts, h)) && !slices.Contains(out, n) {
				out = append(out, n)
			}
		}
	}
	if len(out) == 0 {
		return nil, errors.New("no VM is placed on a host: set host = \"H\" under [machines.NAME] in inventory.toml")
	}
	slices.Sort(out)
	return out, nil
}
