package flake

import (
	"bytes"
	"encoding/json"
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
