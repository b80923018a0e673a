package sops

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"filippo.io/age"

	"github.com/credvm/credvm/internal/testenv"
)

func fixtureIdentity(t *testing.T) (string, []age.Identity) {
	t.Helper()
	p := testenv.Fixture(t, "clan-service-dummy", "admin-age-key.txt")
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	ids, err := age.ParseIdentities(bytes.NewReader(b))
	if err != nil {
		t.Fatal(err)
	}
	return p, ids
}

func readFixture(t *testing.T, rel string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(testenv.Fixture(t, "clan-service-dummy"), rel))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestClanFixture decrypts files written by clan's own `clan vars generate`
// (sops 3.10.2), both as the admin and as the machine, as clan does.
func TestClanFixture(t *testing.T) {
	_, admin := fixtureIdentity(t)

	got, err := Decrypt(readFixture(t, "vars/per-machine/peer1/new-service/a-secret/secret"), admin)
	if err != nil {
		t.Fatal(err)
	}
	if string(got) != "a-secret" {
		t.Errorf("a-secret = %q, want %q", got, "a-secret")
	}

	// As the machine: the admin opens peer1's private key, which opens peer1's vars.
	machineKey, err := Decrypt(readFixture(t, "sops/secrets/peer1-age.key/secret"), admin)
	if err != nil {
		t.Fatal(err)
	}
	peer1, err := age.ParseIdentities(bytes.NewReader(machineKey))
	if err != nil {
		t.Fatalf("peer1 key does not parse as an age identity: %v", err)
	}
	pw, err := Decrypt(readFixture(t, "vars/per-machine/peer1/dummy-generator/generated-password/secret"), peer1)
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(pw)
	if h := hex.EncodeToString(sum[:]); len(pw) != 6 || !strings.HasPrefix(h, "9c4d3b6a") || !strings.HasSuffix(h, "c876aff0") {
		t.Errorf("generated-password: %d bytes, sha256 %s; want 6 bytes, 9c4d3b6a…c876aff0", len(pw), h)
	}

	// peer1's key must not open admin1's vars.
	_, err = Decrypt(readFixture(t, "vars/per-machine/admin1/dummy-generator/generated-password/secret"), peer1)
	if !errors.Is(err, ErrNoIdentity) {
		t.Errorf("decrypting admin1's secret with peer1's key: err = %v, want ErrNoIdentity", err)
	}
}

func newIdentity(t *testing.T) *age.X25519Identity {
	t.Helper()
	id, err := age.GenerateX25519Identity()
	if err != nil {
		t.Fatal(err)
	}
	return id
}

func TestRoundTrip(t *testing.T) {
	a, b := newIdentity(t), newIdentity(t)
	rcpts := []string{a.Recipient().String(), b.Recipient().String()}
	for _, pt := range [][]byte{
		[]byte("hunter2"),
		{},
		{0, 1, 2, 0xff, 0xfe, '\n', 0},
		bytes.Repeat([]byte("x"), 1<<20),
	} {
		enc, err := Encrypt(pt, AgeAll(rcpts...))
		if err != nil {
			t.Fatal(err)
		}
		if bytes.Contains(enc, pt) && len(pt) > 3 {
			t.Fatalf("plaintext appears in the encrypted file")
		}
		for _, id := range []age.Identity{a, b} {
			got, err := Decrypt(enc, []age.Identity{id})
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, pt) {
				t.Fatalf("round trip of %d bytes returned %d bytes", len(pt), len(got))
			}
		}
		got, err := Recipients(enc)
		if err != nil || strings.Join(Keys(got), ",") != strings.Join(rcpts, ",") {
			t.Fatalf("Recipients = %v, %v; want %v", got, err, rcpts)
		}
	}
}

// TestTamper checks that every kind of modification is refused, never
// returned as plaintext.
func TestTamper(t *testing.T) {
	id := newIdentity(t)
	enc, err := Encrypt([]byte("the secret"), AgeAll(id.Recipient().String()))
	if err != nil {
		t.Fatal(err)
	}
	var f map[string]any
	if err := json.Unmarshal(enc, &f); err != nil {
		t.Fatal(err)
	}
	other, err := Encrypt([]byte("another secret"), AgeAll(id.Recipient().String()))
	if err != nil {
		t.Fatal(err)
	}
	var g map[string]any
	json.Unmarshal(other, &g)

	tests := []struct {
		name   string
		mutate func(f, md map[string]any)
		want   string
	}{
		{"data swapped from another file", func(f, md map[string]any) { f["data"] = g["data"] }, "authentication failed"},
		{"mac swapped from another file", func(f, md map[string]any) { md["mac"] = g["sops"].(map[string]any)["mac"] }, "MAC mismatch"},
		{"lastmodified changed", func(f, md map[string]any) { md["lastmodified"] = "2001-01-01T00:00:00Z" }, "MAC mismatch"},
		{"mac removed", func(f, md map[string]any) { md["mac"] = "" }, "MAC mismatch"},
		{"data emptied", func(f, md map[string]any) { f["data"] = "" }, "MAC mismatch"},
		{"extra key", func(f, md map[string]any) { f["other"] = "x" }, "not a sops binary-store file"},
		{"no metadata", func(f, md map[string]any) { delete(f, "sops") }, "no \"sops\" metadata"},
		{"garbage value", func(f, md map[string]any) { f["data"] = "ENC[AES256_GCM,data:!!,iv:x,tag:y,type:str]" }, "bad base64"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var f2 map[string]any
			json.Unmarshal(enc, &f2)
			tt.mutate(f2, f2["sops"].(map[string]any))
			b, _ := json.Marshal(f2)
			got, err := Decrypt(b, []age.Identity{id})
			if err == nil {
				t.Fatalf("tampered file decrypted to %q", got)
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Errorf("err = %v, want it to contain %q", err, tt.want)
			}
		})
	}
}

// TestInteropWithSops runs the real sops CLI: it must decrypt what we write,
// and we must decrypt what it writes, including NUL bytes and the empty file.
func TestInteropWithSops(t *testing.T) {
	sops := testenv.Tool(t, "sops")
	dir := t.TempDir()
	id := newIdentity(t)
	keyFile := filepath.Join(dir, "keys.txt")
	if err := os.WriteFile(keyFile, []byte(id.String()+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	run := func(stdin []byte, args ...string) ([]byte, error) {
		cmd := exec.Command(sops, args...)
		cmd.Env = append(os.Environ(), "SOPS_AGE_KEY_FILE="+keyFile, "SOPS_CONFIG=/dev/null")
		cmd.Stdin = bytes.NewReader(stdin)
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		out, err := cmd.Output()
		if err != nil {
			return nil, errors.New(err.Error() + ": " + stderr.String())
		}
		return out, nil
	}

	for _, pt := range [][]byte{[]byte("plain ascii"), {0, 'a', 0, 0xff, '\n'}, []byte("ünïcödé,=\n")} {
		// ours → sops
		enc, err := Encrypt(pt, AgeAll(id.Recipient().String()))
		if err != nil {
			t.Fatal(err)
		}
		p := filepath.Join(dir, "ours")
		os.WriteFile(p, enc, 0o600)
		got, err := run(nil, "decrypt", "--input-type", "binary", "--output-type", "binary", p)
		if err != nil {
			t.Fatalf("sops cannot decrypt our file: %v", err)
		}
		if !bytes.Equal(got, pt) {
			t.Fatalf("sops decrypted %q, want %q", got, pt)
		}

		// sops → ours
		p2 := filepath.Join(dir, "plain")
		os.WriteFile(p2, pt, 0o600)
		enc2, err := run(nil, "encrypt", "--input-type", "binary", "--output-type", "binary", "--age", id.Recipient().String(), p2)
		if err != nil {
			t.Fatalf("sops encrypt: %v", err)
		}
		got, err = Decrypt(enc2, []age.Identity{id})
		if err != nil {
			t.Fatalf("we cannot decrypt sops's file: %v\n%s", err, enc2)
		}
		if !bytes.Equal(got, pt) {
			t.Fatalf("decrypted %q, want %q", got, pt)
		}

		// sops must refuse what we refuse: a tampered MAC.
		var f map[string]any
		json.Unmarshal(enc, &f)
		f["sops"].(map[string]any)["lastmodified"] = "2001-01-01T00:00:00Z"
		b, _ := json.Marshal(f)
		os.WriteFile(p, b, 0o600)
		if _, err := run(nil, "decrypt", "--input-type", "binary", "--output-type", "binary", p); err == nil || !strings.Contains(err.Error(), "MAC") {
			t.Errorf("sops accepted a file with a changed lastmodified: %v", err)
		}
	}

	// The file layout matches: same keys in the same order as sops writes.
	ours, _ := Encrypt([]byte("x"), AgeAll(id.Recipient().String()))
	p2 := filepath.Join(dir, "plain")
	os.WriteFile(p2, []byte("x"), 0o600)
	theirs, err := run(nil, "encrypt", "--input-type", "binary", "--output-type", "binary", "--age", id.Recipient().String(), p2)
	if err != nil {
		t.Fatal(err)
	}
	if a, b := keyOrder(t, ours), keyOrder(t, theirs); a != b {
		t.Errorf("key order differs:\nours:  %s\nsops:  %s", a, b)
	}
}

// keyOrder lists a JSON document's object keys, with their paths, in
// document order.
func keyOrder(t *testing.T, doc []byte) string {
	t.Helper()
	dec := json.NewDecoder(bytes.NewReader(doc))
	var keys []string
	var walk func(prefix string) error
	walk = func(prefix string) error {
		tok, err := dec.Token()
		if err != nil {
			return err
		}
		switch tok {
		case json.Delim('{'):
			for dec.More() {
				k, err := dec.Token()
				if err != nil {
					return err
				}
				keys = append(keys, prefix+k.(string))
				if err := walk(prefix + k.(string) + "."); err != nil {
					return err
				}
			}
			_, err = dec.Token()
		case json.Delim('['):
			for dec.More() {
				if err := walk(prefix + "[]."); err != nil {
					return err
				}
			}
			_, err = dec.Token()
		}
		return err
	}
	if err := walk(""); err != nil {
		t.Fatal(err)
	}
	return strings.Join(keys, ",")
}
