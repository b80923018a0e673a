package cred

import (
	"bytes"
	"encoding/base64"
	"strings"
	"testing"
)

func TestSMBIOSString(t *testing.T) {
	tests := []struct {
		name  string
		value []byte
		force bool
		want  string
	}{
		{"A", []byte("plain"), false, "io.systemd.credential:A=plain"},
		{"A", []byte("a,b=c\nd"), false, "io.systemd.credential:A=a,b=c\nd"},
		{"A", []byte{'x', 0, 'y'}, false, "io.systemd.credential.binary:A=" + base64.StdEncoding.EncodeToString([]byte{'x', 0, 'y'})},
		{"A", []byte{0xff, 0xfe}, false, "io.systemd.credential.binary:A=//4="},
		{"A", []byte("x"), true, "io.systemd.credential.binary:A=eA=="},
		{"A", []byte{}, false, "io.systemd.credential:A="},
	}
	for _, tt := range tests {
		c := Credential{Name: tt.name, Value: tt.value, ForceBinary: tt.force}
		if got := string(c.SMBIOSString()); got != tt.want {
			t.Errorf("SMBIOSString(%q) = %q, want %q", tt.value, got, tt.want)
		}
	}
}

func TestCheckName(t *testing.T) {
	for _, ok := range []string{"API_KEY", "a.b-c", "with space", strings.Repeat("n", 255)} {
		if err := CheckName(ok); err != nil {
			t.Errorf("CheckName(%q) = %v", ok, err)
		}
	}
	for bad, want := range map[string]string{
		"":                       "empty",
		".":                      "not allowed",
		"..":                     "not allowed",
		"a/b":                    `contains "/"`,
		"a=b":                    `contains "="`,
		"a:b":                    `contains ":"`,
		"tab\there":              "not printable ASCII",
		"ü":                      "not printable ASCII",
		strings.Repeat("n", 256): "at most 255",
	} {
		if err := CheckName(bad); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("CheckName(%q) = %v, want %q", bad, err, want)
		}
	}
	if err := CheckUserName("credvm.manifest"); err == nil {
		t.Error("the manifest's name is reserved")
	}
}

func TestManifest(t *testing.T) {
	creds := []Credential{{Name: "A", Value: []byte("one")}, {Name: "with space", Value: []byte{0, 1}}}
	m := Manifest(creds)
	entries, err := ParseManifest(m.Value)
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) != 2 || entries[1].Name != "with space" || entries[1].Size != 2 || entries[0].SHA256 != creds[0].Digest() {
		t.Errorf("entries = %+v", entries)
	}
	// Any cut is detected.
	for n := 0; n < len(m.Value); n++ {
		if _, err := ParseManifest(m.Value[:n]); err == nil {
			t.Errorf("a manifest cut to %d of %d bytes parsed", n, len(m.Value))
		}
	}
	if bytes.Contains(m.Value, []byte("one")) {
		t.Error("the manifest holds a value")
	}
}

func TestSMBIOSSize(t *testing.T) {
	// header 5 + "io.systemd.credential:A=x" (25) + NUL + final NUL
	c := []Credential{{Name: "A", Value: []byte("x")}}
	if got := SMBIOSSize(c); got != 5+25+1+1 {
		t.Errorf("SMBIOSSize = %d", got)
	}
}

func creds(n, size int) []Credential {
	var out []Credential
	for i := range n {
		out = append(out, Credential{Name: "C" + strings.Repeat("x", i%5) + string(rune('A'+i%26)) + string(rune('a'+i/26)), Value: bytes.Repeat([]byte("v"), size)})
	}
	return out
}

func TestPlanQEMU(t *testing.T) {
	tests := []struct {
		name      string
		creds     []Credential
		o         QEMUOptions
		transport Transport
		slots     int
		err       string
	}{
		{"small on q35", creds(3, 40), QEMUOptions{Machine: "q35", Transport: "auto"}, SMBIOS, 0, ""},
		{"over budget", creds(1, 5000), QEMUOptions{Machine: "q35", Transport: "auto"}, FwCfg, 0, ""},
		{"newer guest", creds(1, 5000), QEMUOptions{Machine: "q35", Transport: "auto", GuestSystemd: 257}, SMBIOS, 0, ""},
		{"253 is not trusted", creds(1, 5000), QEMUOptions{Machine: "q35", Transport: "auto", GuestSystemd: 253}, FwCfg, 0, ""},
		{"microvm", creds(2, 10), QEMUOptions{Machine: "microvm", Transport: "auto"}, FwCfg, 0, ""},
		{"many on q35", creds(20, 10), QEMUOptions{Machine: "q35", Transport: "fw_cfg"}, FwCfg, 64, ""},
		{"many on microvm", creds(30, 10), QEMUOptions{Machine: "microvm", Transport: "auto"}, FwCfg, 64, ""},
		{"strings limit", creds(300, 1), QEMUOptions{Machine: "q35", Transport: "auto", GuestSystemd: 257}, FwCfg, 333, ""},
		{"forced smbios too big", creds(1, 5000), QEMUOptions{Machine: "q35", Transport: "smbios", VM: "v"}, "", 0, "vm v: cannot use the forced transport smbios: the credentials need"},
		{"fw_cfg name too long", []Credential{{Name: strings.Repeat("N", 29), Value: []byte("x")}}, QEMUOptions{Machine: "q35", Transport: "fw_cfg", VM: "v"}, "", 0, "cannot travel by fw_cfg: its name is 29 bytes and fw_cfg allows 28"},
		{"too big for systemd", creds(1, 1<<20+1), QEMUOptions{Machine: "q35", Transport: "auto", VM: "v"}, "", 0, "systemd accepts at most 1048576 per credential"},
		{"total too big", creds(3, 400000), QEMUOptions{Machine: "q35", Transport: "auto", VM: "v"}, "", 0, "for all of them together"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, err := PlanQEMU(tt.creds, tt.o)
			if tt.err != "" {
				if err == nil || !strings.Contains(err.Error(), tt.err) {
					t.Fatalf("err = %v, want %q", err, tt.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if p.Transport != tt.transport || p.FwCfgSlots != tt.slots {
				t.Errorf("transport %s slots %d (%s), want %s slots %d", p.Transport, p.FwCfgSlots, p.Why, tt.transport, tt.slots)
			}
			if p.Credentials[0].Name != ManifestName || len(p.Credentials) != len(tt.creds)+1 {
				t.Errorf("the manifest must travel first, with every credential")
			}
			if p.Transport == SMBIOS && p.SMBIOSSize > p.SMBIOSBudget {
				t.Errorf("SMBIOS chosen over budget: %d > %d", p.SMBIOSSize, p.SMBIOSBudget)
			}
		})
	}
}
