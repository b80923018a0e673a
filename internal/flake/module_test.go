package flake

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	_ "github.com/credvm/credvm/internal/hypervisor/drivers" // the backends check [vm]
	"github.com/credvm/credvm/internal/spec"
	"github.com/credvm/credvm/internal/testenv"
)

// The guest module (nix/guest.nix) evaluated offline with Debian's Nix
// through the real option declarations: nixpkgs lib's module system,
// clan's vars interface, microvm.nix's options (../shared/fixtures/nix).

// nixEval evaluates nix/tests/eval.nix with the seed configuration, the
// test's credentials and more modules; attr is what it prints.
func nixEval(t *testing.T, attr string, modules ...string) ([]byte, error) {
	t.Helper()
	inst := testenv.LookTool("nix-instantiate")
	if inst == "" {
		testenv.Missing(t, "nix-instantiate", "apt-get install nix-bin")
	}
	fixtures := testenv.Fixture(t, "nix")
	root := testenv.Root()
	mods := []string{filepath.Join(fixtures, "seed-configuration.nix"), filepath.Join(root, "nix/tests/credentials.nix")}
	for _, m := range modules {
		mods = append(mods, filepath.Join(root, "nix/tests", m))
	}
	expr := `import ` + filepath.Join(root, "nix/tests/eval.nix") + ` { fixtures = ` + fixtures + `; attr = "` + attr + `"; modules = [ ` + strings.Join(mods, " ") + ` ]; }`
	cmd := exec.Command(inst, "--eval", "--strict", "--json", "--expr", expr)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return nil, &nixError{stderr.String()}
	}
	return out, nil
}

type nixError struct{ stderr string }

func (e *nixError) Error() string { return e.stderr }

// TestGuestModuleGolden: the source document's configuration.nix with a
// credvm.credentials block yields exactly the hand-checked machine.json —
// which credvm loads as a machine.
func TestGuestModuleGolden(t *testing.T) {
	out, err := nixEval(t, "machine")
	if err != nil {
		t.Fatal(err)
	}
	want, err := os.ReadFile("testdata/app-vm-01.json")
	if err != nil {
		t.Fatal(err)
	}
	var got, golden any
	json.Unmarshal(out, &got)
	json.Unmarshal(want, &golden)
	if !reflect.DeepEqual(got, golden) {
		pretty, _ := json.MarshalIndent(got, "", "  ")
		t.Errorf("machine.json differs from testdata/app-vm-01.json:\n%s", pretty)
	}
	m, err := spec.ParseMachine("machine.json", "app-vm-01", out)
	if err != nil {
		t.Fatalf("credvm does not load the module's machine.json: %v", err)
	}
	g := m.Vars.Generators["app-vm-secrets"]
	if g == nil || len(g.Files) != 3 || m.VM.Hypervisor != "cloud-hypervisor" || m.VM.VsockCID != 20 || len(m.Credentials) != 4 {
		t.Errorf("loaded machine: %+v", m)
	}
}

// TestGuestModuleChecks: a service naming a credential nobody provides
// fails evaluation with the message; unused and encrypted credentials are
// warnings.
func TestGuestModuleChecks(t *testing.T) {
	_, err := nixEval(t, "machine", "missing-credential.nix")
	want := "error: credvm: systemd.services.other: LoadCredential=token:API_TOKEN names the credential API_TOKEN, which credvm.credentials does not provide (it provides: API_KEY, DB_PASSWORD, ENVIRONMENT, JWT_SECRET): add credvm.credentials.API_TOKEN"
	if err == nil || !strings.Contains(err.Error(), want) {
		t.Errorf("evaluation with a missing credential: %v\nwant %s", err, want)
	}
	out, err := nixEval(t, "warnings", "warnings.nix")
	if err != nil {
		t.Fatal(err)
	}
	var warnings []string
	json.Unmarshal(out, &warnings)
	wantW := []string{
		"credvm: credvm.credentials.UNUSED: no service of this guest loads it (LoadCredential=/ImportCredential=)",
		"credvm: systemd.services.enc: LoadCredentialEncrypted=db:/etc/credstore.encrypted/db: credvm sends credentials in the clear over a private channel, not encrypted blobs: this one cannot be satisfied",
	}
	if !reflect.DeepEqual(warnings, wantW) {
		t.Errorf("warnings:\n%q\nwant\n%q", warnings, wantW)
	}
	// ImportCredential=API_* in warnings.nix matched API_KEY: no error.
}

// TestClanEvalTests: clan's own eval tests of its vars interface pass on
// this Nix and lib, as they do for clan.
func TestClanEvalTests(t *testing.T) {
	inst := testenv.LookTool("nix-instantiate")
	if inst == "" {
		testenv.Missing(t, "nix-instantiate", "apt-get install nix-bin")
	}
	fixtures := testenv.Fixture(t, "nix")
	for _, expr := range []string{
		`import ` + filepath.Join(testenv.Root(), "nix/tests/clan-eval-tests.nix") + ` { fixtures = ` + fixtures + `; }`,
		// The flake's check, with the fixtures' lib for nixpkgs' own.
		`builtins.attrNames (import ` + filepath.Join(testenv.Root(), "nix/tests/self-check.nix") + ` { lib = import ` + fixtures + `/nixpkgs-lib/lib; })`,
	} {
		out, err := exec.Command(inst, "--eval", "--strict", "--json", "--expr", expr).CombinedOutput()
		if err != nil {
			t.Fatalf("%v\n%s", err, out)
		}
		if got := strings.TrimSpace(string(out)); got != "[]" && got != `["credentials","vars","vm"]` {
			t.Errorf("%s:\n%s", expr, got)
		}
	}
}

// TestHostModule: the host module, with stand-ins for the NixOS options
// it sets, makes credvm@NAME.service per VM: autostart, the machine key
// as the credential age-key (encrypted for a .cred blob), and a VM with a
// flake created from it on its first start.
func TestHostModule(t *testing.T) {
	inst := testenv.LookTool("nix-instantiate")
	if inst == "" {
		testenv.Missing(t, "nix-instantiate", "apt-get install nix-bin")
	}
	fixtures := testenv.Fixture(t, "nix")
	out, err := exec.Command(inst, "--eval", "--strict", "--json", "--expr",
		`import `+filepath.Join(testenv.Root(), "nix/tests/host-check.nix")+` { lib = import `+fixtures+`/nixpkgs-lib/lib; }`).Output()
	if err != nil {
		t.Fatal(err)
	}
	type unit struct {
		WantedBy      []string          `json:"wantedBy"`
		Environment   map[string]string `json:"environment"`
		ServiceConfig map[string]any    `json:"serviceConfig"`
	}
	var got struct {
		Services map[string]unit `json:"services"`
	}
	if err := json.Unmarshal(out, &got); err != nil {
		t.Fatal(err)
	}
	app, batch := got.Services["credvm@app-vm-01"], got.Services["credvm@batch"]
	for _, c := range []struct {
		what      string
		got, want any
	}{
		{"app's wantedBy", app.WantedBy, []string{"multi-user.target"}},
		{"batch's wantedBy", batch.WantedBy, []string{}},
		{"app's ExecStart", app.ServiceConfig["ExecStart"], "/nix/store/00000000000000000000000000000000-credvm/bin/credvm run --systemd --quiet app-vm-01"},
		{"app's key", app.ServiceConfig["LoadCredentialEncrypted"], "age-key:/etc/credstore.encrypted/app-vm-01.cred"},
		{"batch's key", batch.ServiceConfig["LoadCredential"], "age-key:/etc/credvm/batch.age"},
		{"app's create", app.ServiceConfig["ExecStartPre"], []any{"/bin/sh -c 'test -e /var/lib/microvms/app-vm-01/vm.json || exec /nix/store/00000000000000000000000000000000-credvm/bin/credvm create app-vm-01 --flake github:me/infra'"}},
		{"type", app.ServiceConfig["Type"], "notify"},
		{"repository", app.Environment["CREDVM_REPO"], "/var/lib/credvm/repo"},
	} {
		if fmt.Sprint(c.got) != fmt.Sprint(c.want) {
			t.Errorf("%s: %v, want %v", c.what, c.got, c.want)
		}
	}
}
