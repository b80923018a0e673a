package hypervisor

import (
	"os/exec"
	"testing"
	"time"
)

// A guest that misses the first press of its power button (it was still
// booting) powers off at the second; one that never does is given up on
// at the timeout.
func TestPressUntilOff(t *testing.T) {
	old := repressEvery
	repressEvery = 50 * time.Millisecond
	defer func() { repressEvery = old }()
	for _, tc := range []struct {
		name     string
		offAt    int // the press that powers it off; 0: none
		timeout  time.Duration
		want     bool
		minPress int
		maxPress int
	}{
		{"second press", 2, 5 * time.Second, true, 2, 2},
		{"never", 0, 120 * time.Millisecond, false, 2, 4},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p, err := StartProcess(exec.Command("sleep", "60"))
			if err != nil {
				t.Fatal(err)
			}
			defer p.Kill()
			presses := 0
			press := func() error {
				presses++
				if presses == tc.offAt {
					p.Cmd.Process.Kill()
				}
				return nil
			}
			got := p.PressUntilOff(tc.timeout, press, t.Logf, "press")
			if got != tc.want || presses < tc.minPress || presses > tc.maxPress {
				t.Errorf("PressUntilOff = %v after %d presses, want %v after %d–%d", got, presses, tc.want, tc.minPress, tc.maxPress)
			}
		})
	}
}
