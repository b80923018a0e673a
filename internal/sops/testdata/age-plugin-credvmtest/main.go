// Command age-plugin-credvmtest is an age plugin for tests, written with
// filippo.io/age/plugin: its recipients and identities carry an X25519
// recipient and identity (their text, as the plugin's data), so a test can
// make one of each and check that credvm and the real sops both launch it.
// The only plugin in age v1.3.2, age-plugin-batchpass, has no recipients.
package main

import (
	"os"

	"filippo.io/age"
	"filippo.io/age/plugin"
)

func main() {
	p, err := plugin.New("credvmtest")
	if err != nil {
		os.Exit(1)
	}
	p.HandleRecipient(func(data []byte) (age.Recipient, error) {
		return age.ParseX25519Recipient(string(data))
	})
	p.HandleIdentity(func(data []byte) (age.Identity, error) {
		return age.ParseX25519Identity(string(data))
	})
	os.Exit(p.Main())
}
