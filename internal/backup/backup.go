// Package backup writes and restores a single archive of VMs: their
// machine files, their vars and history exactly as stored (sops-encrypted
// secrets stay encrypted — a backup holds no plaintext secret), their keys'
// metadata (public keys, and the machine keys as the repository stores
// them: encrypted to the users), and their registrations.
//
// The archive is a gzipped tar whose first member, credvm-backup.json,
// lists every other member with its SHA-256. Restore reads and checks the
// whole archive before it writes anything, so a truncated or altered
// backup restores nothing.
package backup

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"maps"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/credvm/credvm/internal/atomicfile"
	"github.com/credvm/credvm/internal/repo"
)

// Format names the manifest's layout.
const Format = "credvm-backup/1"

const manifestName = "credvm-backup.json"

// Manifest is the archive's table of contents.
type Manifest struct {
	Format   string    `json:"format"`
	Created  time.Time `json:"created"`
	Repo     string    `json:"source_repository"`
	Machines []string  `json:"machines"`
	Entries  []Entry   `json:"entries"`
}

// Entry is one member.
type Entry struct {
	Path   string `json:"path"` // "repo/…" or "state/<m>/vm.json"
	Type   string `json:"type"` // file, dir, symlink
	Mode   uint32 `json:"mode,omitempty"`
	Size   int64  `json:"size,omitempty"`
	SHA256 string `json:"sha256,omitempty"`
	Target string `json:"target,omitempty"`
}

// repoPaths are the repository paths belonging to machine m.
func repoPaths(m string) []string { return repo.PathsOf(m).All() }

// Created is a written backup.
type Created struct {
	Path     string    `json:"path"`
	Machines []string  `json:"machines"`
	Entries  int       `json:"entries"`
	Bytes    int       `json:"bytes"`
	Manifest *Manifest `json:"-"`
}

// Create writes a backup of the machines of r to path (0600, atomically).
func Create(path string, r *repo.Repo, stateRoot string, machines []string) (*Created, error) {
	var buf bytes.Buffer
	man, err := Write(&buf, r, stateRoot, machines)
	if err != nil {
		return nil, err
	}
	if err := atomicfile.Write(path, buf.Bytes(), 0o600); err != nil {
		return nil, err
	}
	return &Created{Path: path, Machines: machines, Entries: len(man.Entries), Bytes: buf.Len(), Manifest: man}, nil
}

// Write archives the machines of r (and their registrations in the state
// root, where they have one) to w.
func Write(w io.Writer, r *repo.Repo, stateRoot string, machines []string) (*Manifest, error) {
	man := &Manifest{Format: Format, Created: time.Now().UTC(), Repo: r.Root, Machines: machines}
	contents := map[string][]byte{}
	// add archives a tree of the repository, read through its confined
	// filesystem (a link that leads outside is an error, never followed).
	add := func(archivePath, src string, read func(string) ([]byte, error), readlink func(string) (string, error), walk func(string, func(string, fs.DirEntry, error) error) error) error {
		return walk(src, func(p string, d fs.DirEntry, err error) error {
			if errors.Is(err, fs.ErrNotExist) {
				return nil
			}
			if err != nil {
				return err
			}
			rel, _ := filepath.Rel(src, p)
			ap := path.Join(archivePath, filepath.ToSlash(rel))
			info, err := d.Info()
			if err != nil {
				return err
			}
			switch {
			case d.Type()&fs.ModeSymlink != 0:
				t, err := readlink(p)
				if err != nil {
					return err
				}
				man.Entries = append(man.Entries, Entry{Path: ap, Type: "symlink", Target: t})
			case d.IsDir():
				man.Entries = append(man.Entries, Entry{Path: ap, Type: "dir", Mode: uint32(info.Mode().Perm())})
			case d.Type().IsRegular():
				b, err := read(p)
				if err != nil {
					return err
				}
				sum := sha256.Sum256(b)
				man.Entries = append(man.Entries, Entry{Path: ap, Type: "file", Mode: uint32(info.Mode().Perm()), Size: int64(len(b)), SHA256: hex.EncodeToString(sum[:])})
				contents[ap] = b
			}
			return nil
		})
	}
	addRepo := func(archivePath, src string) error {
		return add(archivePath, src, r.ReadFile, r.Readlink, r.WalkDir)
	}
	addState := func(archivePath, src string) error {
		return add(archivePath, src, os.ReadFile, os.Readlink, func(p string, fn func(string, fs.DirEntry, error) error) error {
			return filepath.WalkDir(p, fn)
		})
	}
	shared := map[string]bool{}
	for _, m := range machines {
		spec, err := r.Machine(m)
		if err != nil {
			return nil, err
		}
		for _, g := range spec.Vars.Generators {
			if g.Share {
				shared[g.Name] = true
			}
		}
		for _, p := range repoPaths(m) {
			if err := addRepo(path.Join("repo", p), r.Path(filepath.FromSlash(p))); err != nil {
				return nil, err
			}
		}
		vmJSON := filepath.Join(stateRoot, m, "vm.json")
		if _, err := os.Stat(vmJSON); err == nil {
			if err := addState(path.Join("state", m, "vm.json"), vmJSON); err != nil {
				return nil, err
			}
		}
	}
	for _, g := range slices.Sorted(maps.Keys(shared)) {
		for _, p := range repo.SharedPaths(g) {
			if err := addRepo(path.Join("repo", p), r.Path(filepath.FromSlash(p))); err != nil {
				return nil, err
			}
		}
	}
	if err := addRepo("repo/sops/users", r.Path("sops", "users")); err != nil {
		return nil, err
	}

	zw := gzip.NewWriter(w)
	tw := tar.NewWriter(zw)
	mb, _ := json.MarshalIndent(man, "", "  ")
	if err := writeMember(tw, &tar.Header{Name: manifestName, Mode: 0o600, Size: int64(len(mb)), Typeflag: tar.TypeReg}, mb); err != nil {
		return nil, err
	}
	for _, e := range man.Entries {
		var err error
		switch e.Type {
		case "dir":
			err = writeMember(tw, &tar.Header{Name: e.Path + "/", Mode: int64(e.Mode), Typeflag: tar.TypeDir}, nil)
		case "symlink":
			err = writeMember(tw, &tar.Header{Name: e.Path, Linkname: e.Target, Mode: 0o777, Typeflag: tar.TypeSymlink}, nil)
		case "file":
			err = writeMember(tw, &tar.Header{Name: e.Path, Mode: int64(e.Mode), Size: e.Size, Typeflag: tar.TypeReg}, contents[e.Path])
		}
		if err != nil {
			return nil, err
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	return man, zw.Close()
}

func writeMember(tw *tar.Writer, h *tar.Header, b []byte) error {
	h.ModTime = time.Now()
	if err := tw.WriteHeader(h); err != nil {
		return err
	}
	_, err := tw.Write(b)
	return err
}

// Read reads and checks a whole archive: every member listed with the
// right SHA-256, nothing more, no path leaving its tree.
func Read(rd io.Reader) (*Manifest, map[string][]byte, error) {
	corrupt := func(format string, args ...any) error {
		return fmt.Errorf("the backup is truncated, corrupt or altered: %s; nothing was restored", fmt.Sprintf(format, args...))
	}
	zr, err := gzip.NewReader(rd)
	if err != nil {
		return nil, nil, corrupt("%v", err)
	}
	tr := tar.NewReader(zr)
	var man *Manifest
	files := map[string][]byte{}
	seen := map[string]bool{}
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return nil, nil, corrupt("%v", err)
		}
		b, err := io.ReadAll(io.LimitReader(tr, 1<<30))
		if err != nil {
			return nil, nil, corrupt("%v", err)
		}
		name := strings.TrimSuffix(h.Name, "/")
		if man == nil {
			if name != manifestName {
				return nil, nil, corrupt("it does not start with %s", manifestName)
			}
			man = &Manifest{}
			if err := json.Unmarshal(b, man); err != nil || man.Format != Format {
				return nil, nil, corrupt("unreadable manifest")
			}
			continue
		}
		seen[name] = true
		if h.Typeflag == tar.TypeReg {
			files[name] = b
		}
	}
	if man == nil {
		return nil, nil, corrupt("empty archive")
	}
	if _, err := io.Copy(io.Discard, zr); err != nil {
		return nil, nil, corrupt("%v", err)
	}
	listed := map[string]bool{}
	for _, e := range man.Entries {
		clean := path.Clean(e.Path)
		if clean != e.Path || path.IsAbs(clean) || strings.HasPrefix(clean, "../") || (!strings.HasPrefix(clean, "repo/") && !strings.HasPrefix(clean, "state/")) {
			return nil, nil, corrupt("unsafe path %q", e.Path)
		}
		if e.Type == "symlink" && (path.IsAbs(e.Target) || !strings.HasPrefix(path.Clean(path.Join(path.Dir(clean), e.Target)), "repo/")) {
			return nil, nil, corrupt("link %s points outside the repository", e.Path)
		}
		listed[e.Path] = true
		if !seen[e.Path] {
			return nil, nil, corrupt("%s is missing", e.Path)
		}
		if e.Type == "file" {
			sum := sha256.Sum256(files[e.Path])
			if hex.EncodeToString(sum[:]) != e.SHA256 {
				return nil, nil, corrupt("%s does not match its checksum", e.Path)
			}
		}
	}
	for p := range seen {
		if !listed[p] {
			return nil, nil, corrupt("%s is not in its manifest", p)
		}
	}
	if err := checkLayout(man); err != nil {
		return nil, nil, fmt.Errorf("the backup holds what no credvm backup holds: %w; nothing was restored", err)
	}
	return man, files, nil
}

func randomID() string {
	b := make([]byte, 6)
	rand.Read(b)
	return hex.EncodeToString(b)
}
