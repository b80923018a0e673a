package e2e

import (
	"bytes"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/creack/pty"
)

// ptySession runs credvm on a pseudo-terminal, as a user at a terminal
// would: its controlling terminal is the pty, and stdin is the pty unless
// the test gives another.
type ptySession struct {
	t    *testing.T
	cmd  *exec.Cmd
	tty  *os.File // the master side
	mu   sync.Mutex
	seen bytes.Buffer
	done chan error
	// expected counts each expect's text, so a repeated prompt is waited for.
	expected map[string]int
}

func (r *repo) onTerminal(stdin io.Reader, args ...string) *ptySession {
	r.t.Helper()
	master, slave, err := pty.Open()
	if err != nil {
		r.t.Fatal(err)
	}
	cmd := exec.Command(credvmBin, args...)
	cmd.Env = append(r.env, "CREDVM_NO_TTY=")
	cmd.Dir = r.dir
	cmd.Stdin, cmd.Stdout, cmd.Stderr = slave, slave, slave
	if stdin != nil {
		cmd.Stdin = stdin
	}
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true, Setctty: true, Ctty: 2}
	if err := cmd.Start(); err != nil {
		r.t.Fatal(err)
	}
	slave.Close()
	s := &ptySession{t: r.t, cmd: cmd, tty: master, done: make(chan error, 1)}
	go func() {
		buf := make([]byte, 4096)
		for {
			n, err := master.Read(buf)
			s.mu.Lock()
			s.seen.Write(buf[:n])
			s.mu.Unlock()
			if err != nil {
				return
			}
		}
	}()
	go func() { s.done <- cmd.Wait() }()
	r.t.Cleanup(func() { cmd.Process.Kill(); master.Close() })
	return s
}

// expect waits until the terminal has shown want once more than it had
// at the last expect of it: a prompt asked again is waited for again.
func (s *ptySession) expect(want string) {
	s.t.Helper()
	if s.expected == nil {
		s.expected = map[string]int{}
	}
	s.expected[want]++
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		if strings.Count(s.output(), want) >= s.expected[want] {
			// The prompt is out; give credvm a moment to turn echo off
			// (typed-ahead input is echoed when it arrives).
			time.Sleep(100 * time.Millisecond)
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	s.t.Fatalf("the terminal did not show %q %d times:\n%s", want, s.expected[want], s.output())
}

// typeLine types a line and Enter.
func (s *ptySession) typeLine(line string) {
	s.t.Helper()
	if _, err := s.tty.WriteString(line + "\r"); err != nil {
		s.t.Fatal(err)
	}
}

func (s *ptySession) output() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.seen.String()
}

// wait waits for credvm to exit and returns its error.
func (s *ptySession) wait() error {
	s.t.Helper()
	select {
	case err := <-s.done:
		time.Sleep(50 * time.Millisecond) // the last output
		return err
	case <-time.After(30 * time.Second):
		s.t.Fatalf("credvm did not exit:\n%s", s.output())
		return nil
	}
}

// TestTerminalInput: what a user types is not echoed, is asked twice when
// hidden, and is stored without the Enter's newline; prompts reach the
// terminal also when standard input is a pipe; import does not wait on a
// terminal for a bundle that is not coming (issue 13, item 11).
func TestTerminalInput(t *testing.T) {
	needCredvm(t)
	r := newRepo(t)
	r.machine("m", `[vars.generators.db]
script = 'cat "$prompts/password" > "$out/password"; cat "$prompts/user" > "$out/user"'
prompts.password = { type = "hidden", description = "admin password" }
prompts.user = {}
files.password = {}
files.user = { secret = false }
`)

	// Hidden prompts: asked twice; a mismatch asks again. The line prompt
	// comes from /dev/tty although standard input is a pipe.
	s := r.onTerminal(strings.NewReader(""), "vars", "generate", "m")
	s.expect("m/db: admin password (hidden): ")
	s.typeLine("hunter2")
	s.expect("m/db: admin password (again): ")
	s.typeLine("hunter3")
	s.expect("the two answers differ; once more")
	s.expect("m/db: admin password (hidden): ")
	s.typeLine("hunter2")
	s.expect("m/db: admin password (again): ")
	s.typeLine("hunter2")
	s.expect("m/db: user: ")
	s.typeLine("app")
	if err := s.wait(); err != nil {
		t.Fatalf("generate: %v\n%s", err, s.output())
	}
	if strings.Contains(s.output(), "hunter") {
		t.Errorf("the hidden answer was echoed:\n%s", s.output())
	}
	if got := r.credvm("vars", "get", "m", "db/password"); got != "hunter2" {
		t.Errorf("stored password %q, want %q", got, "hunter2")
	}
	if got := r.credvm("vars", "get", "m", "db/user"); got != "app" {
		t.Errorf("stored user %q, want %q", got, "app")
	}

	// vars set typed on a terminal: not echoed, no newline stored.
	s = r.onTerminal(nil, "vars", "set", "m", "db/password")
	s.expect("value for m/db/password (hidden): ")
	s.typeLine("n3w-secret")
	s.expect("(again): ")
	s.typeLine("n3w-secret")
	if err := s.wait(); err != nil {
		t.Fatalf("set: %v\n%s", err, s.output())
	}
	if strings.Contains(s.output(), "n3w-secret") {
		t.Errorf("the value was echoed:\n%s", s.output())
	}
	if got := r.credvm("vars", "get", "m", "db/password"); got != "n3w-secret" {
		t.Errorf("stored %q, want %q without a newline", got, "n3w-secret")
	}

	// import with nothing piped says so instead of waiting.
	s = r.onTerminal(nil, "vars", "import", "--from", "ssh-ed25519 AAAA")
	if err := s.wait(); err == nil {
		t.Fatal("import without a bundle succeeded")
	}
	if want := "no bundle: name its file (credvm vars import FILE --from SENDER) or pipe it on standard input"; !strings.Contains(s.output(), want) {
		t.Errorf("import: %s", s.output())
	}

	// logs -f ends with 0 at Ctrl-C (it used to exit 130).
	r.machine("v", "[vm]\nkernel = \"/nonexistent\"\n")
	r.credvm("create", "v", "--state-dir", r.state)
	os.WriteFile(filepath.Join(r.state, "v", "console.log"), []byte("booted\n"), 0o600)
	s = r.onTerminal(nil, "logs", "-f", "v", "--state-dir", r.state)
	s.expect("booted")
	if _, err := s.tty.Write([]byte{3}); err != nil { // the terminal's interrupt character
		t.Fatal(err)
	}
	if err := s.wait(); err != nil {
		t.Errorf("logs -f after Ctrl-C: %v (want exit 0)\n%s", err, s.output())
	}
}
