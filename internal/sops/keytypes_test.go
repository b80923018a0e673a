package sops

import (
	"bytes"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"filippo.io/age"
	"filippo.io/age/plugin"

	"github.com/credvm/credvm/internal/testenv"
)

// sopsRun runs the real sops CLI with env, in an empty directory.
func sopsRun(t *testing.T, env []string, stdin []byte, args ...string) ([]byte, error) {
	t.Helper()
	cmd := exec.Command(testenv.Tool(t, "sops"), append([]string{"--config", os.DevNull}, args...)...)
	cmd.Env = append(os.Environ(), env...)
	cmd.Dir = t.TempDir()
	cmd.Stdin = bytes.NewReader(stdin)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return nil, errors.New(err.Error() + ": " + stderr.String())
	}
	return out, nil
}

func sopsDecrypt(t *testing.T, env []string, file []byte) ([]byte, error) {
	return sopsRun(t, env, file, "decrypt", "--filename-override", "secret", "--input-type", "json", "--output-type", "binary")
}

// An age plugin's recipients and identities work in both directions, the
// plugin launched by credvm and by sops: what credvm writes to a plugin
// recipient, sops decrypts with the plugin identity, and credvm reads a
// keys.txt holding one (it used to fail with "unknown identity type").
func TestPluginKeys(t *testing.T) {
	bin := t.TempDir()
	build := exec.Command("go", "build", "-o", filepath.Join(bin, "age-plugin-credvmtest"), "./testdata/age-plugin-credvmtest")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build the test plugin: %v\n%s", err, out)
	}
	t.Setenv("PATH", bin+string(os.PathListSeparator)+os.Getenv("PATH"))
	x, _ := age.GenerateX25519Identity()
	rcpt := plugin.EncodeRecipient("credvmtest", []byte(x.Recipient().String()))
	ident := plugin.EncodeIdentity("credvmtest", []byte(x.String()))
	if _, err := ParseRecipient("age", rcpt); err != nil {
		t.Fatalf("plugin recipient refused: %v", err)
	}
	enc, err := Encrypt([]byte("via a plugin"), []Recipient{Age(rcpt)})
	if err != nil {
		t.Fatal(err)
	}
	keys := filepath.Join(t.TempDir(), "keys.txt")
	os.WriteFile(keys, []byte("# a plugin identity\n"+ident+"\n"), 0o600)
	got, err := sopsDecrypt(t, []string{"SOPS_AGE_KEY_FILE=" + keys}, enc)
	if err != nil || string(got) != "via a plugin" {
		t.Fatalf("sops with the plugin identity: %q %v", got, err)
	}
	t.Setenv(EnvAgeKeyFile, keys)
	t.Setenv(EnvAgeKey, "")
	t.Setenv("HOME", t.TempDir())
	t.Setenv("XDG_CONFIG_HOME", "")
	ids, err := LoadUserIdentities()
	if err != nil {
		t.Fatalf("a keys.txt with a plugin identity: %v", err)
	}
	if got, err := Decrypt(enc, ids.List); err != nil || string(got) != "via a plugin" {
		t.Errorf("credvm with the plugin identity: %q %v", got, err)
	}
	// Without the plugin installed: an error that names it.
	t.Setenv("PATH", "/nonexistent")
	if _, err := Encrypt([]byte("x"), []Recipient{Age(rcpt)}); err == nil || !strings.Contains(err.Error(), "needs the age plugin age-plugin-credvmtest, which is not on $PATH") {
		t.Errorf("missing plugin: %v", err)
	}
}

// OpenSSH keys are age recipients as sops has them: credvm encrypts to an
// ssh-ed25519 key, sops decrypts with the private key, and credvm reads
// the key where sops finds it ($SOPS_AGE_SSH_PRIVATE_KEY_FILE).
func TestSSHKeys(t *testing.T) {
	dir := t.TempDir()
	key := filepath.Join(dir, "id_ed25519")
	if out, err := exec.Command("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "alice@host", "-f", key).CombinedOutput(); err != nil {
		testenv.Missing(t, "ssh-keygen", string(out))
	}
	pub, _ := os.ReadFile(key + ".pub")
	r, err := ParseRecipient("age", string(pub))
	if err != nil {
		t.Fatal(err)
	}
	enc, err := Encrypt([]byte("via ssh"), []Recipient{r})
	if err != nil {
		t.Fatal(err)
	}
	got, err := sopsDecrypt(t, []string{EnvAgeSSHKeyFile + "=" + key, "SOPS_AGE_KEY_FILE=/nonexistent"}, enc)
	if err != nil || string(got) != "via ssh" {
		t.Fatalf("sops with the ssh key: %q %v", got, err)
	}
	t.Setenv(EnvAgeSSHKeyFile, key)
	t.Setenv(EnvAgeKeyFile, "")
	t.Setenv(EnvAgeKey, "")
	t.Setenv("HOME", t.TempDir())
	t.Setenv("XDG_CONFIG_HOME", "")
	ids, err := LoadUserIdentities()
	if err != nil {
		t.Fatal(err)
	}
	if len(ids.SSH) != 1 || !strings.HasPrefix(ids.SSH[0], "ssh-ed25519 ") {
		t.Errorf("ssh public keys %v", ids.SSH)
	}
	if got, err := Decrypt(enc, ids.List); err != nil || string(got) != "via ssh" {
		t.Errorf("credvm with the ssh key: %q %v", got, err)
	}
	// sops writes the key with its comment; the recipient reads back.
	rs, err := Recipients(enc)
	if err != nil || len(rs) != 1 || rs[0].Key != strings.TrimSpace(string(pub)) {
		t.Errorf("recipients %v %v", rs, err)
	}
}

// A PGP recipient is kept: the file is written by the sops binary (with
// gpg), and still opens with the age key next to it; credvm names the PGP
// key among the file's recipients.
func TestPGPKeys(t *testing.T) {
	if _, err := exec.LookPath("gpg"); err != nil {
		testenv.Missing(t, "gpg", "apt-get install gnupg")
	}
	t.Setenv("CREDVM_SOPS", testenv.Tool(t, "sops"))
	home := filepath.Join(t.TempDir(), "gnupg")
	os.Mkdir(home, 0o700)
	t.Setenv("GNUPGHOME", home)
	// gpg starts an agent for the home; it must not outlive the test.
	t.Cleanup(func() { exec.Command("gpgconf", "--homedir", home, "--kill", "all").Run() })
	gen := exec.Command("gpg", "--batch", "--passphrase", "", "--quick-gen-key", "test <test@example.com>", "default", "default", "never")
	if out, err := gen.CombinedOutput(); err != nil {
		t.Fatalf("gpg --quick-gen-key: %v\n%s", err, out)
	}
	out, err := exec.Command("gpg", "--batch", "--with-colons", "--list-keys").Output()
	if err != nil {
		t.Fatal(err)
	}
	var fp string
	for _, l := range strings.Split(string(out), "\n") {
		if f := strings.Split(l, ":"); len(f) > 9 && f[0] == "fpr" {
			fp = f[9]
			break
		}
	}
	pgp, err := ParseRecipient("pgp", fp)
	if err != nil {
		t.Fatalf("fingerprint %q: %v", fp, err)
	}
	x, _ := age.GenerateX25519Identity()
	enc, err := Encrypt([]byte("via pgp and age"), []Recipient{Age(x.Recipient().String()), pgp})
	if err != nil {
		t.Fatal(err)
	}
	if got, err := Decrypt(enc, []age.Identity{x}); err != nil || string(got) != "via pgp and age" {
		t.Errorf("the age key: %q %v", got, err)
	}
	// No age key at all: credvm asks sops, which asks gpg.
	if got, err := Decrypt(enc, nil); err != nil || string(got) != "via pgp and age" {
		t.Errorf("through sops and gpg: %q %v", got, err)
	}
	rs, err := Recipients(enc)
	if err != nil || len(rs) != 2 || rs[1] != pgp {
		t.Errorf("recipients %v %v, want the age key and %v", rs, err, pgp)
	}
	// Without the sops binary, a PGP recipient is an error, never dropped.
	t.Setenv("CREDVM_SOPS", "")
	t.Setenv("PATH", "/nonexistent")
	if _, err := Encrypt([]byte("x"), []Recipient{pgp}); err == nil || !strings.Contains(err.Error(), "the sops binary is not installed (credvm needs it for PGP keys") {
		t.Errorf("no sops binary: %v", err)
	}
}
