package repo

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"filippo.io/age"

	"github.com/credvm/credvm/internal/sops"
)

// readKeyFile reads a key.json: a list of {"publickey", "type"} entries,
// or (older clan) one object. Every type clan and sops accept is kept —
// age (X25519, plugin, OpenSSH) and pgp: a key credvm cannot use itself is
// still a recipient, never dropped.
func (r *Repo) readKeyFile(path string) ([]sops.Recipient, error) {
	b, err := r.ReadFile(path)
	if err != nil {
		return nil, err
	}
	return ParseKeyFile(r.Rel(path), b)
}

// ParseKeyFile parses a key.json (a list of entries, or as older clan
// wrote it, one object) into its keys; name is for messages.
func ParseKeyFile(path string, b []byte) ([]sops.Recipient, error) {
	var list []sops.Recipient
	if err := json.Unmarshal(b, &list); err != nil {
		var one sops.Recipient
		if err2 := json.Unmarshal(b, &one); err2 != nil {
			return nil, fmt.Errorf("%s: not a key file (want [{\"publickey\": \"age1…\", \"type\": \"age\"}]): %w", path, err)
		}
		list = []sops.Recipient{one}
	}
	var keys []sops.Recipient
	for _, e := range list {
		k, err := sops.ParseRecipient(e.Type, e.Key)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", path, err)
		}
		keys = append(keys, k)
	}
	if len(keys) == 0 {
		return nil, fmt.Errorf("%s: no keys", path)
	}
	return keys, nil
}

func (r *Repo) writeKeyFile(path string, keys []sops.Recipient) error {
	b, err := json.MarshalIndent(keys, "", "  ")
	if err != nil {
		return err
	}
	if err := r.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	return r.WriteFileAtomic(path, append(b, '\n'), 0o644)
}

// SameKey reports whether two public keys are the same key: OpenSSH keys
// are compared without their comments.
func SameKey(a, b string) bool {
	if strings.HasPrefix(a, "ssh-") && strings.HasPrefix(b, "ssh-") {
		fa, fb := strings.Fields(a), strings.Fields(b)
		return len(fa) >= 2 && len(fb) >= 2 && fa[0] == fb[0] && fa[1] == fb[1]
	}
	return a == b
}

// Users returns every user's public keys, by user name.
func (r *Repo) Users() (map[string][]sops.Recipient, error) {
	entries, err := r.ReadDir(r.Path("sops", "users"))
	if errors.Is(err, os.ErrNotExist) {
		return map[string][]sops.Recipient{}, nil
	}
	if err != nil {
		return nil, err
	}
	users := map[string][]sops.Recipient{}
	for _, e := range entries {
		if !e.IsDir() {
			continue
		}
		keys, err := r.readKeyFile(r.Path("sops", "users", e.Name(), "key.json"))
		if err != nil {
			return nil, fmt.Errorf("user %s: %w", e.Name(), err)
		}
		users[e.Name()] = keys
	}
	return users, nil
}

// UserFor returns the name of the registered user owning one of the given
// public keys.
func (r *Repo) UserFor(pubkeys []string) (string, error) {
	users, err := r.Users()
	if err != nil {
		return "", err
	}
	for _, name := range sortedKeys(users) {
		for _, k := range users[name] {
			for _, p := range pubkeys {
				if SameKey(k.Key, p) {
					return name, nil
				}
			}
		}
	}
	return "", nil
}

// AddUser registers a user's age public key under
// sops/users/<name>/key.json, keeping keys already there.
func (r *Repo) AddUser(name, pubkey string) error {
	return r.AddUserKey(name, sops.Age(pubkey))
}

// AddUserKey registers a user's key of any type.
func (r *Repo) AddUserKey(name string, key sops.Recipient) error {
	if err := CheckUserName(name); err != nil {
		return err
	}
	path := r.Path("sops", "users", name, "key.json")
	keys, err := r.readKeyFile(path)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	for _, k := range keys {
		if SameKey(k.Key, key.Key) {
			return nil
		}
	}
	return r.writeKeyFile(path, append(keys, key))
}

// SetUserKeys writes a user's key file with exactly keys (replacing a key
// is `keygen --force`).
func (r *Repo) SetUserKeys(name string, keys []sops.Recipient) error {
	if err := CheckUserName(name); err != nil {
		return err
	}
	return r.writeKeyFile(r.Path("sops", "users", name, "key.json"), keys)
}

// CheckUserName checks a user or group name: a directory name of
// sops/users or sops/groups.
func CheckUserName(name string) error {
	if name == "" || strings.ContainsAny(name, "/\x00") || name == "." || name == ".." || strings.HasPrefix(name, ".") {
		return fmt.Errorf("invalid user name %q: a user or group is a directory name (no '/', not starting with '.')", name)
	}
	return nil
}

// RegisterUser registers pubkey as user name's, unless a user owns it
// already; it returns the name the key is registered under.
func (r *Repo) RegisterUser(name, pubkey string) (string, error) {
	existing, err := r.UserFor([]string{pubkey})
	if err != nil || existing != "" {
		return existing, err
	}
	return name, r.AddUser(name, pubkey)
}

// MachinePublicKey returns the machine's age public key, or "" when it has
// none yet.
func (r *Repo) MachinePublicKey(machine string) (string, error) {
	keys, err := r.readKeyFile(r.Path("sops", "machines", machine, "key.json"))
	if errors.Is(err, os.ErrNotExist) {
		return "", nil
	}
	if err != nil {
		return "", fmt.Errorf("machine %s: %w", machine, err)
	}
	return keys[0].Key, nil
}

// machineKeySecret is where the machine's private key lives, encrypted.
func (r *Repo) machineKeySecret(machine string) string {
	return r.Path("sops", "secrets", machine+"-age.key")
}

// EnsureMachineKey returns the machine's public key, creating its key pair
// on first need: the private key is stored sops-encrypted to whom access
// grants (clan: the admin creating it and the default groups), with
// clan's links, and the public key in sops/machines/<m>/key.json.
func (r *Repo) EnsureMachineKey(machine string, access Access) (string, error) {
	if pub, err := r.MachinePublicKey(machine); err != nil || pub != "" {
		return pub, err
	}
	id, err := age.GenerateX25519Identity()
	if err != nil {
		return "", err
	}
	if len(access.Users) == 0 && len(access.Groups) == 0 {
		return "", errors.New("nobody could read the machine key: run `credvm vars keygen` first")
	}
	// The private key is written before the public one: a crash in between
	// leaves an unused secret, never a public key nobody can decrypt to.
	content := []byte("# created: machine key for " + machine + "\n# public key: " + id.Recipient().String() + "\n" + id.String() + "\n")
	if err := r.WriteSecret(r.machineKeySecret(machine), content, access); err != nil {
		return "", fmt.Errorf("machine %s: store private key: %w", machine, err)
	}
	pub := id.Recipient().String()
	if err := r.writeKeyFile(r.Path("sops", "machines", machine, "key.json"), []sops.Recipient{sops.Age(pub)}); err != nil {
		return "", fmt.Errorf("machine %s: %w", machine, err)
	}
	return pub, nil
}

// StageMachineKey writes a machine's key pair into staging directories
// of a transaction whose targets are the key's own directories
// (PathsOf(m).PrivateKey and .PublicKey): the private key encrypted to
// whom access grants, with clan's links, and the public key. privateKey
// "" makes a new key. It returns the public key.
func (r *Repo) StageMachineKey(machine, privateKey, secretStaging, pubStaging string, access Access) (string, error) {
	ids := &sops.Identities{}
	if privateKey == "" {
		id, err := age.GenerateX25519Identity()
		if err != nil {
			return "", err
		}
		privateKey = id.String() + "\n"
	}
	if err := ids.Add([]byte(privateKey), "bundle"); err != nil || len(ids.Recipients) != 1 {
		return "", fmt.Errorf("machine %s: the bundle's machine key is not one age identity", machine)
	}
	pub := ids.Recipients[0]
	content := []byte("# machine key for " + machine + "\n# public key: " + pub + "\n" + ids.Raw())
	if err := r.StageSecret(secretStaging, content, access); err != nil {
		return "", fmt.Errorf("machine %s: store private key: %w", machine, err)
	}
	return pub, r.writeKeyFile(filepath.Join(pubStaging, "key.json"), []sops.Recipient{sops.Age(pub)})
}

// PublicKeyOf is the public key of an age identity file's one identity.
func PublicKeyOf(privateKey string) (string, error) {
	ids := &sops.Identities{}
	if err := ids.Add([]byte(privateKey), "bundle"); err != nil || len(ids.Recipients) != 1 {
		return "", errors.New("not one age identity")
	}
	return ids.Recipients[0], nil
}

// MachineIdentity decrypts the machine's private key with the user's
// identities.
func (r *Repo) MachineIdentity(machine string, user *sops.Identities) (*sops.Identities, error) {
	p := filepath.Join(r.machineKeySecret(machine), "secret")
	b, err := r.ReadFile(p)
	if err != nil {
		return nil, fmt.Errorf("machine %s: no private key (%s): %w", machine, r.Rel(p), err)
	}
	pt, err := sops.Decrypt(b, user.List)
	if err != nil {
		return nil, fmt.Errorf("machine %s: decrypt %s: %w", machine, r.Rel(p), err)
	}
	ids := &sops.Identities{}
	if err := ids.Add(pt, r.Rel(p)); err != nil {
		return nil, err
	}
	return ids, nil
}

// SortRecipients sorts keys by type and key and drops duplicates, for
// stable files and comparisons.
func SortRecipients(keys []sops.Recipient) []sops.Recipient {
	out := slices.Clone(keys)
	slices.SortFunc(out, func(a, b sops.Recipient) int {
		return strings.Compare(a.Type+" "+a.Key, b.Type+" "+b.Key)
	})
	return slices.CompactFunc(out, func(a, b sops.Recipient) bool { return a.Type == b.Type && SameKey(a.Key, b.Key) })
}

// WriteSecret writes dir/secret, the plaintext encrypted to exactly the
// keys access grants, and clan's links for access (those that no longer
// apply are removed). The secret file is replaced atomically and durably.
func (r *Repo) WriteSecret(dir string, plaintext []byte, access Access) error {
	grants, err := r.Keys(access)
	if err != nil {
		return err
	}
	return r.writeSecretTo(dir, plaintext, RecipientsOf(grants), access, true)
}

// StageSecret is WriteSecret into a staging directory that its
// transaction makes durable as a whole before committing it: no fsync per
// file.
func (r *Repo) StageSecret(dir string, plaintext []byte, access Access) error {
	grants, err := r.Keys(access)
	if err != nil {
		return err
	}
	return r.writeSecretTo(dir, plaintext, RecipientsOf(grants), access, false)
}

// StageSecretTo is StageSecret with keys added to what access grants:
// machine keys not yet committed, staged in the same transaction (their
// machines are in access.Machines for the links, and left out of the
// lookup).
func (r *Repo) StageSecretTo(dir string, plaintext []byte, pending map[string]string, access Access) error {
	lookup := access
	var keys []sops.Recipient
	for m, pub := range pending {
		if slices.Contains(access.Machines, m) {
			lookup = lookup.Without(m)
			keys = append(keys, sops.Age(pub))
		}
	}
	grants, err := r.Keys(lookup)
	if err != nil {
		return err
	}
	return r.writeSecretTo(dir, plaintext, append(keys, RecipientsOf(grants)...), access, false)
}

func (r *Repo) writeSecretTo(dir string, plaintext []byte, rcpts []sops.Recipient, access Access, durable bool) error {
	if len(rcpts) == 0 {
		return fmt.Errorf("%s: nobody could read it: no user, machine or group grants access", r.Rel(dir))
	}
	enc, err := sops.Encrypt(plaintext, SortRecipients(rcpts))
	if err != nil {
		return err
	}
	if err := r.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	if durable {
		err = r.WriteFileAtomic(filepath.Join(dir, "secret"), enc, 0o644)
	} else {
		err = r.WriteFile(filepath.Join(dir, "secret"), enc, 0o644)
	}
	if err != nil {
		return err
	}
	return errors.Join(r.link(dir, "machines", access.Machines), r.link(dir, "users", access.Users), r.link(dir, "groups", access.Groups))
}

// link makes dir/<kind>/<name> a relative symlink to sops/<kind>/<name>
// for each name, as clan's allow_member does, and removes the others.
func (r *Repo) link(dir, kind string, names []string) error {
	ldir := filepath.Join(dir, kind)
	existing, err := r.ReadDir(ldir)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	for _, e := range existing {
		if !slices.Contains(names, e.Name()) {
			if err := r.Remove(filepath.Join(ldir, e.Name())); err != nil {
				return err
			}
		}
	}
	if len(names) == 0 {
		r.Remove(ldir)
		return nil
	}
	if err := r.MkdirAll(ldir, 0o755); err != nil {
		return err
	}
	for _, n := range names {
		target, err := filepath.Rel(ldir, r.Path("sops", kind, n))
		if err != nil {
			return err
		}
		lp := filepath.Join(ldir, n)
		if cur, err := r.Readlink(lp); err == nil && cur == target {
			continue
		}
		r.Remove(lp)
		if err := r.Symlink(target, lp); err != nil {
			return err
		}
	}
	return nil
}

// LinkedNames lists the names under dir/<kind>/ (clan's recipient links).
// Links are read by name; a copy of a clan repository that turned the
// links into files (as some archivers do) reads the same.
func (r *Repo) LinkedNames(dir, kind string) []string {
	entries, err := r.ReadDir(filepath.Join(dir, kind))
	if err != nil {
		return nil
	}
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	return names
}

// DecryptSecret reads dir/secret with the user's identities, or, when the
// user is not a recipient, through the machine's key (which the user can
// decrypt) — the two ways clan's own tools read a var.
func (r *Repo) DecryptSecret(dir, machine string, user *sops.Identities) ([]byte, error) {
	b, err := r.ReadFile(filepath.Join(dir, "secret"))
	if err != nil {
		return nil, err
	}
	pt, err := sops.Decrypt(b, user.List)
	if err == nil || !errors.Is(err, sops.ErrNoIdentity) || machine == "" {
		return pt, err
	}
	mid, merr := r.MachineIdentity(machine, user)
	if merr != nil {
		return nil, fmt.Errorf("%w: your key is not a recipient, and the machine's key cannot be opened either (%v)", err, merr)
	}
	return sops.Decrypt(b, mid.List)
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}
