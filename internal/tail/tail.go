// Package tail keeps the last lines of a stream: the console lines a
// failed VM's status shows, the output of a hypervisor that would not
// start, and of a generator script that failed.
package tail

import (
	"strings"
	"sync"
)

// maxPartial bounds the unfinished last line.
const maxPartial = 64 << 10

// Lines keeps the last lines written to it: at least 5, Keep if more.
// Blank lines and terminal escapes are dropped, and an unfinished line
// is kept to its last 64 KiB, so that output without newlines cannot grow
// it without bound. It is safe for concurrent use.
type Lines struct {
	mu    sync.Mutex
	Keep  int
	lines []string
	part  string
	count int
}

// Count is the number of lines written (kept or not), the unfinished one
// included.
func (t *Lines) Count() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	if strings.TrimSpace(t.part) != "" {
		return t.count + 1
	}
	return t.count
}

func (t *Lines) Write(p []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	keep := max(t.Keep, 5)
	text := t.part + string(p)
	for {
		line, rest, ok := strings.Cut(text, "\n")
		if !ok {
			break
		}
		text = rest
		t.count++
		if l := strings.TrimSpace(StripANSI(line)); l != "" {
			if len(l) > maxPartial {
				l = l[len(l)-maxPartial:]
			}
			t.lines = append(t.lines, l)
			if len(t.lines) > 2*keep {
				t.lines = append(t.lines[:0], t.lines[len(t.lines)-keep:]...)
			}
		}
	}
	if len(text) > maxPartial {
		text = text[len(text)-maxPartial:]
	}
	t.part = text
	if len(t.lines) > keep {
		t.lines = t.lines[len(t.lines)-keep:]
	}
	return len(p), nil
}

// Lines returns the kept lines, the unfinished last one included.
func (t *Lines) Lines() []string {
	t.mu.Lock()
	defer t.mu.Unlock()
	lines := append([]string(nil), t.lines...)
	if p := strings.TrimSpace(StripANSI(t.part)); p != "" {
		lines = append(lines, p)
	}
	return lines
}

func (t *Lines) String() string { return strings.Join(t.Lines(), " / ") }

// StripANSI removes terminal escape sequences.
func StripANSI(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] != 0x1b {
			b.WriteByte(s[i])
			continue
		}
		if i+1 < len(s) && s[i+1] == '[' {
			j := i + 2
			for j < len(s) && !(s[j] >= '@' && s[j] <= '~') {
				j++
			}
			i = j
			continue
		}
		i++ // ESC + one byte (e.g. "ESC c")
	}
	return b.String()
}
