package tail

import (
	"fmt"
	"slices"
	"strings"
	"testing"
)

func TestLines(t *testing.T) {
	tests := []struct {
		name   string
		keep   int
		writes []string
		want   []string
	}{
		{"keeps the last lines", 5, []string{"1\n2\n3\n4\n5\n6\n7\n"}, []string{"3", "4", "5", "6", "7"}},
		{"across writes, with the unfinished one", 5, []string{"a\nb", "c\nd"}, []string{"a", "bc", "d"}},
		{"drops blanks and escapes", 5, []string{"\x1b[1mbold\x1b[0m\n\n  \r\n", "\x1bcreset\n"}, []string{"bold", "reset"}},
		{"at least five", 1, []string{"1\n2\n3\n4\n5\n6\n"}, []string{"2", "3", "4", "5", "6"}},
		{"more when asked", 8, []string{strings.Repeat("x\n", 20)}, slices.Repeat([]string{"x"}, 8)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			l := &Lines{Keep: tt.keep}
			for _, w := range tt.writes {
				l.Write([]byte(w))
			}
			if got := l.Lines(); !slices.Equal(got, tt.want) {
				t.Errorf("Lines() = %q, want %q", got, tt.want)
			}
		})
	}
}

// TestBounded: output without newlines, or one huge line, keeps at most
// 64 KiB of it — a generator printing 300 MB cannot take credvm's memory.
func TestBounded(t *testing.T) {
	l := &Lines{}
	chunk := strings.Repeat("y", 32<<10)
	for range 100 {
		l.Write([]byte(chunk))
	}
	if got := l.Lines(); len(got) != 1 || len(got[0]) != maxPartial {
		t.Errorf("unfinished line: %d lines, %d bytes", len(got), len(got[0]))
	}
	l.Write([]byte("\n"))
	for i := range 1000 {
		fmt.Fprintf(l, "line %d\n", i)
	}
	if got := l.Lines(); len(got) != 5 || got[4] != "line 999" {
		t.Errorf("after many lines: %q", got)
	}
}
