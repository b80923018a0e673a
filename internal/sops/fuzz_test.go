package sops

import (
	"testing"

	"filippo.io/age"
)

// FuzzDecrypt: no input makes Decrypt panic, and none decrypts without a
// matching identity.
func FuzzDecrypt(f *testing.F) {
	id, _ := age.GenerateX25519Identity()
	good, _ := Encrypt([]byte("seed secret"), AgeAll(id.Recipient().String()))
	f.Add(good)
	f.Add([]byte(`{"data":"ENC[AES256_GCM,data:AAAA,iv:AAAA,tag:AAAAAAAAAAAAAAAAAAAAAA==,type:str]","sops":{"age":[{"recipient":"x","enc":"y"}],"mac":"","lastmodified":"2020-01-01T00:00:00Z","version":"3"}}`))
	f.Add([]byte(`{"sops":{}}`))
	f.Add([]byte(`[]`))
	other, _ := age.GenerateX25519Identity()
	f.Fuzz(func(t *testing.T, data []byte) {
		Decrypt(data, []age.Identity{id})
		if pt, err := Decrypt(data, []age.Identity{other}); err == nil && len(pt) > 0 {
			t.Fatalf("decrypted %q without the right identity", pt)
		}
		Recipients(data)
	})
}
