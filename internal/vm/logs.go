package vm

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"time"
)

// OpenConsole opens the VM's console log positioned at its last lines
// (lines ≤ 0: at the start).
func (s StateDir) OpenConsole(lines int) (*os.File, error) {
	if _, err := s.Registration(); err != nil {
		return nil, err
	}
	f, err := os.Open(s.Console())
	if errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("vm %s has no console log yet (it never ran): credvm start %s", s.Name, s.Name)
	}
	if err != nil {
		return nil, err
	}
	if lines > 0 {
		if err := seekLastLines(f, lines); err != nil {
			f.Close()
			return nil, err
		}
	}
	return f, nil
}

// CopyConsole copies the console log from f to w; with follow, it keeps
// copying what the console writes until ctx is done (then it returns nil).
func CopyConsole(ctx context.Context, f *os.File, w io.Writer, follow bool) error {
	for {
		if _, err := io.Copy(w, f); err != nil {
			return err
		}
		if !follow {
			return nil
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// seekLastLines positions f at the start of its last n lines.
func seekLastLines(f *os.File, n int) error {
	fi, err := f.Stat()
	if err != nil {
		return err
	}
	size := fi.Size()
	start := max(0, size-int64(n)*512-4096)
	buf := make([]byte, size-start)
	if _, err := f.ReadAt(buf, start); err != nil && !errors.Is(err, io.EOF) {
		return err
	}
	idx := len(buf)
	if idx > 0 && buf[idx-1] == '\n' {
		idx--
	}
	for range n {
		j := bytes.LastIndexByte(buf[:idx], '\n')
		if j < 0 {
			idx = 0
			break
		}
		idx = j
	}
	if idx > 0 {
		idx++
	}
	_, err = f.Seek(start+int64(idx), io.SeekStart)
	return err
}
