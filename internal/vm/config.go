package vm

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/credvm/credvm/internal/repo"
	"github.com/credvm/credvm/internal/spec"
	"github.com/credvm/credvm/internal/vars"
	"golang.org/x/sys/unix"
)

// resolved is what a VM's configuration hash covers: the whole [vm] table
// with paths made absolute, the credential mapping, each generator's
// definition, and the identity (size, mtime) of every file the VM boots
// from — so a rebuilt kernel at the same path makes the VM outdated too.
// microvm.nix compares only the guest's store path and misses runner-only
// changes; this covers them.
type resolved struct {
	VM          spec.VM                     `json:"vm"`
	Credentials map[string]*spec.Credential `json:"credentials"`
	Generators  map[string]string           `json:"generators"`
	Files       map[string]string           `json:"files"`
}

func resolve(m *spec.Machine) resolved {
	r := resolved{VM: m.VM, Credentials: m.Credentials, Generators: map[string]string{}, Files: map[string]string{}}
	for name, g := range m.Vars.Generators {
		r.Generators[name] = g.DefinitionHash()
	}
	paths := []string{m.VM.Kernel, m.VM.Initrd}
	if m.VM.Firmware != "bios" && m.VM.Firmware != "ovmf" {
		paths = append(paths, m.VM.Firmware)
	}
	for _, d := range m.VM.Disks {
		paths = append(paths, d.Image)
	}
	for _, p := range paths {
		if p != "" {
			r.Files[p] = fileIdentity(p)
		}
	}
	return r
}

func fileIdentity(p string) string {
	if fi, err := os.Stat(p); err == nil {
		return fmt.Sprintf("%d bytes, modified %s", fi.Size(), fi.ModTime().UTC().Format(time.RFC3339Nano))
	}
	return "missing"
}

// unchanged reports, cheaply, whether the machine file at path still has
// the content of cfg and every file it boots from the same identity —
// without parsing anything. false means "maybe changed": parse to know.
func (cfg *Config) unchanged(path string, identity func(string) string) bool {
	if cfg.Files == nil || path != cfg.File {
		return false
	}
	// A hint only — a regular file of the recorded size and content — so
	// read directly, not through the confined filesystem (which walks
	// every component: list inspects thousands of VMs). Anything else is
	// "maybe changed", and the parse that follows reads it confined.
	var st unix.Stat_t
	if err := unix.Lstat(path, &st); err != nil || st.Mode&unix.S_IFMT != unix.S_IFREG || st.Size != int64(len(cfg.Content)) {
		return false
	}
	if cfg.FileStat == "" || statIdentity(&st) != cfg.FileStat {
		b, err := readSmall(path, nil)
		if err != nil || string(b) != cfg.Content {
			return false
		}
	}
	for p, id := range cfg.Files {
		if identity(p) != id {
			return false
		}
	}
	return true
}

// ConfigHash is the hash of a machine's resolved configuration.
func ConfigHash(m *spec.Machine) string {
	b, _ := json.Marshal(resolve(m))
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:])
}

// Diff lists what changed between two configurations, one line each, like
// microvm's closure diff: "vm.mem: 512 → 1024".
//
// oldFiles are the boot files' identities when old was recorded (the
// files themselves may have changed since: that is the change to show).
func Diff(old *spec.Machine, oldFiles map[string]string, new *spec.Machine) []string {
	ra := resolve(old)
	for p, id := range oldFiles {
		if _, ok := ra.Files[p]; ok {
			ra.Files[p] = id
		}
	}
	a, b := flatten(ra), flatten(resolve(new))
	var keys []string
	for k := range a {
		keys = append(keys, k)
	}
	for k := range b {
		if _, ok := a[k]; !ok {
			keys = append(keys, k)
		}
	}
	slices.Sort(keys)
	var out []string
	for _, k := range keys {
		va, inA := a[k]
		vb, inB := b[k]
		switch {
		case !inA:
			out = append(out, fmt.Sprintf("+ %s: %s", k, vb))
		case !inB:
			out = append(out, fmt.Sprintf("- %s: %s", k, va))
		case va != vb && strings.HasPrefix(k, "files."):
			out = append(out, fmt.Sprintf("~ boot file %s changed: %s → %s", strings.TrimPrefix(k, "files."), unquote(va), unquote(vb)))
		case va != vb:
			out = append(out, fmt.Sprintf("~ %s: %s → %s", k, va, vb))
		}
	}
	return out
}

// unquote is a flattened JSON string's text.
func unquote(v string) string {
	if u, err := strconv.Unquote(v); err == nil {
		return u
	}
	return v
}

func flatten(r resolved) map[string]string {
	var v any
	b, _ := json.Marshal(r)
	json.Unmarshal(b, &v)
	out := map[string]string{}
	var walk func(prefix string, v any)
	walk = func(prefix string, v any) {
		switch v := v.(type) {
		case map[string]any:
			for k, x := range v {
				key := k
				if prefix != "" {
					key = prefix + "." + k
				}
				walk(key, x)
			}
		case []any:
			for i, x := range v {
				walk(fmt.Sprintf("%s[%d]", prefix, i), x)
			}
		default:
			s, _ := json.Marshal(v)
			if string(s) == `""` || string(s) == "false" || string(s) == "0" || string(s) == "null" {
				return // defaults read as absent
			}
			out[strings.TrimPrefix(prefix, ".")] = string(s)
		}
	}
	walk("", v)
	return out
}

// VarsHash identifies the values a VM's credentials would carry now,
// without decrypting anything: for a var, its generator's generation (or,
// for vars without credvm's metadata, the stored file's bytes); for a host
// file, its content. It changes when a secret is rotated.
func VarsHash(e *vars.Engine, m *spec.Machine) string {
	h := sha256.New()
	for _, c := range m.SortedCredentials() {
		fmt.Fprintf(h, "%s\x00", c.Name)
		switch {
		case c.Var != "":
			gen, file, _ := spec.SplitVar(c.Var)
			g := m.Vars.Generators[gen]
			dir := e.GeneratorDir(m.Name, g)
			if meta, err := e.Repo.ReadFile(filepath.Join(dir, vars.MetaFile)); err == nil {
				var md vars.Meta
				if json.Unmarshal(meta, &md) == nil && md.Generation != "" {
					fmt.Fprintf(h, "gen %s\x00", md.Generation)
					continue
				}
			}
			for _, leaf := range []string{"secret", "value"} {
				if b, err := e.Repo.ReadFile(filepath.Join(dir, file, leaf)); err == nil {
					h.Write(b)
				}
			}
		case c.File != "":
			b, _ := os.ReadFile(c.File)
			sum := sha256.Sum256(b)
			h.Write(sum[:])
		}
		h.Write([]byte{0})
	}
	return hex.EncodeToString(h.Sum(nil))
}

// Machine parses the VM's current generation of its machine file.
func (r *Registration) Machine() (*spec.Machine, error) {
	return spec.ParseMachine(r.Current.File, r.Name, []byte(r.Current.Content))
}

// NewConfig reads a machine's file for a registration.
func NewConfig(r *repo.Repo, m *spec.Machine) (Config, error) {
	absFile := r.Path(m.File)
	var before, after unix.Stat_t
	errBefore := unix.Lstat(absFile, &before)
	b, err := r.ReadFile(absFile)
	if err != nil {
		return Config{}, err
	}
	cfg := Config{File: absFile, Content: string(b), Hash: ConfigHash(m), Updated: time.Now().UTC(), Files: resolve(m).Files}
	// The identity is recorded only when the file held still around the
	// read: else a write in between would pass for the content read.
	if errBefore == nil && unix.Lstat(absFile, &after) == nil && statIdentity(&before) == statIdentity(&after) && after.Size == int64(len(b)) {
		cfg.FileStat = statIdentity(&after)
	}
	return cfg, nil
}

// statIdentity is what changes whenever a file's content may have.
func statIdentity(st *unix.Stat_t) string {
	b := make([]byte, 0, 96)
	for i, n := range []int64{int64(st.Dev), int64(st.Ino), st.Size, st.Mtim.Sec, st.Mtim.Nsec, st.Ctim.Sec, st.Ctim.Nsec} {
		if i > 0 {
			b = append(b, ':')
		}
		b = strconv.AppendInt(b, n, 10)
	}
	return string(b)
}

// readSmall reads a small file of the state directory with as few system
// calls as there can be: list reads one or two per VM, thousands of VMs,
// and os.ReadFile's poller registration and fstat double its cost. After
// a read shorter than asked, whole (if not nil) may say the bytes are the
// whole file — a JSON document that parses — and spare the read that
// would only see EOF. Errors are *fs.PathError, as os's.
func readSmall(path string, whole func([]byte) bool) ([]byte, error) {
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, &fs.PathError{Op: "open", Path: path, Err: err}
	}
	defer unix.Close(fd)
	b := make([]byte, 0, 4096)
	for {
		if len(b) == cap(b) {
			b = slices.Grow(b, cap(b))
		}
		n, err := unix.Read(fd, b[len(b):cap(b)])
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return nil, &fs.PathError{Op: "read", Path: path, Err: err}
		}
		if n == 0 {
			return b, nil
		}
		b = b[:len(b)+n]
		if len(b) < cap(b) && whole != nil && whole(b) {
			return b, nil
		}
	}
}

// HostPath is a file outside the repository that a VM reads: whoever
// writes the machine file chooses it, so create and update show them.
type HostPath struct {
	What string `json:"what"` // "kernel", "credential API_KEY", …
	Path string `json:"path"`
}

// HostPaths lists the files outside r a machine's VM reads: its boot
// files, disks, shares and `file =` credentials.
func HostPaths(r *repo.Repo, m *spec.Machine) []HostPath {
	out := []HostPath{}
	add := func(what, p string) {
		if rel, err := filepath.Rel(r.Root, p); p != "" && (err != nil || strings.HasPrefix(rel, "..")) {
			out = append(out, HostPath{what, p})
		}
	}
	add("kernel", m.VM.Kernel)
	add("initrd", m.VM.Initrd)
	if m.VM.Firmware != "bios" && m.VM.Firmware != "ovmf" {
		add("firmware", m.VM.Firmware)
	}
	for _, d := range m.VM.Disks {
		add("disk", d.Image)
	}
	for _, s := range m.VM.Shares {
		add("share "+s.Tag, s.Source)
	}
	for _, c := range m.SortedCredentials() {
		add("credential "+c.Name, c.File)
	}
	return out
}
