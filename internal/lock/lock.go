// Package lock serialises credvm processes on one resource (a repository's
// vars, a VM) with open-file-description locks (fcntl F_OFD_SETLK). The
// lock dies with its holder, so a crashed credvm never leaves a stale lock
// behind; the holder's pid is written into the lock file so that "busy"
// messages can name it; and Held asks whether a lock is held without
// taking it (F_OFD_GETLK), so that `credvm list` never gets in the way of
// a concurrent `credvm start`.
package lock

import (
	"errors"
	"fmt"
	"io"
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

func flock(kind int16) *unix.Flock_t {
	return &unix.Flock_t{Type: kind, Whence: io.SeekStart}
}

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
		err := unix.FcntlFlock(f.Fd(), unix.F_OFD_SETLK, flock(unix.F_WRLCK))
		if err == nil {
			break
		}
		if !errors.Is(err, unix.EAGAIN) && !errors.Is(err, unix.EACCES) {
			f.Close()
			return nil, fmt.Errorf("lock %s: %w", what, err)
		}
		holder := ""
		if pid := Holder(path); pid > 0 {
			holder = fmt.Sprintf(" (pid %d)", pid)
		}
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

// Held reports whether anyone — this process included — holds the lock on
// path, without taking it.
func Held(path string) bool {
	_, held := Probe(path)
	return held
}

// Probe reports whether the lock file exists and whether anyone holds it,
// with one open (no poller, no fstat): `credvm list` probes one per VM.
func Probe(path string) (exists, held bool) {
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return !errors.Is(err, unix.ENOENT), false
	}
	defer unix.Close(fd)
	lk := flock(unix.F_WRLCK)
	if err := unix.FcntlFlock(uintptr(fd), unix.F_OFD_GETLK, lk); err != nil {
		return true, false
	}
	return true, lk.Type != unix.F_UNLCK
}

// Holder returns the pid the holder wrote into the lock file (0 if none).
func Holder(path string) int {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0
	}
	pid, _ := strconv.Atoi(strings.TrimSpace(string(b)))
	return pid
}

// Release lets go of the lock.
func (l *Lock) Release() error {
	if l == nil || l.f == nil {
		return nil
	}
	l.f.Truncate(0)
	err := l.f.Close() // closing the description releases the lock
	l.f = nil
	return err
}
