package e2e

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/credvm/credvm/internal/testenv"
)

// testFlake is a flake whose inputs are path: URLs — the fixtures' real
// nixpkgs lib, clan's vars interface and microvm.nix's options, and
// credvm's own flake (its nixpkgs following the fixtures' lib: offline,
// nothing else resolves) — with the source document's guest as
// nixosConfigurations.app-vm-01.
const testFlake = `{
  inputs = {
    nixpkgs-lib.url = "path:FIXTURES/nixpkgs-lib";
    credvm.url = "path:CREDVM";
    credvm.inputs.nixpkgs.follows = "nixpkgs-lib";
    clan-core = { url = "path:FIXTURES/clan-core"; flake = false; };
    microvm = { url = "path:FIXTURES/microvm.nix"; flake = false; };
  };
  outputs = { self, nixpkgs-lib, credvm, clan-core, microvm }:
    let
      lib = nixpkgs-lib.lib;
      drv = name: { type = "derivation"; inherit name; outPath = "/usr"; };
      pkgs = { coreutils = drv "coreutils"; openssl = drv "openssl"; stdenv.hostPlatform = { isDarwin = false; system = "x86_64-linux"; }; };
      stubs = import (credvm + "/nix/tests/stubs.nix") {
        inherit lib pkgs drv;
        clanVarsInterface = clan-core + "/nixosModules/clanCore/vars/interface.nix";
      };
    in {
      nixosConfigurations.app-vm-01 = lib.evalModules {
        specialArgs = { inherit pkgs; inputs.microvm.nixosModules.microvm = microvm + "/nixos-modules/microvm/options.nix"; };
        modules = [ stubs credvm.nixosModules.guest ./configuration.nix ./test.nix ];
      };
    };
}
`

// testGuest is what the test adds to the source document's guest: its
// credentials for credvm, and — to boot it here — QEMU, the test images,
// no vsock (no vhost-vsock), no share or tap (outside a namespace).
const testGuest = `{ lib, ... }: {
  credvm.credentials = {
    API_KEY.var = "app-vm-secrets/api-key";
    DB_PASSWORD.var = "app-vm-secrets/db-password";
    JWT_SECRET.var = "app-vm-secrets/jwt-secret";
    ENVIRONMENT.value = "ENV";
    DB_USER.value = "app";
  };
  # The test image's own app.service loads DB_USER too.
  systemd.services.app.serviceConfig.LoadCredential = [ "DB_USER" ];
  microvm = {
    hypervisor = lib.mkForce "qemu";
    vsock.cid = lib.mkForce null;
    shares = lib.mkForce [ ];
    interfaces = lib.mkForce [ ];
  };
  credvm.boot = { kernel = "KERNEL"; initrd = "INITRD"; kernelParams = [ "console=ttyS0" "rdinit=/lib/systemd/systemd" "panic=-1" ]; };
}
`

// TestFlake: `credvm create app-vm-01 --flake path:…` evaluates the
// source document's guest — written once, in Nix — and registers it;
// `vars generate` runs its generator (openssl from Debian, through the
// stub packages' /usr); `credvm run` boots a real guest whose
// LoadCredential= service sees every credential whole. A change to the
// flake makes the VM outdated, and update evaluates it again.
func TestFlake(t *testing.T) {
	needGuests(t)
	nix := testenv.LookTool("nix")
	if nix == "" {
		testenv.Missing(t, "nix", "apt-get install nix-bin")
	}
	fixtures := testenv.Fixture(t, "nix")
	r := newRepo(t)
	// credvm's flake: its flake.nix and nix/ (a path: flake copies what it
	// is given into the store: not the checkout's images).
	src := filepath.Join(t.TempDir(), "credvm")
	os.MkdirAll(src, 0o755)
	if out, err := exec.Command("cp", "-r", filepath.Join(testenv.Root(), "flake.nix"), filepath.Join(testenv.Root(), "nix"), src).CombinedOutput(); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	dir := filepath.Join(t.TempDir(), "infra")
	os.MkdirAll(dir, 0o755)
	flake := strings.NewReplacer("FIXTURES", fixtures, "CREDVM", src).Replace(testFlake)
	os.WriteFile(filepath.Join(dir, "flake.nix"), []byte(flake), 0o644)
	seed, err := os.ReadFile(filepath.Join(fixtures, "seed-configuration.nix"))
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(dir, "configuration.nix"), seed, 0o644)
	guest := strings.NewReplacer("KERNEL", kernel, "INITRD", systemdImg).Replace(testGuest)
	os.WriteFile(filepath.Join(dir, "test.nix"), []byte(strings.Replace(guest, `"ENV"`, `"production"`, 1)), 0o644)

	ref := "path:" + dir
	out := r.credvm("create", "app-vm-01", "--flake", ref, "--state-dir", r.state)
	if !strings.Contains(out, "app-vm-01: evaluated from "+ref+" (narHash sha256-") || !strings.Contains(out, "app-vm-01: created from") {
		t.Errorf("create --flake:\n%s", out)
	}
	mj, _ := os.ReadFile(filepath.Join(r.dir, "machines", "app-vm-01", "machine.json"))
	for _, want := range []string{`"generated": {`, `"flake": "` + ref + `"`, `"attribute": "nixosConfigurations.app-vm-01.config.credvm.machine"`, `"nar_hash": "sha256-`} {
		if !strings.Contains(string(mj), want) {
			t.Errorf("machine.json lacks %s:\n%s", want, mj)
		}
	}
	r.credvm("vars", "generate", "app-vm-01")
	secrets := map[string]string{}
	for name, v := range map[string]string{"API_KEY": "api-key", "DB_PASSWORD": "db-password", "JWT_SECRET": "jwt-secret"} {
		secrets[name] = r.credvm("vars", "get", "app-vm-01", "app-vm-secrets/"+v)
	}
	secrets["ENVIRONMENT"], secrets["DB_USER"] = "production", "app"
	if list := r.list(t)["app-vm-01"]; !strings.HasPrefix(list, "not booted|") {
		t.Errorf("list after create: %s", list)
	}

	var all [][]byte // the secrets, searched for in argv, environments and state files
	for _, n := range []string{"API_KEY", "DB_PASSWORD", "JWT_SECRET"} {
		all = append(all, []byte(secrets[n]))
	}
	b := r.run("app-vm-01", all...)
	for name, v := range secrets {
		got, ok := b.app[name]
		if !ok || got.size != len(v) || got.sha != sha([]byte(v)) {
			t.Errorf("the guest's LoadCredential= service saw %s as %+v, want %d bytes %s\n%s", name, got, len(v), sha([]byte(v))[:12], grepLines(b.console, "app: "))
		}
	}

	// The flake moves on: list says so; update evaluates it again.
	os.WriteFile(filepath.Join(dir, "test.nix"), []byte(strings.Replace(guest, `"ENV"`, `"staging"`, 1)), 0o644)
	if list := r.list(t)["app-vm-01"]; !strings.HasPrefix(list, "outdated|") {
		t.Errorf("list after the flake changed: %s", list)
	}
	out = r.credvm("update", "app-vm-01", "--state-dir", r.state)
	if !strings.Contains(out, "staging") {
		t.Errorf("update did not evaluate the flake again:\n%s", out)
	}
	if list := r.list(t)["app-vm-01"]; strings.HasPrefix(list, "outdated|") {
		t.Errorf("list after update: %s", list)
	}

	// Clear errors: a configuration that does not exist; nix's own message.
	out, err = r.credvmErr("create", "nope", "--flake", ref, "--state-dir", r.state)
	if err == nil || !strings.Contains(out, "credvm: flake "+ref+": evaluating nixosConfigurations.nope.config.credvm.machine: error: ") {
		t.Errorf("create --flake of a missing configuration: %v\n%s", err, out)
	}
}
