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
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"

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

// Deployed says what Deploy did for one VM.
type Deployed struct {
	Machine string `json:"name"`
	Host    string `json:"host"`
	// Binary: "copied" when the host's credvm was missing or differed,
	// "current" when it was this one.
	Binary  string `json:"binary"`
	Created bool   `json:"created"`
	// Update is what `credvm update -R` said on the host.
	Update string `json:"update"`
	Err    string `json:"error,omitempty"`
}

// Deploy sends each named VM to its host — credvm itself if the host's
// differs, the machine's files, encrypted vars and users' public keys as
// a backup archive the host's credvm checks and restores, its machine
// key sealed to the host key — then creates or updates it there (-R:
// restarting what runs older vars). Hosts in parallel, one connection
// each; nothing plaintext crosses the wire.
func Deploy(ctx context.Context, r *repo.Repo, user *sops.Identities, machines []string, logf func(string, ...any)) ([]Deployed, error) {
	byHost := map[string][]string{}
	for _, m := range machines {
		h := r.Inventory.HostOf(m)
		if h == "" {
			return nil, fmt.Errorf("machine %s has no host: place it with host = \"NAME\" under [machines.%s] in inventory.toml", m, m)
		}
		byHost[h] = append(byHost[h], m)
	}
	var (
		mu  sync.Mutex
		out []Deployed
		wg  sync.WaitGroup
	)
	for _, hn := range slices.Sorted(mapsKeys(byHost)) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			res := deployHost(ctx, r, user, hn, byHost[hn], logf)
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

func mapsKeys[V any](m map[string]V) func(func(string) bool) {
	return func(yield func(string) bool) {
		for k := range m {
			if !yield(k) {
				return
			}
		}
	}
}

func deployHost(ctx context.Context, r *repo.Repo, user *sops.Identities, hn string, machines []string, logf func(string, ...any)) []Deployed {
	return deployHostOpts(ctx, r, user, hn, machines, true, logf)
}

func deployHostOpts(ctx context.Context, r *repo.Repo, user *sops.Identities, hn string, machines []string, start bool, logf func(string, ...any)) []Deployed {
	fail := func(err error) []Deployed {
		var out []Deployed
		for _, m := range machines {
			out = append(out, Deployed{Machine: m, Host: hn, Err: err.Error()})
		}
		return out
	}
	h, err := HostOf(r, hn)
	if err != nil {
		return fail(err)
	}
	binary, err := h.ensureBinary(ctx)
	if err != nil {
		return fail(err)
	}
	logf("%s: credvm %s", hn, binary)
	var out []Deployed
	for _, m := range machines {
		d := Deployed{Machine: m, Host: hn, Binary: binary}
		if err := h.deployMachine(ctx, r, user, m, start, &d); err != nil {
			d.Err = err.Error()
		}
		out = append(out, d)
	}
	return out
}

// ensureBinary copies this credvm to the host when its own is missing or
// differs (by SHA-256).
func (h *Host) ensureBinary(ctx context.Context) (string, error) {
	exe, err := os.Executable()
	if err != nil {
		return "", err
	}
	b, err := os.ReadFile(exe)
	if err != nil {
		return "", err
	}
	sum := sha256.Sum256(b)
	want := hex.EncodeToString(sum[:])
	bin := h.Path(HostBinary)
	got, err := h.Run(ctx, nil, "sh", "-c", "sha256sum "+shellQuote(bin)+" 2>/dev/null || true")
	if err != nil {
		return "", err
	}
	if f := strings.Fields(string(got)); len(f) > 0 && f[0] == want {
		return "current", nil
	}
	tmp := bin + ".new"
	if _, err := h.Run(ctx, bytes.NewReader(b), "sh", "-c",
		"mkdir -p "+shellQuote(filepath.Dir(bin))+" && cat > "+shellQuote(tmp)+" && chmod 755 "+shellQuote(tmp)+" && mv "+shellQuote(tmp)+" "+shellQuote(bin)); err != nil {
		return "", fmt.Errorf("copying credvm to the host: %w", err)
	}
	return "copied", nil
}

// credvm runs the host's credvm with its repository and state directory.
func (h *Host) credvm(ctx context.Context, stdin io.Reader, args ...string) ([]byte, error) {
	return h.Run(ctx, stdin, h.credvmArgv(args)...)
}

// credvmArgv is the host's credvm command line for args.
func (h *Host) credvmArgv(args []string) []string {
	argv := append([]string{h.Path(HostBinary)}, args...)
	return append(argv, "--repo", h.Path(HostRepo), "--state-dir", h.Path(HostState))
}

// deployMachine sends one machine and creates or updates it on the host.
func (h *Host) deployMachine(ctx context.Context, r *repo.Repo, user *sops.Identities, m string, start bool, d *Deployed) error {
	pub, err := r.ReadFile(r.Path("sops", "hosts", h.Name, "key.pub"))
	if err != nil {
		return err
	}
	// A machine with no vars has no machine key: nothing to seal.
	var sealed []byte
	if r.Exists(filepath.Join(r.MachinePaths(m).PrivateKey, "secret")) {
		ids, err := r.MachineIdentity(m, user)
		if err != nil {
			return fmt.Errorf("the machine key (decrypted with yours, to seal it to the host): %w", err)
		}
		raw := []byte(ids.Raw())
		sealed, err = sops.SealToSSH(raw, strings.TrimSpace(string(pub)))
		clear(raw)
		if err != nil {
			return err
		}
	}
	var archive bytes.Buffer
	if _, err := backup.Write(&archive, r, "", []string{m}, backup.Options{}); err != nil {
		return err
	}
	repoDir := h.Path(HostRepo)
	if _, err := h.Run(ctx, nil, "sh", "-c", "mkdir -p "+shellQuote(repoDir)+" "+shellQuote(h.Path(HostState))+" && { test -e "+shellQuote(repoDir+"/credvm.toml")+" || : > "+shellQuote(repoDir+"/credvm.toml")+"; }"); err != nil {
		return err
	}
	if _, err := h.credvm(ctx, &archive, "restore", "/dev/stdin", "--force", "--accept-recipients"); err != nil {
		return fmt.Errorf("restoring it on the host: %w", err)
	}
	_, statusErr := h.credvm(ctx, nil, "status", m)
	if statusErr != nil {
		if _, err := h.credvm(ctx, nil, "create", m); err != nil {
			return err
		}
		d.Created = true
	}
	if sealed != nil {
		if _, err := h.credvm(ctx, bytes.NewReader(sealed), "host", "install-key", m, "--host-key", h.Path(HostKey)); err != nil {
			return err
		}
	}
	args := []string{"update", m, "-R"}
	if d.Created {
		if !start {
			return nil
		}
		args = []string{"start", m}
	}
	out, err := h.credvm(ctx, nil, args...)
	d.Update = strings.TrimSpace(string(out))
	return err
}

// Listing is one host's answer to list.
type Listing struct {
	Host     string
	Text     []byte           // its list, as it prints it
	Statuses []map[string]any // with JSON: its statuses
	Err      error            // unreachable: why
}

// List asks every host of the inventory for its VMs, in parallel; an
// unreachable host is an Err of its own, never the others' failure.
func List(ctx context.Context, r *repo.Repo, asJSON bool) []Listing {
	names := slices.Sorted(mapsKeys(r.Inventory.Hosts))
	out := make([]Listing, len(names))
	var wg sync.WaitGroup
	for i, n := range names {
		wg.Add(1)
		go func() {
			defer wg.Done()
			out[i].Host = n
			h, err := HostOf(r, n)
			if err != nil {
				out[i].Err = err
				return
			}
			args := []string{"list"}
			if asJSON {
				args = append(args, "--json")
			}
			b, err := h.credvm(ctx, nil, args...)
			if err != nil {
				out[i].Err = err
				return
			}
			out[i].Text = b
			if asJSON {
				if err := json.Unmarshal(b, &out[i].Statuses); err != nil {
					out[i].Err = fmt.Errorf("host %s: its list is not JSON: %w", n, err)
				}
			}
		}()
	}
	wg.Wait()
	return out
}

// LifecycleStream runs a lifecycle command (start, stop, status, logs, …)
// of the host's credvm, its output streamed to out.
func (h *Host) LifecycleStream(ctx context.Context, out io.Writer, args ...string) error {
	return h.Stream(ctx, nil, out, h.credvmArgv(args)...)
}
