package cli

import (
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

	"golang.org/x/term"

	"github.com/credvm/credvm/internal/repo"
	"github.com/credvm/credvm/internal/spec"
	"github.com/credvm/credvm/internal/vars"
)

// terminal is where prompts are asked: standard input when it is a
// terminal, else nil (a run then needs every answer given).
func (g *globals) terminal() vars.Terminal {
	if f, ok := g.stdin.(*os.File); ok && term.IsTerminal(int(f.Fd())) {
		return &ttyPrompter{in: f, out: g.stderr}
	}
	return nil
}

// ttyPrompter asks prompts on a terminal.
type ttyPrompter struct {
	in  *os.File
	out io.Writer
}

func (t *ttyPrompter) Ask(machine, gen string, p *spec.Prompt) ([]byte, error) {
	desc := p.Description
	if desc == "" {
		desc = p.Name
	}
	switch p.Type {
	case "hidden":
		fmt.Fprintf(t.out, "%s/%s: %s (hidden): ", machine, gen, desc)
		b, err := term.ReadPassword(int(t.in.Fd()))
		fmt.Fprintln(t.out)
		return b, err
	case "multiline":
		fmt.Fprintf(t.out, "%s/%s: %s (end with Ctrl-D on an empty line):\n", machine, gen, desc)
		return io.ReadAll(t.in)
	}
	fmt.Fprintf(t.out, "%s/%s: %s: ", machine, gen, desc)
	return readLine(t.in)
}

// readLine reads one line, a byte at a time so as not to read past it.
func readLine(r io.Reader) ([]byte, error) {
	var line []byte
	buf := make([]byte, 1)
	for {
		n, err := r.Read(buf)
		if n == 1 {
			if buf[0] == '\n' {
				return line, nil
			}
			line = append(line, buf[0])
		}
		if errors.Is(err, io.EOF) {
			return line, nil
		}
		if err != nil {
			return nil, err
		}
	}
}

// answers collects --prompts-file and --prompt flags.
func (g *globals) answers(file string, flags []string) (vars.Answers, error) {
	a := vars.Answers{}
	if file != "" {
		var err error
		if a, err = vars.LoadAnswers(file); err != nil {
			return nil, err
		}
	}
	for _, p := range flags {
		k, v, err := vars.ParseAnswer(p, g.stdin)
		if err != nil {
			return nil, err
		}
		a[k] = v
	}
	return a, nil
}

// confirmed runs an operation that may need the operator's consent (a
// *repo.ConfirmationError: new recipients, replaced shared values, an
// unknown signer). When it does, the changes are shown; on a terminal the
// operator is asked, and a yes runs it again with what was accepted so
// far; otherwise its error names the flag that accepts it.
func (g *globals) confirmed(op func(accepted []*repo.ConfirmationError) error) error {
	var accepted []*repo.ConfirmationError
	for {
		err := op(accepted)
		var ce *repo.ConfirmationError
		if !errors.As(err, &ce) {
			return err
		}
		fmt.Fprintf(g.stderr, "%s would change:\n", ce.Op)
		for _, c := range ce.Changes {
			fmt.Fprintf(g.stderr, "  %s\n", c)
		}
		f, ok := g.stdin.(*os.File)
		if !ok || !term.IsTerminal(int(f.Fd())) || len(accepted) > 8 {
			return err
		}
		fmt.Fprintf(g.stderr, "%s. Accept? [y/N] ", ce.Why)
		answer, _ := readLine(f)
		if s := strings.ToLower(strings.TrimSpace(string(answer))); s != "y" && s != "yes" {
			return fmt.Errorf("%s: not accepted; nothing was changed", ce.Op)
		}
		accepted = append(accepted, ce)
	}
}

// accepts reports whether kind is among the accepted confirmations.
func accepts(accepted []*repo.ConfirmationError, kind string) *repo.ConfirmationError {
	for _, a := range accepted {
		if a.Kind == kind {
			return a
		}
	}
	return nil
}
