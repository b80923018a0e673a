package vars

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"

	"github.com/credvm/credvm/internal/runtimedir"
	"github.com/credvm/credvm/internal/spec"
)

// workspace is a run's private scratch directory: out/ for the script's
// outputs, in/<dep>/<file> for its inputs, prompts/<name>, bin/ (its
// PATH), tmp/ and the script itself.
type workspace struct {
	root, out, in, prompts, tmp, script string
}

// workspaceBase is where workspaces are made: the user's private runtime
// directory, on tmpfs, so plaintext never reaches a disk (runtimedir).
func workspaceBase() (string, error) {
	d, err := runtimedir.Private()
	if err != nil {
		return "", fmt.Errorf("no private place for a generator's plaintext: %w", err)
	}
	return d, nil
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

// checkOutputSize refuses outputs over the limits before any is read:
// too many files, or more bytes than the output limit altogether.
func checkOutputSize(g *spec.Generator, entries []os.DirEntry, l spec.GeneratorLimits) error {
	if len(entries) > l.Files {
		return fmt.Errorf("the script wrote %d files to $out, over the limit of %d ([limits] files in credvm.toml)", len(entries), l.Files)
	}
	var total int64
	for _, e := range entries {
		if fi, err := e.Info(); err == nil && fi.Mode().IsRegular() {
			total += fi.Size()
		}
	}
	if total > l.Output {
		return fmt.Errorf("the script wrote %d bytes to $out, over the output limit of %s ([limits] output in credvm.toml)", total, sizeText(l.Output))
	}
	return nil
}

// outputProblem is one way a script's $out differs from the generator's
// declaration.
type outputProblem struct {
	file string
	kind outputProblemKind
	typ  fs.FileMode // for notRegular
}

type outputProblemKind int

const (
	undeclared outputProblemKind = iota
	notRegular
	notWritten
)

func (p outputProblem) message(gen string) string {
	switch p.kind {
	case undeclared:
		return fmt.Sprintf("the script wrote %q, which is not declared and not a regular file (a link or special file is never stored; stop writing it)", p.file)
	case notRegular:
		return fmt.Sprintf("$out/%s is not a regular file (%s); write the content itself, not a link or directory", p.file, p.typ)
	}
	return fmt.Sprintf("the script did not write the declared file $out/%s", p.file)
}

// collect reads the script's outputs and checks them against the
// declaration: every declared file present and a regular file (a symlink
// could point anywhere on the host). An undeclared regular file is
// ignored, as clan ignores it, and named in ignored; an undeclared link or
// special file is still refused.
func (ws *workspace) collect(g *spec.Generator, l spec.GeneratorLimits) (files map[string][]byte, ignored []string, err error) {
	entries, err := os.ReadDir(ws.out)
	if err != nil {
		return nil, nil, err
	}
	if err := checkOutputSize(g, entries, l); err != nil {
		return nil, nil, err
	}
	files = map[string][]byte{}
	var problems []outputProblem
	for _, ent := range entries {
		name := ent.Name()
		switch {
		case g.Files[name] == nil && ent.Type().IsRegular():
			ignored = append(ignored, name)
			continue
		case g.Files[name] == nil:
			problems = append(problems, outputProblem{file: name, kind: undeclared})
			continue
		case !ent.Type().IsRegular():
			problems = append(problems, outputProblem{file: name, kind: notRegular, typ: ent.Type()})
			continue
		}
		b, err := os.ReadFile(filepath.Join(ws.out, name))
		if err != nil {
			return nil, nil, err
		}
		files[name] = b
	}
	for _, f := range g.SortedFiles() {
		_, written := files[f.Name]
		reported := slices.ContainsFunc(problems, func(p outputProblem) bool { return p.file == f.Name })
		if !written && !reported {
			problems = append(problems, outputProblem{file: f.Name, kind: notWritten})
		}
	}
	if len(problems) == 0 {
		return files, ignored, nil
	}
	msgs := make([]string, len(problems))
	for i, p := range problems {
		msgs[i] = p.message(g.Name)
	}
	return files, ignored, errors.New(strings.Join(msgs, "; "))
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
