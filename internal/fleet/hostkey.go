package fleet

import (
	"bufio"
	"bytes"
	"fmt"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"

	"golang.org/x/crypto/ssh"

	"github.com/credvm/credvm/internal/repo"
	"github.com/credvm/credvm/internal/spec"
)

// AcceptHostKey is the ConfirmationError kind of host add.
const AcceptHostKey = "host-key"

// AddOptions configure AddHost.
type AddOptions struct {
	// Accept trusts the key shown (or the changed key) without asking.
	Accept bool
	// SSHOptions and Root go into the inventory's [hosts.<name>].
	SSHOptions []string
	Root       string
}

// Added says what AddHost did.
type Added struct {
	Name        string `json:"name"`
	SSH         string `json:"ssh"`
	Key         string `json:"host_key"`
	Fingerprint string `json:"fingerprint"`
	// Changed: the host was known with another key, now replaced.
	Changed bool `json:"changed"`
	// Unchanged: the same key was pinned already.
	Unchanged bool `json:"unchanged"`
}

// AddHost fetches a host's ssh-ed25519 host key (ssh-keyscan), shows its
// fingerprint, and — once the operator confirms it is the host's — pins
// it in sops/hosts/<name>/ and lists the host in inventory.toml. A host
// known with another key is refused unless confirmed again: its key is a
// recipient of its VMs' machine keys.
func AddHost(r *repo.Repo, name, dest string, o AddOptions) (*Added, error) {
	if err := spec.CheckMachineName(name); err != nil {
		return nil, fmt.Errorf("invalid host name %q: a hostname label", name)
	}
	h := spec.Host{SSH: dest, SSHOptions: o.SSHOptions, Root: o.Root}
	if _, err := spec.ParseInventory("inventory.toml", []byte(fmt.Sprintf("[hosts.%s]\nssh = %q\n", name, dest))); err != nil {
		return nil, err
	}
	key, err := scan(h)
	if err != nil {
		return nil, fmt.Errorf("host %s: %w", name, err)
	}
	pk, _, _, _, err := ssh.ParseAuthorizedKey([]byte(key))
	if err != nil {
		return nil, fmt.Errorf("host %s: ssh-keyscan gave an unreadable key: %w", name, err)
	}
	res := &Added{Name: name, SSH: dest, Key: key, Fingerprint: ssh.FingerprintSHA256(pk)}
	dir := r.Path("sops", "hosts", name)
	if old, err := r.ReadFile(filepath.Join(dir, "key.pub")); err == nil {
		oldKey := strings.TrimSpace(string(old))
		if fields(oldKey) == fields(key) {
			res.Unchanged = true
			return res, r.AddHostToInventory(name, h)
		}
		res.Changed = true
		if !o.Accept {
			prev := oldKey
			if opk, _, _, _, err := ssh.ParseAuthorizedKey(old); err == nil {
				prev = ssh.FingerprintSHA256(opk)
			}
			return res, &repo.ConfirmationError{Op: "host add", Kind: AcceptHostKey, Flag: "--yes",
				Changes: []string{fmt.Sprintf("~ host %s: its key changed from %s to %s (%s)", name, prev, res.Fingerprint, dest)},
				Why:     fmt.Sprintf("the host key of %s changed — a reinstalled host, or someone else answering at %s; its VMs' machine keys would be sealed to the new key", name, dest)}
		}
	} else if !o.Accept {
		return res, &repo.ConfirmationError{Op: "host add", Kind: AcceptHostKey, Flag: "--yes",
			Changes: []string{fmt.Sprintf("+ host %s (%s): ssh-ed25519 %s — compare with `ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub` on the host", name, dest, res.Fingerprint)},
			Why:     "credvm will trust this key as the host's, and seal its VMs' machine keys to it"}
	}
	if err := r.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	if err := r.WriteFileAtomic(filepath.Join(dir, "key.pub"), []byte(key+"\n"), 0o644); err != nil {
		return nil, err
	}
	alias := (&Host{Name: name}).alias()
	if err := r.WriteFileAtomic(filepath.Join(dir, "known_hosts"), []byte(alias+" "+fields(key)+"\n"), 0o644); err != nil {
		return nil, err
	}
	if err := r.AddHostToInventory(name, h); err != nil {
		return nil, err
	}
	if r.InGit() {
		if err := r.Commit([]string{dir, r.Path("inventory.toml")}, "host: pin "+name+"'s key ("+res.Fingerprint+")"); err != nil {
			return res, fmt.Errorf("the git commit failed: %w", err)
		}
	}
	return res, nil
}

// fields is a public key's type and base64, without its comment.
func fields(key string) string {
	f := strings.Fields(key)
	if len(f) < 2 {
		return key
	}
	return f[0] + " " + f[1]
}

// scan asks the host for its ssh-ed25519 key.
func scan(h spec.Host) (string, error) {
	dest, port := h.Address()
	_, addr, found := strings.Cut(dest, "@")
	if !found {
		addr = dest
	}
	args := []string{"-T", "5", "-t", "ed25519"}
	if port != "" {
		args = append(args, "-p", port)
	}
	var stderr bytes.Buffer
	cmd := exec.Command("ssh-keyscan", append(args, addr)...)
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil && len(out) == 0 {
		return "", fmt.Errorf("ssh-keyscan %s: %v (apt-get install openssh-client)", addr, err)
	}
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) >= 3 && !strings.HasPrefix(f[0], "#") && f[1] == "ssh-ed25519" {
			return f[1] + " " + f[2], nil
		}
	}
	return "", fmt.Errorf("%s answered with no ssh-ed25519 host key (is sshd running there, on port %s?)", addr, map[bool]string{true: port, false: "22"}[port != ""])
}

// HostInfo is one host of the inventory, as host list shows it.
type HostInfo struct {
	Name        string   `json:"name"`
	SSH         string   `json:"ssh"`
	Fingerprint string   `json:"fingerprint"` // "" when no key is pinned
	Machines    []string `json:"machines"`
}

// Hosts lists the inventory's hosts with their pinned keys and the
// machines placed on them.
func Hosts(r *repo.Repo) []HostInfo {
	var out []HostInfo
	for name, h := range r.Inventory.Hosts {
		hi := HostInfo{Name: name, SSH: h.SSH, Machines: []string{}}
		if b, err := r.ReadFile(r.Path("sops", "hosts", name, "key.pub")); err == nil {
			if pk, _, _, _, err := ssh.ParseAuthorizedKey(b); err == nil {
				hi.Fingerprint = ssh.FingerprintSHA256(pk)
			}
		}
		for m := range r.Inventory.Machines {
			if r.Inventory.HostOf(m) == name {
				hi.Machines = append(hi.Machines, m)
			}
		}
		slices.Sort(hi.Machines)
		out = append(out, hi)
	}
	slices.SortFunc(out, func(a, b HostInfo) int { return strings.Compare(a.Name, b.Name) })
	return out
}
