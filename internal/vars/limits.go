package vars

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/credvm/credvm/internal/spec"
)

// A generator's script is bounded in every sandbox mode ([limits] in
// credvm.toml, spec.GeneratorLimits):
//
//   - its time: at the timeout the whole process tree dies — bubblewrap and
//     the namespaces sandbox run it as the init of a PID namespace of its
//     own, whose processes the kernel kills with it; as root, a cgroup holds
//     every process it starts, and credvm kills them all (so also without a
//     sandbox); a background job cannot keep credvm waiting on its output
//     (WaitDelay);
//   - each file it writes (RLIMIT_FSIZE, which binds root too, set by
//     prlimit before the script runs), and its outputs altogether and their
//     number, checked before anything is read;
//   - its processes and memory: the pids and memory cgroup controllers as
//     root (cgroup v1 or v2) — the memory limit also covers what it writes
//     to tmpfs —, and RLIMIT_NPROC for other users, which cgroups cannot
//     serve without delegation (RLIMIT_NPROC does not bind root).
//
// Exceeding one is an error naming the generator and the limit.

// cgroupLimit is one generator run's cgroups, when the host offers them.
type cgroupLimit struct {
	dirs    []string // one per controller hierarchy (v1), or one (v2)
	missing []string // limits that could not be set: "processes", "memory"
}

var cgroupSeq atomic.Int64

// newCgroups makes a cgroup for one run with the pids and memory limits,
// under the process's own cgroup in each hierarchy. nil when that cannot
// be done (not root, no cgroup filesystem): the other bounds still hold.
// On cgroup v2 the controllers must be enabled for the process's cgroup
// (systemd delegates them to a unit with Delegate=yes); where they are not
// the limit is in missing and the run says so.
func newCgroups(l spec.GeneratorLimits) *cgroupLimit {
	if os.Geteuid() != 0 {
		return nil
	}
	own := ownCgroups()
	name := fmt.Sprintf("credvm-gen-%d-%d", os.Getpid(), cgroupSeq.Add(1))
	cg := &cgroupLimit{}
	set := func(dir, file, value, limit string) {
		if os.WriteFile(filepath.Join(dir, file), []byte(value), 0o644) != nil {
			cg.missing = append(cg.missing, limit)
		}
	}
	procs, memory := strconv.Itoa(l.Processes), strconv.FormatInt(l.Memory, 10)
	if p, ok := own[""]; ok && isDir("/sys/fs/cgroup/cgroup.controllers") {
		d := filepath.Join("/sys/fs/cgroup", p, name)
		if os.Mkdir(d, 0o755) != nil {
			return nil
		}
		cg.dirs = append(cg.dirs, d)
		set(d, "pids.max", procs, "processes")
		set(d, "memory.max", memory, "memory")
		return cg
	}
	for _, c := range []struct{ ctrl, file, value, limit string }{
		{"pids", "pids.max", procs, "processes"},
		{"memory", "memory.limit_in_bytes", memory, "memory"},
	} {
		p, ok := own[c.ctrl]
		d := filepath.Join("/sys/fs/cgroup", c.ctrl, p, name)
		if !ok || os.Mkdir(d, 0o755) != nil {
			cg.missing = append(cg.missing, c.limit)
			continue
		}
		cg.dirs = append(cg.dirs, d)
		set(d, c.file, c.value, c.limit)
	}
	if len(cg.dirs) == 0 {
		return nil
	}
	return cg
}

// ownCgroups maps each controller (v1) — "" for the unified hierarchy —
// to this process's cgroup path, from /proc/self/cgroup.
func ownCgroups() map[string]string {
	out := map[string]string{}
	f, err := os.Open("/proc/self/cgroup")
	if err != nil {
		return out
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		parts := strings.SplitN(sc.Text(), ":", 3)
		if len(parts) != 3 {
			continue
		}
		for _, c := range strings.Split(parts[1], ",") {
			out[c] = parts[2]
		}
	}
	return out
}

func isDir(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}

// procsFiles are the cgroup.procs files a process joins.
func (cg *cgroupLimit) procsFiles() []string {
	var out []string
	for _, d := range cg.dirs {
		out = append(out, filepath.Join(d, "cgroup.procs"))
	}
	return out
}

// killAll kills every process of the run's cgroups until they are empty.
func (cg *cgroupLimit) killAll() {
	if cg == nil {
		return
	}
	for range 50 {
		alive := 0
		for _, p := range cg.procsFiles() {
			b, _ := os.ReadFile(p)
			for _, f := range strings.Fields(string(b)) {
				if pid, err := strconv.Atoi(f); err == nil && pid > 0 {
					syscall.Kill(pid, syscall.SIGKILL)
					alive++
				}
			}
		}
		if alive == 0 {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// oomKilled reports whether the memory limit was hit.
func (cg *cgroupLimit) oomKilled() bool {
	return cg.event([]string{"memory.events", "memory.oom_control"}, "oom_kill")
}

// pidsHit reports whether a fork failed at the processes limit.
func (cg *cgroupLimit) pidsHit() bool {
	return cg.event([]string{"pids.events"}, "max")
}

// event reports whether a counter named key in one of the run's cgroup
// event files (memory.events, pids.events: "key N" lines) is not zero.
func (cg *cgroupLimit) event(files []string, key string) bool {
	if cg == nil {
		return false
	}
	for _, d := range cg.dirs {
		for _, f := range files {
			b, err := os.ReadFile(filepath.Join(d, f))
			if err != nil {
				continue
			}
			for _, l := range strings.Split(string(b), "\n") {
				if k, v, ok := strings.Cut(l, " "); ok && k == key && strings.TrimSpace(v) != "0" {
					return true
				}
			}
		}
	}
	return false
}

// remove removes the run's cgroups (after killAll).
func (cg *cgroupLimit) remove() {
	if cg == nil {
		return
	}
	for _, d := range cg.dirs {
		for range 20 {
			if err := os.Remove(d); err == nil || errors.Is(err, os.ErrNotExist) {
				break
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
}

// bounded wraps argv so that the script runs inside the run's cgroups (a
// /bin/sh that joins them, then execs: nothing the script starts is
// outside) and under prlimit's RLIMIT_FSIZE — and RLIMIT_NPROC when not
// root. Without prlimit, the file size is checked only afterwards.
func bounded(argv []string, l spec.GeneratorLimits, cg *cgroupLimit) []string {
	if p, err := exec.LookPath("prlimit"); err == nil {
		pre := []string{p, "--fsize=" + strconv.FormatInt(l.Output, 10)}
		if os.Geteuid() != 0 {
			// RLIMIT_NPROC counts every task of the user, not of the
			// script: allow the script its limit beyond what runs now.
			pre = append(pre, "--nproc="+strconv.Itoa(userTasks(os.Getuid())+l.Processes))
		}
		argv = append(append(pre, "--"), argv...)
	}
	if cg == nil {
		return argv
	}
	join := `for f; do [ "$f" = -- ] && break; echo $$ > "$f" || exit 125; shift; done; shift; exec "$@"`
	return append(append([]string{"/bin/sh", "-c", join, "credvm-limits"}, cg.procsFiles()...), append([]string{"--"}, argv...)...)
}

// userTasks counts the tasks (threads included, as RLIMIT_NPROC does)
// whose real user is uid.
func userTasks(uid int) int {
	procs, _ := os.ReadDir("/proc")
	n := 0
	for _, p := range procs {
		if _, err := strconv.Atoi(p.Name()); err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", p.Name(), "status"))
		if err != nil {
			continue
		}
		var real, threads int = -1, 0
		for _, l := range strings.Split(string(b), "\n") {
			if v, ok := strings.CutPrefix(l, "Uid:"); ok {
				if f := strings.Fields(v); len(f) > 0 {
					real, _ = strconv.Atoi(f[0])
				}
			}
			if v, ok := strings.CutPrefix(l, "Threads:"); ok {
				threads, _ = strconv.Atoi(strings.TrimSpace(v))
			}
		}
		if real == uid {
			n += threads
		}
	}
	return n
}
