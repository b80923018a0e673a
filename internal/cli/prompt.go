package cli

import (
	"bytes"
	"cmp"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

	"golang.org/x/sys/unix"
	"golang.org/x/term"

	"github.com/credvm/credvm/internal/repo"
	"github.com/credvm/credvm/internal/spec"
	"github.com/credvm/credvm/internal/vars"
	"github.com/spf13/cobra"
)

// tty is where the operator is asked — prompts, confirmations: standard
// input when it is a terminal, else the controlling terminal (/dev/tty, as
// ssh and sudo ask), else nil (nothing can be asked). $CREDVM_NO_TTY set
// never asks (scripts run from a terminal).
func (g *globals) tty() (in *os.File, out io.Writer) {
	if os.Getenv("CREDVM_NO_TTY") != "" {
		return nil, nil
	}
	if f, ok := g.stdin.(*os.File); ok && term.IsTerminal(int(f.Fd())) {
		return f, g.stderr
	}
	if tty, err := os.OpenFile("/dev/tty", os.O_RDWR, 0); err == nil {
		if term.IsTerminal(int(tty.Fd())) {
			return tty, tty
		}
		tty.Close()
	}
	return nil, nil
}

// terminal is where a run's prompts are asked, or nil: a run then needs
// every answer given.
func (g *globals) terminal() vars.Terminal {
	if in, out := g.tty(); in != nil {
		return &ttyPrompter{in: in, out: out}
	}
	return nil
}

// stdinIsTerminal reports whether standard input is a terminal (a value
// typed, not piped).
func (g *globals) stdinIsTerminal() bool {
	f, ok := g.stdin.(*os.File)
	return ok && term.IsTerminal(int(f.Fd()))
}

// ttyPrompter asks prompts on a terminal.
type ttyPrompter struct {
	in  *os.File
	out io.Writer
}

func (t *ttyPrompter) Ask(machine, gen string, p *spec.Prompt, previous []byte) ([]byte, error) {
	desc := cmp.Or(p.Display.Label, p.Description, p.Name)
	label := fmt.Sprintf("%s/%s: %s", machine, gen, desc)
	if previous != nil {
		label += " (Enter keeps the stored answer)"
	}
	var v []byte
	var err error
	switch {
	case p.IsHidden():
		v, err = askHidden(t.in, t.out, label, p.IsMultiline())
	case p.IsMultiline():
		fmt.Fprintf(t.out, "%s (end with Ctrl-D on an empty line):\n", label)
		v, err = io.ReadAll(t.in)
	default:
		fmt.Fprintf(t.out, "%s: ", label)
		v, err = readLine(t.in)
	}
	if err == nil && len(v) == 0 && previous != nil {
		return previous, nil
	}
	return v, err
}

// askHidden reads a hidden answer twice, without echo, until both match
// (three tries): a typo in a password nobody sees would be stored. A
// multiline one reads until Ctrl-D.
func askHidden(in *os.File, out io.Writer, label string, multiline bool) ([]byte, error) {
	read := func() ([]byte, error) {
		if !multiline {
			return term.ReadPassword(int(in.Fd()))
		}
		return readNoEcho(in)
	}
	end := ""
	if multiline {
		end = ", end with Ctrl-D on an empty line"
	}
	for range 3 {
		fmt.Fprintf(out, "%s (hidden%s): ", label, end)
		first, err := read()
		fmt.Fprintln(out)
		if err != nil {
			return nil, err
		}
		fmt.Fprintf(out, "%s (again): ", label)
		second, err := read()
		fmt.Fprintln(out)
		if err != nil {
			return nil, err
		}
		if bytes.Equal(first, second) {
			return first, nil
		}
		fmt.Fprintln(out, "the two answers differ; once more")
	}
	return nil, errors.New("the answers differed three times; nothing was stored")
}

// readNoEcho reads until end of input with the terminal's echo off (and
// its line editing on: Ctrl-D on an empty line ends).
func readNoEcho(in *os.File) ([]byte, error) {
	fd := int(in.Fd())
	old, err := unix.IoctlGetTermios(fd, unix.TCGETS)
	if err != nil {
		return nil, err
	}
	quiet := *old
	quiet.Lflag &^= unix.ECHO
	if err := unix.IoctlSetTermios(fd, unix.TCSETS, &quiet); err != nil {
		return nil, err
	}
	defer unix.IoctlSetTermios(fd, unix.TCSETS, old)
	return io.ReadAll(in)
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

// promptFlags are --prompt and --prompts-file, on every command that can
// run generators (vars generate, rotate, clone).
type promptFlags struct {
	prompts []string
	file    string
}

func (p *promptFlags) add(cmd *cobra.Command) {
	cmd.Flags().StringArrayVar(&p.prompts, "prompt", nil, "answer a prompt: GEN/NAME=@FILE, GEN/NAME=@- (stdin) or GEN/NAME=VALUE (visible to every local user); repeatable")
	cmd.Flags().StringVar(&p.file, "prompts-file", "", `JSON file of answers: {"GEN/NAME": "value"}`)
}

// options fills a run's answers and terminal from the flags.
func (g *globals) promptOptions(p promptFlags, o *vars.GenerateOptions) error {
	a := vars.Answers{}
	if p.file != "" {
		var err error
		if a, err = vars.LoadAnswers(p.file); err != nil {
			return err
		}
	}
	for _, arg := range p.prompts {
		k, v, err := vars.ParseAnswer(arg, g.stdin)
		if err != nil {
			return err
		}
		a[k] = v
	}
	o.Answers, o.Terminal = a, g.terminal()
	return nil
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
		in, out := g.tty()
		if in == nil || len(accepted) > 8 {
			return err
		}
		fmt.Fprintf(out, "%s. Accept? [y/N] ", ce.Why)
		answer, _ := readLine(in)
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

// stdinFile is standard input as a file (a console attaches to it).
func (g *globals) stdinFile() *os.File {
	if f, ok := g.stdin.(*os.File); ok {
		return f
	}
	return os.Stdin
}
