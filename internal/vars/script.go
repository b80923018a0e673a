package vars

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/credvm/credvm/internal/faultinject"
	"github.com/credvm/credvm/internal/spec"
	"github.com/credvm/credvm/internal/tail"
	"github.com/credvm/credvm/internal/words"
)

// failureLines is how much of a failed script's output its error shows.
const failureLines = 20

// run runs one generator's script in a fresh workspace and returns its
// checked outputs. outputs holds what this run's earlier generators
// produced (their dependents read those, not the store).
func (r *runner) run(ctx context.Context, label, machine string, g *spec.Generator, m *spec.Machine, outputs map[string]map[string][]byte) (map[string][]byte, error) {
	name := label + "/" + g.Name
	ws, err := newWorkspace()
	if err != nil {
		return nil, fmt.Errorf("vars %s: workspace: %w", name, err)
	}
	defer ws.remove()
	known, err := r.writeInputs(ws, label, machine, g, m, outputs)
	if err != nil {
		return nil, fmt.Errorf("vars %s: %w", name, err)
	}
	// coreutils is always on PATH, as clan's finalScript puts it there.
	inputs := slices.Clone(g.RuntimeInputs)
	if !slices.Contains(inputs, "coreutils") {
		inputs = append(inputs, "coreutils")
	}
	bin, err := r.e.inputs.binDir(filepath.Dir(ws.root), inputs)
	if err != nil {
		return nil, fmt.Errorf("vars %s: %w", name, err)
	}
	if err := os.WriteFile(ws.script, []byte(finalScript(g)), 0o500); err != nil {
		return nil, err
	}
	tmp := "/tmp" // bubblewrap mounts a fresh tmpfs there
	if r.sandbox != SandboxBwrap {
		tmp = ws.tmp
	}
	limits := r.e.limits()
	cg := newCgroups(limits)
	defer cg.remove()
	var hide []string
	if r.sandbox == SandboxNamespaces {
		hide = hiddenDirs(r.e.Repo.Root, ws.root, bin, tmp)
	}
	sc := &scriptCmd{sandbox: r.sandbox, bwrap: r.bwrap, ws: ws, bin: bin, limits: limits, cg: cg, hide: hide, env: []string{
		"PATH=" + bin, "out=" + ws.out, "in=" + ws.in, "prompts=" + ws.prompts,
		"HOME=/homeless-shelter", "TMPDIR=" + tmp, "LANG=C.UTF-8",
	}}
	rctx, cancel := context.WithTimeout(ctx, g.RunTimeout())
	defer cancel()
	cmd := sc.command(rctx)
	output := &tail.Lines{Keep: failureLines}
	cmd.Stdout, cmd.Stderr = output, output
	r.e.logf("%s: generating (sandbox: %s)", name, r.sandbox)
	if cg != nil && len(cg.missing) > 0 {
		r.e.logf("%s: no cgroup bound on its %s here: the cgroup controllers are not available to credvm", name, strings.Join(cg.missing, " or "))
	}
	start := time.Now()
	err = cmd.Run()
	cg.killAll() // what it left running, even after a success
	faultinject.Point("vars.script-done")
	if err == nil || rctx.Err() == nil {
		if lerr := r.overLimit(name, err, cg, limits); lerr != nil {
			return nil, lerr
		}
	}
	files, ignored, collectErr := ws.collect(g, limits)
	if len(ignored) > 0 {
		r.e.logf("%s: ignored %s in $out, which %s not declared (clan ignores undeclared files too)", name, strings.Join(ignored, ", "), words.Verb(len(ignored), "is", "are"))
	}
	for _, v := range files {
		known = append(known, v)
	}
	switch {
	case rctx.Err() == context.DeadlineExceeded:
		return nil, fmt.Errorf("vars %s: the script timed out after %s and was killed, with everything it started; raise `timeout` for the generator in %s", name, g.RunTimeout(), machineFile(m))
	case err != nil:
		return nil, scriptFailure(name, err, output, r.showOutput, known)
	case collectErr != nil:
		return nil, fmt.Errorf("vars %s: %w; the stored vars are unchanged", name, collectErr)
	}
	r.e.logf("%s: done in %s", name, time.Since(start).Round(time.Millisecond))
	return files, nil
}

// overLimit names the limit a script died of, if it did: a file over the
// output limit (SIGXFSZ from RLIMIT_FSIZE), or the memory cgroup's.
func (r *runner) overLimit(name string, err error, cg *cgroupLimit, l spec.GeneratorLimits) error {
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		if ws, ok := ee.Sys().(syscall.WaitStatus); (ok && ws.Signaled() && ws.Signal() == syscall.SIGXFSZ) || ee.ExitCode() == 128+int(syscall.SIGXFSZ) {
			return fmt.Errorf("vars %s: the script wrote a file over the output limit of %s and was stopped ([limits] output in credvm.toml); the stored vars are unchanged", name, sizeText(l.Output))
		}
	}
	if cg.pidsHit() {
		return fmt.Errorf("vars %s: the script tried to run more than %d processes at once and was stopped ([limits] processes in credvm.toml); the stored vars are unchanged", name, l.Processes)
	}
	if cg.oomKilled() {
		return fmt.Errorf("vars %s: the script used more than the memory limit of %s and was killed ([limits] memory in credvm.toml); the stored vars are unchanged", name, sizeText(l.Memory))
	}
	return nil
}

// sizeText writes a byte count for a message.
func sizeText(n int64) string {
	switch {
	case n%(1<<30) == 0:
		return fmt.Sprintf("%d GiB", n>>30)
	case n%(1<<20) == 0:
		return fmt.Sprintf("%d MiB", n>>20)
	case n%(1<<10) == 0:
		return fmt.Sprintf("%d KiB", n>>10)
	}
	return fmt.Sprintf("%d bytes", n)
}

// writeInputs puts the generator's dependencies and prompt answers into
// the workspace, and returns them: values to keep out of any message.
func (r *runner) writeInputs(ws *workspace, label, machine string, g *spec.Generator, m *spec.Machine, outputs map[string]map[string][]byte) ([][]byte, error) {
	var known [][]byte
	for _, d := range g.Dependencies {
		files := outputs[d]
		if files == nil {
			dg := depOf(m, g, d)
			files = map[string][]byte{}
			for _, f := range dg.SortedFiles() {
				v, err := r.e.Get(machine, m, dg.Name, f.Name)
				if err != nil {
					return nil, fmt.Errorf("input %s/%s: %w", d, f.Name, err)
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
		v := r.answers[promptKey(label, g, p)]
		if err := ws.writePrompt(p.Name, v); err != nil {
			return nil, err
		}
		known = append(known, v)
	}
	return known, nil
}

// scriptFailure is the error for a script that exited non-zero: what it
// printed is counted, not shown — unless show, and then scrubbed of every
// value it could see (scrub.go).
func scriptFailure(name string, err error, output *tail.Lines, show bool, known [][]byte) error {
	code := ""
	var ee interface{ ExitCode() int }
	if errors.As(err, &ee) && ee.ExitCode() >= 0 {
		code = " with exit status " + strconv.Itoa(ee.ExitCode())
	}
	n := output.Count()
	if !show || n == 0 {
		hint := ""
		if n > 0 {
			hint = " (not shown: it may hold secrets; rerun with --show-output to see its last lines, scrubbed of every value the script could see)"
		}
		return fmt.Errorf("vars %s: the script failed%s after printing %s%s; the stored vars are unchanged", name, code, words.Plural(n, "line", "lines"), hint)
	}
	text := scrub(strings.Join(output.Lines(), "\n"), known)
	return fmt.Errorf("vars %s: the script failed%s; the stored vars are unchanged. Its last output (scrubbed of the values it could see):\n%s", name, code, indent(text))
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

// finalScript is the script as it runs: persisted prompts copied into $out
// first, then the generator's own script — clan's finalScript.
func finalScript(g *spec.Generator) string {
	var b strings.Builder
	for _, p := range g.SortedPrompts() {
		if p.Persist {
			fmt.Fprintf(&b, "cat \"$prompts/%s\" > \"$out/%s\"\n", p.Name, p.Name)
		}
	}
	return b.String() + g.Script
}
