package qemu

import (
	"os/exec"
	"testing"

	"github.com/credvm/credvm/internal/testenv"
)

// TestProbeGuest proves the probe guest itself: under TCG (which always
// works) it must report at once, so a KVM probe that times out means KVM.
func TestProbeGuest(t *testing.T) {
	if _, err := exec.LookPath(Binary); err != nil {
		testenv.Missing(t, Binary, "apt-get install qemu-system-x86")
	}
	if err := probe("tcg"); err != nil {
		t.Fatalf("probe guest under TCG: %v", err)
	}
}

func TestChooseAccel(t *testing.T) {
	a, err := ChooseAccel("tcg")
	if err != nil || a.Name != "tcg" || a.Notice != "" {
		t.Errorf("tcg: %+v %v", a, err)
	}
	a, err = ChooseAccel("auto")
	if err != nil || (a.Name == "tcg") != (a.Notice != "") {
		t.Errorf("auto: %+v %v: a fallback to TCG must say why, KVM must not", a, err)
	}
}
