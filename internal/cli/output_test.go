package cli

import "testing"

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
