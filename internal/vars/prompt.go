package vars

import (
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/credvm/credvm/internal/spec"
	"github.com/credvm/credvm/internal/words"
)

// Answers are prompt values given without a terminal, by
// "GENERATOR/PROMPT" or by "PROMPT" alone (for every generator asking it).
type Answers map[string][]byte

// ParseAnswer parses a --prompt argument: NAME=VALUE, NAME=@FILE (the
// file's content) or NAME=@- (standard input). The @ forms keep secret
// answers off the command line, where every local user can read them.
func ParseAnswer(arg string, stdin io.Reader) (string, []byte, error) {
	k, v, ok := strings.Cut(arg, "=")
	if !ok || k == "" {
		return "", nil, fmt.Errorf("--prompt %q: write NAME=VALUE, NAME=@FILE or NAME=@-", arg)
	}
	switch {
	case v == "@-":
		b, err := io.ReadAll(stdin)
		return k, b, err
	case strings.HasPrefix(v, "@"):
		b, err := os.ReadFile(v[1:])
		if err != nil {
			return "", nil, fmt.Errorf("--prompt %s: %w", k, err)
		}
		return k, b, nil
	}
	return k, []byte(v), nil
}

// LoadAnswers reads a JSON object of answers: {"gen/prompt": "value"}.
func LoadAnswers(path string) (Answers, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var m map[string]string
	if err := json.Unmarshal(b, &m); err != nil {
		return nil, fmt.Errorf("%s: want a JSON object of \"GENERATOR/PROMPT\": \"value\": %w", path, err)
	}
	a := Answers{}
	for k, v := range m {
		a[k] = []byte(v)
	}
	return a, nil
}

// promptKeys are the answer keys the machines' generators ask for:
// GEN/PROMPT and PROMPT alone.
func promptKeys(machines []*spec.Machine) map[string]bool {
	known := map[string]bool{}
	for _, m := range machines {
		for _, g := range m.Vars.Generators {
			for _, p := range g.Prompts {
				known[g.Name+"/"+p.Name], known[p.Name] = true, true
			}
		}
	}
	return known
}

// For returns the answers the machines' generators ask for.
func (a Answers) For(machines []*spec.Machine) Answers {
	known := promptKeys(machines)
	out := Answers{}
	for k, v := range a {
		if known[k] {
			out[k] = v
		}
	}
	return out
}

// Check refuses answers no generator of the machines asks for: a typo
// would otherwise be ignored, and the run would then ask for (or fail on)
// the prompt it meant.
func (a Answers) Check(machines []*spec.Machine) error {
	known := promptKeys(machines)
	names := slices.Sorted(maps.Keys(known))
	var bad []string
	for k := range a {
		if !known[k] {
			bad = append(bad, k)
		}
	}
	if len(bad) == 0 {
		return nil
	}
	slices.Sort(bad)
	var asked []string
	for _, n := range names {
		if strings.Contains(n, "/") {
			asked = append(asked, n)
		}
	}
	what := "no generator asks for anything"
	if len(asked) > 0 {
		what = "the prompts are " + strings.Join(asked, ", ")
	}
	return fmt.Errorf("no generator asks for the prompt %q%s (%s)", bad[0], words.DidYouMean(bad[0], names), what)
}

func (a Answers) lookup(gen, prompt string) ([]byte, bool) {
	if v, ok := a[gen+"/"+prompt]; ok {
		return v, true
	}
	v, ok := a[prompt]
	return v, ok
}

// Terminal asks prompts interactively. previous, when not nil, is a
// persisted prompt's stored answer: an empty answer keeps it.
type Terminal interface {
	Ask(machine, gen string, p *spec.Prompt, previous []byte) ([]byte, error)
}

// answer finds a prompt's value: given, or asked on the terminal — or,
// for a persisted prompt without a terminal, its stored answer (clan
// offers it again). Without any it fails at once: a run never waits for
// input that cannot come.
func (e *Engine) answer(opts GenerateOptions, machine string, g *spec.Generator, p *spec.Prompt) ([]byte, error) {
	if v, ok := opts.Answers.lookup(g.Name, p.Name); ok {
		return v, nil
	}
	var previous []byte
	if p.Persist {
		owner := machine
		if g.Share {
			owner = ""
		}
		if v, err := e.Repo.DecryptSecret(filepath.Join(e.Repo.GeneratorDir(owner, g.Name, g.Share), p.Name), machine, e.User); err == nil {
			previous = v
		}
	}
	if opts.Terminal != nil {
		return opts.Terminal.Ask(machine, g.Name, p, previous)
	}
	if previous != nil {
		e.logf("%s/%s: prompt %q: the stored answer is used again (persist = true)", machine, g.Name, p.Name)
		return previous, nil
	}
	return nil, fmt.Errorf("vars %s/%s: prompt %q needs an answer and there is no terminal: pass --prompt %s/%s=@FILE (or =VALUE) or --prompts-file FILE.json",
		machine, g.Name, p.Name, g.Name, p.Name)
}
