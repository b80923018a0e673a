package fleet

import (
	"context"
	"fmt"
	"regexp"

	"github.com/credvm/credvm/internal/repo"
	"github.com/credvm/credvm/internal/sops"
)

// MoveOptions configure Move.
type MoveOptions struct {
	// WithoutVolumes starts the VM with fresh volumes on the new host:
	// required when it has volumes, which are not copied yet.
	WithoutVolumes bool
	Log            func(string, ...any)
}

// Moved says what Move did.
type Moved struct {
	Machine string `json:"name"`
	From    string `json:"from"`
	To      string `json:"to"`
	// Removed: the VM was removed from the old host.
	Removed bool `json:"removed"`
}

// Move moves a VM placed on one host to another: deploys it there
// (created, not started), stops it on the old host, starts it on the new
// one and waits for its guest's receipt; only then removes it from the
// old host and records the new placement in inventory.toml (committed).
// On a failure after the stop, it is started again on the old host.
func Move(ctx context.Context, r *repo.Repo, user *sops.Identities, name, to string, o MoveOptions) (*Moved, error) {
	logf := o.Log
	if logf == nil {
		logf = func(string, ...any) {}
	}
	from := r.Inventory.HostOf(name)
	if from == "" {
		return nil, fmt.Errorf("vm %s is not placed on a host: move takes a VM from one host to another (deploy places a VM)", name)
	}
	if from == to {
		return nil, fmt.Errorf("vm %s is on %s already", name, to)
	}
	old, err := HostOf(r, from)
	if err != nil {
		return nil, err
	}
	dest, err := HostOf(r, to)
	if err != nil {
		return nil, err
	}
	m, err := r.Machine(name)
	if err != nil {
		return nil, err
	}
	if len(m.VM.Volumes) > 0 && !o.WithoutVolumes {
		return nil, fmt.Errorf("vm %s has volumes, which move does not copy between hosts yet: pass --without-volumes to start it on %s with fresh ones (its old volumes stay on %s)", name, to, from)
	}
	res := &Moved{Machine: name, From: from, To: to}
	logf("%s: deploying to %s", name, to)
	for _, d := range deployHostOpts(ctx, r, user, to, []string{name}, false, logf) {
		if d.Err != "" {
			return res, fmt.Errorf("deploying %s to %s: %s (nothing changed on %s)", name, to, d.Err, from)
		}
	}
	wasRunning, err := (&Placed{Machine: m, Host: old}).Running(ctx)
	if err != nil {
		return res, err
	}
	if wasRunning {
		logf("%s: stopping on %s", name, from)
		if _, err := old.credvm(ctx, nil, "stop", name); err != nil {
			return res, err
		}
	}
	undo := func(cause error) error {
		dest.credvm(ctx, nil, "stop", name)
		if wasRunning {
			if _, err := old.credvm(ctx, nil, "start", name); err != nil {
				return fmt.Errorf("%w; starting it again on %s failed too: %v", cause, from, err)
			}
			return fmt.Errorf("%w; it runs on %s again", cause, from)
		}
		return cause
	}
	logf("%s: starting on %s", name, to)
	if _, err := dest.credvm(ctx, nil, "start", name); err != nil {
		return res, undo(err)
	}
	if err := (&Placed{Machine: m, Host: dest}).WaitHealthy(ctx); err != nil {
		return res, undo(err)
	}
	if err := setPlacement(r, name, from, to); err != nil {
		return res, err
	}
	if _, err := old.credvm(ctx, nil, "destroy", name); err == nil {
		res.Removed = true
	} else {
		logf("%s: left on %s: %v", name, from, err)
	}
	return res, nil
}

// setPlacement rewrites the machine's host in inventory.toml (the rest of
// the file as the user wrote it) and commits it.
func setPlacement(r *repo.Repo, name, from, to string) error {
	p := r.Path("inventory.toml")
	b, err := r.ReadFile(p)
	if err != nil {
		return err
	}
	table := regexp.MustCompile(`(?ms)^\[machines\.` + regexp.QuoteMeta(name) + `\]\s*$.*?(^\[|\z)`)
	loc := table.FindIndex(b)
	if loc == nil {
		return fmt.Errorf("inventory.toml: no [machines.%s] table", name)
	}
	section := string(b[loc[0]:loc[1]])
	line := regexp.MustCompile(`(?m)^(\s*host\s*=\s*)"` + regexp.QuoteMeta(from) + `"`)
	if !line.MatchString(section) {
		return fmt.Errorf("inventory.toml: [machines.%s] does not say host = %q", name, from)
	}
	section = line.ReplaceAllString(section, `${1}"`+to+`"`)
	content := string(b[:loc[0]]) + section + string(b[loc[1]:])
	if err := r.WriteFileAtomic(p, []byte(content), 0o644); err != nil {
		return err
	}
	if r.InGit() {
		return r.Commit([]string{p}, fmt.Sprintf("move %s from %s to %s", name, from, to))
	}
	return nil
}
