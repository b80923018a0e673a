// Package demo is `credvm demo`: the whole workflow on the example machine
// app-vm-01, in a temporary directory — a repository with a user key,
// vars generated, a real systemd guest booted under QEMU whose own
// LoadCredential= service prints each credential's size and digest — and
// the guest's view compared with the host's.
package demo

import (
	"context"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"text/tabwriter"
	"time"

	"github.com/credvm/credvm/examples"
	"github.com/credvm/credvm/internal/cred"
	"github.com/credvm/credvm/internal/guest"
	"github.com/credvm/credvm/internal/guestimage"
	"github.com/credvm/credvm/internal/hypervisor/qemu"
	"github.com/credvm/credvm/internal/indent"
	"github.com/credvm/credvm/internal/repo"
	"github.com/credvm/credvm/internal/sops"
	"github.com/credvm/credvm/internal/spec"
	"github.com/credvm/credvm/internal/vars"
	"github.com/credvm/credvm/internal/vm"
)

// Options configure a demo run.
type Options struct {
	// Images is the directory make images (credvm image) filled.
	Images string
	// Keep keeps the temporary directory.
	Keep bool
	// Out receives the demo's narration.
	Out io.Writer
}

// Run runs the demo. It touches nothing of the user's: the repository,
// the key and the VM state live in a temporary directory, and the key is
// handed to each step rather than set in the environment.
func Run(ctx context.Context, o Options) error {
	if o.Images == "" {
		o.Images = filepath.Join(".cache", "images")
	}
	d := &demo{out: o.Out, im: guestimage.Images{Dir: o.Images}}
	tmp, err := os.MkdirTemp("", "credvm-demo-")
	if err != nil {
		return err
	}
	d.tmp = tmp
	if o.Keep {
		defer fmt.Fprintf(d.out, "\nkept %s (repository, state and console log)\n", tmp)
	} else {
		defer os.RemoveAll(tmp)
	}
	steps := []struct {
		title string
		run   func(context.Context) error
	}{
		{"checking QEMU and the guest images in " + o.Images, d.checkImages},
		{"creating a repository with the example machine and a user age key", d.makeRepo},
		{"credvm vars generate app-vm-01", d.generate},
		{"credvm creds show app-vm-01", d.showCredentials},
		{"credvm run app-vm-01 (a real systemd guest under QEMU; about 15 s without KVM)", d.boot},
		{"comparing what the guest saw with what the host sent", d.compare},
	}
	for i, st := range steps {
		fmt.Fprintf(d.out, "\n[%d/%d] %s\n", i+1, len(steps), st.title)
		if err := st.run(ctx); err != nil {
			return err
		}
	}
	return nil
}

// demo is one run's state, step to step.
type demo struct {
	out     io.Writer
	im      guestimage.Images
	tmp     string
	r       *repo.Repo
	ids     *sops.Identities
	m       *spec.Machine
	creds   []cred.Credential
	plan    *cred.Plan
	reports *guestLines
}

func (d *demo) checkImages(context.Context) error {
	if err := d.im.Check(true); err != nil {
		return err
	}
	qemuPath, err := exec.LookPath(qemu.Binary)
	if err != nil {
		return fmt.Errorf("%s not found: apt-get install qemu-system-x86 (or run `make demo`)", qemu.Binary)
	}
	fmt.Fprintf(d.out, "      qemu: %s\n      guest: Debian bookworm with systemd, kernel %s\n", qemuPath, filepath.Base(d.im.Kernel()))
	return nil
}

// makeRepo copies the example into a repository with the guest's boot
// files and a user key of its own.
func (d *demo) makeRepo(context.Context) error {
	self, err := os.Executable()
	if err != nil {
		return err
	}
	repoDir := filepath.Join(d.tmp, "repo")
	sub, _ := fs.Sub(examples.AppVM01, "app-vm-01")
	if err := os.CopyFS(repoDir, sub); err != nil {
		return err
	}
	imgDir := filepath.Join(repoDir, "images")
	os.MkdirAll(imgDir, 0o755)
	if err := os.Symlink(mustAbs(d.im.Kernel()), filepath.Join(imgDir, "vmlinuz")); err != nil {
		return err
	}
	if err := d.im.SystemdInitrd(self, filepath.Join(imgDir, "initrd.img")); err != nil {
		return fmt.Errorf("assemble the guest initramfs: %w", err)
	}
	keyFile := filepath.Join(d.tmp, "age-key.txt")
	pub, err := sops.CreateKeyFile(keyFile)
	if err != nil {
		return err
	}
	if d.ids, err = sops.LoadIdentityFile(keyFile); err != nil {
		return err
	}
	if d.r, err = repo.Open(repoDir); err != nil {
		return err
	}
	if err := d.r.AddUser("demo", pub); err != nil {
		return err
	}
	fmt.Fprintf(d.out, "      repository: %s\n      user key:   %s (public %s…)\n", repoDir, keyFile, pub[:16])
	return nil
}

func (d *demo) engine() *vars.Engine {
	return &vars.Engine{Repo: d.r, User: d.ids, Log: indent.Writer(d.out, "      ")}
}

func (d *demo) generate(ctx context.Context) error {
	var err error
	if d.m, err = d.r.Machine("app-vm-01"); err != nil {
		return err
	}
	if _, err := d.engine().Generate(ctx, []*spec.Machine{d.m}, vars.GenerateOptions{NoCommit: true}); err != nil {
		return err
	}
	return filepath.WalkDir(d.r.Path("vars"), func(p string, e fs.DirEntry, err error) error {
		if err == nil && !e.IsDir() && (e.Name() == "secret" || e.Name() == "value") {
			fmt.Fprintf(d.out, "      %s\n", d.r.Rel(p))
		}
		return nil
	})
}

func (d *demo) showCredentials(context.Context) error {
	var err error
	if d.creds, err = vm.Credentials(d.engine(), d.m, nil); err != nil {
		return err
	}
	if d.plan, err = vm.Plan(d.m, d.creds); err != nil {
		return err
	}
	rep, err := vm.ShowCredentials(d.engine(), d.m, vm.StateDir{Root: filepath.Join(d.tmp, "state"), Name: d.m.Name}, "")
	if err != nil {
		return err
	}
	rep.WriteTable(d.out, "      ")
	return nil
}

func (d *demo) boot(ctx context.Context) error {
	d.reports = &guestLines{w: d.out, secret: map[string]bool{}}
	for _, c := range d.creds {
		d.reports.secret[c.Name] = c.Secret
	}
	res, err := vm.Run(ctx, vm.RunOptions{
		State:           vm.StateDir{Root: filepath.Join(d.tmp, "state"), Name: d.m.Name},
		OpenRepo:        func() (*repo.Repo, error) { return d.r, nil },
		User:            d.ids,
		Console:         d.reports,
		Notices:         indent.Writer(d.out, "      "),
		ShutdownTimeout: 20 * time.Second,
	})
	if err != nil {
		return err
	}
	if res.ExitCode != 0 {
		return fmt.Errorf("QEMU exited with status %d; see the console log (rerun with --keep)", res.ExitCode)
	}
	return nil
}

func (d *demo) compare(context.Context) error {
	seen := d.reports.app()
	tw := tabwriter.NewWriter(d.out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "      NAME\tSIZE\tSHA256\tRESULT")
	ok := 0
	for _, c := range d.creds {
		got, found := seen[c.Name]
		result := "MISSING in the guest"
		switch {
		case !found:
		case got.size == len(c.Value) && got.sha == c.Digest():
			result = "arrived whole"
			ok++
		default:
			result = fmt.Sprintf("DIFFERS (host: %d bytes)", len(c.Value))
		}
		shown := short(got.sha) + "…"
		if c.Secret {
			shown = "-"
		}
		fmt.Fprintf(tw, "      %s\t%d\t%s\t%s\n", c.Name, got.size, shown, result)
	}
	tw.Flush()
	if !d.reports.verified() {
		return fmt.Errorf("the guest's credvm guest verify did not pass; see the console log (rerun with --keep)")
	}
	if ok != len(d.creds) {
		return fmt.Errorf("%d of %d credentials did not reach the guest's service whole", len(d.creds)-ok, len(d.creds))
	}
	fmt.Fprintf(d.out, "\nAll %d credentials reached the guest's service whole, via %s.\nNo secret was on QEMU's command line, in its environment or in a file: each went through a sealed memfd.\n", ok, d.plan.Transport)
	return nil
}

func short(s string) string {
	if len(s) > 16 {
		return s[:16]
	}
	return s
}

func mustAbs(p string) string {
	a, err := filepath.Abs(p)
	if err != nil {
		return p
	}
	return a
}

// guestLines picks the guest's own report lines out of the console and
// shows them as they come.
type guestLines struct {
	w      io.Writer
	secret map[string]bool // credential names that are secrets
	mu     sync.Mutex
	part   string
	seen   map[string]digest
	ok     bool
}

type digest struct {
	size int
	sha  string
}

func (g *guestLines) Write(p []byte) (int, error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	text := g.part + string(p)
	lines := strings.Split(text, "\n")
	g.part = lines[len(lines)-1]
	for _, l := range lines[:len(lines)-1] {
		l = strings.TrimRight(l, "\r")
		switch {
		case strings.HasPrefix(l, "app: "):
			var name, sha string
			var size int
			if n, _ := fmt.Sscanf(l, "app: %s %d %s", &name, &size, &sha); n == 3 {
				if g.seen == nil {
					g.seen = map[string]digest{}
				}
				g.seen[name] = digest{size, sha}
				if g.secret[name] {
					// The demo guest's service prints every digest so that
					// the demo can compare; a secret's is not shown.
					l = fmt.Sprintf("app: %s %d (a secret: digest compared, not shown)", name, size)
				}
			}
			fmt.Fprintf(g.w, "      guest | %s\n", l)
		case strings.HasPrefix(l, guest.ReportPrefix+"verify"), strings.HasPrefix(l, guest.ReportPrefix+"problem"):
			fmt.Fprintf(g.w, "      guest | %s\n", l)
			if strings.HasPrefix(l, guest.ReportPrefix+"verify ok") {
				g.ok = true
			}
		}
	}
	return len(p), nil
}

func (g *guestLines) app() map[string]digest {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.seen
}

func (g *guestLines) verified() bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.ok
}
