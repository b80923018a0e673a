// Package cred turns a VM's credentials into what a hypervisor hands the
// guest's systemd, and checks — before anything starts — that all of it
// will arrive whole.
//
// systemd (v252+) imports credentials from QEMU's fw_cfg
// (opt/io.systemd.credentials/NAME), from SMBIOS type 11 OEM strings
// (io.systemd.credential:NAME=VALUE, or .binary:NAME=<base64>) and from the
// kernel command line, in that order; the first source to set a name wins.
// Each transport has limits, some of them silent: systemd 252 reads only the
// first 4,096 bytes of the SMBIOS type-11 structure and drops or cuts the
// rest without a word (see DESIGN.md §3). So the planner here computes the
// exact size of what it sends, chooses a transport that carries all of it,
// and refuses when none does. It never chooses a transport that would cut.
//
// A manifest credential (credvm.manifest: name, size and SHA-256 of every
// other credential) travels first, so the guest can prove that nothing was
// cut or dropped (`credvm guest verify`). It holds digests, never values.
package cred

import (
	"bytes"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"unicode/utf8"
)

// Credential is one systemd credential for a guest.
type Credential struct {
	Name  string
	Value []byte
	// Secret values must travel by a transport no other local user (host)
	// or unprivileged guest process can read.
	Secret bool
	// Source says where the value came from, for messages: "var gen/file",
	// "value", "file /path". Never the value.
	Source string
	// ForceBinary asks for the base64 form even when text would do.
	ForceBinary bool
}

// Limits from systemd's src/shared/creds-util.h.
const (
	MaxCredentialSize = 1 << 20 // per credential, after decoding
	MaxTotalSize      = 1 << 20 // all credentials of the system together
)

// SMBIOS prefixes systemd recognises in type-11 strings.
const (
	SMBIOSTextPrefix   = "io.systemd.credential:"
	SMBIOSBinaryPrefix = "io.systemd.credential.binary:"
)

// ManifestName is the credential carrying the manifest.
const ManifestName = "credvm.manifest"

// IsBinary reports whether the value must travel base64-encoded in text
// transports: it holds a NUL (which ends an SMBIOS string) or is not UTF-8.
func (c *Credential) IsBinary() bool {
	return c.ForceBinary || bytes.IndexByte(c.Value, 0) >= 0 || !utf8.Valid(c.Value)
}

// SMBIOSString is the credential's SMBIOS type-11 string (without its
// terminating NUL): the text form where it is safe, else the binary form
// with padded standard base64, which systemd requires.
func (c *Credential) SMBIOSString() []byte {
	if c.IsBinary() {
		return []byte(SMBIOSBinaryPrefix + c.Name + "=" + base64.StdEncoding.EncodeToString(c.Value))
	}
	return append([]byte(SMBIOSTextPrefix+c.Name+"="), c.Value...)
}

// Digest is the hex SHA-256 of the value.
func (c *Credential) Digest() string {
	sum := sha256.Sum256(c.Value)
	return hex.EncodeToString(sum[:])
}

// Check validates the credential's name and size.
func (c *Credential) Check() error {
	if err := CheckName(c.Name); err != nil {
		return err
	}
	if len(c.Value) > MaxCredentialSize {
		return fmt.Errorf("credential %s (%s) is %d bytes; systemd accepts at most %d per credential", c.Name, c.Source, len(c.Value), MaxCredentialSize)
	}
	return nil
}

// ManifestEntry is one line of a manifest.
type ManifestEntry struct {
	Name   string
	Size   int
	SHA256 string
	// Secret: the guest must not print its digest (a plain SHA-256 of a
	// low-entropy secret, a prompted password, is a brute-force away from
	// the secret). Entries of a version-1 manifest, which does not say,
	// count as secret.
	Secret bool
}

const (
	manifestHeader   = "credvm-manifest 2"
	manifestHeaderV1 = "credvm-manifest 1"
)

// Manifest builds the manifest credential for creds: a header line, one
// "<sha256> <size> secret|public <name>" line per credential (names may
// hold spaces but never newlines), and an "end <count>" line, so a cut
// manifest is itself detected. Only the guest's root reads it, and it
// holds no value — but the digests of secrets in it are printed by no one.
func Manifest(creds []Credential) Credential {
	var b strings.Builder
	b.WriteString(manifestHeader + "\n")
	for _, c := range creds {
		kind := "public"
		if c.Secret {
			kind = "secret"
		}
		fmt.Fprintf(&b, "%s %d %s %s\n", c.Digest(), len(c.Value), kind, c.Name)
	}
	fmt.Fprintf(&b, "end %d\n", len(creds))
	return Credential{Name: ManifestName, Value: []byte(b.String()), Source: "manifest"}
}

// ParseManifest parses a manifest, refusing one that is cut or malformed.
// A manifest may also arrive base64-encoded (transports that carry no
// newlines, such as the kernel command line).
func ParseManifest(b []byte) ([]ManifestEntry, error) {
	isManifest := func(b []byte) bool {
		return bytes.HasPrefix(b, []byte(manifestHeader)) || bytes.HasPrefix(b, []byte(manifestHeaderV1))
	}
	if !isManifest(b) {
		if d, err := base64.StdEncoding.DecodeString(string(b)); err == nil && isManifest(d) {
			b = d
		}
	}
	lines := strings.Split(string(b), "\n")
	v1 := len(lines) > 0 && lines[0] == manifestHeaderV1
	if len(lines) < 3 || (lines[0] != manifestHeader && !v1) {
		return nil, errors.New("manifest: missing header (cut, or not a credvm manifest)")
	}
	if lines[len(lines)-1] != "" {
		return nil, errors.New("manifest: last line is incomplete (the manifest was cut)")
	}
	lines = lines[1 : len(lines)-1]
	last := lines[len(lines)-1]
	if !strings.HasPrefix(last, "end ") {
		return nil, errors.New("manifest: no end line (the manifest was cut)")
	}
	n, err := strconv.Atoi(strings.TrimPrefix(last, "end "))
	if err != nil || n != len(lines)-1 {
		return nil, fmt.Errorf("manifest: end line says %q but it lists %d credentials", last, len(lines)-1)
	}
	var out []ManifestEntry
	for i, l := range lines[:len(lines)-1] {
		fields := 4
		if v1 {
			fields = 3
		}
		parts := strings.SplitN(l, " ", fields)
		if len(parts) != fields || len(parts[0]) != 64 {
			return nil, fmt.Errorf("manifest: line %d is malformed", i+2)
		}
		size, err := strconv.Atoi(parts[1])
		if err != nil || size < 0 {
			return nil, fmt.Errorf("manifest: line %d has a bad size", i+2)
		}
		e := ManifestEntry{Name: parts[fields-1], Size: size, SHA256: parts[0], Secret: true}
		if !v1 {
			switch parts[2] {
			case "public":
				e.Secret = false
			case "secret":
			default:
				return nil, fmt.Errorf("manifest: line %d says %q, not secret or public", i+2, parts[2])
			}
		}
		out = append(out, e)
	}
	return out, nil
}
