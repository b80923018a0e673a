// Package guest is credvm's side inside a VM: it reads the credentials the
// hypervisor passed — SMBIOS type 11 OEM strings, QEMU fw_cfg files, and
// what systemd imported into /run/credentials/@system — by the rules
// systemd uses, and verifies them against credvm's manifest, so a guest can
// prove that nothing was cut or dropped on the way.
//
// It reports names, sizes and digests; it never prints a value.
package guest

import (
	"bytes"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"

	"github.com/credvm/credvm/internal/cred"
)

// Default locations in a guest.
const (
	SMBIOSGlob   = "/sys/firmware/dmi/entries/11-*/raw"
	FwCfgDir     = "/sys/firmware/qemu_fw_cfg/by_name/opt/io.systemd.credentials"
	SystemCreds  = "/run/credentials/@system"
	ProcCmdline  = "/proc/cmdline"
	smbiosHeader = 4 // type, length, handle; the formatted area's length is in byte 1
)

// Found is one credential as found in a source.
type Found struct {
	Name   string `json:"name"`
	Size   int    `json:"size"`
	SHA256 string `json:"sha256,omitempty"`
	Source string `json:"source"`
	// Secret: the manifest says it is one, or it is not in the manifest
	// (nothing says it is public). Its digest is not printed: see
	// cred.ManifestEntry.
	Secret bool `json:"secret"`
	value  []byte
}

// Classify marks each credential secret or public by the manifest among
// them; without a manifest, all are secret.
func Classify(creds []Found) []Found {
	public := map[string]bool{cred.ManifestName: true}
	for _, c := range creds {
		if c.Name != cred.ManifestName {
			continue
		}
		if entries, err := cred.ParseManifest(c.value); err == nil {
			for _, e := range entries {
				public[e.Name] = !e.Secret
			}
		}
	}
	out := make([]Found, len(creds))
	for i, c := range creds {
		c.Secret = !public[c.Name]
		out[i] = c
	}
	return out
}

// Shown is the digest to print for c: "secret" for a secret unless
// showSecrets (test guests only).
func (c Found) Shown(showSecrets bool) string {
	if c.Secret && !showSecrets {
		return "secret"
	}
	return c.SHA256
}

func found(name string, v []byte, source string) Found {
	sum := sha256.Sum256(v)
	return Found{Name: name, Size: len(v), SHA256: hex.EncodeToString(sum[:]), Source: source, value: v}
}

// Read reads credentials from a source: "system" (what systemd
// imported), "firmware" (fw_cfg, SMBIOS and the kernel command line, as
// systemd merges them), "smbios", "fw_cfg", "cmdline", or "auto" (system
// once systemd has imported, else firmware).
func (r *Reader) Read(source string) ([]Found, error) {
	switch source {
	case "smbios":
		return r.SMBIOS()
	case "fw_cfg":
		return r.FwCfg()
	case "cmdline":
		return r.Cmdline()
	case "system":
		return r.System()
	case "firmware":
		return r.Merged()
	case "auto", "":
		if _, err := os.Stat(r.path(SystemCreds)); err == nil {
			return r.System()
		}
		return r.Merged()
	}
	return nil, fmt.Errorf("unknown source %q: use auto, system, firmware, smbios, fw_cfg or cmdline", source)
}

// Reader reads credentials from a root (normally "/", a directory in tests).
type Reader struct {
	Root string
	// SMBIOSSingleRead reads each SMBIOS raw file with one read() as
	// systemd ≤ 252 does — the kernel then returns at most 4,096 bytes —
	// so the result is what such a systemd imports. False reads it whole.
	SMBIOSSingleRead bool
}

func (r *Reader) path(p string) string { return filepath.Join(r.Root, p) }

// SMBIOS returns the credentials in SMBIOS type-11 structures.
func (r *Reader) SMBIOS() ([]Found, error) {
	files, err := filepath.Glob(r.path(SMBIOSGlob))
	if err != nil {
		return nil, err
	}
	sort.Strings(files)
	var out []Found
	for _, f := range files {
		raw, err := r.readSMBIOS(f)
		if err != nil {
			return nil, err
		}
		creds, err := ParseType11(raw)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", f, err)
		}
		out = append(out, creds...)
	}
	return out, nil
}

func (r *Reader) readSMBIOS(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	if !r.SMBIOSSingleRead {
		return io.ReadAll(f)
	}
	buf := make([]byte, 64<<10)
	n, err := f.Read(buf)
	if err != nil && !errors.Is(err, io.EOF) {
		return nil, err
	}
	return buf[:n], nil
}

// ParseType11 parses one SMBIOS type-11 structure (as in sysfs raw) and
// returns the systemd credentials among its strings, by systemd's rules:
// a string "io.systemd.credential:NAME=VALUE" or
// "io.systemd.credential.binary:NAME=BASE64"; the first "=" ends the name;
// strings with invalid names are skipped, as systemd skips them. A
// structure cut short (no terminating NUL) yields the strings up to the cut,
// the last one cut too — exactly what systemd would import.
func ParseType11(raw []byte) ([]Found, error) {
	if len(raw) < 5 || raw[0] != 11 {
		return nil, errors.New("not an SMBIOS type 11 structure")
	}
	hlen := int(raw[1])
	if hlen < 5 || hlen > len(raw) {
		return nil, errors.New("SMBIOS type 11 structure with a bad length")
	}
	var out []Found
	for rest := raw[hlen:]; len(rest) > 0; {
		i := bytes.IndexByte(rest, 0)
		var s []byte
		if i < 0 {
			s, rest = rest, nil
		} else {
			s, rest = rest[:i], rest[i+1:]
		}
		if len(s) == 0 {
			break // the double NUL ending the string set
		}
		if c, ok := parseSMBIOSString(s); ok {
			out = append(out, c)
		}
	}
	return out, nil
}

func parseSMBIOSString(s []byte) (Found, bool) {
	binary := false
	var body []byte
	switch {
	case bytes.HasPrefix(s, []byte(cred.SMBIOSBinaryPrefix)):
		binary, body = true, s[len(cred.SMBIOSBinaryPrefix):]
	case bytes.HasPrefix(s, []byte(cred.SMBIOSTextPrefix)):
		body = s[len(cred.SMBIOSTextPrefix):]
	default:
		return Found{}, false
	}
	i := bytes.IndexByte(body, '=')
	if i < 0 {
		return Found{}, false
	}
	name, v := string(body[:i]), body[i+1:]
	if cred.CheckName(name) != nil {
		return Found{}, false
	}
	if binary {
		d, err := base64.StdEncoding.DecodeString(string(v))
		if err != nil {
			return Found{}, false
		}
		v = d
	}
	return found(name, v, "smbios"), true
}

// FwCfg returns the credentials QEMU passed as fw_cfg files. The
// qemu_fw_cfg module must be loaded (systemd loads it itself).
func (r *Reader) FwCfg() ([]Found, error) {
	return r.dir(r.path(FwCfgDir), "fw_cfg", "raw")
}

// System returns what systemd imported into /run/credentials/@system.
func (r *Reader) System() ([]Found, error) {
	return r.dir(r.path(SystemCreds), "system", "")
}

func (r *Reader) dir(dir, source, leaf string) ([]Found, error) {
	entries, err := os.ReadDir(dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var out []Found
	for _, e := range entries {
		p := filepath.Join(dir, e.Name(), leaf)
		v, err := os.ReadFile(p)
		if err != nil {
			return nil, err
		}
		out = append(out, found(e.Name(), v, source))
	}
	return out, nil
}

// Cmdline returns the credentials on the kernel command line.
func (r *Reader) Cmdline() ([]Found, error) {
	b, err := os.ReadFile(r.path(ProcCmdline))
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	return ParseCmdline(strings.TrimSpace(string(b))), nil
}

// ParseCmdline finds the credentials on a kernel command line as systemd
// imports them: systemd.set_credential=NAME:VALUE and (systemd ≥ 254)
// systemd.set_credential_binary=NAME:BASE64.
func ParseCmdline(cmdline string) []Found {
	var out []Found
	for _, w := range splitCmdline(cmdline) {
		if v, ok := strings.CutPrefix(w, "systemd.set_credential="); ok {
			name, val, _ := strings.Cut(v, ":")
			out = append(out, found(name, []byte(val), "cmdline"))
		} else if v, ok := strings.CutPrefix(w, "systemd.set_credential_binary="); ok {
			name, val, _ := strings.Cut(v, ":")
			if b, err := base64.StdEncoding.DecodeString(val); err == nil {
				out = append(out, found(name, b, "cmdline"))
			}
		}
	}
	return out
}

// splitCmdline splits a kernel command line as the kernel and systemd do:
// on spaces, with double quotes grouping (and removed).
func splitCmdline(s string) []string {
	var out []string
	var cur strings.Builder
	in, any := false, false
	for _, r := range s {
		switch {
		case r == '"':
			in, any = !in, true
		case r == ' ' && !in:
			if any {
				out = append(out, cur.String())
			}
			cur.Reset()
			any = false
		default:
			cur.WriteRune(r)
			any = true
		}
	}
	if any {
		out = append(out, cur.String())
	}
	return out
}

// Merged returns the credentials as systemd assembles them: fw_cfg
// first, then SMBIOS, then the kernel command line; the first source to
// set a name wins.
func (r *Reader) Merged() ([]Found, error) {
	fw, err := r.FwCfg()
	if err != nil {
		return nil, err
	}
	sm, err := r.SMBIOS()
	if err != nil {
		return nil, err
	}
	cl, err := r.Cmdline()
	if err != nil {
		return nil, err
	}
	seen := map[string]bool{}
	var out []Found
	for _, c := range slices.Concat(fw, sm, cl) {
		if !seen[c.Name] {
			seen[c.Name] = true
			out = append(out, c)
		}
	}
	return out, nil
}

// Problem is one credential that did not arrive whole.
type Problem struct {
	Name string `json:"name"`
	What string `json:"problem"`
}

func (p Problem) String() string { return p.Name + ": " + p.What }

// Verify checks found credentials against the manifest among them. It
// returns the credentials that match and the problems; an error means the
// manifest itself is missing or cut.
func Verify(creds []Found) (ok []Found, problems []Problem, err error) {
	byName := map[string]Found{}
	for _, c := range creds {
		byName[c.Name] = c
	}
	m, has := byName[cred.ManifestName]
	if !has {
		return nil, nil, fmt.Errorf("no %s credential: nothing to verify against (was the VM started by credvm?)", cred.ManifestName)
	}
	entries, err := cred.ParseManifest(m.value)
	if err != nil {
		return nil, nil, err
	}
	for _, e := range entries {
		c, has := byName[e.Name]
		switch {
		case !has:
			problems = append(problems, Problem{e.Name, fmt.Sprintf("missing (expected %d bytes)", e.Size)})
		case c.Size < e.Size && c.SHA256 != e.SHA256:
			problems = append(problems, Problem{e.Name, fmt.Sprintf("cut: %d of %d bytes arrived", c.Size, e.Size)})
		case c.SHA256 != e.SHA256 && e.Secret:
			problems = append(problems, Problem{e.Name, fmt.Sprintf("differs: %d bytes, expected %d bytes with another digest", c.Size, e.Size)})
		case c.SHA256 != e.SHA256:
			problems = append(problems, Problem{e.Name, fmt.Sprintf("differs: %d bytes with sha256 %s, expected %d bytes with sha256 %s", c.Size, c.SHA256[:16], e.Size, e.SHA256[:16])})
		default:
			ok = append(ok, c)
		}
	}
	return ok, problems, nil
}
