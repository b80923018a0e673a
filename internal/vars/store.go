package vars

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"

	"github.com/credvm/credvm/internal/repo"
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

// me is the registered user running credvm — clan's "admin": every secret
// it writes is also encrypted to them (clan refuses to write secrets its
// own admin could not read back, and so do we). Their key decides; a key
// credvm cannot see the public half of (an age plugin's) falls back to
// $USER's registration.
func (e *Engine) me() (string, error) {
	all, err := e.Repo.Users()
	if err != nil {
		return "", err
	}
	if len(all) == 0 {
		return "", errors.New("vars: no users in sops/users, so nobody could read the secrets: run `credvm vars keygen` first")
	}
	if e.User == nil || len(e.User.List) == 0 {
		return "", errors.New("vars: no age key of yours found: " + sops.NoKeyFix())
	}
	me, err := e.Repo.UserFor(e.User.Public())
	if err != nil {
		return "", err
	}
	if me == "" {
		if _, ok := all[os.Getenv("USER")]; ok && len(e.User.Public()) == 0 {
			return os.Getenv("USER"), nil
		}
		key := "of yours"
		if pub := e.User.Public(); len(pub) > 0 {
			key = pub[0]
		}
		return "", fmt.Errorf("vars: your age key %s is not registered in sops/users: run `credvm vars keygen` to add it", key)
	}
	return me, nil
}

// newAccess is what a secret written now is shared with besides its
// machines: the user writing it, the default groups ([sops]
// default_groups), and whoever the previous generation's links named
// (old: its directory) — clan's encrypt_secret.
func (r *runner) newAccess(old string) repo.Access {
	prev := r.e.Repo.AccessOf(old)
	base := repo.Access{Users: []string{r.me}, Groups: r.e.Repo.DefaultGroups()}
	return base.Union(repo.Access{Users: prev.Users, Groups: prev.Groups})
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
			if g.Share && !g.Imported { // a dependency only: not deployed to n
				out[g.Name] = append(out[g.Name], n)
			}
		}
	}
	return out, nil
}

// runner runs generators and stages their outputs.
type runner struct {
	e       *Engine
	sandbox Sandbox
	bwrap   string
	// me is the user writing (see Engine.me).
	me       string
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
		if err := r.writeGenerator(staging, target, g, files, meta, deployTo); err != nil {
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
func (r *runner) writeGenerator(dir, target string, g *spec.Generator, files map[string][]byte, meta *Meta, machines []string) error {
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
		access := r.newAccess(filepath.Join(target, f.Name))
		if f.IsDeployed() {
			access.Machines = machines
			for _, m := range machines {
				if _, ok := r.pending[m]; ok {
					continue
				}
				if _, err := e.Repo.EnsureMachineKey(m, repo.Access{Users: []string{r.me}, Groups: e.Repo.DefaultGroups()}); err != nil {
					return err
				}
			}
		}
		if err := e.Repo.StageSecretTo(fdir, content, r.pending, access); err != nil {
			return fmt.Errorf("%s: %w", f.Name, err)
		}
		r.noteRecipients(g, f, filepath.Join(target, f.Name), fdir)
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
	t.noHistory = true // the same values, re-encrypted
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
		if err := r.writeGenerator(staging, dir, g, files, meta, want); err != nil {
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

// noteRecipients tells when a secret's new generation is encrypted to
// other keys than the one it replaces (a user joined a group, a machine
// stopped deploying it): who can read a secret never changes unsaid.
func (r *runner) noteRecipients(g *spec.Generator, f *spec.File, old, staged string) {
	before, err := r.e.Repo.SecretRecipients(old)
	if err != nil {
		return // a new secret
	}
	after, err := r.e.Repo.SecretRecipients(staged)
	if err != nil {
		return
	}
	if added, removed := repo.DiffRecipients(before, after); len(added)+len(removed) > 0 {
		r.e.logf("%s/%s: encrypted to other keys than before: %s", g.Name, f.Name, r.e.Repo.DescribeChange(added, removed))
	}
}
