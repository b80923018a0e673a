package cli

import (
	"bytes"
	"testing"
)

// TestPrintable: what a host sends is shown, never obeyed by this
// terminal.
func TestPrintable(t *testing.T) {
	tests := []struct{ in, want string }{
		{"fleet1", "fleet1"},
		{"vm ünïcode – fine", "vm ünïcode – fine"},
		{"\x1b]0;pwned\x07title", `\x1b]0;pwned\x07title`},
		{"ok\rFAILED", `ok\x0dFAILED`},
		{"two\nlines", `two\x0alines`},
		{"c1 \u009b31m", `c1 \x9b31m`},
		{"del\x7f", `del\x7f`},
	}
	for _, tt := range tests {
		if got := printable(tt.in); got != tt.want {
			t.Errorf("printable(%q) = %q, want %q", tt.in, got, tt.want)
		}
	}
}

// TestEscaping: a host's streamed answer, written in pieces that split
// an escape sequence and a C1 control's UTF-8 bytes.
func TestEscaping(t *testing.T) {
	var b bytes.Buffer
	e := &escaping{w: &b}
	for _, part := range []string{"vm1: stopped\n\x1b[2", "J\tdone é \xc2", "\x9b31m end\r\n"} {
		if n, err := e.Write([]byte(part)); err != nil || n != len(part) {
			t.Fatalf("write %q: %d, %v", part, n, err)
		}
	}
	if got, want := b.String(), "vm1: stopped\n\\x1b[2J\tdone é \\x9b31m end\\x0d\n"; got != want {
		t.Errorf("got %q, want %q", got, want)
	}
}
