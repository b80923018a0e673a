package main

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/rogpeppe/go-internal/testscript"

	"github.com/credvm/credvm/internal/cli"
	"github.com/credvm/credvm/internal/faultinject"
	"github.com/credvm/credvm/internal/testenv"
)

func TestMain(m *testing.M) {
	testscript.Main(m, map[string]func(){
		"credvm": func() { os.Exit(cli.Main()) },
	})
}

// TestScript runs testdata/script/*.txtar: each is one user scenario, with
// the exact output and errors credvm must give.
func TestScript(t *testing.T) {
	testscript.Run(t, testscript.Params{
		Dir: filepath.Join("testdata", "script"),
		Setup: func(env *testscript.Env) error {
			home := filepath.Join(env.WorkDir, "home")
			env.Setenv("HOME", home)
			env.Setenv("XDG_CONFIG_HOME", filepath.Join(home, ".config"))
			env.Setenv("USER", "tester")
			env.Setenv("SOPS_AGE_KEY_FILE", "")
			env.Setenv("SOPS_AGE_KEY", "")
			env.Setenv("CREDVM_REPO", "")
			env.Setenv("XDG_STATE_HOME", filepath.Join(env.WorkDir, ".state"))
			env.Setenv("GIT_AUTHOR_NAME", "t")
			env.Setenv("GIT_AUTHOR_EMAIL", "t@example.com")
			env.Setenv("GIT_COMMITTER_NAME", "t")
			env.Setenv("GIT_COMMITTER_EMAIL", "t@example.com")
			env.Setenv("EXAMPLES", filepath.Join(testenv.Root(), "examples"))
			env.Setenv("FIXTURES", filepath.Join(testenv.Root(), "..", "shared", "fixtures"))
			if p := testenv.LookTool("sops"); p != "" {
				env.Setenv("SOPS", p)
			}
			return nil
		},
		Cmds: map[string]func(ts *testscript.TestScript, neg bool, args []string){
			// need-faultinject fails a scenario that kills credvm at fault
			// points when they are not compiled in: it would pass for the
			// wrong reason, or fail without saying why.
			"need-faultinject": func(ts *testscript.TestScript, neg bool, args []string) {
				if !faultinject.Enabled {
					ts.Fatalf("this scenario needs fault points: run the tests with -tags faultinject (make test does)")
				}
			},
		},
		Condition: func(cond string) (bool, error) {
			switch cond {
			case "sops":
				return os.Getenv("CREDVM_TEST_STRICT") == "1" || testenv.LookTool("sops") != "", nil
			case "root":
				return os.Geteuid() == 0, nil
			case "fixtures":
				_, err := os.Stat(filepath.Join(testenv.Root(), "..", "shared", "fixtures"))
				return err == nil || os.Getenv("CREDVM_TEST_STRICT") == "1", nil
			}
			return false, nil
		},
	})
}
