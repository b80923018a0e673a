package testenv

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
)

var (
	doubleOnce sync.Once
	doubleBin  string
	doubleRec  string
	doubleErr  string
)

// HypervisorDouble builds the cloud-hypervisor/firecracker test double
// (internal/hypervisor/testdouble) once per test binary (removed by Main)
// and returns a
// directory holding it under both names, and the directory where it
// records what it received (<VM state dir name>.jsonl).
func HypervisorDouble(t testing.TB) (binDir, recordDir string) {
	t.Helper()
	doubleOnce.Do(func() {
		schema := filepath.Join(Root(), "..", "shared", "fixtures", "cloud-hypervisor", "cloud-hypervisor.yaml")
		if _, err := os.Stat(schema); err != nil {
			doubleErr = "cloud-hypervisor's API schema " + schema + " is missing"
			return
		}
		dir, err := TempDir("credvm-double-")
		if err != nil {
			doubleErr = err.Error()
			return
		}
		rec := filepath.Join(dir, "records")
		os.Mkdir(rec, 0o700)
		bin := filepath.Join(dir, "testdouble")
		cmd := exec.Command("go", "build", "-o", bin,
			"-ldflags", "-X main.chSchema="+schema+" -X main.recordDir="+rec,
			"./internal/hypervisor/testdouble")
		cmd.Dir = Root()
		if out, err := cmd.CombinedOutput(); err != nil {
			doubleErr = "build the test double: " + err.Error() + "\n" + string(out)
			return
		}
		for _, n := range []string{"cloud-hypervisor", "firecracker"} {
			os.Symlink(bin, filepath.Join(dir, n))
		}
		doubleBin, doubleRec = dir, rec
	})
	if doubleErr != "" {
		Missing(t, "the hypervisor test double", doubleErr)
	}
	return doubleBin, doubleRec
}

// DoubleRecord is the file where the double records what it received for
// the hypervisor whose sockets are in dir.
func DoubleRecord(recordDir, dir string) string {
	return filepath.Join(recordDir, strings.ReplaceAll(dir, "/", "_")+".jsonl")
}
