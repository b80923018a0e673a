package qemu

import (
	"bytes"
	"strings"
	"testing"

	"github.com/credvm/credvm/internal/cred"
	"github.com/credvm/credvm/internal/testenv"
)

func creds(n, size int) []cred.Credential {
	var out []cred.Credential
	for i := range n {
		out = append(out, cred.Credential{Name: "C" + strings.Repeat("x", i%5) + string(rune('A'+i%26)) + string(rune('a'+i/26)), Value: bytes.Repeat([]byte("v"), size)})
	}
	return out
}

func TestPlan(t *testing.T) {
	tests := []struct {
		name      string
		creds     []cred.Credential
		o         Options
		transport cred.Transport
		slots     int
		err       string
	}{
		{"small on q35", creds(3, 40), Options{Machine: "q35", Transport: "auto"}, SMBIOS, 0, ""},
		{"over budget", creds(1, 5000), Options{Machine: "q35", Transport: "auto"}, FwCfg, 0, ""},
		{"newer guest", creds(1, 5000), Options{Machine: "q35", Transport: "auto", GuestSystemd: 257}, SMBIOS, 0, ""},
		{"253 is not trusted", creds(1, 5000), Options{Machine: "q35", Transport: "auto", GuestSystemd: 253}, FwCfg, 0, ""},
		{"microvm", creds(2, 10), Options{Machine: "microvm", Transport: "auto"}, FwCfg, 0, ""},
		{"many on q35", creds(20, 10), Options{Machine: "q35", Transport: "fw_cfg"}, FwCfg, 64, ""},
		{"many on microvm", creds(30, 10), Options{Machine: "microvm", Transport: "auto"}, FwCfg, 64, ""},
		{"strings limit", creds(300, 1), Options{Machine: "q35", Transport: "auto", GuestSystemd: 257}, FwCfg, 333, ""},
		{"forced smbios too big", creds(1, 5000), Options{Machine: "q35", Transport: "smbios", VM: "v"}, "", 0, "vm v: cannot use the forced transport smbios: the credentials need"},
		{"fw_cfg name too long", []cred.Credential{{Name: strings.Repeat("N", 29), Value: []byte("x")}}, Options{Machine: "q35", Transport: "fw_cfg", VM: "v"}, "", 0, "cannot travel by fw_cfg: its name is 29 bytes and fw_cfg allows 28"},
		{"too big for systemd", creds(1, 1<<20+1), Options{Machine: "q35", Transport: "auto", VM: "v"}, "", 0, "systemd accepts at most 1048576 per credential"},
		{"total too big", creds(3, 400000), Options{Machine: "q35", Transport: "auto", VM: "v"}, "", 0, "for all of them together"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, err := Plan(tt.creds, tt.o)
			if testenv.ExpectError(t, err, tt.err) {
				return
			}
			if slots := fwCfgSlots(tt.o.Machine, len(p.Credentials)); p.Transport != tt.transport || (p.Transport == FwCfg && slots != tt.slots) {
				t.Errorf("transport %s slots %d (%s), want %s slots %d", p.Transport, slots, p.Why, tt.transport, tt.slots)
			}
			if p.Credentials[0].Name != cred.ManifestName || len(p.Credentials) != len(tt.creds)+1 {
				t.Errorf("the manifest must travel first, with every credential")
			}
			if p.Transport == SMBIOS && p.SMBIOSSize > p.SMBIOSBudget {
				t.Errorf("SMBIOS chosen over budget: %d > %d", p.SMBIOSSize, p.SMBIOSBudget)
			}
		})
	}
}
