package sops

import (
	"crypto/ed25519"
	"crypto/rand"
	"encoding/pem"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"filippo.io/age"
	"golang.org/x/crypto/ssh"
)

// TestSealToSSH: a machine key sealed to a host's ssh-ed25519 key opens
// with that host key, in native ssh-ed25519 age stanzas, and not with
// another.
func TestSealToSSH(t *testing.T) {
	hostKey := func() (pub, file string) {
		pk, sk, _ := ed25519.GenerateKey(rand.Reader)
		block, err := ssh.MarshalPrivateKey(sk, "")
		if err != nil {
			t.Fatal(err)
		}
		file = filepath.Join(t.TempDir(), "ssh_host_ed25519_key")
		os.WriteFile(file, pem.EncodeToMemory(block), 0o600)
		sp, _ := ssh.NewPublicKey(pk)
		return strings.TrimSpace(string(ssh.MarshalAuthorizedKey(sp))), file
	}
	pub, file := hostKey()
	_, other := hostKey()
	id, _ := age.GenerateX25519Identity()
	sealed, err := SealToSSH([]byte(id.String()+"\n"), pub)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(sealed), id.String()) {
		t.Fatal("the machine key is in the sealed file")
	}
	ids, err := OpenSealed(sealed, file)
	if err != nil {
		t.Fatal(err)
	}
	if len(ids.Recipients) != 1 || ids.Recipients[0] != id.Recipient().String() {
		t.Errorf("opened %v, want %s", ids.Recipients, id.Recipient())
	}
	if _, err := OpenSealed(sealed, other); err == nil || !strings.Contains(err.Error(), "does not open with the host key") {
		t.Errorf("another host's key opened it: %v", err)
	}
	if _, err := SealToSSH(nil, "ssh-rsa AAAA"); err == nil {
		t.Error("sealed to an RSA key")
	}
}
