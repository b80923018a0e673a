package fleet

import (
	"context"
	"errors"
	"fmt"
	"io"
	"path/filepath"
	"regexp"
	"strings"

	"github.com/credvm/credvm/internal/repo"
	"github.com/credvm/credvm/internal/sops"
)

// MoveOptions configure Move.
type MoveOptions struct {
	// WithoutVolumes starts the VM with fresh volumes on the new host
	// instead of copying them (the old ones stay on the old host).
	WithoutVolumes bool
	// Purge removes the VM's volumes from the old host once it is moved
	// (else they stay there, the only copy of its data before the move).
	Purge bool
	Log   func(string, ...any)
}

// Moved says what Move did.
type Moved struct {
	Machine string `json:"name"`
	From    string `json:"from"`
	To      string `json:"to"`
	// Started: it ran on the old host, and runs (healthy) on the new one.
	Started bool `json:"started"`
	// Removed: the VM was removed from the old host; Purged are the
	// volumes removed there with it.
	Removed bool     `json:"removed"`
	Purged  []string `json:"purged,omitempty"`
}

// Move moves a VM placed on one host to another: deploys it there
// (created, not started), stops it on the old host, copies its volumes,
// starts it on the new one (if it ran) and waits for its guest's receipt;
// only then records the new placement in inventory.toml (committed) and
// removes it from the old host. On a failure after the stop, what the
// move made on the new host is removed and the VM started again on the
// old host.
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
	for _, v := range m.VM.Volumes {
		if filepath.IsAbs(v.Image) && !o.WithoutVolumes {
			return nil, fmt.Errorf("vm %s: volume %s is outside its state directory: copy it yourself and pass --without-volumes", name, v.Image)
		}
	}
	res := &Moved{Machine: name, From: from, To: to}
	logf("%s: deploying to %s", name, to)
	created := false
	for _, d := range deployHost(ctx, r, user, to, []string{name}, false, logf) {
		if d.Err != "" {
			return res, fmt.Errorf("deploying %s to %s: %s (nothing changed on %s)", name, to, d.Err, from)
		}
		created = d.Created
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
	// undo puts things back as they were: what the move made on the new
	// host removed (its copies of the volumes too; its unit disabled by
	// the host's destroy), the VM started again
	// on the old one if it ran there.
	var copied []string
	undo := func(cause error) error {
		dest.credvm(ctx, nil, "stop", name)
		if created {
			dest.credvm(ctx, nil, "destroy", name)
			for _, img := range copied {
				dest.Run(ctx, nil, "rm", "-f", "--", dest.Path(filepath.Join(HostState, name, img)))
			}
		}
		if wasRunning {
			if _, err := old.credvm(ctx, nil, "start", name); err != nil {
				return fmt.Errorf("%w; starting it again on %s failed too: %v", cause, from, err)
			}
			return fmt.Errorf("%w; it runs on %s again", cause, from)
		}
		return cause
	}
	if !o.WithoutVolumes {
		for _, v := range m.VM.Volumes {
			logf("%s: copying volume %s from %s to %s", name, v.Image, from, to)
			if err := copyVolume(ctx, old, dest, name, v.Image); err != nil {
				return res, undo(err)
			}
			copied = append(copied, v.Image)
		}
	}
	// A VM that was stopped stays stopped: moved, not started.
	if wasRunning {
		logf("%s: starting on %s", name, to)
		if _, err := dest.credvm(ctx, nil, "start", name); err != nil {
			return res, undo(err)
		}
		if err := (&Placed{Machine: m, Host: dest}).WaitHealthy(ctx); err != nil {
			return res, undo(err)
		}
		res.Started = true
	}
	if err := setPlacement(r, name, from, to); err != nil {
		return res, undo(err)
	}
	_, derr := old.credvm(ctx, nil, "destroy", name)
	if _, err := old.credvm(ctx, nil, "status", name); err != nil && strings.Contains(err.Error(), "does not exist") {
		res.Removed = true
	} else if derr != nil {
		logf("%s: left on %s: %v", name, from, derr)
	}
	if !o.Purge {
		if len(m.VM.Volumes) > 0 && res.Removed {
			logf("%s: its volumes stay on %s (credvm move --purge removes them)", name, from)
		}
		return res, nil
	}
	var imgs []string
	for _, v := range m.VM.Volumes {
		if !filepath.IsAbs(v.Image) && filepath.IsLocal(v.Image) {
			imgs = append(imgs, v.Image)
		}
	}
	dir := old.Path(filepath.Join(HostState, name))
	script := "cd " + shellQuote(dir) + " 2>/dev/null || exit 0; rm -f --"
	for _, img := range imgs {
		script += " " + shellQuote(img)
	}
	script += "; cd / && rmdir " + shellQuote(dir) + " 2>/dev/null || true"
	if _, err := old.Run(ctx, nil, "sh", "-c", script); err != nil {
		return res, fmt.Errorf("moved, but its volumes on %s could not be removed: %w", from, err)
	}
	res.Purged = imgs
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

// copyVolume streams a stopped VM's volume from one host to the other
// (through this machine: the hosts need not reach each other), written
// beside its place and renamed there only when both ends' SHA-256 agree.
func copyVolume(ctx context.Context, from, to *Host, name, image string) error {
	src := from.Path(filepath.Join(HostState, name, image))
	dst := to.Path(filepath.Join(HostState, name, image))
	tmp := dst + ".credvm-move"
	pr, pw := io.Pipe()
	errc := make(chan error, 1)
	go func() {
		err := from.Stream(ctx, nil, pw, "cat", src)
		pw.CloseWithError(err)
		errc <- err
	}()
	werr := to.Stream(ctx, pr, nil, "sh", "-c", "umask 077 && cat > "+shellQuote(tmp))
	pr.Close()
	if err := errors.Join(<-errc, werr); err != nil {
		to.Run(ctx, nil, "rm", "-f", tmp)
		return fmt.Errorf("copying volume %s: %w", image, err)
	}
	a, err := from.Run(ctx, nil, "sha256sum", src)
	if err != nil {
		return err
	}
	b, err := to.Run(ctx, nil, "sha256sum", tmp)
	if err != nil {
		return err
	}
	if fa, fb := strings.Fields(string(a)), strings.Fields(string(b)); len(fa) == 0 || len(fb) == 0 || fa[0] != fb[0] {
		to.Run(ctx, nil, "rm", "-f", tmp)
		return fmt.Errorf("copying volume %s: the copy's SHA-256 differs from the original's", image)
	}
	_, err = to.Run(ctx, nil, "mv", tmp, dst)
	return err
}
