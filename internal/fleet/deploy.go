package fleet

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"

	"github.com/credvm/credvm/internal/backup"
	"github.com/credvm/credvm/internal/repo"
	"github.com/credvm/credvm/internal/sops"
)

// On a host, everything credvm keeps is under the host's root:
const (
	HostBinary = "/var/lib/credvm/bin/credvm"
	HostRepo   = "/var/lib/credvm/repo"
	HostState  = "/var/lib/microvms"
	HostKey    = "/etc/ssh/ssh_host_ed25519_key"
)

// Deployed says what Deploy did for one VM: what its host's credvm did
// with it, and where.
type Deployed struct {
	Received
	Host string `json:"host"`
	// Binary: "copied" when the host's credvm was missing or differed,
	// "current" when it was this one.
	Binary string `json:"binary"`
}

// Deploy sends each named VM to its host — credvm itself if the host's
// differs, the machine's files, encrypted vars and users' public keys as
// a backup archive the host's credvm checks and restores, its machine
// key sealed to the host key — then creates or updates it there,
// restarting what runs older vars. Hosts in parallel, one SSH session
// each when the host's credvm is current; nothing plaintext crosses the
// wire.
func Deploy(ctx context.Context, r *repo.Repo, user *sops.Identities, machines []string, logf func(string, ...any)) ([]Deployed, error) {
	byHost := map[string][]string{}
	for _, m := range machines {
		h := r.Inventory.HostOf(m)
		if h == "" {
			return nil, unplacedError(m)
		}
		byHost[h] = append(byHost[h], m)
	}
	var (
		mu  sync.Mutex
		out []Deployed
		wg  sync.WaitGroup
	)
	for _, hn := range slices.Sorted(maps.Keys(byHost)) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			res := deployHost(ctx, r, user, hn, byHost[hn], true, logf)
			mu.Lock()
			out = append(out, res...)
			mu.Unlock()
		}()
	}
	wg.Wait()
	slices.SortFunc(out, func(a, b Deployed) int { return strings.Compare(a.Host+"/"+a.Machine, b.Host+"/"+b.Machine) })
	var errs []error
	for _, d := range out {
		if d.Err != "" {
			errs = append(errs, fmt.Errorf("%s on %s: %s", d.Machine, d.Host, d.Err))
		}
	}
	return out, errors.Join(errs...)
}

// deployHost ships machines to one host and has it receive them; start
// says whether new VMs start there (a move starts its VM itself, later).
func deployHost(ctx context.Context, r *repo.Repo, user *sops.Identities, hn string, machines []string, start bool, logf func(string, ...any)) []Deployed {
	fail := func(err error) []Deployed {
		var out []Deployed
		for _, m := range machines {
			out = append(out, Deployed{Received: Received{Machine: m, Err: err.Error()}, Host: hn})
		}
		return out
	}
	h, err := HostOf(r, hn)
	if err != nil {
		return fail(err)
	}
	sh, err := h.shipment(r, user, machines, start)
	if err != nil {
		return fail(err)
	}
	payload, err := json.Marshal(sh)
	if err != nil {
		return fail(err)
	}
	received, binary, err := h.receive(ctx, payload, logf)
	if err != nil {
		return fail(err)
	}
	byName := map[string]Received{}
	for _, rc := range received {
		byName[rc.Machine] = rc
	}
	var out []Deployed
	for _, m := range machines {
		rc, ok := byName[m]
		if !ok {
			rc = Received{Machine: m, Err: "the host's credvm did not say what it did with it"}
		}
		d := Deployed{Received: rc, Host: hn, Binary: binary}
		out = append(out, d)
	}
	return out
}

// shipment packs the machines for the host: one archive, and each
// machine key sealed to the host's pinned key (decrypted with the user's
// key in memory only, for the time of sealing).
func (h *Host) shipment(r *repo.Repo, user *sops.Identities, machines []string, start bool) (*Shipment, error) {
	pub, err := r.ReadFile(r.Path("sops", "hosts", h.Name, "key.pub"))
	if err != nil {
		return nil, err
	}
	sh := &Shipment{Format: shipmentFormat, Machines: machines, Start: start, Sealed: map[string][]byte{}}
	for _, m := range machines {
		// A machine with no vars has no machine key: nothing to seal.
		if !r.Exists(filepath.Join(r.MachinePaths(m).PrivateKey, "secret")) {
			continue
		}
		ids, err := r.MachineIdentity(m, user)
		if err != nil {
			return nil, fmt.Errorf("%s: the machine key (decrypted with yours, to seal it to the host): %w", m, err)
		}
		raw := []byte(ids.Raw())
		sealed, err := sops.SealToSSH(raw, strings.TrimSpace(string(pub)))
		clear(raw)
		if err != nil {
			return nil, err
		}
		sh.Sealed[m] = sealed
	}
	var archive bytes.Buffer
	if _, err := backup.Write(&archive, r, "", machines, backup.Options{}); err != nil {
		return nil, err
	}
	sh.Archive = archive.Bytes()
	return sh, nil
}

// needsBinary is what the host's side of receive prints when its credvm
// is missing or not this one.
const needsBinary = "credvm-needs-binary"

// receive hands the payload to the host's `credvm host receive` in one
// session when the host's credvm is this one (its recorded digest
// matches), else copies credvm first and tries once more.
func (h *Host) receive(ctx context.Context, payload []byte, logf func(string, ...any)) ([]Received, string, error) {
	want, err := selfDigest()
	if err != nil {
		return nil, "", err
	}
	bin := h.Path(HostBinary)
	args := []string{"host", "receive", "--host-key", h.Path(HostKey)}
	script := `test "$(cat ` + shellQuote(bin+".sha256") + ` 2>/dev/null)" = ` + want + ` && exec ` + shellJoin(h.credvmArgv(args)) + `; echo ` + needsBinary
	binary := "current"
	for attempt := 0; ; attempt++ {
		out, err := h.Run(ctx, bytes.NewReader(payload), "sh", "-c", script)
		if err != nil {
			return nil, binary, err
		}
		if strings.TrimSpace(string(out)) == needsBinary {
			if attempt > 0 {
				return nil, binary, fmt.Errorf("host %s: its credvm is still not this one after copying it", h.Name)
			}
			logf("%s: copying credvm", h.Name)
			if err := h.copyBinary(ctx, want); err != nil {
				return nil, binary, err
			}
			binary = "copied"
			continue
		}
		var rcs []Received
		if err := json.Unmarshal(out, &rcs); err != nil {
			return nil, binary, fmt.Errorf("host %s: its answer to the deploy is unreadable: %w", h.Name, err)
		}
		return rcs, binary, nil
	}
}

// copyBinary copies this credvm to the host, then its digest beside it
// (what receive compares: hashing the binary on every deploy would cost
// the host 50 ms).
func (h *Host) copyBinary(ctx context.Context, digest string) error {
	exe, err := os.Executable()
	if err != nil {
		return err
	}
	f, err := os.Open(exe)
	if err != nil {
		return err
	}
	defer f.Close()
	bin := h.Path(HostBinary)
	tmp := bin + ".new"
	if err := h.Stream(ctx, f, nil, "sh", "-c",
		"mkdir -p "+shellQuote(filepath.Dir(bin))+" && cat > "+shellQuote(tmp)+" && chmod 755 "+shellQuote(tmp)+
			" && test \"$(sha256sum < "+shellQuote(tmp)+" | cut -d' ' -f1)\" = "+digest+
			" && mv "+shellQuote(tmp)+" "+shellQuote(bin)+" && echo "+digest+" > "+shellQuote(bin+".sha256")); err != nil {
		return fmt.Errorf("copying credvm to the host: %w", err)
	}
	return nil
}

var selfDigestOnce = sync.OnceValues(func() (string, error) {
	exe, err := os.Executable()
	if err != nil {
		return "", err
	}
	return fileDigest(exe)
})

// selfDigest is the SHA-256 of this credvm's executable.
func selfDigest() (string, error) { return selfDigestOnce() }

// fileDigest is a file's SHA-256, remembered in the user's cache by the
// file's identity (device, inode, size, mtime, ctime): hashing credvm's
// 15 MB costs 50 ms, a quarter of an unchanged deploy's goal.
func fileDigest(path string) (string, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return "", err
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	id := ""
	if ok {
		id = fmt.Sprintf("%s %d:%d:%d:%d.%d:%d.%d", path, st.Dev, st.Ino, st.Size, st.Mtim.Sec, st.Mtim.Nsec, st.Ctim.Sec, st.Ctim.Nsec)
	}
	cache := ""
	if dir, err := os.UserCacheDir(); err == nil && ok {
		cache = filepath.Join(dir, "credvm", "self-digest")
		if b, err := os.ReadFile(cache); err == nil {
			if got, digest, found := strings.Cut(strings.TrimSpace(string(b)), "\n"); found && got == id && len(digest) == 64 {
				return digest, nil
			}
		}
	}
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	sum := sha256.New()
	if _, err := io.Copy(sum, f); err != nil {
		return "", err
	}
	digest := hex.EncodeToString(sum.Sum(nil))
	if cache != "" {
		// Best effort: a cache that cannot be written costs a hash.
		if os.MkdirAll(filepath.Dir(cache), 0o700) == nil {
			tmp := fmt.Sprintf("%s.%d", cache, os.Getpid())
			if os.WriteFile(tmp, []byte(id+"\n"+digest+"\n"), 0o600) == nil {
				os.Rename(tmp, cache)
			}
		}
	}
	return digest, nil
}
