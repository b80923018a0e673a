package qemu

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/credvm/credvm/internal/runtimedir"
)

// probeBIOS is a 64 KiB firmware image whose reset vector (offset 0xFFF0)
// writes 0x31 to QEMU's isa-debug-exit port and halts: QEMU then exits
// with status (0x31<<1)|1 = 99 at once. A KVM that can run a guest runs it
// in milliseconds; one that cannot (these machines' /dev/kvm hangs
// ordinary guests) never gets there.
func probeBIOS() []byte {
	b := make([]byte, 64<<10)
	for i := range b {
		b[i] = 0xf4 // hlt
	}
	copy(b[0xfff0:], []byte{0xb0, 0x31, 0xe6, 0xf4, 0xf4}) // mov al,0x31; out 0xf4,al; hlt
	return b
}

const probeExit = 99

// Accel is the decision about hardware acceleration.
type Accel struct {
	Name   string // "kvm" or "tcg"
	Notice string // one line for the user when falling back, "" otherwise
}

// ChooseAccel resolves "auto", "kvm" or "tcg". For auto it uses KVM when
// a probe guest actually runs under it, and says why when it falls back.
// The probe's result is cached for the boot (in the runtime directory).
func ChooseAccel(want string) (Accel, error) {
	switch want {
	case "tcg":
		return Accel{Name: "tcg"}, nil
	case "kvm":
		if err := kvmUsable(); err != nil {
			return Accel{}, fmt.Errorf("accel = \"kvm\" but %v; use accel = \"auto\" to fall back to TCG", err)
		}
		return Accel{Name: "kvm"}, nil
	}
	if err := kvmUsable(); err != nil {
		return Accel{Name: "tcg", Notice: fmt.Sprintf("KVM unavailable (%v): using TCG software emulation, which is much slower", err)}, nil
	}
	return Accel{Name: "kvm"}, nil
}

func kvmUsable() error {
	f, err := os.OpenFile("/dev/kvm", os.O_RDWR, 0)
	if err != nil {
		return fmt.Errorf("cannot open /dev/kvm: %w", errors.Unwrap(err))
	}
	f.Close()
	if ok, reason, cached := readProbeCache(); cached {
		if ok {
			return nil
		}
		return errors.New(reason)
	}
	err = probe("kvm")
	writeProbeCache(err)
	return err
}

// The probe's result is cached for the boot in the user's private runtime
// directory (runtimedir: the user's own, 0700, where no one else can plant
// a link), keyed by the kernel's boot id: a reboot (or a new kernel
// module) probes again. A cache that cannot be read or written is no
// cache: the probe runs.
func probeCacheName() string {
	id, err := os.ReadFile("/proc/sys/kernel/random/boot_id")
	if err != nil {
		return ""
	}
	return "kvm-probe-" + strings.TrimSpace(string(id))
}

func readProbeCache() (ok bool, reason string, cached bool) {
	name := probeCacheName()
	if name == "" {
		return false, "", false
	}
	b, err := runtimedir.ReadFile(name)
	if err != nil {
		return false, "", false
	}
	s := strings.TrimSpace(string(b))
	return s == "ok", s, true
}

func writeProbeCache(probeErr error) {
	name := probeCacheName()
	if name == "" {
		return
	}
	result := "ok"
	if probeErr != nil {
		result = probeErr.Error()
	}
	runtimedir.WriteFile(name, []byte(result+"\n"))
}

// probe runs the probe guest under an accelerator.
func probe(accel string) error {
	dir, err := os.MkdirTemp("", "credvm-kvm-probe-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	bios := filepath.Join(dir, "bios.bin")
	if err := os.WriteFile(bios, probeBIOS(), 0o600); err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, Binary, "-accel", accel, "-M", "pc", "-nodefaults", "-display", "none",
		"-bios", bios, "-device", "isa-debug-exit,iobase=0xf4,iosize=0x04")
	out, err := cmd.CombinedOutput()
	var ee *exec.ExitError
	switch {
	case ctx.Err() != nil:
		return fmt.Errorf("a probe guest did not run under %s within 3s", strings.ToUpper(accel))
	case errors.As(err, &ee) && ee.ExitCode() == probeExit:
		return nil
	case err != nil:
		msg := strings.TrimSpace(string(out))
		if i := strings.IndexByte(msg, '\n'); i > 0 {
			msg = msg[:i]
		}
		return fmt.Errorf("QEMU cannot use %s: %s", strings.ToUpper(accel), msg)
	}
	return fmt.Errorf("the probe guest did not report under %s", strings.ToUpper(accel))
}
