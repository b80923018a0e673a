// Package vars generates, stores and reads a machine's vars: the files its
// generators produce, secret ones sops-encrypted and public ones in plain
// text, in clan's layout (see package repo).
//
// What it promises:
//   - Generators run in dependency order, in a sandbox (bubblewrap as clan
//     uses, else Linux namespaces) without network, with a clean
//     environment and a PATH of their runtime inputs only, under a timeout.
//   - Outputs are checked — every declared file present and regular, nothing
//     undeclared — before anything is stored.
//   - A run commits atomically (see txn.go): a failing script, a missing
//     file or a kill -9 at any point leaves the previous vars exactly as
//     they were, across all generators of the run, which clan's own tool
//     does not promise.
//   - Plaintext exists only in the run's private workspace (0700, on tmpfs
//     where the machine has /dev/shm), removed when the run ends, and
//     removed at the next run if a crash left it behind.
//
// Outdated vars are found as clan finds them (the validation hash in
// .validation-hash) and, beyond clan, by a hash of the generator's
// definition and of the generations of its dependencies, kept in
// .credvm.json next to it. Vars written by clan have no .credvm.json and are
// judged by clan's rule alone.
package vars

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/credvm/credvm/internal/repo"
	"github.com/credvm/credvm/internal/sops"
	"github.com/credvm/credvm/internal/spec"
)

// Names of the per-generator metadata files.
const (
	ValidationFile = ".validation-hash" // clan's
	MetaFile       = ".credvm.json"     // ours
)

// Meta is what .credvm.json records about a generator's stored vars. It
// holds no secret: hashes of the definition, and random generation IDs.
type Meta struct {
	// Definition is spec.Generator.DefinitionHash at generation time.
	Definition string `json:"definition"`
	// Generation changes every time the generator's files change.
	Generation string `json:"generation"`
	// Inputs is each dependency's Generation that this generation read.
	Inputs map[string]string `json:"inputs,omitempty"`
}

// Engine reads and writes one repository's vars.
//
// It holds what every operation needs — the repository and the user's
// keys; what varies from call to call (prompt answers, sandbox, commit)
// is in each operation's options.
type Engine struct {
	Repo *repo.Repo
	// User holds the user's age identities (to read dependencies' secrets
	// and machine keys). Only needed when something must be decrypted.
	User *sops.Identities
	// Log receives progress lines; nil discards them.
	Log io.Writer

	inputs inputResolver
}

// GeneratorDir is where a generator's vars live for a machine.
func (e *Engine) GeneratorDir(machine string, g *spec.Generator) string {
	return e.Repo.GeneratorDir(machine, g.Name, g.Share)
}

// limits are the repository's bounds for generator scripts.
func (e *Engine) limits() spec.GeneratorLimits {
	if e.Repo.Settings == nil {
		return spec.DefaultLimits
	}
	return e.Repo.Settings.GeneratorLimits()
}

func (e *Engine) logf(format string, args ...any) {
	if e.Log != nil {
		fmt.Fprintf(e.Log, format+"\n", args...)
	}
}

// Status of a generator or file.
const (
	StatusOK       = "ok"
	StatusMissing  = "missing"
	StatusOutdated = "outdated"
)

// FileStatus is one file's state; it never holds a value.
type FileStatus struct {
	Machine   string `json:"machine"`
	Generator string `json:"generator"`
	File      string `json:"file"`
	Secret    bool   `json:"secret"`
	Shared    bool   `json:"shared"`
	Deploy    bool   `json:"deploy"`
	Status    string `json:"status"`
	Reason    string `json:"reason,omitempty"`
	// Notice is what clan would not call outdated but credvm tells: a
	// changed definition, a regenerated dependency.
	Notice string `json:"notice,omitempty"`
	Path   string `json:"path"`
}

// GeneratorStatus is one generator's state.
type GeneratorStatus struct {
	Name   string       `json:"generator"`
	Status string       `json:"status"`
	Reason string       `json:"reason,omitempty"`
	Notice string       `json:"notice,omitempty"`
	Files  []FileStatus `json:"files"`
	meta   *Meta
}

func readMeta(r *repo.Repo, dir string) (*Meta, error) {
	b, err := r.ReadFile(filepath.Join(dir, MetaFile))
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var m Meta
	if err := json.Unmarshal(b, &m); err != nil {
		return nil, fmt.Errorf("%s: %w", filepath.Join(dir, MetaFile), err)
	}
	return &m, nil
}

// Status reports every generator of the machine, in dependency order.
func (e *Engine) Status(m *spec.Machine) ([]GeneratorStatus, error) {
	var out []GeneratorStatus
	byName := map[string]*GeneratorStatus{}
	for _, g := range m.GeneratorOrder() {
		gs, err := e.generatorStatus(m, g, byName)
		if err != nil {
			return nil, err
		}
		out = append(out, gs)
		byName[g.Name] = &out[len(out)-1]
	}
	return out, nil
}

func (e *Engine) generatorStatus(m *spec.Machine, g *spec.Generator, deps map[string]*GeneratorStatus) (GeneratorStatus, error) {
	dir := e.GeneratorDir(m.Name, g)
	gs := GeneratorStatus{Name: g.Name, Status: StatusOK}
	meta, err := readMeta(e.Repo, dir)
	if err != nil {
		return gs, fmt.Errorf("vars %s/%s: %w", m.Name, g.Name, err)
	}
	gs.meta = meta
	missing := 0
	for _, f := range g.SortedFiles() {
		fs := FileStatus{Machine: m.Name, Generator: g.Name, File: f.Name, Secret: f.IsSecret(), Shared: g.Share, Deploy: f.IsDeployed(), Status: StatusOK}
		fdir := filepath.Join(dir, f.Name)
		want, other := "value", "secret"
		if f.IsSecret() {
			want, other = other, want
		}
		fs.Path = e.Repo.Rel(filepath.Join(fdir, want))
		if !e.Repo.Exists(filepath.Join(fdir, want)) {
			if e.Repo.Exists(filepath.Join(fdir, other)) {
				fs.Status, fs.Reason = StatusOutdated, "stored as "+other+" but declared "+map[bool]string{true: "secret", false: "public"}[f.IsSecret()]
			} else {
				fs.Status = StatusMissing
				missing++
			}
		}
		gs.Files = append(gs.Files, fs)
	}
	setGen := func(status, reason string) {
		if gs.Status == StatusOK || (gs.Status == StatusOutdated && status == StatusMissing) {
			gs.Status, gs.Reason = status, reason
		}
	}
	if missing > 0 {
		setGen(StatusMissing, fmt.Sprintf("%d of %d files missing", missing, len(g.Files)))
		if missing == len(g.Files) && !g.Imported && !m.FromLayout {
			if other := e.Repo.GeneratorDir(m.Name, g.Name, !g.Share); (g.Share && e.Repo.Exists(other)) || (!g.Share && e.deployedTo(other, m.Name)) {
				gs.Reason += fmt.Sprintf("; its values are in %s (share changed): `credvm vars generate %s` moves them", e.Repo.Rel(other), m.Name)
			}
		}
	}
	for _, fs := range gs.Files {
		if fs.Status == StatusOutdated {
			setGen(StatusOutdated, fs.File+": "+fs.Reason)
		}
	}
	if (gs.Status == StatusMissing && missing == len(g.Files)) || m.FromLayout {
		// Without a definition (a machine from the layout alone) only
		// presence can be told.
		return gs, nil
	}
	// Outdated as clan has it: the validation hash stored differs from the
	// declared one — or one is stored and none is declared any more.
	got, err := e.Repo.ReadFile(filepath.Join(dir, ValidationFile))
	switch want := g.ValidationHash(); {
	case want != "" && (err != nil || string(trimNL(got)) != want):
		setGen(StatusOutdated, "validation changed")
	case want == "" && err == nil:
		setGen(StatusOutdated, "validation removed (a validation hash is stored, none is declared)")
	}
	// What clan does not call outdated is a notice: a changed script, a
	// regenerated dependency. The vars stay valid — a boot is never refused
	// for it — and --regenerate applies it.
	var notices []string
	if meta != nil {
		if meta.Definition != g.DefinitionHash() {
			notices = append(notices, "definition changed since generation: --regenerate to apply")
		}
		for _, d := range slices.Sorted(slices.Values(g.Dependencies)) {
			dep := deps[d]
			if dep == nil {
				continue
			}
			if dep.Status != StatusOK {
				notices = append(notices, "dependency "+d+" is "+dep.Status)
			} else if dep.meta != nil && meta.Inputs[d] != dep.meta.Generation {
				notices = append(notices, "dependency "+d+" was regenerated since: --regenerate to follow it")
			}
		}
	}
	gs.Notice = strings.Join(notices, "; ")
	for i := range gs.Files {
		gs.Files[i].Notice = gs.Notice
	}
	if gs.Status != StatusOK {
		for i := range gs.Files {
			if gs.Files[i].Status == StatusOK {
				gs.Files[i].Status = StatusOutdated
				gs.Files[i].Reason = gs.Reason
			}
		}
	}
	return gs, nil
}

func trimNL(b []byte) []byte {
	for len(b) > 0 && (b[len(b)-1] == '\n' || b[len(b)-1] == '\r') {
		b = b[:len(b)-1]
	}
	return b
}

// Get returns a var's value: a public value as stored, a secret decrypted
// with the user's key or through the machine's key. m may be nil for a
// machine without a machine file (a clan repository): the var is then
// looked for under per-machine, then shared.
func (e *Engine) Get(machine string, m *spec.Machine, gen, file string) ([]byte, error) {
	var dirs []string
	if m != nil {
		g := m.Vars.Generators[gen]
		if g == nil {
			return nil, fmt.Errorf("vars %s/%s/%s: machine %s has no generator %q (see %s)", machine, gen, file, machine, gen, m.File)
		}
		if g.Files[file] == nil {
			return nil, fmt.Errorf("vars %s/%s/%s: generator %s declares no file %q", machine, gen, file, gen, file)
		}
		dirs = []string{filepath.Join(e.GeneratorDir(machine, g), file)}
	} else {
		dirs = []string{filepath.Join(e.Repo.GeneratorDir(machine, gen, false), file), filepath.Join(e.Repo.GeneratorDir("", gen, true), file)}
	}
	for _, d := range dirs {
		b, err := e.Repo.ReadFile(filepath.Join(d, "value"))
		switch {
		case err == nil:
			return b, nil
		case !errors.Is(err, fs.ErrNotExist):
			return nil, fmt.Errorf("vars %s/%s/%s: %w", machine, gen, file, err)
		}
		if e.Repo.Exists(filepath.Join(d, "secret")) {
			if e.User == nil || len(e.User.List) == 0 {
				return nil, fmt.Errorf("vars %s/%s/%s: no age key of yours to decrypt it: %s", machine, gen, file, sops.NoKeyFix())
			}
			pt, err := e.Repo.DecryptSecret(d, machine, e.User)
			if err != nil {
				return nil, fmt.Errorf("vars %s/%s/%s: %w", machine, gen, file, err)
			}
			return pt, nil
		}
	}
	return nil, fmt.Errorf("vars %s/%s/%s: not generated yet: run `credvm vars generate %s`", machine, gen, file, machine)
}
