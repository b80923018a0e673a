package sops

import (
	"bytes"
	"fmt"
	"io"
	"os"
	"strings"

	"filippo.io/age"
	"filippo.io/age/agessh"
	"filippo.io/age/armor"
)

// Sealing a machine's key to a host: the age identity is encrypted to the
// host's OpenSSH ed25519 host key with agessh — age's native ssh-ed25519
// stanza, not sops-nix's conversion of the key to an age1 recipient — so
// the host opens it with its host key alone and no user key ever sits on
// a host.

// SealToSSH encrypts plaintext (an age identity file) to an
// "ssh-ed25519 AAAA…" public key, armored.
func SealToSSH(plaintext []byte, hostKey string) ([]byte, error) {
	if !strings.HasPrefix(hostKey, "ssh-ed25519 ") {
		return nil, fmt.Errorf("the host key must be ssh-ed25519 (got %q)", strings.SplitN(hostKey, " ", 2)[0])
	}
	r, err := agessh.ParseRecipient(hostKey)
	if err != nil {
		return nil, fmt.Errorf("the host key: %w", err)
	}
	return EncryptArmored(plaintext, r)
}

// EncryptArmored encrypts plaintext to the recipients as an ASCII-armored
// age file.
func EncryptArmored(plaintext []byte, to ...age.Recipient) ([]byte, error) {
	var buf bytes.Buffer
	aw := armor.NewWriter(&buf)
	w, err := age.Encrypt(aw, to...)
	if err != nil {
		return nil, err
	}
	if _, err := w.Write(plaintext); err != nil {
		return nil, err
	}
	if err := w.Close(); err != nil {
		return nil, err
	}
	if err := aw.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// OpenSealed decrypts a sealed machine key with the host's private key
// file (/etc/ssh/ssh_host_ed25519_key) and returns its identities; the
// plaintext is never written anywhere.
func OpenSealed(sealed []byte, hostKeyFile string) (*Identities, error) {
	kb, err := os.ReadFile(hostKeyFile)
	if err != nil {
		return nil, fmt.Errorf("the host key: %w", err)
	}
	id, err := agessh.ParseIdentity(kb)
	clear(kb)
	if err != nil {
		return nil, fmt.Errorf("the host key %s: %w", hostKeyFile, err)
	}
	r, err := age.Decrypt(armor.NewReader(bytes.NewReader(sealed)), id)
	if err != nil {
		return nil, fmt.Errorf("the sealed machine key does not open with the host key %s (sealed to another host, or the host key changed: deploy again): %w", hostKeyFile, err)
	}
	pt, err := io.ReadAll(r)
	if err != nil {
		return nil, err
	}
	defer clear(pt)
	ids := &Identities{}
	if err := ids.Add(pt, "the sealed machine key"); err != nil {
		return nil, err
	}
	return ids, nil
}
