package repo

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/credvm/credvm/internal/spec"
)

// InitOptions configure Init.
type InitOptions struct {
	// Machine names the first machine (default "my-vm").
	Machine string
	// Kernel and Initrd are what it boots: the guest `credvm image` built.
	Kernel, Initrd, Cmdline string
}

// InitResult says what Init wrote.
type InitResult struct {
	Root    string   `json:"root"`
	Machine string   `json:"machine"`
	Files   []string `json:"files"`
	// ImageMissing: the kernel or initrd named is not there yet.
	ImageMissing bool `json:"image_missing"`
}

// Init makes dir a new repository with one commented machine that boots
// the given guest: credvm.toml and machines/<m>/machine.toml. It refuses a
// directory that is a repository already, and writes nothing then.
func Init(dir string, o InitOptions) (*InitResult, error) {
	if o.Machine == "" {
		o.Machine = "my-vm"
	}
	if err := spec.CheckMachineName(o.Machine); err != nil {
		return nil, err
	}
	abs, err := filepath.Abs(dir)
	if err != nil {
		return nil, err
	}
	if isRoot(abs) {
		return nil, fmt.Errorf("%s is a repository already (it has credvm.toml, inventory.toml or clan's sops/ and vars/): add machines with `credvm clone` or a new machines/<name>/machine.toml", abs)
	}
	if err := os.MkdirAll(abs, 0o755); err != nil {
		return nil, err
	}
	res := &InitResult{Root: abs, Machine: o.Machine}
	files := []struct{ rel, text string }{
		{"credvm.toml", settingsTemplate},
		{filepath.Join("machines", o.Machine, "machine.toml"), machineTemplate(o)},
	}
	for _, f := range files {
		p := filepath.Join(abs, f.rel)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			return nil, err
		}
		// O_EXCL: a file of the user's is never overwritten.
		fh, err := os.OpenFile(p, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
		if errors.Is(err, os.ErrExist) {
			return nil, fmt.Errorf("%s exists already; nothing more was written (remove it, or init another directory)", p)
		}
		if err != nil {
			return nil, err
		}
		_, werr := fh.WriteString(f.text)
		if err := errors.Join(werr, fh.Close()); err != nil {
			return nil, err
		}
		res.Files = append(res.Files, filepath.ToSlash(f.rel))
	}
	for _, p := range []string{o.Kernel, o.Initrd} {
		if _, err := os.Stat(p); err != nil {
			res.ImageMissing = true
		}
	}
	return res, nil
}

const settingsTemplate = `# This directory is a credvm repository, in clan's layout: machines/<m>/,
# vars/ (the generated secrets, sops-encrypted), sops/ (users' and
# machines' age keys). Everything below is optional.

# [history]
# retention = "24h"    # how long replaced vars stay for credvm vars rollback

# [limits]             # bounds of each run of a generator's script
# output = "64MiB"     # each file it writes, and its outputs altogether
# files = 1000         # files in $out
# processes = 512      # its processes at once
# memory = "2GiB"      # its memory (as root)
`

// machineTemplate is a first machine: a guest to boot, a generator with
// a secret and a public file, and the credentials its guest gets.
func machineTemplate(o InitOptions) string {
	r := strings.NewReplacer("@NAME@", o.Machine, "@KERNEL@", fmt.Sprintf("%q", o.Kernel),
		"@INITRD@", fmt.Sprintf("%q", o.Initrd), "@CMDLINE@", fmt.Sprintf("%q", o.Cmdline))
	return r.Replace(`# @NAME@: one VM — how it boots, the secrets it owns ("vars", made by
# generators and stored encrypted under vars/), and the systemd credentials
# its guest gets at each start. The README's "Machine files" has every key.

[vm]
vcpu = 1
mem = 1024             # MiB
# The guest credvm image builds: Debian with systemd, credvm inside.
kernel = @KERNEL@
initrd = @INITRD@
cmdline = @CMDLINE@

# A generator's script writes each declared file to $out. It runs at
# credvm vars generate, in a sandbox without network, with only its
# runtime_inputs on PATH.
[vars.generators.app]
runtime_inputs = ["coreutils"]
script = '''
head -c 32 /dev/urandom | base64 -w0 > "$out/api-key"
printf 'app' > "$out/user"
'''
files.api-key = {}                  # secret (the default): sops-encrypted
files.user = { secret = false }     # public: stored as plain text

# Each credential's name is what the guest asks for: LoadCredential=API_KEY
# in a unit, or /run/credentials/@system/API_KEY. The guest's
# credvm-report.service lists what arrived on the console (credvm logs).
[credentials]
API_KEY = { var = "app/api-key" }
APP_USER = { var = "app/user" }
ENVIRONMENT = { value = "development" }
`)
}
