package lock

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestMain(m *testing.M) {
	if p := os.Getenv("LOCK_TEST_HOLD"); p != "" {
		l, err := Acquire(p, "test", 0, nil)
		if err != nil {
			os.Exit(2)
		}
		os.Stdout.WriteString("held\n")
		time.Sleep(time.Hour)
		l.Release()
		os.Exit(0)
	}
	os.Exit(m.Run())
}

func TestLockAcrossProcesses(t *testing.T) {
	p := filepath.Join(t.TempDir(), "lock")
	if Held(p) {
		t.Fatal("a missing lock file is held")
	}
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), "LOCK_TEST_HOLD="+p)
	out, _ := cmd.StdoutPipe()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 5)
	out.Read(buf)
	if !Held(p) {
		t.Fatal("Held = false while another process holds it")
	}
	if Holder(p) != cmd.Process.Pid {
		t.Errorf("Holder = %d, want %d", Holder(p), cmd.Process.Pid)
	}
	_, err := Acquire(p, "VM x", 100*time.Millisecond, nil)
	if !errors.Is(err, ErrBusy) || !strings.Contains(err.Error(), "VM x is busy: another credvm (pid ") {
		t.Errorf("Acquire while held: %v", err)
	}
	// Asking must not take the lock.
	if !Held(p) {
		t.Error("Held released the lock")
	}
	// kill -9: the lock goes with the holder.
	cmd.Process.Kill()
	cmd.Wait()
	l, err := Acquire(p, "VM x", time.Second, nil)
	if err != nil {
		t.Fatalf("after the holder died: %v", err)
	}
	if !Held(p) {
		t.Error("Held = false while this process holds it")
	}
	l.Release()
	if Held(p) {
		t.Error("Held = true after Release")
	}
}
