// Package bench measures what a credvm user waits for, side by side with
// the baseline they would otherwise use, and reports ratios from one run:
// these machines are noisy, absolute times are not stable. Nothing here is
// a timed assertion; see README.md for how to run and the latest figures.
package bench

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/credvm/credvm/internal/guestimage"
	_ "github.com/credvm/credvm/internal/hypervisor/drivers" // the backends check [vm]
	"github.com/credvm/credvm/internal/repo"
	"github.com/credvm/credvm/internal/testenv"
	"github.com/credvm/credvm/internal/vm"
)

var (
	credvmBin string
	standin   string // a directory with stand-in hypervisors that exit at once
	tmpRoot   string
)

func TestMain(m *testing.M) {
	var err error
	tmpRoot, err = os.MkdirTemp("", "credvm-bench-")
	if err != nil {
		panic(err)
	}
	credvmBin = filepath.Join(tmpRoot, "credvm")
	build := exec.Command("go", "build", "-o", credvmBin, "./cmd/credvm")
	build.Dir = testenv.Root()
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "build credvm: %v\n%s", err, out)
		os.Exit(1)
	}
	standin = filepath.Join(tmpRoot, "standin")
	os.Mkdir(standin, 0o755)
	for _, n := range []string{"qemu-system-x86_64", "cloud-hypervisor"} {
		os.Symlink("/bin/true", filepath.Join(standin, n))
	}
	code := m.Run()
	os.RemoveAll(tmpRoot)
	os.Exit(code)
}

// fixture is a repository with a registered user key.
type fixture struct {
	dir, state string
	env        []string
}

func newFixture(b *testing.B) *fixture {
	b.Helper()
	dir := b.TempDir()
	state, _ := os.MkdirTemp("/tmp", "cvb")
	b.Cleanup(func() { os.RemoveAll(state) })
	f := &fixture{dir: dir, state: state, env: append(os.Environ(),
		"SOPS_AGE_KEY_FILE="+filepath.Join(dir, "key.txt"), "SOPS_AGE_KEY=", "CREDVM_REPO="+dir, "USER=bench", "XDG_STATE_HOME="+b.TempDir(),
		"CREDVM_STATE_DIR="+state)}
	os.WriteFile(filepath.Join(dir, "credvm.toml"), nil, 0o644)
	f.credvm(b, "vars", "keygen")
	return f
}

func (f *fixture) credvm(b testing.TB, args ...string) string {
	b.Helper()
	cmd := exec.Command(credvmBin, args...)
	cmd.Env, cmd.Dir = f.env, f.dir
	out, err := cmd.CombinedOutput()
	if err != nil {
		b.Fatalf("credvm %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

func (f *fixture) machine(b testing.TB, name, toml string) {
	d := filepath.Join(f.dir, "machines", name)
	os.MkdirAll(d, 0o755)
	if err := os.WriteFile(filepath.Join(d, "machine.toml"), []byte(toml), 0o644); err != nil {
		b.Fatal(err)
	}
}

// timeCmd runs a command and returns its wall time and peak RSS (KiB).
func timeCmd(b testing.TB, cmd *exec.Cmd) (time.Duration, int64) {
	b.Helper()
	start := time.Now()
	out, err := cmd.CombinedOutput()
	d := time.Since(start)
	if err != nil {
		b.Fatalf("%s: %v\n%s", strings.Join(cmd.Args, " "), err, out)
	}
	ru, _ := cmd.ProcessState.SysUsage().(*syscall.Rusage)
	if ru == nil {
		return d, 0
	}
	return d, ru.Maxrss
}

// timeRun runs `credvm run` and returns its wall time and credvm's own
// peak RSS (KiB), sampled from /proc while it runs: rusage would report
// the largest of its children, QEMU with the guest's memory.
func timeRun(b testing.TB, cmd *exec.Cmd) (time.Duration, int64) {
	b.Helper()
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	start := time.Now()
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	var hwm int64
	status := fmt.Sprintf("/proc/%d/status", cmd.Process.Pid)
	for {
		select {
		case err := <-done:
			if err != nil {
				b.Fatalf("%s: %v\n%s", strings.Join(cmd.Args, " "), err, out.String())
			}
			return time.Since(start), hwm
		case <-time.After(50 * time.Millisecond):
			if st, err := os.ReadFile(status); err == nil {
				for _, l := range strings.Split(string(st), "\n") {
					if v, ok := strings.CutPrefix(l, "VmHWM:"); ok {
						kb, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
						hwm = max(hwm, kb)
					}
				}
			}
		}
	}
}

func median(ds []time.Duration) time.Duration {
	s := slices.Clone(ds)
	slices.Sort(s)
	return s[len(s)/2]
}

// spread is (max-min)/median, the noise of a series.
func spread(ds []time.Duration) float64 {
	s := slices.Clone(ds)
	slices.Sort(s)
	return float64(s[len(s)-1]-s[0]) / float64(s[len(s)/2])
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// BenchmarkStart: from `credvm run` being invoked to the hypervisor being
// exec'd (a stand-in that exits at once), with 3 and 30 sops-encrypted
// secrets, against the source document's bash runner (cat | tr each
// plaintext file, build the OEM string, exec) on the same secrets. The two
// alternate in one loop; the ratio is credvm's median over bash's.
func BenchmarkStart(b *testing.B) {
	for _, n := range []int{3, 30} {
		b.Run(fmt.Sprintf("secrets=%d", n), func(b *testing.B) {
			f := newFixture(b)
			var files, creds strings.Builder
			for i := range n {
				fmt.Fprintf(&files, "files.s%02d = {}\n", i)
				fmt.Fprintf(&creds, "SECRET_%02d = { var = \"g/s%02d\" }\n", i, i)
			}
			os.WriteFile(filepath.Join(f.dir, "vmlinuz"), []byte("stand-in"), 0o644)
			f.machine(b, "vm", fmt.Sprintf(`[vm]
accel = "tcg"
machine = "q35"
transport = "fw_cfg"
kernel = "../../vmlinuz"
[vars.generators.g]
runtime_inputs = ["coreutils"]
script = 'for i in $(seq -f %%02g 0 %d); do head -c 24 /dev/urandom | base64 > "$out/s$i"; done'
%s
[credentials]
%s`, n-1, files.String(), creds.String()))
			f.credvm(b, "vars", "generate", "vm")
			plain := b.TempDir()
			for i := range n {
				v := f.credvm(b, "vars", "get", "vm", fmt.Sprintf("g/s%02d", i))
				os.WriteFile(filepath.Join(plain, fmt.Sprintf("SECRET_%02d", i)), []byte(v), 0o600)
			}
			env := append(slices.Clone(f.env), "PATH="+standin+":"+os.Getenv("PATH"))
			runner := filepath.Join(testenv.Root(), "bench", "bash-runner.sh")
			var tc, tb []time.Duration
			b.ResetTimer()
			for range b.N {
				c := exec.Command(credvmBin, "run", "vm", "--state-dir", f.state, "-q")
				c.Env, c.Dir = env, f.dir
				d, _ := timeCmd(b, c)
				tc = append(tc, d)
				c = exec.Command(runner, plain, filepath.Join(standin, "cloud-hypervisor"))
				c.Env = env
				d, _ = timeCmd(b, c)
				tb = append(tb, d)
			}
			b.StopTimer()
			b.ReportMetric(ms(median(tc)), "credvm-ms")
			b.ReportMetric(ms(median(tb)), "bash-ms")
			b.ReportMetric(float64(median(tc))/float64(median(tb)), "credvm/bash")
			b.ReportMetric(spread(tc), "credvm-spread")
			b.ReportMetric(spread(tb), "bash-spread")
		})
	}
}

// BenchmarkStartup: `credvm --version` against an empty Go program built
// with the same toolchain and against bench/floor (the libraries credvm
// links, and nothing else), interleaved, with the sum of package
// initialisation (GODEBUG=inittrace=1) of each. With
// $CREDVM_BENCH_BASELINE naming another credvm binary (an older build),
// that one is measured in the same loop.
func BenchmarkStartup(b *testing.B) {
	floor := filepath.Join(tmpRoot, "floor")
	build := exec.Command("go", "build", "-o", floor, "./bench/floor")
	build.Dir, build.Env = testenv.Root(), append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		b.Fatalf("build bench/floor: %v\n%s", err, out)
	}
	empty := filepath.Join(tmpRoot, "empty")
	src := filepath.Join(tmpRoot, "empty-src")
	os.MkdirAll(src, 0o755)
	os.WriteFile(filepath.Join(src, "go.mod"), []byte("module empty\n"), 0o644)
	os.WriteFile(filepath.Join(src, "main.go"), []byte("package main\n\nfunc main() {}\n"), 0o644)
	build = exec.Command("go", "build", "-o", empty, ".")
	build.Dir, build.Env = src, append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		b.Fatalf("build the empty program: %v\n%s", err, out)
	}
	bins := map[string]string{"credvm": credvmBin, "empty": empty, "floor": floor}
	if base := os.Getenv("CREDVM_BENCH_BASELINE"); base != "" {
		bins["baseline"] = base
	}
	times := map[string][]time.Duration{}
	inits := map[string][]float64{}
	b.ResetTimer()
	for range b.N {
		for name, bin := range bins {
			d, _ := timeCmd(b, exec.Command(bin, "--version"))
			times[name] = append(times[name], d)
			inits[name] = append(inits[name], initTotal(b, bin))
		}
	}
	b.StopTimer()
	for name, ts := range times {
		b.ReportMetric(ms(median(ts)), name+"-ms")
		b.ReportMetric(float64(median(ts))/float64(median(times["empty"])), name+"/empty")
		in := inits[name]
		slices.Sort(in)
		b.ReportMetric(in[len(in)/2], name+"-init-ms")
	}
}

// initTotal is the sum of a program's package initialisation times, as
// the Go runtime reports them with GODEBUG=inittrace=1.
func initTotal(b *testing.B, bin string) float64 {
	c := exec.Command(bin, "--version")
	c.Env = append(os.Environ(), "GODEBUG=inittrace=1")
	out, _ := c.CombinedOutput()
	total := 0.0
	for _, l := range strings.Split(string(out), "\n") {
		// init PKG @T ms, D ms clock, …
		f := strings.Fields(l)
		if len(f) > 6 && f[0] == "init" && f[6] == "clock," {
			d, _ := strconv.ParseFloat(f[4], 64)
			total += d
		}
	}
	return total
}

// BenchmarkGenerate: `vars generate` of 100 machines × 3 generators
// (openssl rand scripts), sandboxed (bubblewrap) and not, one machine at a
// time and in parallel, against running the same 300 scripts sequentially
// in a shell loop. Reports credvm's overhead per generator beyond the
// script itself, and the speed-up from parallelism.
func BenchmarkGenerate(b *testing.B) {
	const machines, gens = 100, 3
	gen := func(i int) string {
		return fmt.Sprintf(`[vars.generators.g%d]
runtime_inputs = ["openssl", "coreutils"]
script = 'openssl rand -base64 32 | tr -d "\n" > "$out/key"'
files.key = {}
`, i)
	}
	toml := gen(0) + gen(1) + gen(2)
	scriptDir := b.TempDir()
	// bubblewrap's own fixed cost per sandbox, for reference: credvm's
	// sandboxed overhead is this plus its own.
	if bwrap, err := exec.LookPath("bwrap"); err == nil {
		const n = 20
		start := time.Now()
		for range n {
			c := exec.Command(bwrap, "--unshare-all", "--die-with-parent", "--ro-bind", "/usr", "/usr",
				"--symlink", "usr/bin", "/bin", "--symlink", "usr/lib", "/lib", "--symlink", "usr/lib64", "/lib64",
				"--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp", "true")
			if out, err := c.CombinedOutput(); err != nil {
				b.Fatalf("bwrap: %v %s", err, out)
			}
		}
		b.ReportMetric(ms(time.Since(start))/n, "bwrap-alone-ms")
	}
	for range b.N {
		// Baseline: the 300 scripts, one after another, in a shell loop.
		loop := fmt.Sprintf(`for m in $(seq %d); do for g in 1 2 3; do out=%s/$m-$g; mkdir -p $out; openssl rand -base64 32 | tr -d "\n" > "$out/key"; done; done`, machines, scriptDir)
		c := exec.Command("bash", "-euo", "pipefail", "-c", loop)
		shell, _ := timeCmd(b, c)
		b.ReportMetric(ms(shell)/(machines*gens), "shell-ms/gen")

		for _, sandbox := range []string{"bwrap", "namespaces", "none"} {
			for _, jobs := range []int{1, 0} {
				f := newFixture(b)
				for m := range machines {
					f.machine(b, fmt.Sprintf("m%03d", m), toml)
				}
				c := exec.Command(credvmBin, "vars", "generate", "--sandbox", sandbox, "--jobs", strconv.Itoa(jobs), "--no-commit")
				c.Env, c.Dir = f.env, f.dir
				d, _ := timeCmd(b, c)
				label := "seq"
				if jobs == 0 {
					label = "par"
				}
				b.ReportMetric(ms(d)/(machines*gens), fmt.Sprintf("%s-%s-ms/gen", sandbox, label))
				if jobs == 1 {
					b.ReportMetric((ms(d)-ms(shell))/(machines*gens), sandbox+"-overhead-ms/gen")
				}
			}
		}
	}
}

// listFixture registers n VMs (not booted) under one repository.
func listFixture(b *testing.B, n int) *fixture {
	b.Helper()
	f := newFixture(b)
	r, err := repo.Open(f.dir)
	if err != nil {
		b.Fatal(err)
	}
	for i := range n {
		name := fmt.Sprintf("vm%04d", i)
		f.machine(b, name, "[vm]\nkernel = \"/boot/vmlinuz\"\nmem = 256\n[credentials]\nENV = { value = \"prod\" }\n")
		m, err := r.Machine(name)
		if err != nil {
			b.Fatal(err)
		}
		if _, err := vm.Create(vm.StateDir{Root: f.state, Name: name}, r, m); err != nil {
			b.Fatal(err)
		}
	}
	return f
}

// BenchmarkList: `credvm list` over 100 and 1,000 VM state directories
// (created by a fixture generator, not booted): wall time, growth from 100
// to 1,000 (10 = linear), and peak RSS.
func BenchmarkList(b *testing.B) {
	var per100 time.Duration
	for _, n := range []int{100, 1000, 10000} {
		b.Run(fmt.Sprintf("vms=%d", n), func(b *testing.B) {
			f := listFixture(b, n)
			var ts []time.Duration
			var rss int64
			b.ResetTimer()
			for range b.N {
				c := exec.Command(credvmBin, "list", "--state-dir", f.state)
				c.Env, c.Dir = f.env, f.dir
				d, r := timeCmd(b, c)
				ts = append(ts, d)
				rss = max(rss, r)
			}
			b.StopTimer()
			b.ReportMetric(ms(median(ts)), "ms")
			b.ReportMetric(spread(ts), "spread")
			b.ReportMetric(float64(rss)/1024, "peak-rss-MiB")
			if n == 100 {
				per100 = median(ts)
			} else if per100 > 0 {
				b.ReportMetric(float64(median(ts))/float64(per100), fmt.Sprintf("growth-100-to-%d", n))
			}
		})
	}
}

// BenchmarkBoot: the real systemd guest under TCG, booted to its report
// and power-off with 0, 4 and 24 credentials over SMBIOS and 0, 4 and 40
// over fw_cfg; each boot's wall time, median and spread per setting, and
// the ratio to the same transport without credentials. Also the peak RSS
// of `credvm run` supervising the VM.
func BenchmarkBoot(b *testing.B) {
	dir := os.Getenv("CREDVM_IMAGES")
	if dir == "" {
		dir = filepath.Join(testenv.Root(), ".cache", "images")
	}
	im := guestimage.Images{Dir: dir}
	if err := im.Check(true); err != nil {
		b.Skip(err)
	}
	img := filepath.Join(tmpRoot, "systemd.img")
	if err := im.SystemdInitrd(credvmBin, img); err != nil {
		b.Fatal(err)
	}
	boots := 3
	if v, err := strconv.Atoi(os.Getenv("CREDVM_BENCH_BOOTS")); err == nil && v > 0 {
		boots = v
	}
	for _, transport := range []string{"smbios", "fw_cfg"} {
		counts := []int{0, 4, 24}
		if transport == "fw_cfg" {
			counts = []int{0, 4, 40}
		}
		var base time.Duration
		for _, n := range counts {
			b.Run(fmt.Sprintf("%s/creds=%d", transport, n), func(b *testing.B) {
				f := newFixture(b)
				var creds strings.Builder
				for i := range n {
					fmt.Fprintf(&creds, "C%02d = { value = \"value-%02d\" }\n", i, i)
				}
				f.machine(b, "boot", fmt.Sprintf(`[vm]
mem = 1024
accel = "tcg"
transport = %q
kernel = %q
initrd = %q
cmdline = "console=ttyS0 rdinit=/lib/systemd/systemd panic=-1"
[credentials]
%s`, transport, im.Kernel(), img, creds.String()))
				var ts []time.Duration
				var rss int64
				for range b.N {
					for range boots {
						c := exec.Command(credvmBin, "run", "boot", "--state-dir", f.state, "-q")
						c.Env, c.Dir = f.env, f.dir
						d, r := timeRun(b, c)
						ts = append(ts, d)
						rss = max(rss, r)
					}
				}
				b.ReportMetric(ms(median(ts))/1000, "median-s")
				b.ReportMetric(spread(ts), "spread")
				b.ReportMetric(float64(rss)/1024, "run-peak-rss-MiB")
				if n == 0 {
					base = median(ts)
				} else if base > 0 {
					b.ReportMetric(float64(median(ts))/float64(base), "vs-no-creds")
				}
			})
		}
	}
}
