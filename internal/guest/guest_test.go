package guest

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/credvm/credvm/internal/cred"
)

// type11 builds a raw SMBIOS type-11 structure as QEMU does.
func type11(strs ...[]byte) []byte {
	b := []byte{11, 5, 0, 0x11, byte(len(strs))}
	for _, s := range strs {
		b = append(append(b, s...), 0)
	}
	return append(b, 0)
}

func TestParseType11(t *testing.T) {
	creds := []cred.Credential{
		{Name: "TEXT", Value: []byte("a,b=c\nd")},
		{Name: "BIN", Value: []byte{0, 1, 0xff}},
	}
	all := append([]cred.Credential{cred.Manifest(creds)}, creds...)
	var strs [][]byte
	for i := range all {
		strs = append(strs, all[i].SMBIOSString())
	}
	strs = append(strs, []byte("not a credential"), []byte("io.systemd.credential:bad/name=x"))
	raw := type11(strs...)
	got, err := ParseType11(raw)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 3 {
		t.Fatalf("got %d credentials, want 3 (others skipped as systemd skips them)", len(got))
	}
	ok, problems, err := Verify(got)
	if err != nil || len(problems) != 0 || len(ok) != 2 {
		t.Fatalf("verify: ok=%d problems=%v err=%v", len(ok), problems, err)
	}

	// Cut the structure inside TEXT's value, as a 4 KiB read would.
	cutAt := strings.Index(string(raw), "a,b=c") + 3
	got, _ = ParseType11(raw[:cutAt])
	_, problems, err = Verify(got)
	if err != nil {
		t.Fatal(err)
	}
	var msgs []string
	for _, p := range problems {
		msgs = append(msgs, p.String())
	}
	want := "TEXT: cut: 3 of 7 bytes arrived; BIN: missing (expected 3 bytes)"
	if strings.Join(msgs, "; ") != want {
		t.Errorf("problems = %q, want %q", strings.Join(msgs, "; "), want)
	}
}

func TestVerifyWithoutManifest(t *testing.T) {
	_, _, err := Verify([]Found{found("A", []byte("x"), "smbios")})
	if err == nil || !strings.Contains(err.Error(), "no credvm.manifest credential") {
		t.Errorf("err = %v", err)
	}
}

// TestReaderSources reads a fake /sys and /run laid out as the kernel and
// systemd lay them out, and merges them as systemd does (fw_cfg wins).
func TestReaderSources(t *testing.T) {
	root := t.TempDir()
	fw := filepath.Join(root, FwCfgDir, "A")
	os.MkdirAll(fw, 0o755)
	os.WriteFile(filepath.Join(fw, "raw"), []byte("from fw_cfg"), 0o644)
	dmi := filepath.Join(root, "sys/firmware/dmi/entries/11-0")
	os.MkdirAll(dmi, 0o755)
	c := []cred.Credential{{Name: "A", Value: []byte("from smbios")}, {Name: "B", Value: []byte("b")}}
	os.WriteFile(filepath.Join(dmi, "raw"), type11(c[0].SMBIOSString(), c[1].SMBIOSString()), 0o644)
	sys := filepath.Join(root, SystemCreds)
	os.MkdirAll(sys, 0o755)
	os.WriteFile(filepath.Join(sys, "A"), []byte("imported"), 0o400)

	r := &Reader{Root: root, SMBIOSSingleRead: true}
	merged, err := r.Merged()
	if err != nil {
		t.Fatal(err)
	}
	if len(merged) != 2 || merged[0].Source != "fw_cfg" || merged[0].Size != len("from fw_cfg") || merged[1].Name != "B" {
		t.Errorf("merged = %+v", merged)
	}
	s, _ := r.System()
	if len(s) != 1 || s[0].Size != len("imported") {
		t.Errorf("system = %+v", s)
	}
}

// A secret's digest is never printed by the product's report, a public
// value's is; a manifest of credvm ≤ 0.9 (version 1) marks nothing public.
func TestReportHidesSecretDigests(t *testing.T) {
	creds := []cred.Credential{
		{Name: "PASSWORD", Value: []byte("hunter2"), Secret: true},
		{Name: "USER", Value: []byte("app")},
	}
	man := cred.Manifest(creds)
	got := []Found{found(man.Name, man.Value, "fw_cfg"), found("PASSWORD", []byte("hunter2"), "fw_cfg"), found("USER", []byte("app"), "fw_cfg"), found("OTHER", []byte("x"), "fw_cfg")}
	var out strings.Builder
	if !Report(&out, got, false) { // OTHER is unlisted: no problem, just shown
		t.Errorf("verify failed:\n%s", out.String())
	}
	text := out.String()
	pw := found("PASSWORD", []byte("hunter2"), "").SHA256
	if strings.Contains(text, pw) || strings.Contains(text, pw[:16]) {
		t.Errorf("the secret's digest was printed:\n%s", text)
	}
	for _, want := range []string{"cred fw_cfg 7 secret PASSWORD", "cred fw_cfg 3 " + found("USER", []byte("app"), "").SHA256 + " USER", "cred fw_cfg 1 secret OTHER"} {
		if !strings.Contains(text, want) {
			t.Errorf("report lacks %q:\n%s", want, text)
		}
	}
	out.Reset()
	Report(&out, got, true)
	if !strings.Contains(out.String(), pw) {
		t.Error("a test guest's report lacks the digest")
	}

	// A differing secret is reported by size only.
	got[1] = found("PASSWORD", []byte("hunter3"), "fw_cfg")
	_, problems, _ := Verify(got)
	if len(problems) != 1 || problems[0].String() != "PASSWORD: differs: 7 bytes, expected 7 bytes with another digest" {
		t.Errorf("problems = %v", problems)
	}

	v1 := "credvm-manifest 1\n" + pw + " 7 PASSWORD\nend 1\n"
	entries, err := cred.ParseManifest([]byte(v1))
	if err != nil || len(entries) != 1 || !entries[0].Secret || entries[0].Name != "PASSWORD" {
		t.Errorf("v1 manifest: %+v %v", entries, err)
	}
}
