package cred

import "testing"

// FuzzParseManifest: a manifest parses only whole; any cut is detected;
// nothing panics.
func FuzzParseManifest(f *testing.F) {
	f.Add(Manifest([]Credential{{Name: "A", Value: []byte("x")}}).Value)
	f.Add([]byte("credvm-manifest 1\nend 0\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		entries, err := ParseManifest(b)
		if err != nil {
			return
		}
		for _, e := range entries {
			if e.Size < 0 || len(e.SHA256) != 64 {
				t.Fatalf("bad entry accepted: %+v", e)
			}
		}
	})
}
