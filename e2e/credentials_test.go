package e2e

import (
	"bytes"
	"encoding/base64"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/credvm/credvm/internal/cred"
	"github.com/credvm/credvm/internal/testenv"
)

func b64(b []byte) string { return base64.StdEncoding.EncodeToString(b) }

// TestExampleWorkflow is the source document's workflow on the systemd
// guest: vars generate app-vm-01, run, and the guest's app.service
// (LoadCredential=API_KEY, …) sees every credential with the right digest.
func TestExampleWorkflow(t *testing.T) {
	needGuests(t)
	t.Parallel()
	r := newRepo(t)
	src, err := os.ReadFile(filepath.Join(testenv.Root(), "examples/app-vm-01/machines/app-vm-01/machine.toml"))
	if err != nil {
		t.Fatal(err)
	}
	toml := strings.NewReplacer(`kernel = "../../images/vmlinuz"`, "kernel = "+strconv.Quote(kernel),
		`initrd = "../../images/initrd.img"`, "initrd = "+strconv.Quote(systemdImg)).Replace(string(src))
	r.machine("app-vm-01", toml)
	os.WriteFile(filepath.Join(r.dir, "inventory.toml"), []byte("[machines.app-vm-01]\ntags = [\"app\"]\n"), 0o644)

	// Before the vars exist, run refuses and starts nothing.
	out, err := r.credvmErr("run", "app-vm-01", "--state-dir", r.state)
	if err == nil || !strings.Contains(out, "run 'credvm vars generate app-vm-01' first") {
		t.Fatalf("run without vars: %v\n%s", err, out)
	}
	if _, err := os.Stat(filepath.Join(r.state, "app-vm-01", "console.log")); err == nil {
		t.Error("run without vars started the VM anyway")
	}

	r.credvm("vars", "generate", "app-vm-01")
	want := map[string][]byte{}
	var secrets [][]byte
	for name, v := range map[string]string{"API_KEY": "app-vm-secrets/api-key", "JWT_SECRET": "app-vm-secrets/jwt-secret", "DB_PASSWORD": "database/password", "DB_USER": "database/user"} {
		want[name] = []byte(r.credvm("vars", "get", "app-vm-01", v))
		if name != "DB_USER" {
			secrets = append(secrets, want[name])
		}
	}
	want["ENVIRONMENT"] = []byte("production")

	b := r.run("app-vm-01", secrets...)
	b.mustVerify(t)
	if b.checked != 2 {
		t.Errorf("QEMU's and credvm's argv and environment were not both searched for secrets (%d)", b.checked)
	}
	if !strings.Contains(b.stderr, "5 credentials via smbios") {
		t.Errorf("want SMBIOS for five small credentials:\n%s", b.stderr)
	}
	for name, v := range want {
		got, ok := b.app[name]
		if !ok {
			t.Errorf("app.service did not get %s (LoadCredential=%s)", name, name)
			continue
		}
		if got.size != len(v) || got.sha != sha(v) {
			t.Errorf("%s in the guest: %d bytes %s…, host sent %d bytes %s…", name, got.size, got.sha[:12], len(v), sha(v)[:12])
		}
	}
	// The console log is the guest's; nothing of credvm's own output there
	// may hold a value either.
	for _, s := range secrets {
		if strings.Contains(b.stderr, string(s)) {
			t.Error("credvm's output shows a secret")
		}
	}
}

// TestHostileValues: commas, "=", newlines, NUL and non-UTF-8 bytes — the
// values that break naive OEM-string quoting — arrive byte for byte.
func TestHostileValues(t *testing.T) {
	needGuests(t)
	t.Parallel()
	r := newRepo(t)
	values := map[string][]byte{
		"API_KEY":     []byte("a,b,,c=d=e"),
		"JWT_SECRET":  []byte("line one\nline two\n"),
		"DB_PASSWORD": {0, 'x', 0, 0xff, 0xfe, ',', '=', '\n', 0},
		"DB_USER":     []byte(" spaced out "),
		"ENVIRONMENT": []byte("ünïcödé — ok"),
	}
	var toml strings.Builder
	toml.WriteString(vmSection("systemd"))
	toml.WriteString("[credentials]\n")
	var secrets [][]byte
	for name, v := range values {
		p := filepath.Join(r.dir, name)
		os.WriteFile(p, v, 0o600)
		fmt.Fprintf(&toml, "%s = { file = %q }\n", name, p)
		secrets = append(secrets, v)
	}
	r.machine("hostile", toml.String())
	b := r.run("hostile", secrets...)
	b.mustVerify(t)
	if b.checked != 2 {
		t.Errorf("QEMU's and credvm's argv and environment were not both searched for secrets (%d)", b.checked)
	}
	for name, v := range values {
		if got := b.app[name]; got.size != len(v) || got.sha != sha(v) {
			t.Errorf("%s: guest service got %d bytes %q…, want %d bytes", name, got.size, got.sha, len(v))
		}
	}
}

// TestFortyCredentials: more than SMBIOS can carry for systemd 252 → fw_cfg,
// with more file slots than q35's default leaves.
func TestFortyCredentials(t *testing.T) {
	needGuests(t)
	t.Parallel()
	r := newRepo(t)
	var toml strings.Builder
	toml.WriteString(vmSection("systemd"))
	toml.WriteString("[credentials]\n")
	for i := range 40 {
		fmt.Fprintf(&toml, "CRED_%02d = { value = \"value-%02d-%s\" }\n", i, i, strings.Repeat("x", 24))
	}
	r.machine("forty", toml.String())
	b := r.run("forty")
	b.mustVerify(t)
	if !strings.Contains(b.stderr, "40 credentials via fw_cfg") {
		t.Errorf("want fw_cfg:\n%s", b.stderr)
	}
	n := 0
	for name, s := range b.creds {
		if strings.HasPrefix(name, "CRED_") && s.source == "system" {
			n++
		}
	}
	if n != 40 {
		t.Errorf("systemd imported %d of 40 credentials", n)
	}
}

// TestLargeCredential: 16 KiB, and the largest credential systemd accepts
// (1 MiB with the manifest), go by fw_cfg under auto; 16 KiB is refused,
// before anything starts, when SMBIOS is forced.
func TestLargeCredential(t *testing.T) {
	needGuests(t)
	t.Parallel()
	r := newRepo(t)
	big := bytes.Repeat([]byte("0123456789abcdef"), 1024)
	big[100] = 0 // binary, too
	p := filepath.Join(r.dir, "big")
	os.WriteFile(p, big, 0o600)
	r.machine("big", vmSection("systemd")+"[credentials]\nAPI_KEY = { file = "+strconv.Quote(p)+" }\n")
	b := r.run("big", big[:64])
	b.mustVerify(t)
	if got := b.app["API_KEY"]; got.size != len(big) || got.sha != sha(big) {
		t.Errorf("16 KiB credential: guest got %d bytes", got.size)
	}
	if !strings.Contains(b.stderr, "via fw_cfg") {
		t.Errorf("want fw_cfg for 16 KiB:\n%s", b.stderr)
	}

	// The largest a credential can be: systemd takes 1 MiB for all of them
	// together, the manifest included.
	huge := bytes.Repeat([]byte{0, 1, 2, 3, 'h', 'u', 'g', 'e'}, (1<<20-256)/8)
	ph := filepath.Join(r.dir, "huge")
	os.WriteFile(ph, huge, 0o600)
	r.machine("huge", vmSection("systemd")+"[credentials]\nAPI_KEY = { file = "+strconv.Quote(ph)+" }\n")
	b = r.run("huge", huge[:64])
	b.mustVerify(t)
	if got := b.app["API_KEY"]; got.size != len(huge) || got.sha != sha(huge) {
		t.Errorf("%d-byte credential: guest got %d bytes", len(huge), got.size)
	}

	r.machine("big-smbios", vmSection("systemd", `transport = "smbios"`)+"[credentials]\nAPI_KEY = { file = "+strconv.Quote(p)+" }\n")
	out, err := r.credvmErr("run", "big-smbios", "--state-dir", r.state)
	if err == nil || !strings.Contains(out, "credvm: vm big-smbios: cannot use the forced transport smbios: the credentials need 22041 bytes of SMBIOS type 11") ||
		!strings.Contains(out, "reads only 4096; the guest would get cut or missing credentials, so it is not started") {
		t.Errorf("forced SMBIOS with 16 KiB: %v\n%s", err, out)
	}
}

// smbiosFilling returns a value that makes the credential set's SMBIOS
// type-11 structure exactly size bytes.
func smbiosFilling(t *testing.T, name string, size int) []byte {
	t.Helper()
	c := []cred.Credential{{Name: name, Value: []byte("x")}}
	for i := 0; i < 3; i++ { // the manifest's size depends on the value's size's digits
		all := append([]cred.Credential{cred.Manifest(c)}, c...)
		delta := size - cred.SMBIOSSize(all)
		c[0].Value = bytes.Repeat([]byte("v"), len(c[0].Value)+delta)
	}
	all := append([]cred.Credential{cred.Manifest(c)}, c...)
	if got := cred.SMBIOSSize(all); got != size {
		t.Fatalf("could not size the payload: %d, want %d", got, size)
	}
	return c[0].Value
}

// TestSMBIOSBudget proves the 4,096-byte budget exact on systemd 252 itself
// and on the fast guest (which reads as systemd 252 does): a structure of
// exactly 4,096 bytes arrives whole over SMBIOS; one byte more and
// credvm switches to fw_cfg; and when a user wrongly declares a newer
// guest systemd, the guest's verify catches the cut that follows.
func TestSMBIOSBudget(t *testing.T) {
	needGuests(t)
	for _, guest := range []string{"fast", "systemd"} {
		t.Run(guest, func(t *testing.T) {
			t.Parallel()
			r := newRepo(t)
			exact := smbiosFilling(t, "API_KEY", cred.SMBIOSBudget252)
			over := smbiosFilling(t, "API_KEY", cred.SMBIOSBudget252+1)
			// 16 bytes over: data bytes, not just terminators, are lost.
			cut := smbiosFilling(t, "API_KEY", cred.SMBIOSBudget252+16)
			for _, tc := range []struct {
				name, extra string
				value       []byte
				transport   string
				wantOK      bool
			}{
				{"exact", "", exact, "smbios", true},
				{"over", "", over, "fw_cfg", true},
				{"wrongly-declared", "guest_systemd = 257", cut, "smbios", false},
			} {
				if guest == "systemd" && tc.name == "over" {
					continue // fw_cfg on systemd is covered by TestLargeCredential
				}
				p := filepath.Join(r.dir, tc.name)
				os.WriteFile(p, tc.value, 0o600)
				r.machine(tc.name, vmSection(guest, tc.extra)+"[credentials]\nAPI_KEY = { file = "+strconv.Quote(p)+" }\n")
				b := r.run(tc.name)
				if !strings.Contains(b.stderr, "via "+tc.transport) {
					t.Errorf("%s: want transport %s:\n%s", tc.name, tc.transport, b.stderr)
				}
				if b.ok != tc.wantOK {
					t.Errorf("%s (%d-byte structure): verify ok = %v, want %v\n%s", tc.name, len(tc.value), b.ok, tc.wantOK, grepLines(b.console, "credvm-guest:"))
				}
				if !tc.wantOK {
					t.Logf("%s: %s", tc.name, grepLines(b.console, "credvm-guest: problem"))
				}
				if !tc.wantOK && !strings.Contains(b.console, "problem API_KEY: cut:") {
					t.Errorf("%s: the guest did not name the cut credential:\n%s", tc.name, grepLines(b.console, "credvm-guest:"))
				}
			}
		})
	}
}

// TestMicrovm: QEMU's microvm machine has no SMBIOS; credentials go by
// fw_cfg, and more of them than its default file slots allow — on the fast
// guest and on systemd 252, whose LoadCredential= service sees them.
func TestMicrovm(t *testing.T) {
	needGuests(t)
	for _, guest := range []string{"fast", "systemd"} {
		t.Run(guest, func(t *testing.T) {
			t.Parallel()
			r := newRepo(t)
			var toml strings.Builder
			toml.WriteString(vmSection(guest, `machine = "microvm"`))
			toml.WriteString("[credentials]\nAPI_KEY = { value = \"over microvm\" }\n")
			for i := range 29 {
				fmt.Fprintf(&toml, "CRED_%02d = { value = \"v%02d\" }\n", i, i)
			}
			r.machine("micro", toml.String())
			b := r.run("micro")
			b.mustVerify(t)
			if !strings.Contains(b.stderr, "30 credentials via fw_cfg: SMBIOS never reaches a QEMU microvm guest") {
				t.Errorf("microvm transport:\n%s", b.stderr)
			}
			if len(b.creds) != 31 {
				t.Errorf("guest saw %d credentials, want 30 and the manifest", len(b.creds))
			}
			if guest == "systemd" {
				if got := b.app["API_KEY"]; got.sha != sha([]byte("over microvm")) {
					t.Errorf("app.service on microvm: %+v", got)
				}
			}
		})
	}
}

// TestOVMF: UEFI firmware instead of SeaBIOS; SMBIOS still arrives.
func TestOVMF(t *testing.T) {
	needGuests(t)
	if _, err := os.Stat("/usr/share/ovmf/OVMF.fd"); err != nil {
		testenv.Missing(t, "OVMF", "apt-get install ovmf")
	}
	t.Parallel()
	r := newRepo(t)
	r.machine("uefi", vmSection("fast", `firmware = "ovmf"`)+"[credentials]\nAPI_KEY = { value = \"over uefi\" }\nOTHER = { value = \"x\" }\n")
	b := r.run("uefi")
	b.mustVerify(t)
	if got := b.creds["API_KEY"]; got.source != "smbios" || got.sha != sha([]byte("over uefi")) {
		t.Errorf("API_KEY under OVMF: %+v", got)
	}
}
