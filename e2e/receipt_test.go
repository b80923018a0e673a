package e2e

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/credvm/credvm/internal/cred"
)

// waitDelivery waits until status says something of the guest's
// credentials other than "no receipt yet", and returns it.
func (r *repo) waitDelivery(t *testing.T, name string) string {
	t.Helper()
	deadline := time.Now().Add(3 * time.Minute)
	for {
		var sts []struct {
			Delivery string `json:"delivery"`
		}
		json.Unmarshal([]byte(r.credvm("status", name, "--state-dir", r.state, "--json")), &sts)
		if len(sts) == 1 && sts[0].Delivery != "" && !strings.Contains(sts[0].Delivery, "no receipt") {
			return sts[0].Delivery
		}
		if time.Now().After(deadline) {
			t.Fatalf("no receipt from %s's guest:\n%s", name, r.credvm("status", name, "--state-dir", r.state))
		}
		time.Sleep(300 * time.Millisecond)
	}
}

// TestReceipt: the guest's word comes back over its io.credvm.0 port —
// from the fast guest and from systemd 252 running `credvm guest report` —
// and list and status show it: "verified", or, when a wrongly declared
// newer systemd made SMBIOS cut a credential, "credentials cut: NAME".
func TestReceipt(t *testing.T) {
	needGuests(t)
	for _, guest := range []string{"fast", "systemd"} {
		t.Run(guest, func(t *testing.T) {
			t.Parallel()
			r := newRepo(t)
			section := vmSection(guest)
			if guest == "fast" {
				section = fastGuest("credvm.idle")
			}
			// The systemd test guest powers off after its report: its
			// receipt is read from the last run's record.
			r.machine("ok", section+"[credentials]\nAPI_KEY = { value = \"k\" }\nDB_USER = { value = \"u\" }\n")
			cut := smbiosFilling(t, "API_KEY", cred.SMBIOSBudget252+16)
			p := filepath.Join(r.dir, "big")
			os.WriteFile(p, cut, 0o600)
			r.machine("cut", vmSection(guest, "guest_systemd = 257")+"[credentials]\nAPI_KEY = { file = "+strconv.Quote(p)+" }\n")
			for _, tc := range []struct{ name, want string }{{"ok", "verified"}, {"cut", "credentials cut: API_KEY"}} {
				if guest == "fast" && tc.name == "ok" {
					r.credvm("create", "ok", "--state-dir", r.state)
					r.credvm("start", "ok", "--state-dir", r.state, "--shutdown-timeout", "2s")
					t.Cleanup(func() { r.credvmErr("stop", "ok", "--state-dir", r.state) })
					if got := r.waitDelivery(t, "ok"); got != tc.want {
						t.Errorf("%s: delivery %q, want %q", tc.name, got, tc.want)
					}
					if list := r.credvm("list", "--state-dir", r.state); !strings.Contains(list, "verified") {
						t.Errorf("list does not say verified:\n%s", list)
					}
					r.credvm("stop", "ok", "--state-dir", r.state)
					continue
				}
				b := r.run(tc.name)
				if !strings.Contains(b.stderr, "the guest's receipt: "+tc.want) {
					t.Errorf("%s: the run did not report %q:\n%s\n%s", tc.name, tc.want, b.stderr, grepLines(b.console, "credvm-guest:"))
				}
				raw, _ := os.ReadFile(filepath.Join(r.state, tc.name, "run.json"))
				if !bytes.Contains(raw, []byte(`"receipt"`)) {
					t.Errorf("%s: no receipt in run.json:\n%s", tc.name, raw)
				}
			}
		})
	}
}

// TestRotateWaitsForReceipt: rotate's default health check is the guest's
// receipt of the new credentials; one the guest reports cut fails it.
func TestRotateWaitsForReceipt(t *testing.T) {
	needGuests(t)
	t.Parallel()
	r := newRepo(t)
	// 5,000 bytes of hex over SMBIOS to a guest wrongly declared newer
	// than systemd 252, which reads 4 KiB of it.
	r.machine("rot", fastGuest("credvm.idle", "guest_systemd = 257")+`
[vars.generators.big]
script = 'head -c 2500 /dev/urandom | od -An -tx1 | tr -d " \n" > "$out/v"'
files.v = {}
[credentials]
BIG = { var = "big/v" }
`)
	r.credvm("vars", "generate", "rot")
	r.credvm("create", "rot", "--state-dir", r.state)
	r.credvm("start", "rot", "--state-dir", r.state, "--shutdown-timeout", "2s")
	t.Cleanup(func() { r.credvmErr("stop", "rot", "--state-dir", r.state) })
	if got := r.waitDelivery(t, "rot"); got != "credentials cut: BIG" {
		t.Fatalf("delivery %q, want the cut named", got)
	}
	if list := r.credvm("list", "--state-dir", r.state); !strings.Contains(list, "credentials cut: BIG") {
		t.Errorf("list does not name the cut:\n%s", list)
	}
	out, err := r.credvmErr("rotate", "rot", "--state-dir", r.state)
	if err == nil || !strings.Contains(out, "vm rot: its guest reports credentials cut: BIG") {
		t.Errorf("rotate passed its health check on a cut credential: %v\n%s", err, out)
	}
}
