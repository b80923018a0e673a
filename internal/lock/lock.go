// Package lock serialises credvm processes on one resource (a repository's
// vars, a VM's state) with flock(2). The lock dies with its holder, so a
// crashed credvm never leaves a stale lock behind; the holder's pid is
// written into the lock file so that the "busy" message can name it.
package lock

import (
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// Lock is a held lock.
type Lock struct{ f *os.File }

// ErrBusy is returned when the lock stays held by another process.
var ErrBusy = errors.New("busy")

// Acquire takes an exclusive lock on path, waiting up to wait for another
// holder to let go; notify (if not nil) is called once when it has to wait.
// what names the resource in messages ("repository /r", "VM app-vm-01").
func Acquire(path, what string, wait time.Duration, notify func(msg string)) (*Lock, error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("lock %s: %w", what, err)
	}
	deadline := time.Now().Add(wait)
	notified := false
	for {
		err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB)
		if err == nil {
			break
		}
		if !errors.Is(err, unix.EWOULDBLOCK) {
			f.Close()
			return nil, fmt.Errorf("lock %s: %w", what, err)
		}
		holder := readHolder(path)
		if time.Now().After(deadline) {
			f.Close()
			return nil, fmt.Errorf("%s is %w: another credvm%s holds its lock; try again when it has finished", what, ErrBusy, holder)
		}
		if !notified && notify != nil {
			notify(fmt.Sprintf("waiting for another credvm%s working on %s", holder, what))
			notified = true
		}
		time.Sleep(50 * time.Millisecond)
	}
	f.Truncate(0)
	f.WriteAt([]byte(strconv.Itoa(os.Getpid())+"\n"), 0)
	return &Lock{f: f}, nil
}

func readHolder(path string) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return ""
	}
	if pid := strings.TrimSpace(string(b)); pid != "" {
		return " (pid " + pid + ")"
	}
	return ""
}

// Release lets go of the lock.
func (l *Lock) Release() error {
	if l == nil || l.f == nil {
		return nil
	}
	l.f.Truncate(0)
	err := l.f.Close() // closing the descriptor releases the flock
	l.f = nil
	return err
}
