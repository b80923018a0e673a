// Package indent prefixes every line of a stream.
package indent

import (
	"io"
	"sync"
)

// Writer indents every line written to w with prefix: the progress of a
// step shown under the step.
func Writer(w io.Writer, prefix string) io.Writer {
	return &prefixed{w: w, prefix: prefix, bol: true}
}

type prefixed struct {
	mu     sync.Mutex
	w      io.Writer
	prefix string
	bol    bool
}

func (p *prefixed) Write(b []byte) (int, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	var out []byte
	for _, c := range b {
		if p.bol {
			out = append(out, p.prefix...)
		}
		out = append(out, c)
		p.bol = c == '\n'
	}
	_, err := p.w.Write(out)
	return len(b), err
}
