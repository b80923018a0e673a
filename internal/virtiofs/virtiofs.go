// Package virtiofs runs the virtiofsd daemons of a VM's virtiofs shares,
// one per share, as microvm.nix runs them: as root, with virtiofsd's own
// sandbox (mount, pid and net namespaces, pivot_root into the share), its
// vhost-user socket in the VM's 0700 state directory and handed to the
// user the hypervisor runs as.
//
// Two virtiofsd exist. QEMU 7.2's (Debian 12: /usr/lib/qemu/virtiofsd)
// cannot run unprivileged and has no read-only option (`-o readonly` is
// refused), so a read-only share is served from a read-only bind mount of
// its source in a mount namespace of the daemon's own: credvm makes it on
// a thread of its own (unshare(CLONE_NEWNS) on a locked OS thread, the
// mounts made private, the source bound read-only over itself) and starts
// virtiofsd from that thread, which the daemon inherits and nothing else
// sees. The Rust virtiofsd (on $PATH on newer systems) takes --readonly.
package virtiofs

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/credvm/credvm/internal/spec"
	"github.com/credvm/credvm/internal/tail"
)

// QEMUVirtiofsd is where Debian's qemu-system-common puts QEMU's C
// virtiofsd.
const QEMUVirtiofsd = "/usr/lib/qemu/virtiofsd"

// Daemon is one virtiofsd binary and its flavour.
type Daemon struct {
	Path string
	// Rust: the Rust virtiofsd (its options: --shared-dir, --readonly);
	// else QEMU's C one (-o source=…).
	Rust bool
}

// Find chooses the virtiofsd: the one named (a path, or a command on
// $PATH), else `virtiofsd` on $PATH, else QEMU's.
func Find(named string) (Daemon, error) {
	var candidates []string
	if named != "" {
		candidates = []string{named}
	} else {
		candidates = []string{"virtiofsd", QEMUVirtiofsd}
	}
	for _, c := range candidates {
		p, err := exec.LookPath(c)
		if err != nil {
			continue
		}
		out, _ := exec.Command(p, "--version").CombinedOutput()
		// QEMU's prints "virtiofsd version 7.2.x … using FUSE kernel
		// interface"; the Rust one "virtiofsd 1.x".
		return Daemon{Path: p, Rust: !bytes.Contains(out, []byte("FUSE kernel interface"))}, nil
	}
	if named != "" {
		return Daemon{}, fmt.Errorf("virtiofsd %q not found: fix virtiofsd in [vm], or remove it to use the one on $PATH or %s", named, QEMUVirtiofsd)
	}
	return Daemon{}, fmt.Errorf("no virtiofsd: neither virtiofsd on $PATH nor %s (apt-get install qemu-system-common, or install the Rust virtiofsd), or give the share a socket of a virtiofsd you start", QEMUVirtiofsd)
}

// Args are the daemon's arguments for a share.
func (d Daemon) Args(s spec.Share, socket string) []string {
	if d.Rust {
		a := []string{"--socket-path=" + socket, "--shared-dir=" + s.Source, "--cache=auto", "--sandbox=namespace"}
		if s.ReadOnly {
			a = append(a, "--readonly")
		}
		return a
	}
	return []string{"--socket-path=" + socket, "-o", "source=" + s.Source, "-o", "cache=auto", "-o", "sandbox=namespace"}
}

// Server is a running virtiofsd.
type Server struct {
	Share  spec.Share
	Socket string
	cmd    *exec.Cmd
	out    tail.Lines
	done   chan struct{}
	err    error
}

// Start starts the daemon for share s with its socket in stateDir, owned
// by uid:gid (the hypervisor's user), and waits until the socket exists.
func Start(d Daemon, s spec.Share, stateDir string, uid, gid int) (*Server, error) {
	if os.Geteuid() != 0 {
		return nil, fmt.Errorf("virtiofs share %q: virtiofsd needs root (QEMU's cannot run unprivileged); run credvm as root, or start virtiofsd yourself and give the share its socket", s.Tag)
	}
	sock := s.SocketPath(stateDir)
	os.Remove(sock)
	srv := &Server{Share: s, Socket: sock, done: make(chan struct{})}
	srv.out.Keep = 10
	cmd := exec.Command(d.Path, d.Args(s, sock)...)
	cmd.Env = []string{"PATH=/usr/sbin:/usr/bin:/sbin:/bin"}
	cmd.Stdout, cmd.Stderr = &srv.out, &srv.out
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGTERM}
	srv.cmd = cmd
	var err error
	if s.ReadOnly && !d.Rust {
		err = startReadOnly(cmd, s.Source, srv.done)
	} else {
		err = cmd.Start()
	}
	if err != nil {
		return nil, fmt.Errorf("virtiofs share %q: start %s: %w", s.Tag, d.Path, err)
	}
	go func() {
		srv.err = cmd.Wait()
		close(srv.done)
	}()
	deadline := time.Now().Add(10 * time.Second)
	for {
		if _, err := os.Stat(sock); err == nil {
			break
		}
		select {
		case <-srv.done:
			return nil, fmt.Errorf("virtiofs share %q: virtiofsd exited at once (%v): %s", s.Tag, srv.err, srv.Output())
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			srv.Stop()
			return nil, fmt.Errorf("virtiofs share %q: virtiofsd made no socket in 10s: %s", s.Tag, srv.Output())
		}
	}
	if err := os.Chown(sock, uid, gid); err != nil {
		srv.Stop()
		return nil, fmt.Errorf("virtiofs share %q: hand its socket to the hypervisor's user: %w", s.Tag, err)
	}
	return srv, nil
}

// startReadOnly starts cmd in a mount namespace of its own where source
// is bound read-only over itself (see the package doc). The thread that
// started it lives until done is closed: the daemon's parent-death signal
// fires when the thread that forked it exits, not the process.
func startReadOnly(cmd *exec.Cmd, source string, done <-chan struct{}) error {
	errc := make(chan error, 1)
	go func() {
		// Never unlocked: the thread, in its own mount namespace, exits
		// with this goroutine, and no other goroutine ever runs on it.
		runtime.LockOSThread()
		err := func() error {
			if err := unix.Unshare(unix.CLONE_NEWNS); err != nil {
				return fmt.Errorf("a mount namespace for the read-only share: %w", err)
			}
			if err := unix.Mount("", "/", "", unix.MS_REC|unix.MS_PRIVATE, ""); err != nil {
				return fmt.Errorf("private mounts: %w", err)
			}
			if err := unix.Mount(source, source, "", unix.MS_BIND|unix.MS_REC, ""); err != nil {
				return fmt.Errorf("bind %s: %w", source, err)
			}
			if err := unix.Mount("", source, "", unix.MS_BIND|unix.MS_REMOUNT|unix.MS_RDONLY, ""); err != nil {
				return fmt.Errorf("remount %s read-only: %w", source, err)
			}
			return cmd.Start()
		}()
		errc <- err
		if err == nil {
			<-done
		}
	}()
	return <-errc
}

// Done is closed when the daemon has exited.
func (s *Server) Done() <-chan struct{} { return s.done }

// Output is the daemon's last lines of output.
func (s *Server) Output() string {
	return strings.TrimSpace(s.out.String())
}

// Exited describes how the daemon ended, once Done is closed.
func (s *Server) Exited() string {
	var ee *exec.ExitError
	msg := "exited"
	if errors.As(s.err, &ee) {
		msg = ee.ProcessState.String()
	}
	if out := s.Output(); out != "" {
		msg += ": " + out
	}
	return msg
}

// Stop stops the daemon and removes its socket.
func (s *Server) Stop() {
	select {
	case <-s.done:
	default:
		s.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-s.done:
		case <-time.After(5 * time.Second):
			s.cmd.Process.Kill()
			<-s.done
		}
	}
	os.Remove(s.Socket)
}
