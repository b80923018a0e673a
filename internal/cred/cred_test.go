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
