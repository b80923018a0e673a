package spec

import (
	"crypto/sha256"
	"encoding/hex"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

const example = `
[vm]
vcpu = 2
mem = 1024
kernel = "vmlinuz"

[vars.generators.app-vm-secrets]
runtime_inputs = ["openssl", "coreutils"]
script = '''
openssl rand -base64 32 | tr -d '\n' > "$out/api-key"
'''
[vars.generators.app-vm-secrets.files.api-key]
secret = true
mode = "0400"
[vars.generators.app-vm-secrets.files.jwt-secret]

[credentials]
API_KEY     = { var = "app-vm-secrets/api-key" }
ENVIRONMENT = { value = "production" }
`

const exampleJSON = `{
  "vm": {"vcpu": 2, "mem": 1024, "kernel": "vmlinuz"},
  "vars": {"generators": {"app-vm-secrets": {
    "runtime_inputs": ["openssl", "coreutils"],
    "script": "openssl rand -base64 32 | tr -d '\\n' > \"$out/api-key\"\n",
    "files": {"api-key": {"secret": true, "mode": "0400"}, "jwt-secret": {}}
  }}},
  "credentials": {
    "API_KEY": {"var": "app-vm-secrets/api-key"},
    "ENVIRONMENT": {"value": "production"}
  }
}`

// testHypervisor stands in for a backend: package hypervisor's drivers
// import this package, so its tests cannot import them. Their own rules
// are tested with them (hypervisor/qemu and the others).
type testHypervisor struct{}

func (testHypervisor) Name() string { return DefaultHypervisor }
func (testHypervisor) CheckVM(vm *VM, problem ProblemFunc) {
	if vm.Transport == "fw_cfg" {
		problem("vm.transport", "the test backend refuses fw_cfg")
	}
}

func init() { RegisterHypervisor(testHypervisor{}) }

func TestParseExample(t *testing.T) {
	for _, tc := range []struct{ file, data string }{
		{"/r/machines/app-vm-01/machine.toml", example},
		{"/r/machines/app-vm-01/machine.json", exampleJSON},
	} {
		m, err := ParseMachine(tc.file, "app-vm-01", []byte(tc.data))
		if err != nil {
			t.Fatalf("%s: %v", tc.file, err)
		}
		if m.VM.Vcpu != 2 || m.VM.Mem != 1024 || m.VM.Hypervisor != "qemu" || m.VM.Transport != "auto" {
			t.Errorf("%s: vm = %+v", tc.file, m.VM)
		}
		if m.VM.Kernel != "/r/machines/app-vm-01/vmlinuz" {
			t.Errorf("%s: kernel not resolved against the machine dir: %q", tc.file, m.VM.Kernel)
		}
		g := m.Vars.Generators["app-vm-secrets"]
		if g == nil || len(g.Files) != 2 || !g.Files["jwt-secret"].IsSecret() || g.Files["jwt-secret"].FileMode() != 0o400 {
			t.Fatalf("%s: generator = %+v", tc.file, g)
		}
		if g.RunTimeout() != DefaultTimeout {
			t.Errorf("%s: timeout = %v", tc.file, g.RunTimeout())
		}
		if m.Credentials["API_KEY"].Var != "app-vm-secrets/api-key" || m.Credentials["ENVIRONMENT"].Value != "production" {
			t.Errorf("%s: credentials = %+v", tc.file, m.Credentials)
		}
	}
	// Both formats describe the same generator.
	a, _ := ParseMachine("/r/machines/x/machine.toml", "x", []byte(example))
	b, _ := ParseMachine("/r/machines/x/machine.json", "x", []byte(exampleJSON))
	if ha, hb := a.Vars.Generators["app-vm-secrets"].DefinitionHash(), b.Vars.Generators["app-vm-secrets"].DefinitionHash(); ha != hb {
		t.Errorf("definition hash differs between TOML and JSON: %s vs %s", ha, hb)
	}
}

// TestProblems pins the message for each kind of bad input: the file, the
// line, the key and what to do.
func TestProblems(t *testing.T) {
	gen := "[vars.generators.g]\nscript = 'x'\n[vars.generators.g.files.f]\n"
	tests := []struct {
		name, machine, file, data string
		want                      []string
	}{
		{"unknown key", "m", "machine.toml", "[vm]\nvcpu = 1\nvcpus = 2\n",
			[]string{"machine.toml:3: vm.vcpus: unknown key"}},
		{"wrong type", "m", "machine.toml", "[vm]\n\nvcpu = 'two'\n",
			[]string{"machine.toml:3: vm.vcpu: expected integer, got string"}},
		{"wrong type in a file", "m", "machine.toml", gen + "secret = 'yes'\n",
			[]string{"machine.toml:4: vars.generators.g.files.f.secret: expected bool, got string"}},
		{"syntax", "m", "machine.toml", "[vm\n",
			[]string{"machine.toml:1: invalid TOML"}},
		{"bad machine name", "bad_name", "machine.toml", "",
			[]string{`invalid machine name "bad_name"`}},
		{"path in generator name", "m", "machine.toml", "[vars.generators.\"../etc\"]\nscript = 'x'\nfiles.f = {}\n",
			[]string{`machine.toml:1: vars.generators.../etc: invalid generator name "../etc"`}},
		{"path in file name", "m", "machine.toml", "[vars.generators.g]\nscript = 'x'\n[vars.generators.g.files.\"a/b\"]\n",
			[]string{`machine.toml:3: vars.generators.g.files.a/b: invalid file name "a/b"`}},
		{"no files", "m", "machine.toml", "[vars.generators.g]\nscript = 'x'\n",
			[]string{"machine.toml:1: vars.generators.g: no files"}},
		{"bad mode", "m", "machine.toml", gen + "mode = '777'\n",
			[]string{`machine.toml:4: vars.generators.g.files.f.mode: invalid mode "777"`}},
		{"unknown dependency", "m", "machine.toml", gen + "[vars.generators.h]\nscript = 'x'\ndependencies = ['nope']\nfiles.f = {}\n",
			[]string{`machine.toml:6: vars.generators.h.dependencies[0]: unknown generator "nope" (declared generators: g, h; no machine of the repository shares one of that name)`}},
		{"cycle", "m", "machine.toml", "[vars.generators.a]\nscript='x'\ndependencies=['b']\nfiles.f={}\n[vars.generators.b]\nscript='x'\ndependencies=['c']\nfiles.f={}\n[vars.generators.c]\nscript='x'\ndependencies=['a']\nfiles.f={}\n",
			[]string{"machine.toml:3: vars.generators.a.dependencies: dependency cycle: a → b → c → a"}},
		{"credential name with =", "m", "machine.toml", gen + "[credentials]\n'A=B' = { value = 'x' }\n",
			[]string{`machine.toml:5: credentials.A=B: credential name "A=B" contains "="`}},
		{"credential name with /", "m", "machine.toml", "[credentials]\n'a/b' = { value = 'x' }\n",
			[]string{`credential name "a/b" contains "/"`}},
		{"reserved credential", "m", "machine.toml", "[credentials]\n'credvm.manifest' = { value = 'x' }\n",
			[]string{`reserved for credvm`}},
		{"two sources", "m", "machine.toml", gen + "[credentials]\nA = { value = 'x', var = 'g/f' }\n",
			[]string{"machine.toml:5: credentials.A: give exactly one of"}},
		{"var to unknown file", "m", "machine.toml", gen + "[credentials]\nA = { var = 'g/nope' }\n",
			[]string{`machine.toml:5: credentials.A.var: generator "g" declares no file "nope"`}},
		{"var not deployed", "m", "machine.toml", gen + "deploy = false\n[credentials]\nA = { var = 'g/f' }\n",
			[]string{`g/f has deploy = false`}},
		{"backend's own rule", "m", "machine.toml", "[vm]\nvcpu = 1\ntransport = 'fw_cfg'\n",
			[]string{"machine.toml:3: vm.transport: the test backend refuses fw_cfg"}},
		{"unknown hypervisor", "m", "machine.toml", "[vm]\nhypervisor = 'qmeu'\n",
			[]string{`machine.toml:2: vm.hypervisor: unknown hypervisor "qmeu": use one of "qemu" (did you mean "qemu"?)`}},
		{"another backend's table", "m", "machine.toml", "[vm.firecracker]\nsecrets_on_cmdline = true\n",
			[]string{"machine.toml:1: vm.firecracker: settings for firecracker on a qemu machine"}},
		{"array table", "m", "machine.toml", "[[vm.disks]]\nimage = 'a'\n[[vm.disks]]\nformat = 'vmdk'\n",
			[]string{"machine.toml:3: vm.disks[1]: a disk needs image", `machine.toml:4: vm.disks[1].format: unknown disk format "vmdk"`}},
		{"json unknown key", "m", "machine.json", "{\n  \"vm\": {\n    \"vcpus\": 2\n  }\n}",
			[]string{"machine.json:3: vm.vcpus: unknown key"}},
		{"json wrong type", "m", "machine.json", "{\n  \"vm\": {\n    \"vcpu\": \"two\"\n  }\n}",
			[]string{"machine.json:3: vm.vcpu: expected integer, got string"}},
		{"json null", "m", "machine.json", "{\n  \"vm\": {\n    \"kernel\": null\n  }\n}",
			[]string{"machine.json:3: vm.kernel: null is not allowed here"}},
		{"json syntax", "m", "machine.json", "{\n  \"vm\": {,\n}",
			[]string{"machine.json:2: invalid JSON"}},
		{"json semantic", "m", "machine.json", "{\n \"credentials\": {\n  \"A:B\": {\"value\": \"x\"}\n }\n}",
			[]string{`machine.json:3: credentials.A:B: credential name "A:B" contains ":"`}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := ParseMachine(tt.file, tt.machine, []byte(tt.data))
			if err == nil {
				t.Fatal("no error")
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error:\n%v\nwant it to contain:\n%s", err, w)
				}
			}
		})
	}
}

func TestGeneratorOrder(t *testing.T) {
	m, err := ParseMachine("machine.toml", "m", []byte(`
[vars.generators.c]
script = 'x'
dependencies = ['a', 'b']
files.f = {}
[vars.generators.b]
script = 'x'
dependencies = ['a']
files.f = {}
[vars.generators.a]
script = 'x'
files.f = {}
[vars.generators.z]
script = 'x'
files.f = {}
`))
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, g := range m.GeneratorOrder() {
		names = append(names, g.Name)
	}
	if got := strings.Join(names, ","); got != "a,b,c,z" {
		t.Errorf("order = %s", got)
	}
}

func TestValidationHashMatchesClan(t *testing.T) {
	// clan: builtins.hashString "sha256" (builtins.toJSON validation).
	// toJSON { b = 1; a = "x<y"; } == {"a":"x<y","b":1}
	m, err := ParseMachine("machine.toml", "m", []byte("[vars.generators.g]\nscript='x'\nfiles.f={}\nvalidation = { b = 1, a = 'x<y' }\n"))
	if err != nil {
		t.Fatal(err)
	}
	got := m.Vars.Generators["g"].ValidationHash()
	if sum := sha256hex(`{"a":"x<y","b":1}`); got != sum {
		t.Errorf("ValidationHash = %s, want sha256 of the Nix toJSON form %s", got, sum)
	}
	none, _ := ParseMachine("machine.toml", "m", []byte("[vars.generators.g]\nscript='x'\nfiles.f={}\n"))
	if h := none.Vars.Generators["g"].ValidationHash(); h != "" {
		t.Errorf("no validation: hash = %q, want none", h)
	}
}

func TestInventory(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "inventory.toml")
	os.WriteFile(p, []byte("[machines.a]\ntags = ['app']\n[machines.b]\ntags = ['app', 'db']\n[machines.c]\n"), 0o644)
	inv, err := LoadInventory(p)
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(inv.Tagged("app"), ","); got != "a,b" {
		t.Errorf("Tagged(app) = %s", got)
	}
	os.WriteFile(p, []byte("[machines.a]\ntags = ['no space']\n"), 0o644)
	if _, err := LoadInventory(p); err == nil || !strings.Contains(err.Error(), `inventory.toml:2: machines.a.tags[0]: invalid tag "no space"`) {
		t.Errorf("bad tag: %v", err)
	}
}

func sha256hex(s string) string {
	sum := sha256.Sum256([]byte(s))
	return hex.EncodeToString(sum[:])
}
