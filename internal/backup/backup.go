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

	"github.com/credvm/credvm/internal/repo"
	"github.com/credvm/credvm/internal/spec"
	"github.com/credvm/credvm/internal/vm"
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
	volumes  []VolumeNote
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
	// Volumes says, with --with-volumes, what became of each volume.
	Volumes []VolumeNote `json:"volumes"`
}

// Options choose what a backup holds besides the repository's trees.
type Options struct {
	// WithVolumes adds the machines' volumes ([[vm.volumes]] in their
	// state directories; the VMs must be stopped): the guests' data.
	WithVolumes bool
}

// Create writes a backup of the machines of r to path (0600, atomically:
// through a temporary file in its directory, renamed once complete).
func Create(path string, r *repo.Repo, stateRoot string, machines []string, o Options) (*Created, error) {
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".credvm-*")
	if err != nil {
		return nil, err
	}
	defer os.Remove(tmp.Name()) // a no-op once renamed
	counted := &countingWriter{w: tmp}
	man, err := Write(counted, r, stateRoot, machines, o)
	if err == nil {
		err = tmp.Sync()
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return nil, err
	}
	if err := os.Chmod(tmp.Name(), 0o600); err != nil {
		return nil, err
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return nil, err
	}
	return &Created{Path: path, Machines: machines, Entries: len(man.Entries), Bytes: counted.n, Manifest: man, Volumes: man.volumes}, nil
}

type countingWriter struct {
	w io.Writer
	n int
}

func (c *countingWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += n
	return n, err
}

// volumeMember is where a machine's volume goes in the archive.
func volumeMember(machine, image string) string {
	return path.Join("state", machine, "volumes", image)
}

// Write archives the machines of r (and their registrations in the state
// root, where they have one) to w.
func Write(w io.Writer, r *repo.Repo, stateRoot string, machines []string, o Options) (*Manifest, error) {
	man := &Manifest{Format: Format, Created: time.Now().UTC(), Repo: r.Root, Machines: machines}
	contents := map[string][]byte{}
	streamed := map[string]string{} // archive path → a volume's image, copied as it is written
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
		if o.WithVolumes {
			if err := addVolumes(man, streamed, spec, vm.StateDir{Root: stateRoot, Name: m}); err != nil {
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
			if src, ok := streamed[e.Path]; ok {
				err = streamMember(tw, &tar.Header{Name: e.Path, Mode: int64(e.Mode), Size: e.Size, Typeflag: tar.TypeReg}, src)
				break
			}
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

// addVolumes lists the machine's volumes (those in its state directory:
// a volume elsewhere on the host is the operator's to back up) for
// streaming. A running VM's volumes would not be consistent: refused.
func addVolumes(man *Manifest, streamed map[string]string, m *spec.Machine, s vm.StateDir) error {
	if len(m.VM.Volumes) == 0 {
		return nil
	}
	if running, _ := s.Running(); running {
		return fmt.Errorf("machine %s is running: its volumes would change while they are copied; stop it first (credvm stop %s), or back up without --with-volumes", m.Name, m.Name)
	}
	for _, v := range m.VM.Volumes {
		if filepath.IsAbs(v.Image) || strings.Contains(v.Image, "/") {
			man.volumes = append(man.volumes, VolumeNote{m.Name, v.Image, "not in its state directory: back it up yourself"})
			continue
		}
		p := v.ImagePath(s.Path())
		f, err := os.Open(p)
		if errors.Is(err, os.ErrNotExist) {
			man.volumes = append(man.volumes, VolumeNote{m.Name, v.Image, "not created yet (the VM never started)"})
			continue
		}
		if err != nil {
			return err
		}
		h := sha256.New()
		n, err := io.Copy(h, f)
		f.Close()
		if err != nil {
			return fmt.Errorf("volume %s of %s: %w", v.Image, m.Name, err)
		}
		ap := volumeMember(m.Name, v.Image)
		if !slices.ContainsFunc(man.Entries, func(e Entry) bool { return e.Path == path.Dir(ap) }) {
			man.Entries = append(man.Entries, Entry{Path: path.Dir(ap), Type: "dir", Mode: 0o700})
		}
		man.Entries = append(man.Entries, Entry{Path: ap, Type: "file", Mode: 0o600, Size: n, SHA256: hex.EncodeToString(h.Sum(nil))})
		streamed[ap] = p
		man.volumes = append(man.volumes, VolumeNote{m.Name, v.Image, fmt.Sprintf("%d MiB", n>>20)})
	}
	return nil
}

// VolumeNote says what became of one volume in a backup.
type VolumeNote struct {
	Machine string `json:"machine"`
	Image   string `json:"image"`
	Note    string `json:"note"`
}

// streamMember writes a member whose content is the file src, checking it
// still has the size the manifest says.
func streamMember(tw *tar.Writer, h *tar.Header, src string) error {
	f, err := os.Open(src)
	if err != nil {
		return err
	}
	defer f.Close()
	h.ModTime = time.Now()
	if err := tw.WriteHeader(h); err != nil {
		return err
	}
	n, err := io.Copy(tw, io.LimitReader(f, h.Size))
	if err == nil && n != h.Size {
		err = fmt.Errorf("%s changed while it was copied", src)
	}
	return err
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
// right SHA-256, nothing more, no path leaving its tree. Volumes are not
// held in memory: they are spooled into files in spool (on the
// filesystem they will be restored to: a rename puts them in place),
// returned by archive path; on error none is left. A backup with volumes
// and no spool directory is refused.
func Read(rd io.Reader) (*Manifest, map[string][]byte, error) {
	man, files, spooled, err := ReadSpooling(rd, "")
	if len(spooled) > 0 {
		removeSpooled(spooled)
		return nil, nil, errors.New("the backup holds volumes: restore it with credvm restore")
	}
	return man, files, err
}

func removeSpooled(spooled map[string]string) {
	for _, p := range spooled {
		os.Remove(p)
	}
}

// isVolumeMember reports whether an archive path is a volume's.
func isVolumeMember(name string) bool {
	parts := strings.Split(name, "/")
	return len(parts) == 4 && parts[0] == "state" && parts[2] == "volumes"
}

// ReadSpooling is Read, with volumes spooled into spool.
func ReadSpooling(rd io.Reader, spool string) (_ *Manifest, _ map[string][]byte, _ map[string]string, err error) {
	spooled := map[string]string{}
	sums := map[string]string{}
	defer func() {
		if err != nil {
			removeSpooled(spooled) // the local map: a return has set the result to nil
		}
	}()
	corrupt := func(format string, args ...any) error {
		return fmt.Errorf("the backup is truncated, corrupt or altered: %s; nothing was restored", fmt.Sprintf(format, args...))
	}
	zr, err := gzip.NewReader(rd)
	if err != nil {
		return nil, nil, nil, corrupt("%v", err)
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
			return nil, nil, nil, corrupt("%v", err)
		}
		name := strings.TrimSuffix(h.Name, "/")
		if man != nil && h.Typeflag == tar.TypeReg && isVolumeMember(name) {
			if spool == "" || spooled[name] != "" {
				return nil, nil, nil, corrupt("volume %s where none can be", name)
			}
			f, err := os.CreateTemp(spool, ".credvm-restore-volume-*")
			if err != nil {
				return nil, nil, nil, err
			}
			spooled[name] = f.Name()
			sum := sha256.New()
			_, err = io.Copy(io.MultiWriter(f, sum), tr)
			if cerr := f.Close(); err == nil {
				err = cerr
			}
			if err != nil {
				return nil, nil, nil, corrupt("%s: %v", name, err)
			}
			sums[name] = hex.EncodeToString(sum.Sum(nil))
			seen[name] = true
			continue
		}
		b, err := io.ReadAll(io.LimitReader(tr, 1<<30))
		if err != nil {
			return nil, nil, nil, corrupt("%v", err)
		}
		if man == nil {
			if name != manifestName {
				return nil, nil, nil, corrupt("it does not start with %s", manifestName)
			}
			man = &Manifest{}
			if err := json.Unmarshal(b, man); err != nil || man.Format != Format {
				return nil, nil, nil, corrupt("unreadable manifest")
			}
			continue
		}
		seen[name] = true
		if h.Typeflag == tar.TypeReg {
			files[name] = b
		}
	}
	if man == nil {
		return nil, nil, nil, corrupt("empty archive")
	}
	if _, err := io.Copy(io.Discard, zr); err != nil {
		return nil, nil, nil, corrupt("%v", err)
	}
	listed := map[string]bool{}
	for _, e := range man.Entries {
		clean := path.Clean(e.Path)
		if clean != e.Path || path.IsAbs(clean) || strings.HasPrefix(clean, "../") || (!strings.HasPrefix(clean, "repo/") && !strings.HasPrefix(clean, "state/")) {
			return nil, nil, nil, corrupt("unsafe path %q", e.Path)
		}
		if e.Type == "symlink" && (path.IsAbs(e.Target) || !strings.HasPrefix(path.Clean(path.Join(path.Dir(clean), e.Target)), "repo/")) {
			return nil, nil, nil, corrupt("link %s points outside the repository", e.Path)
		}
		listed[e.Path] = true
		if !seen[e.Path] {
			return nil, nil, nil, corrupt("%s is missing", e.Path)
		}
		if got, ok := sums[e.Path]; ok {
			if got != e.SHA256 {
				return nil, nil, nil, corrupt("%s does not match its checksum", e.Path)
			}
			continue
		}
		if e.Type == "file" {
			sum := sha256.Sum256(files[e.Path])
			if hex.EncodeToString(sum[:]) != e.SHA256 {
				return nil, nil, nil, corrupt("%s does not match its checksum", e.Path)
			}
		}
	}
	for p := range seen {
		if !listed[p] {
			return nil, nil, nil, corrupt("%s is not in its manifest", p)
		}
	}
	if err := checkLayout(man); err != nil {
		return nil, nil, nil, fmt.Errorf("the backup holds what no credvm backup holds: %w; nothing was restored", err)
	}
	return man, files, spooled, nil
}

func randomID() string {
	b := make([]byte, 6)
	rand.Read(b)
	return hex.EncodeToString(b)
}
