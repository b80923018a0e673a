package vars

import (
	"bytes"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/pem"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"

	"github.com/hiddeco/sshsig"
	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/agent"

	"github.com/credvm/credvm/internal/sops"
)

// Bundles are signed by their sender. age encrypts to the receiver's
// public key, so anyone can write a bundle for a host: encryption says who
// can read it, not who wrote it. The signature says who wrote it: an SSH
// signature (OpenSSH's PROTOCOL.sshsig, `ssh-keygen -Y sign` — so
// `ssh-keygen -Y verify` checks it too) over the bundle's payload, in the
// namespace "credvm-bundle", armored after the payload. The signing key is
// the sender's ssh-ed25519 key — --sign-key, else the ssh agent's first
// ed25519 key, else ~/.ssh/id_ed25519 — or, for a user without one, an
// ed25519 key credvm creates beside their age key (age keys cannot sign).
// Import verifies it against the keys the receiver names (--from) and
// imports nothing otherwise.

// SignatureNamespace binds the signature to credvm bundles.
const SignatureNamespace = "credvm-bundle"

const sigArmor = "-----BEGIN SSH SIGNATURE-----"

// Signer signs bundles.
type Signer struct {
	ssh.Signer
	// Source says where the key came from, for messages.
	Source string
	// Created is set when credvm made the key now.
	Created string
}

// FindSigner returns the signing key: keyFile when given (an unencrypted
// OpenSSH private key), else the ssh agent's first ed25519 key, else
// ~/.ssh/id_ed25519, else credvm's own signing key beside the user's age
// key (created on first use).
func FindSigner(keyFile string) (*Signer, error) {
	if keyFile != "" {
		return signerFromFile(keyFile)
	}
	if s := agentSigner(); s != nil {
		return s, nil
	}
	if home, err := os.UserHomeDir(); err == nil {
		p := filepath.Join(home, ".ssh", "id_ed25519")
		if _, err := os.Stat(p); err == nil {
			s, err := signerFromFile(p)
			if err == nil {
				return s, nil
			}
			// An encrypted key: fall through to credvm's own.
		}
	}
	return ownSigner()
}

func signerFromFile(p string) (*Signer, error) {
	b, err := os.ReadFile(p)
	if err != nil {
		return nil, fmt.Errorf("signing key: %w", err)
	}
	s, err := ssh.ParsePrivateKey(b)
	if err != nil {
		return nil, fmt.Errorf("signing key %s: %w (give an unencrypted OpenSSH key, or load it into ssh-agent)", p, err)
	}
	return &Signer{Signer: s, Source: p}, nil
}

func agentSigner() *Signer {
	sock := os.Getenv("SSH_AUTH_SOCK")
	if sock == "" {
		return nil
	}
	conn, err := net.Dial("unix", sock)
	if err != nil {
		return nil
	}
	signers, err := agent.NewClient(conn).Signers()
	if err != nil {
		conn.Close()
		return nil
	}
	for _, s := range signers {
		if s.PublicKey().Type() == ssh.KeyAlgoED25519 {
			return &Signer{Signer: s, Source: "ssh-agent"} // conn stays open for the signing
		}
	}
	conn.Close()
	return nil
}

// OwnSigningKeyFile is where credvm keeps a user's own signing key: next
// to their age key file. The public key is OwnSigningKeyFile + ".pub".
func OwnSigningKeyFile() (string, error) {
	p, err := sops.UserKeyFile()
	if err != nil {
		return "", err
	}
	return filepath.Join(filepath.Dir(p), "credvm-signing.key"), nil
}

// ownSigner loads, or creates (0600, in the age key's 0700 directory),
// the user's credvm signing key.
func ownSigner() (*Signer, error) {
	p, err := OwnSigningKeyFile()
	if err != nil {
		return nil, err
	}
	if s, err := signerFromFile(p); err == nil {
		return s, nil
	} else if !errors.Is(err, os.ErrNotExist) {
		return nil, err
	}
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return nil, err
	}
	block, err := ssh.MarshalPrivateKey(priv, "credvm bundle signing key")
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
		return nil, err
	}
	f, err := os.OpenFile(p, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return nil, fmt.Errorf("create the signing key: %w", err)
	}
	if _, err := f.Write(pemEncode(block)); err != nil {
		f.Close()
		os.Remove(p)
		return nil, err
	}
	if err := f.Close(); err != nil {
		return nil, err
	}
	s, err := signerFromFile(p)
	if err != nil {
		return nil, err
	}
	pub := ssh.MarshalAuthorizedKey(s.PublicKey())
	if err := os.WriteFile(p+".pub", append(bytes.TrimSpace(pub), []byte(" credvm-bundle-signing\n")...), 0o644); err != nil {
		return nil, err
	}
	s.Created = p
	return s, nil
}

// Fingerprint is a key's SHA256 fingerprint, as ssh-keygen -l shows it.
func Fingerprint(k ssh.PublicKey) string { return ssh.FingerprintSHA256(k) }

// Sign appends the signature over payload (ended by one newline) to it.
func (s *Signer) Sign(payload []byte) ([]byte, error) {
	payload = append(bytes.TrimRight(payload, "\n"), '\n')
	sig, err := sshsig.Sign(bytes.NewReader(payload), s.Signer, sshsig.HashSHA512, SignatureNamespace)
	if err != nil {
		return nil, fmt.Errorf("sign the bundle: %w", err)
	}
	return append(payload, sshsig.Armor(sig)...), nil
}

// splitSigned separates a signed bundle's payload and signature.
func splitSigned(data []byte) (payload []byte, sig *sshsig.Signature, err error) {
	i := bytes.LastIndex(data, []byte(sigArmor))
	if i < 0 {
		return nil, nil, errors.New("the bundle is not signed (credvm ≥ this version signs every bundle it exports): nothing was imported")
	}
	payload = data[:i]
	sig, err = sshsig.Unarmor(bytes.TrimSpace(data[i:]))
	if err != nil {
		return nil, nil, fmt.Errorf("the bundle's signature is unreadable (%v): nothing was imported", err)
	}
	return payload, sig, nil
}

// Senders are the keys import accepts a bundle from.
type Senders []ssh.PublicKey

// ParseSenders reads --from values: a public key line ("ssh-ed25519 AAAA…"),
// a file holding such lines, or an allowed_signers file
// ("principal[,…] [options] ssh-ed25519 AAAA…").
func ParseSenders(values []string) (Senders, error) {
	var out Senders
	for _, v := range values {
		text := v
		if !strings.HasPrefix(strings.TrimSpace(v), "ssh-") {
			b, err := os.ReadFile(v)
			if err != nil {
				return nil, fmt.Errorf("--from %s: %w", v, err)
			}
			text = string(b)
		}
		n := 0
		for _, line := range strings.Split(text, "\n") {
			k := parseKeyInLine(line)
			if k != nil {
				out = append(out, k)
				n++
			}
		}
		if n == 0 {
			return nil, fmt.Errorf("--from %s: no ssh public key in it (give \"ssh-ed25519 AAAA…\", a .pub file, or an allowed_signers file)", v)
		}
	}
	return out, nil
}

// parseKeyInLine finds the public key in an authorized_keys or
// allowed_signers line.
func parseKeyInLine(line string) ssh.PublicKey {
	line = strings.TrimSpace(line)
	if line == "" || strings.HasPrefix(line, "#") {
		return nil
	}
	fields := strings.Fields(line)
	for i := range fields {
		if strings.HasPrefix(fields[i], "ssh-") || strings.HasPrefix(fields[i], "ecdsa-") {
			if k, _, _, _, err := ssh.ParseAuthorizedKey([]byte(strings.Join(fields[i:], " "))); err == nil {
				return k
			}
		}
	}
	return nil
}

// UnknownSenderError is returned when a bundle's signature is sound but
// its key was not named with --from: the operator decides.
type UnknownSenderError struct {
	Key ssh.PublicKey
}

func (e *UnknownSenderError) Error() string {
	return fmt.Sprintf("the bundle is signed by %s %s, which you did not name: nothing was imported; if that is the sender's key, import with --from \"%s\"",
		e.Key.Type(), Fingerprint(e.Key), strings.TrimSpace(string(ssh.MarshalAuthorizedKey(e.Key))))
}

// verify checks a signed bundle against the accepted senders (any signer
// when trustAny: the operator accepted this signer interactively) and
// returns its payload and signer.
func verify(data []byte, from Senders, trust ssh.PublicKey) ([]byte, ssh.PublicKey, error) {
	payload, sig, err := splitSigned(data)
	if err != nil {
		return nil, nil, err
	}
	if err := sshsig.Verify(bytes.NewReader(payload), sig, sig.PublicKey, sig.HashAlgorithm, SignatureNamespace); err != nil {
		return nil, nil, fmt.Errorf("the bundle's signature does not match its content (%v): it was altered; nothing was imported", err)
	}
	signer := sig.PublicKey
	accepted := trust != nil && bytes.Equal(trust.Marshal(), signer.Marshal())
	for _, k := range from {
		if bytes.Equal(k.Marshal(), signer.Marshal()) {
			accepted = true
		}
	}
	if !accepted {
		return nil, signer, &UnknownSenderError{Key: signer}
	}
	return payload, signer, nil
}

func pemEncode(b *pem.Block) []byte { return pem.EncodeToMemory(b) }
