package vars

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/credvm/credvm/internal/spec"
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

func (a Answers) lookup(gen, prompt string) ([]byte, bool) {
	if v, ok := a[gen+"/"+prompt]; ok {
		return v, true
	}
	v, ok := a[prompt]
	return v, ok
}

// Terminal asks prompts interactively.
type Terminal interface {
	Ask(machine, gen string, p *spec.Prompt) ([]byte, error)
}

// answer finds a prompt's value: given, or asked on the terminal. Without
// either it fails at once — a run never waits for input that cannot come.
func answer(opts GenerateOptions, machine string, g *spec.Generator, p *spec.Prompt) ([]byte, error) {
	if v, ok := opts.Answers.lookup(g.Name, p.Name); ok {
		return v, nil
	}
	if opts.Terminal == nil {
		return nil, fmt.Errorf("vars %s/%s: prompt %q needs an answer and there is no terminal: pass --prompt %s/%s=@FILE (or =VALUE) or --prompts-file FILE.json",
			machine, g.Name, p.Name, g.Name, p.Name)
	}
	return opts.Terminal.Ask(machine, g.Name, p)
}
