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
	// Images is the directory scripts/build-images filled.
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
	out, images, keep := o.Out, o.Images, o.Keep
	step := 0
	say := func(format string, args ...any) {
		step++
		fmt.Fprintf(out, "\n[%d/6] %s\n", step, fmt.Sprintf(format, args...))
	}
	if images == "" {
		images = filepath.Join(".cache", "images")
	}
	im := guestimage.Images{Dir: images}
	say("checking QEMU and the guest images in %s", images)
	if err := im.Check(true); err != nil {
		return err
	}
	qemuPath, err := exec.LookPath(qemu.Binary)
	if err != nil {
		return fmt.Errorf("%s not found: apt-get install qemu-system-x86 (or run `make demo`)", qemu.Binary)
	}
	self, err := os.Executable()
	if err != nil {
		return err
	}
	fmt.Fprintf(out, "      qemu: %s\n      guest: Debian bookworm with systemd, kernel %s\n", qemuPath, filepath.Base(im.Kernel()))

	tmp, err := os.MkdirTemp("", "credvm-demo-")
	if err != nil {
		return err
	}
	if keep {
		defer fmt.Fprintf(out, "\nkept %s (repository, state and console log)\n", tmp)
	} else {
		defer os.RemoveAll(tmp)
	}
	repoDir := filepath.Join(tmp, "repo")
	sub, _ := fs.Sub(examples.AppVM01, "app-vm-01")
	if err := os.CopyFS(repoDir, sub); err != nil {
		return err
	}
	imgDir := filepath.Join(repoDir, "images")
	os.MkdirAll(imgDir, 0o755)
	if err := os.Symlink(mustAbs(im.Kernel()), filepath.Join(imgDir, "vmlinuz")); err != nil {
		return err
	}
	if err := im.SystemdInitrd(self, filepath.Join(imgDir, "initrd.img")); err != nil {
		return fmt.Errorf("assemble the guest initramfs: %w", err)
	}

	say("creating a repository with the example machine and a user age key")
	keyFile := filepath.Join(tmp, "age-key.txt")
	pub, err := sops.CreateKeyFile(keyFile)
	if err != nil {
		return err
	}
	r, err := repo.Open(repoDir)
	if err != nil {
		return err
	}
	if err := r.AddUser("demo", pub); err != nil {
		return err
	}
	fmt.Fprintf(out, "      repository: %s\n      user key:   %s (public %s…)\n", repoDir, keyFile, pub[:16])

	say("credvm vars generate app-vm-01")
	ids, err := sops.LoadIdentityFile(keyFile)
	if err != nil {
		return err
	}
	e := &vars.Engine{Repo: r, User: ids, Log: indent.Writer(out, "      ")}
	m, err := r.Machine("app-vm-01")
	if err != nil {
		return err
	}
	if _, err := e.Generate(ctx, []*spec.Machine{m}, vars.GenerateOptions{NoCommit: true}); err != nil {
		return err
	}
	filepath.WalkDir(filepath.Join(repoDir, "vars"), func(p string, d fs.DirEntry, err error) error {
		if err == nil && !d.IsDir() && (d.Name() == "secret" || d.Name() == "value") {
			rel, _ := filepath.Rel(repoDir, p)
			fmt.Fprintf(out, "      %s\n", rel)
		}
		return nil
	})

	say("credvm creds show app-vm-01")
	creds, err := vm.Credentials(e, m, nil)
	if err != nil {
		return err
	}
	plan, err := vm.Plan(m, creds)
	if err != nil {
		return err
	}
	want := map[string]cred.Credential{}
	tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "      NAME\tSOURCE\tSIZE\tSHA256 (host)")
	for _, c := range creds {
		want[c.Name] = cred.Credential{Name: c.Name, Value: append([]byte(nil), c.Value...), Secret: c.Secret}
		fmt.Fprintf(tw, "      %s\t%s\t%d\t%s…\n", c.Name, c.Source, len(c.Value), c.Digest()[:16])
	}
	tw.Flush()
	fmt.Fprintf(out, "      transport: %s — %s\n", plan.Transport, plan.Why)

	say("credvm run app-vm-01 (a real systemd guest under QEMU; about 15 s without KVM)")
	reports := &guestLines{w: out}
	res, err := vm.Run(ctx, vm.RunOptions{
		State:           vm.StateDir{Root: filepath.Join(tmp, "state"), Name: m.Name},
		OpenRepo:        func() (*repo.Repo, error) { return r, nil },
		User:            ids,
		Console:         reports,
		Notices:         indent.Writer(out, "      "),
		ShutdownTimeout: 20 * time.Second,
	})
	if err != nil {
		return err
	}
	if res.ExitCode != 0 {
		return fmt.Errorf("QEMU exited with status %d; see the console log (rerun with --keep)", res.ExitCode)
	}

	say("comparing what the guest saw with what the host sent")
	seen := reports.app()
	tw = tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "      NAME\tSIZE\tSHA256 (guest)\tRESULT")
	ok := 0
	for _, c := range creds {
		w := want[c.Name]
		got, found := seen[c.Name]
		result := "MISSING in the guest"
		switch {
		case !found:
		case got.size == len(w.Value) && got.sha == w.Digest():
			result = "arrived whole"
			ok++
		default:
			result = fmt.Sprintf("DIFFERS (host: %d bytes)", len(w.Value))
		}
		fmt.Fprintf(tw, "      %s\t%d\t%s…\t%s\n", c.Name, got.size, short(got.sha), result)
	}
	tw.Flush()
	if !reports.verified() {
		return fmt.Errorf("the guest's credvm guest verify did not pass; see the console log (rerun with --keep)")
	}
	if ok != len(creds) {
		return fmt.Errorf("%d of %d credentials did not reach the guest's service whole", len(creds)-ok, len(creds))
	}
	fmt.Fprintf(out, "\nAll %d credentials reached the guest's service whole, via %s.\nNo secret was on QEMU's command line, in its environment or in a file: each went through a sealed memfd.\n", ok, plan.Transport)
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
	w    io.Writer
	mu   sync.Mutex
	part string
	seen map[string]digest
	ok   bool
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
			fmt.Fprintf(g.w, "      guest | %s\n", l)
			var name, sha string
			var size int
			if n, _ := fmt.Sscanf(l, "app: %s %d %s", &name, &size, &sha); n == 3 {
				if g.seen == nil {
					g.seen = map[string]digest{}
				}
				g.seen[name] = digest{size, sha}
			}
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
