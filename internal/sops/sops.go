// Package sops reads and writes the one kind of sops file clan's vars use:
// sops's binary store, a JSON object whose "data" key holds the whole
// plaintext, encrypted with AES-256-GCM under a random data key that is itself
// encrypted to a list of age recipients.
//
// Why our own codec: the getsops/sops/v3 Go module is not a library one can
// import lightly — its root package pulls in every cloud KMS client (a sops
// binary is 75 MB) — while the subset clan writes is small: the JSON store,
// age recipients, AES-256-GCM values with sops's 32-byte nonces, and the
// SHA-512 MAC over the plaintext values, itself encrypted with the file's
// lastmodified timestamp as additional data. Everything here is built on
// filippo.io/age and the standard library, and the tests prove it against the
// real sops CLI in both directions: what we write, sops decrypts; what sops
// writes, we decrypt.
//
// Recipients are age keys of every kind sops accepts — X25519, age plugins,
// OpenSSH ed25519 and RSA keys — and PGP keys, for which the sops binary
// (with gpg) writes and reads the file: see Recipient. What it refuses, with
// an error that says so: files that are not a binary store (other top-level
// keys), key groups with Shamir thresholds, and the cloud master key types
// (KMS, Vault). A file whose MAC does not match its content is refused — a
// tampered file is never returned as plaintext.
package sops

import (
	"bytes"
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"crypto/sha512"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"regexp"
	"strings"
	"sync"
	"time"

	"filippo.io/age"
	"filippo.io/age/armor"
)

// Version is written into the metadata of files we create. sops compares it
// only to warn about files from much newer versions; we claim the version we
// are tested against.
const Version = "3.13.3"

// dataKey is the only key of a binary-store file; its sops "path", and so the
// AES-GCM additional data of its value, is "data:".
const dataKey = "data"

const nonceSize = 32 // sops uses 32-byte GCM nonces, not the usual 12

// ErrNoIdentity is returned when none of the given identities can decrypt the
// file's data key.
var ErrNoIdentity = errors.New("no identity matches the file's recipients")

// ErrMAC is returned when the file's MAC does not match its content.
var ErrMAC = errors.New("MAC mismatch: the file was modified outside sops or is corrupt")

// ageKey's field order is sops 3.13's (alphabetical); older releases wrote
// recipient first, which reads the same.
type ageKey struct {
	Enc       string `json:"enc"`
	Recipient string `json:"recipient"`
}

// pgpKey is a PGP master key as sops writes it; only its fingerprint is
// read here.
type pgpKey struct {
	Fingerprint string `json:"fp"`
}

// metadata is the "sops" object. Field order is the order sops 3.13 emits.
type metadata struct {
	KMS               json.RawMessage `json:"kms,omitempty"`
	GCPKMS            json.RawMessage `json:"gcp_kms,omitempty"`
	AzureKV           json.RawMessage `json:"azure_kv,omitempty"`
	HCVault           json.RawMessage `json:"hc_vault,omitempty"`
	Age               []ageKey        `json:"age,omitempty"`
	LastModified      string          `json:"lastmodified"`
	MAC               string          `json:"mac"`
	PGP               []pgpKey        `json:"pgp,omitempty"`
	UnencryptedSuffix string          `json:"unencrypted_suffix,omitempty"`
	EncryptedSuffix   string          `json:"encrypted_suffix,omitempty"`
	UnencryptedRegex  string          `json:"unencrypted_regex,omitempty"`
	EncryptedRegex    string          `json:"encrypted_regex,omitempty"`
	MACOnlyEncrypted  bool            `json:"mac_only_encrypted,omitempty"`
	KeyGroups         json.RawMessage `json:"key_groups,omitempty"`
	ShamirThreshold   int             `json:"shamir_threshold,omitempty"`
	Version           string          `json:"version"`
}

type file struct {
	Data string    `json:"data"`
	Sops *metadata `json:"sops"`
}

// Encrypt returns a sops binary-store file holding plaintext, encrypted to
// every recipient. Recipients are written in the order given, which should
// be sorted by the caller for stable diffs. With a PGP recipient among
// them, the sops binary writes the file.
func Encrypt(plaintext []byte, recipients []Recipient) ([]byte, error) {
	if len(recipients) == 0 {
		return nil, errors.New("no recipients")
	}
	for _, r := range recipients {
		if r.Type == "pgp" {
			return encryptWithBinary(plaintext, recipients)
		}
	}
	key := make([]byte, 32)
	if _, err := rand.Read(key); err != nil {
		return nil, err
	}
	md := &metadata{
		LastModified: time.Now().UTC().Format(time.RFC3339),
		Version:      Version,
	}
	for _, r := range recipients {
		rcpt, err := ageRecipient(r.Key, false)
		if err != nil {
			return nil, err
		}
		enc, err := encryptDataKey(key, rcpt)
		if err != nil {
			return nil, fmt.Errorf("recipient %s: %w", r.Key, err)
		}
		md.Age = append(md.Age, ageKey{Recipient: r.Key, Enc: enc})
	}
	data, err := encryptValue(key, plaintext, dataKey+":")
	if err != nil {
		return nil, err
	}
	mac, err := encryptValue(key, []byte(macOf(plaintext)), md.LastModified)
	if err != nil {
		return nil, err
	}
	md.MAC = mac
	out, err := json.MarshalIndent(file{Data: data, Sops: md}, "", "\t")
	if err != nil {
		return nil, err
	}
	return append(out, '\n'), nil
}

// Decrypt returns the plaintext of a sops binary-store file, using the first
// identity that can open one of the file's age stanzas, and verifies the MAC.
// When none can and the file has PGP recipients, the sops binary tries
// (with gpg's keys).
func Decrypt(content []byte, identities []age.Identity) ([]byte, error) {
	f, err := parse(content)
	if err != nil {
		return nil, err
	}
	key, err := dataKeyFor(f.Sops, identities)
	if errors.Is(err, ErrNoIdentity) && len(f.Sops.PGP) > 0 {
		if _, berr := Binary(); berr == nil {
			return decryptWithBinary(content)
		}
	}
	if err != nil {
		return nil, err
	}
	plaintext, err := decryptValue(key, f.Data, dataKey+":")
	if err != nil {
		return nil, fmt.Errorf("decrypt data: %w", err)
	}
	if err := verifyMAC(key, f.Sops, plaintext); err != nil {
		return nil, err
	}
	return plaintext, nil
}

// Recipients lists the recipients a file is encrypted to: its age keys in
// file order, then its PGP keys.
func Recipients(content []byte) ([]Recipient, error) {
	f, err := parse(content)
	if err != nil {
		return nil, err
	}
	var out []Recipient
	for _, k := range f.Sops.Age {
		out = append(out, Age(k.Recipient))
	}
	for _, k := range f.Sops.PGP {
		out = append(out, Recipient{Type: "pgp", Key: strings.ToUpper(k.Fingerprint)})
	}
	return out, nil
}

func parse(content []byte) (*file, error) {
	dec := json.NewDecoder(bytes.NewReader(content))
	var raw map[string]json.RawMessage
	if err := dec.Decode(&raw); err != nil {
		return nil, fmt.Errorf("not a sops JSON file: %w", err)
	}
	if _, ok := raw["sops"]; !ok {
		return nil, errors.New("not a sops file: no \"sops\" metadata")
	}
	for k := range raw {
		if k != "sops" && k != dataKey {
			return nil, fmt.Errorf("not a sops binary-store file: unexpected key %q (only \"data\" is supported)", k)
		}
	}
	var f file
	if err := json.Unmarshal(content, &f); err != nil {
		return nil, fmt.Errorf("not a sops binary-store file: %w", err)
	}
	if f.Sops == nil {
		return nil, errors.New("not a sops file: empty \"sops\" metadata")
	}
	md := f.Sops
	switch {
	case len(md.KeyGroups) > 0 && string(md.KeyGroups) != "null":
		return nil, errors.New("sops key groups are not supported (clan does not use them)")
	case md.ShamirThreshold > 0:
		return nil, errors.New("sops Shamir thresholds are not supported")
	case md.EncryptedRegex != "" || md.UnencryptedRegex != "" || md.EncryptedSuffix != "":
		return nil, errors.New("sops files with encrypted/unencrypted regexes are not supported")
	}
	if len(md.Age) == 0 && len(md.PGP) == 0 {
		return nil, errors.New("the file has no age or PGP recipients (cloud KMS keys are not supported)")
	}
	return &f, nil
}

func dataKeyFor(md *metadata, identities []age.Identity) ([]byte, error) {
	if len(identities) == 0 {
		return nil, ErrNoIdentity
	}
	var lastErr error
	for _, k := range md.Age {
		r, err := age.Decrypt(armor.NewReader(strings.NewReader(k.Enc)), identities...)
		if err != nil {
			lastErr = err
			continue
		}
		key, err := io.ReadAll(io.LimitReader(r, 64))
		if err != nil {
			return nil, fmt.Errorf("data key for %s: %w", k.Recipient, err)
		}
		if len(key) != 32 {
			return nil, fmt.Errorf("data key for %s: %d bytes, want 32", k.Recipient, len(key))
		}
		return key, nil
	}
	var noMatch *age.NoIdentityMatchError
	if errors.As(lastErr, &noMatch) || lastErr == nil {
		return nil, ErrNoIdentity
	}
	return nil, fmt.Errorf("data key: %w", lastErr)
}

func verifyMAC(key []byte, md *metadata, plaintext []byte) error {
	// sops parses lastmodified and formats it again as RFC 3339 for the
	// additional data, which drops any fractional seconds.
	ad := md.LastModified
	if t, err := time.Parse(time.RFC3339, md.LastModified); err == nil {
		ad = t.Format(time.RFC3339)
	}
	var want []byte
	if md.MACOnlyEncrypted {
		want = []byte(macOnlyEncrypted(plaintext))
	} else {
		want = []byte(macOf(plaintext))
	}
	got, err := decryptValue(key, md.MAC, ad)
	if err != nil {
		return fmt.Errorf("%w (cannot decrypt the MAC: %v)", ErrMAC, err)
	}
	if !bytes.Equal(got, want) {
		return ErrMAC
	}
	return nil
}

// macOf is sops's MAC: the upper-case hex SHA-512 over every value's bytes in
// tree order. A binary store has exactly one value.
func macOf(plaintext []byte) string {
	h := sha512.New()
	h.Write(plaintext)
	return fmt.Sprintf("%X", h.Sum(nil))
}

// macOnlyEncryptedInit is the prefix sops hashes first when
// mac_only_encrypted is set, so such a MAC never equals the default one.
var macOnlyEncryptedInit = []byte{0x8a, 0x3f, 0xd2, 0xad, 0x54, 0xce, 0x66, 0x52, 0x7b, 0x10, 0x34, 0xf3, 0xd1, 0x47, 0xbe, 0xb, 0xb, 0x97, 0x5b, 0x3b, 0xf4, 0x4f, 0x72, 0xc6, 0xfd, 0xad, 0xec, 0x81, 0x76, 0xf2, 0x7d, 0x69}

func macOnlyEncrypted(plaintext []byte) string {
	h := sha512.New()
	h.Write(macOnlyEncryptedInit)
	h.Write(plaintext)
	return fmt.Sprintf("%X", h.Sum(nil))
}

func encryptDataKey(key []byte, r age.Recipient) (string, error) {
	b, err := EncryptArmored(key, r)
	return string(b), err
}

// encRe is compiled on first use, not at start-up: most commands never
// decrypt.
var encRe = sync.OnceValue(func() *regexp.Regexp {
	return regexp.MustCompile(`^ENC\[AES256_GCM,data:(.*),iv:(.+),tag:(.+),type:(.+)\]$`)
})

// encryptValue encrypts one value the way sops does. sops leaves empty
// values unencrypted (as ""), and so do we.
func encryptValue(key, plaintext []byte, additionalData string) (string, error) {
	if len(plaintext) == 0 {
		return "", nil
	}
	block, err := aes.NewCipher(key)
	if err != nil {
		return "", err
	}
	gcm, err := cipher.NewGCMWithNonceSize(block, nonceSize)
	if err != nil {
		return "", err
	}
	iv := make([]byte, nonceSize)
	if _, err := rand.Read(iv); err != nil {
		return "", err
	}
	out := gcm.Seal(nil, iv, plaintext, []byte(additionalData))
	n := len(out) - gcm.Overhead()
	return fmt.Sprintf("ENC[AES256_GCM,data:%s,iv:%s,tag:%s,type:str]",
		base64.StdEncoding.EncodeToString(out[:n]),
		base64.StdEncoding.EncodeToString(iv),
		base64.StdEncoding.EncodeToString(out[n:])), nil
}

func decryptValue(key []byte, value, additionalData string) ([]byte, error) {
	if value == "" {
		return nil, nil
	}
	m := encRe().FindStringSubmatch(value)
	if m == nil {
		return nil, errors.New("value is not in sops's ENC[AES256_GCM,…] format")
	}
	data, err1 := base64.StdEncoding.DecodeString(m[1])
	iv, err2 := base64.StdEncoding.DecodeString(m[2])
	tag, err3 := base64.StdEncoding.DecodeString(m[3])
	if err := errors.Join(err1, err2, err3); err != nil {
		return nil, fmt.Errorf("bad base64 in encrypted value: %w", err)
	}
	switch m[4] {
	case "str", "bytes":
	default:
		return nil, fmt.Errorf("value of type %q where a string was expected", m[4])
	}
	if len(iv) == 0 || len(tag) != 16 {
		return nil, errors.New("encrypted value has a malformed iv or tag")
	}
	block, err := aes.NewCipher(key)
	if err != nil {
		return nil, err
	}
	gcm, err := cipher.NewGCMWithNonceSize(block, len(iv))
	if err != nil {
		return nil, err
	}
	out, err := gcm.Open(nil, iv, append(data, tag...), []byte(additionalData))
	if err != nil {
		return nil, errors.New("authentication failed: wrong key or tampered value")
	}
	return out, nil
}
