package vars

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"path/filepath"
	"slices"
	"strings"
	"sync"

	"github.com/credvm/credvm/internal/sops"
	"github.com/credvm/credvm/internal/spec"
)

// locked runs fn holding the repository's lock, after finishing any
// transaction a crashed credvm left: every writing operation starts so.
func (e *Engine) locked(fn func() error) error {
	l, err := e.Repo.Lock(func(msg string) { e.logf("%s", msg) })
	if err != nil {
		return err
	}
	defer l.Release()
	if err := Recover(e.Repo); err != nil {
		return err
	}
	return fn()
}

// commitGit commits paths (and the history they replaced) inside a git
// work tree, unless noCommit. The error reads "the git commit failed: …",
// to follow what was done.
func (e *Engine) commitGit(noCommit bool, paths []string, format string, args ...any) error {
	if noCommit || !e.Repo.InGit() {
		return nil
	}
	if err := e.Repo.Commit(append(paths, e.Repo.Path(HistoryDir)), fmt.Sprintf(format, args...)); err != nil {
		return fmt.Errorf("the git commit failed: %w", err)
	}
	return nil
}

// recipientUsers returns the registered users, after checking that the
// person running credvm is one of them: clan refuses to write secrets its
// own admin could not read back, and so do we.
func (e *Engine) recipientUsers() ([]string, error) {
	all, err := e.Repo.Users()
	if err != nil {
		return nil, err
	}
	if len(all) == 0 {
		return nil, errors.New("vars: no users in sops/users, so nobody could read the secrets: run `credvm vars keygen` first")
	}
	if e.User == nil || len(e.User.Recipients) == 0 {
		return nil, errors.New("vars: no age key of yours found: " + sops.NoKeyFix())
	}
	me, err := e.Repo.UserFor(e.User.Recipients)
	if err != nil {
		return nil, err
	}
	if me == "" {
		return nil, fmt.Errorf("vars: your age key %s is not registered in sops/users: run `credvm vars keygen` to add it", e.User.Recipients[0])
	}
	names := make([]string, 0, len(all))
	for n := range all {
		names = append(names, n)
	}
	slices.Sort(names)
	return names, nil
}

// sharedMachines maps each shared generator to the machines that use it.
func (e *Engine) sharedMachines() (map[string][]string, error) {
	names, err := e.Repo.MachineNames()
	if err != nil {
		return nil, err
	}
	out := map[string][]string{}
	for _, n := range names {
		m, err := e.Repo.Machine(n)
		if err != nil {
			return nil, err
		}
		for _, g := range m.Vars.Generators {
			if g.Share {
				out[g.Name] = append(out[g.Name], n)
			}
		}
	}
	return out, nil
}

// runner runs generators and stages their outputs.
type runner struct {
	e        *Engine
	sandbox  Sandbox
	bwrap    string
	users    []string
	answers  map[string][]byte
	noCommit bool
	// showOutput shows a failing script's output, scrubbed.
	showOutput bool
	// pending are machine keys staged in the transaction being written
	// (an import's): secrets are encrypted to them before they exist.
	pending map[string]string
	gitMu   sync.Mutex
}

// runTxn runs gens (in order) for one machine m — or shared generators,
// with m holding all shared generators and sharedUsers the machines using
// each — and commits all their outputs in one transaction.
func (r *runner) runTxn(ctx context.Context, label string, gens []*spec.Generator, m *spec.Machine, sharedUsers map[string][]string) error {
	e := r.e
	t := newTxn(e.Repo)
	outputs := map[string]map[string][]byte{}
	generations := map[string]string{}
	var changed []string
	for _, g := range gens {
		machine := label
		deployTo := []string{label}
		if g.Share {
			deployTo = sharedUsers[g.Name]
			machine = ""
		}
		files, err := r.run(ctx, label, machine, g, m, outputs)
		if err != nil {
			t.abort()
			return err
		}
		outputs[g.Name] = files
		meta := &Meta{Definition: g.DefinitionHash(), Generation: randomID(), Inputs: map[string]string{}}
		for _, d := range g.Dependencies {
			if gen, ok := generations[d]; ok {
				meta.Inputs[d] = gen
			} else if dm, _ := readMeta(e.Repo, e.GeneratorDir(machine, depOf(m, g, d))); dm != nil {
				meta.Inputs[d] = dm.Generation
			}
		}
		generations[g.Name] = meta.Generation
		target := e.GeneratorDir(label, g)
		staging, err := t.stage(target)
		if err != nil {
			t.abort()
			return fmt.Errorf("vars %s/%s: stage: %w", label, g.Name, err)
		}
		if err := r.writeGenerator(staging, g, files, meta, deployTo); err != nil {
			t.abort()
			return fmt.Errorf("vars %s/%s: store: %w", label, g.Name, err)
		}
		changed = append(changed, target)
	}
	if err := t.commit(); err != nil {
		return fmt.Errorf("vars %s: %w", label, err)
	}
	names := make([]string, len(gens))
	for i, g := range gens {
		names[i] = g.Name
	}
	r.gitMu.Lock()
	defer r.gitMu.Unlock()
	if err := e.commitGit(r.noCommit, append(changed, e.Repo.Path("sops")), "vars: update %s: %s", label, strings.Join(names, ", ")); err != nil {
		return fmt.Errorf("vars %s: generated and stored, but %w", label, err)
	}
	return nil
}

func depOf(m *spec.Machine, g *spec.Generator, dep string) *spec.Generator {
	if d := m.Vars.Generators[dep]; d != nil {
		return d
	}
	return &spec.Generator{Name: dep, Share: g.Share}
}

func randomID() string {
	b := make([]byte, 8)
	rand.Read(b)
	return hex.EncodeToString(b)
}

// writeGenerator writes a generator's directory: each file as secret (sops,
// with recipient links) or value, the validation hash, and our metadata.
func (r *runner) writeGenerator(dir string, g *spec.Generator, files map[string][]byte, meta *Meta, machines []string) error {
	e := r.e
	for _, f := range g.SortedFiles() {
		fdir := filepath.Join(dir, f.Name)
		content := files[f.Name]
		// dir is a staging directory: its transaction syncs it whole.
		if !f.IsSecret() {
			if err := e.Repo.MkdirAll(fdir, 0o755); err != nil {
				return err
			}
			if err := e.Repo.WriteFile(filepath.Join(fdir, "value"), content, 0o644); err != nil {
				return err
			}
			continue
		}
		var to []string
		var keys []sops.Recipient
		if f.IsDeployed() {
			to = machines
			for _, m := range to {
				pub, ok := r.pending[m]
				if !ok {
					var err error
					if pub, err = e.Repo.EnsureMachineKey(m); err != nil {
						return err
					}
				}
				keys = append(keys, sops.Age(pub))
			}
		}
		userKeys, err := e.Repo.Recipients(nil, r.users)
		if err != nil {
			return err
		}
		if err := e.Repo.StageSecretTo(fdir, content, append(keys, userKeys...), to, r.users); err != nil {
			return fmt.Errorf("%s: %w", f.Name, err)
		}
	}
	if h := g.ValidationHash(); h != "" {
		if err := e.Repo.WriteFile(filepath.Join(dir, ValidationFile), []byte(h), 0o644); err != nil {
			return err
		}
	}
	b, _ := json.MarshalIndent(meta, "", "  ")
	return e.Repo.WriteFile(filepath.Join(dir, MetaFile), append(b, '\n'), 0o644)
}

// fixSharedRecipients re-encrypts the secrets of shared generators whose
// recipients no longer match the machines using them — a machine added
// (cloned) after the shared vars were generated must be able to read
// them — in one transaction, values unchanged (clan's `vars fix`).
func (r *runner) fixSharedRecipients(shared *spec.Machine, machinesOf map[string][]string) error {
	e := r.e
	t := newTxn(e.Repo)
	var fixed []string
	for _, g := range shared.SortedGenerators() {
		dir := e.GeneratorDir("", g)
		want := slices.Sorted(slices.Values(machinesOf[g.Name]))
		needs := false
		for _, f := range g.SortedFiles() {
			if !f.IsSecret() || !f.IsDeployed() {
				continue
			}
			if !e.Repo.Exists(filepath.Join(dir, f.Name, "secret")) {
				continue
			}
			if !slices.Equal(e.Repo.LinkedNames(filepath.Join(dir, f.Name), "machines"), want) {
				needs = true
			}
		}
		if !needs {
			continue
		}
		files := map[string][]byte{}
		for _, f := range g.SortedFiles() {
			v, err := e.Get("", shared, g.Name, f.Name)
			if err != nil {
				t.abort()
				return fmt.Errorf("vars shared/%s: re-encrypt for %s: %w", g.Name, strings.Join(want, ", "), err)
			}
			files[f.Name] = v
		}
		meta, _ := readMeta(e.Repo, dir)
		if meta == nil {
			meta = &Meta{Definition: g.DefinitionHash(), Generation: randomID()}
		}
		staging, err := t.stage(dir)
		if err != nil {
			t.abort()
			return err
		}
		if err := r.writeGenerator(staging, g, files, meta, want); err != nil {
			t.abort()
			return fmt.Errorf("vars shared/%s: %w", g.Name, err)
		}
		fixed = append(fixed, g.Name)
	}
	if len(fixed) == 0 {
		return nil
	}
	if err := t.commit(); err != nil {
		return err
	}
	e.logf("shared/%s: re-encrypted for the machines using it", strings.Join(fixed, ", "))
	return e.commitGit(r.noCommit, []string{e.Repo.Path("vars", "shared"), e.Repo.Path("sops")}, "vars: re-encrypt shared %s for the machines using them", strings.Join(fixed, ", "))
}
