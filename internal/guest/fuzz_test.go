package guest

import (
	"bytes"
	"testing"

	"github.com/credvm/credvm/internal/cred"
)

// FuzzCredentialRoundTrip: whatever a credential holds, the SMBIOS string
// credvm builds parses back in the guest, by systemd's rules, to the same
// name and value, and verifies against the manifest.
func FuzzCredentialRoundTrip(f *testing.F) {
	f.Add("API_KEY", []byte("value"), false)
	f.Add("A", []byte{0, 1, 2, 0xff}, false)
	f.Add("with space", []byte("a,b=c\nd"), true)
	f.Add("x", []byte{}, false)
	f.Fuzz(func(t *testing.T, name string, value []byte, binary bool) {
		if cred.CheckName(name) != nil || name == cred.ManifestName {
			return
		}
		creds := []cred.Credential{{Name: name, Value: value, ForceBinary: binary}}
		all := append([]cred.Credential{cred.Manifest(creds)}, creds...)
		var strs [][]byte
		for i := range all {
			strs = append(strs, all[i].SMBIOSString())
		}
		got, err := ParseType11(type11(strs...))
		if err != nil {
			t.Fatal(err)
		}
		if len(got) != 2 || got[1].Name != name || !bytes.Equal(got[1].value, value) {
			t.Fatalf("round trip of %q=%q: got %+v", name, value, got)
		}
		if _, problems, err := Verify(got); err != nil || len(problems) > 0 {
			t.Fatalf("verify: %v %v", problems, err)
		}
	})
}

// FuzzParseType11: arbitrary (also cut) SMBIOS raw data never panics, and
// every credential it yields has a valid name.
func FuzzParseType11(f *testing.F) {
	f.Add(type11([]byte("io.systemd.credential:A=b"), []byte("io.systemd.credential.binary:B=AAE=")))
	f.Add([]byte{11, 5, 0, 0, 1, 'x'})
	f.Add([]byte{11, 200})
	f.Fuzz(func(t *testing.T, raw []byte) {
		got, err := ParseType11(raw)
		if err != nil {
			return
		}
		for _, c := range got {
			if cred.CheckName(c.Name) != nil {
				t.Fatalf("invalid name %q accepted", c.Name)
			}
		}
		Verify(got)
	})
}
