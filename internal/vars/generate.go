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
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/credvm/credvm/internal/faultinject"
	"github.com/credvm/credvm/internal/repo"
	"github.com/credvm/credvm/internal/spec"
)

// GenerateOptions chooses what Generate runs.
type GenerateOptions struct {
	// Generators limits the run to these generators (and their dependents).
	Generators []string
	// Regenerate runs the chosen generators even when their vars are
	// current; without it only missing or outdated ones run.
	Regenerate bool
}

// Result says what a Generate run did for one machine.
type Result struct {
	Machine string   `json:"machine"`
	Ran     []string `json:"generated"`
}

// plan lists the generators of m to run, in dependency order: the chosen
// ones that need it (or all chosen, with Regenerate) and, transitively,
// every generator that depends on one of them.
func (e *Engine) plan(m *spec.Machine, opts GenerateOptions) ([]*spec.Generator, error) {
	for _, name := range opts.Generators {
		if m.Vars.Generators[name] == nil {
			return nil, fmt.Errorf("vars %s: no generator %q (see %s)", m.Name, name, m.File)
		}
	}
	status, err := e.Status(m)
	if err != nil {
		return nil, err
	}
	run := map[string]bool{}
	for _, s := range status {
		chosen := len(opts.Generators) == 0 || slices.Contains(opts.Generators, s.Name)
		if chosen && (opts.Regenerate || s.Status != StatusOK) {
			run[s.Name] = true
		}
	}
	var out []*spec.Generator
	for _, g := range m.GeneratorOrder() {
		for _, d := range g.Dependencies {
			if run[d] {
				run[g.Name] = true
			}
		}
		if run[g.Name] {
			out = append(out, g)
		}
	}
	return out, nil
}

// Generate brings the vars of the given machines up to date. Shared
// generators run first, once; then the machines run in parallel, each in
// its own transaction.
func (e *Engine) Generate(ctx context.Context, machines []*spec.Machine, opts GenerateOptions) ([]Result, error) {
	l, err := e.Repo.Lock(func(msg string) { e.logf("%s", msg) })
	if err != nil {
		return nil, err
	}
	defer l.Release()
	if err := Recover(e.Repo); err != nil {
		return nil, err
	}
	if n, err := e.PruneHistory(); err != nil {
		return nil, err
	} else if n > 0 {
		e.logf("pruned %d expired generations from %s", n, HistoryDir)
	}
	cleanStaleWorkspaces()

	sandbox, bwrap, err := resolveSandbox(e.Sandbox)
	if err != nil {
		return nil, err
	}
	defer e.inputs.removeBins()
	users, err := e.recipientUsers()
	if err != nil {
		return nil, err
	}

	type machinePlan struct {
		m    *spec.Machine
		gens []*spec.Generator
	}
	var plans []machinePlan
	shared := map[string]*spec.Generator{}
	var sharedOrder []*spec.Generator
	sharedOwner := map[string]string{}
	// allShared holds every shared generator of the machines, run or not,
	// so a shared generator's inputs can be read from the store.
	allShared := &spec.Machine{Name: "shared", Vars: spec.Vars{Generators: map[string]*spec.Generator{}}}
	for _, m := range machines {
		for _, g := range m.Vars.Generators {
			if g.Share {
				allShared.Vars.Generators[g.Name] = g
			}
		}
	}
	for _, m := range machines {
		gens, err := e.plan(m, opts)
		if err != nil {
			return nil, err
		}
		var own []*spec.Generator
		for _, g := range gens {
			if !g.Share {
				own = append(own, g)
				continue
			}
			for _, d := range g.Dependencies {
				if !m.Vars.Generators[d].Share {
					return nil, fmt.Errorf("vars %s/%s: a shared generator cannot depend on the per-machine generator %q; share it too", m.Name, g.Name, d)
				}
			}
			if prev, ok := shared[g.Name]; ok {
				if prev.DefinitionHash() != g.DefinitionHash() {
					return nil, fmt.Errorf("vars: shared generator %q is defined differently in machines %s and %s; make the definitions equal", g.Name, sharedOwner[g.Name], m.Name)
				}
				continue
			}
			shared[g.Name], sharedOwner[g.Name] = g, m.Name
			sharedOrder = append(sharedOrder, g)
		}
		plans = append(plans, machinePlan{m, own})
	}

	// Ask every prompt before anything runs, so that parallel runs never
	// interleave questions and a missing answer fails before any work.
	answers := map[string][]byte{}
	ask := func(machine string, g *spec.Generator) error {
		for _, p := range g.SortedPrompts() {
			key := machine + "/" + g.Name + "/" + p.Name
			if g.Share {
				key = "shared/" + g.Name + "/" + p.Name
			}
			if _, ok := answers[key]; ok {
				continue
			}
			v, err := e.answer(machine, g, p)
			if err != nil {
				return err
			}
			answers[key] = v
		}
		return nil
	}
	for _, g := range sharedOrder {
		if err := ask(sharedOwner[g.Name], g); err != nil {
			return nil, err
		}
	}
	for _, p := range plans {
		for _, g := range p.gens {
			if err := ask(p.m.Name, g); err != nil {
				return nil, err
			}
		}
	}

	r := &runner{e: e, sandbox: sandbox, bwrap: bwrap, users: users, answers: answers}
	var results []Result
	if len(allShared.Vars.Generators) > 0 {
		machinesOf, err := e.sharedMachines()
		if err != nil {
			return nil, err
		}
		if len(sharedOrder) > 0 {
			if err := r.runTxn(ctx, "shared", sharedOrder, allShared, machinesOf); err != nil {
				return nil, err
			}
		}
		if err := r.fixSharedRecipients(allShared, machinesOf); err != nil {
			return nil, err
		}
	}

	results = make([]Result, len(plans))
	errs := make([]error, len(plans))
	jobs := e.Jobs
	if jobs <= 0 {
		jobs = max(2, runtime.NumCPU())
	}
	sem := make(chan struct{}, jobs)
	var wg sync.WaitGroup
	for i, p := range plans {
		results[i] = Result{Machine: p.m.Name}
		for _, g := range sharedOrder {
			if p.m.Vars.Generators[g.Name] != nil {
				results[i].Ran = append(results[i].Ran, g.Name)
			}
		}
		if len(p.gens) == 0 {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			sem <- struct{}{}
			defer func() { <-sem }()
			errs[i] = r.runTxn(ctx, p.m.Name, p.gens, p.m, nil)
			if errs[i] == nil {
				for _, g := range p.gens {
					results[i].Ran = append(results[i].Ran, g.Name)
				}
			}
		}()
	}
	wg.Wait()
	return results, errors.Join(errs...)
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
		return nil, errors.New("vars: no age key of yours found ($SOPS_AGE_KEY_FILE, $SOPS_AGE_KEY or ~/.config/sops/age/keys.txt): run `credvm vars keygen`")
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
	e       *Engine
	sandbox Sandbox
	bwrap   string
	users   []string
	answers map[string][]byte
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
			} else if dm, _ := readMeta(e.GeneratorDir(machine, depOf(m, g, d))); dm != nil {
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
	if !e.NoCommit && e.Repo.InGit() {
		names := make([]string, len(gens))
		for i, g := range gens {
			names[i] = g.Name
		}
		paths := append(changed, e.Repo.Path("sops"), e.Repo.Path(HistoryDir))
		r.gitMu.Lock()
		err := e.Repo.Commit(paths, fmt.Sprintf("vars: update %s: %s", label, strings.Join(names, ", ")))
		r.gitMu.Unlock()
		if err != nil {
			return fmt.Errorf("vars %s: generated and stored, but the git commit failed: %w", label, err)
		}
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
			if err := os.MkdirAll(fdir, 0o755); err != nil {
				return err
			}
			if err := os.WriteFile(filepath.Join(fdir, "value"), content, 0o644); err != nil {
				return err
			}
			continue
		}
		var to []string
		if f.IsDeployed() {
			to = machines
			for _, m := range to {
				if _, err := e.Repo.EnsureMachineKey(m); err != nil {
					return err
				}
			}
		}
		if err := e.Repo.StageSecret(fdir, content, to, r.users); err != nil {
			return fmt.Errorf("%s: %w", f.Name, err)
		}
	}
	if h := g.ValidationHash(); h != "" {
		if err := os.WriteFile(filepath.Join(dir, ValidationFile), []byte(h), 0o644); err != nil {
			return err
		}
	}
	b, _ := json.MarshalIndent(meta, "", "  ")
	return os.WriteFile(filepath.Join(dir, MetaFile), append(b, '\n'), 0o644)
}

// run runs one generator's script in a fresh workspace and returns its
// checked outputs.
func (r *runner) run(ctx context.Context, label, machine string, g *spec.Generator, m *spec.Machine, outputs map[string]map[string][]byte) (map[string][]byte, error) {
	e := r.e
	name := label + "/" + g.Name
	ws, err := newWorkspace()
	if err != nil {
		return nil, fmt.Errorf("vars %s: workspace: %w", name, err)
	}
	defer ws.remove()

	var known [][]byte // values to keep out of any message
	for _, d := range g.Dependencies {
		files := outputs[d]
		if files == nil {
			dg := depOf(m, g, d)
			files = map[string][]byte{}
			for _, f := range dg.SortedFiles() {
				v, err := e.Get(machine, m, dg.Name, f.Name)
				if err != nil {
					return nil, fmt.Errorf("vars %s: input %s/%s: %w", name, d, f.Name, err)
				}
				files[f.Name] = v
			}
		}
		for f, v := range files {
			if err := ws.writeInput(d, f, v); err != nil {
				return nil, err
			}
			known = append(known, v)
		}
	}
	for _, p := range g.SortedPrompts() {
		key := label + "/" + g.Name + "/" + p.Name
		if g.Share {
			key = "shared/" + g.Name + "/" + p.Name
		}
		v := r.answers[key]
		if err := ws.writePrompt(p.Name, v); err != nil {
			return nil, err
		}
		known = append(known, v)
	}
	bin, err := e.inputs.binDir(filepath.Dir(ws.root), g.RuntimeInputs)
	if err != nil {
		return nil, fmt.Errorf("vars %s: %w", name, err)
	}
	if err := os.WriteFile(ws.script, []byte(g.Script), 0o500); err != nil {
		return nil, err
	}

	sc := &scriptCmd{sandbox: r.sandbox, bwrap: r.bwrap, ws: ws, bin: bin, env: []string{
		"PATH=" + bin,
		"out=" + ws.out,
		"in=" + ws.in,
		"prompts=" + ws.prompts,
		"HOME=/homeless-shelter",
		"TMPDIR=/tmp",
		"LANG=C.UTF-8",
	}}
	if r.sandbox != SandboxBwrap {
		sc.env[5] = "TMPDIR=" + ws.tmp
	}
	rctx, cancel := context.WithTimeout(ctx, g.RunTimeout())
	defer cancel()
	cmd := sc.command(rctx)
	var output tailBuffer
	cmd.Stdout, cmd.Stderr = &output, &output
	e.logf("%s: generating (sandbox: %s)", name, r.sandbox)
	start := time.Now()
	err = cmd.Run()
	faultinject.Point("vars.script-done")
	files, collectErr := ws.collect(g)
	for _, v := range files {
		known = append(known, v)
	}
	switch {
	case rctx.Err() == context.DeadlineExceeded:
		return nil, fmt.Errorf("vars %s: the script timed out after %s and was killed; raise `timeout` for the generator in %s", name, g.RunTimeout(), machineFile(m))
	case err != nil:
		msg := scrub(output.tail(20), known)
		if msg != "" {
			msg = "\n" + indent(msg)
		}
		var ee interface{ ExitCode() int }
		code := ""
		if errors.As(err, &ee) && ee.ExitCode() >= 0 {
			code = " with exit status " + strconv.Itoa(ee.ExitCode())
		}
		return nil, fmt.Errorf("vars %s: the script failed%s; the stored vars are unchanged. Its last output (values redacted):%s", name, code, msg)
	case collectErr != nil:
		return nil, fmt.Errorf("vars %s: %w; the stored vars are unchanged", name, collectErr)
	}
	e.logf("%s: done in %s", name, time.Since(start).Round(time.Millisecond))
	return files, nil
}

func machineFile(m *spec.Machine) string {
	if m == nil {
		return "machine.toml"
	}
	return m.File
}

func indent(s string) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	for i, l := range lines {
		lines[i] = "  | " + l
	}
	return strings.Join(lines, "\n")
}

// tailBuffer keeps the last 64 KiB written to it.
type tailBuffer struct {
	mu  sync.Mutex
	buf []byte
}

func (t *tailBuffer) Write(p []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.buf = append(t.buf, p...)
	if len(t.buf) > 64<<10 {
		t.buf = t.buf[len(t.buf)-64<<10:]
	}
	return len(p), nil
}

func (t *tailBuffer) tail(lines int) string {
	t.mu.Lock()
	defer t.mu.Unlock()
	ls := strings.Split(strings.TrimRight(string(t.buf), "\n"), "\n")
	if len(ls) > lines {
		ls = ls[len(ls)-lines:]
	}
	return strings.TrimSpace(strings.Join(ls, "\n"))
}

// workspace is a run's private scratch directory: out/ for the script's
// outputs, in/<dep>/<file> for its inputs, prompts/<name>, bin/ (its
// PATH), tmp/ and the script itself.
type workspace struct {
	root, out, in, prompts, tmp, script string
}

// workspaceBase is a private (0700) directory for workspaces, on tmpfs
// (/dev/shm) when the machine has it, so plaintext never reaches a disk.
func workspaceBase() (string, error) {
	uid := strconv.Itoa(os.Getuid())
	var candidates []string
	if d := os.Getenv("XDG_RUNTIME_DIR"); d != "" {
		candidates = append(candidates, d)
	}
	candidates = append(candidates, "/dev/shm", os.TempDir())
	var lastErr error
	for _, c := range candidates {
		base := filepath.Join(c, "credvm-"+uid)
		if err := os.Mkdir(base, 0o700); err != nil && !os.IsExist(err) {
			lastErr = err
			continue
		}
		// Refuse a base someone else prepared for us (a symlink, another
		// owner, or open permissions in a shared /tmp).
		fi, err := os.Lstat(base)
		if err != nil {
			lastErr = err
			continue
		}
		st, ok := fi.Sys().(*syscall.Stat_t)
		if !fi.IsDir() || !ok || int(st.Uid) != os.Getuid() || fi.Mode().Perm() != 0o700 {
			lastErr = fmt.Errorf("%s is not a private directory of yours (want a 0700 directory owned by uid %s)", base, uid)
			continue
		}
		return base, nil
	}
	return "", lastErr
}

func newWorkspace() (*workspace, error) {
	base, err := workspaceBase()
	if err != nil {
		return nil, err
	}
	root, err := os.MkdirTemp(base, fmt.Sprintf("gen-%d-", os.Getpid()))
	if err != nil {
		return nil, err
	}
	ws := &workspace{
		root:    root,
		out:     filepath.Join(root, "out"),
		in:      filepath.Join(root, "in"),
		prompts: filepath.Join(root, "prompts"),
		tmp:     filepath.Join(root, "tmp"),
		script:  filepath.Join(root, "script.sh"),
	}
	for _, d := range []string{ws.out, ws.in, ws.prompts, ws.tmp} {
		if err := os.Mkdir(d, 0o700); err != nil {
			ws.remove()
			return nil, err
		}
	}
	return ws, nil
}

func (ws *workspace) remove() { os.RemoveAll(ws.root) }

func (ws *workspace) writeInput(gen, file string, v []byte) error {
	d := filepath.Join(ws.in, gen)
	if err := os.MkdirAll(d, 0o700); err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(d, file), v, 0o400)
}

func (ws *workspace) writePrompt(name string, v []byte) error {
	return os.WriteFile(filepath.Join(ws.prompts, name), v, 0o400)
}

// collect reads the script's outputs and checks them against the
// declaration: every declared file present and a regular file (a symlink
// could point anywhere on the host), nothing undeclared.
func (ws *workspace) collect(g *spec.Generator) (map[string][]byte, error) {
	entries, err := os.ReadDir(ws.out)
	if err != nil {
		return nil, err
	}
	files := map[string][]byte{}
	var problems []string
	for _, ent := range entries {
		name := ent.Name()
		if g.Files[name] == nil {
			problems = append(problems, fmt.Sprintf("the script wrote %q, which is not declared (declare it under [vars.generators.%s.files] or stop writing it)", name, g.Name))
			continue
		}
		if !ent.Type().IsRegular() {
			problems = append(problems, fmt.Sprintf("$out/%s is not a regular file (%s); write the content itself, not a link or directory", name, ent.Type()))
			continue
		}
		b, err := os.ReadFile(filepath.Join(ws.out, name))
		if err != nil {
			return nil, err
		}
		files[name] = b
	}
	for _, f := range g.SortedFiles() {
		if _, ok := files[f.Name]; !ok && !slices.ContainsFunc(problems, func(p string) bool { return strings.Contains(p, "$out/"+f.Name+" ") }) {
			problems = append(problems, fmt.Sprintf("the script did not write the declared file $out/%s", f.Name))
		}
	}
	if len(problems) > 0 {
		return files, errors.New(strings.Join(problems, "; "))
	}
	return files, nil
}

// cleanStaleWorkspaces removes workspaces of credvm processes that no
// longer run (killed before they could clean up).
func cleanStaleWorkspaces() {
	base, err := workspaceBase()
	if err != nil {
		return
	}
	entries, _ := os.ReadDir(base)
	for _, ent := range entries {
		parts := strings.SplitN(ent.Name(), "-", 3)
		if len(parts) != 3 || parts[0] != "gen" {
			continue
		}
		pid, err := strconv.Atoi(parts[1])
		if err != nil || pid == os.Getpid() {
			continue
		}
		if err := syscall.Kill(pid, 0); errors.Is(err, syscall.ESRCH) {
			os.RemoveAll(filepath.Join(base, ent.Name()))
		}
	}
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
			if _, err := os.Stat(filepath.Join(dir, f.Name, "secret")); err != nil {
				continue
			}
			if !slices.Equal(repo.LinkedNames(filepath.Join(dir, f.Name), "machines"), want) {
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
		meta, _ := readMeta(dir)
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
	if !e.NoCommit && e.Repo.InGit() {
		return e.Repo.Commit([]string{e.Repo.Path("vars", "shared"), e.Repo.Path("sops"), e.Repo.Path(HistoryDir)}, "vars: re-encrypt shared "+strings.Join(fixed, ", ")+" for the machines using them")
	}
	return nil
}
