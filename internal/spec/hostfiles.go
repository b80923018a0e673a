package spec

import (
	"path/filepath"
	"strings"
)

// A `file = …` credential hands a host file to the guest. Whoever can
// commit to the repository writes machine files, so such a path is the
// operator's decision, shown when a VM is created or updated — and some
// files are never a VM's: keys that decrypt every secret, the host's
// password hashes, private keys. Those are refused when the machine file
// is loaded; the runner also refuses any file whose content is a private
// key (cred.RefusePrivateKey), wherever it lies.

// forbiddenHostFile says why path may never be passed to a guest, or "".
func forbiddenHostFile(path string) string {
	p := filepath.Clean(path)
	base := filepath.Base(p)
	parts := strings.Split(p, "/")
	has := func(dir string) bool {
		for _, d := range parts[:len(parts)-1] {
			if d == dir {
				return true
			}
		}
		return false
	}
	switch {
	case p == "/etc/shadow" || p == "/etc/gshadow" || strings.HasPrefix(p, "/etc/shadow") || strings.HasPrefix(p, "/etc/gshadow"):
		return "the host's password hashes"
	case strings.HasPrefix(p, "/etc/sudoers") || strings.HasPrefix(p, "/etc/ssh/ssh_host_") && !strings.HasSuffix(p, ".pub"):
		return "a host secret (sudoers, an ssh host key)"
	case has(".ssh") && !strings.HasSuffix(base, ".pub") && base != "known_hosts" && base != "authorized_keys" && base != "config":
		return "an ssh private key directory's key"
	case strings.Contains(p, "/sops/age/") || base == "keys.txt" && has("age"):
		return "an age key file (it decrypts every secret encrypted to you)"
	case base == "credvm-signing.key":
		return "credvm's bundle signing key"
	case has("sops") && has("secrets"):
		return "a sops-encrypted secret of a repository (machine keys live there)"
	case strings.HasPrefix(p, "/var/lib/microvms/") || strings.HasPrefix(p, "/var/lib/credvm/") || has("credvm") && has("state"):
		return "credvm's state directory"
	}
	return ""
}
