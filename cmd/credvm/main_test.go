package main

import (
	"archive/tar"
	"compress/gzip"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/rogpeppe/go-internal/testscript"

	"github.com/credvm/credvm/internal/backup"
	"github.com/credvm/credvm/internal/cli"
	"github.com/credvm/credvm/internal/faultinject"
	"github.com/credvm/credvm/internal/sops"
	"github.com/credvm/credvm/internal/testenv"
	"github.com/credvm/credvm/internal/vars"
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
		// Under the test's own temporary directory: testscript removes its
		// go-test-script* root only when every script ran, and a -run
		// filter left one behind in /tmp per run.
		WorkdirRoot: t.TempDir(),
		Setup: func(env *testscript.Env) error {
			home := filepath.Join(env.WorkDir, "home")
			env.Setenv("HOME", home)
			env.Setenv("XDG_CONFIG_HOME", filepath.Join(home, ".config"))
			env.Setenv("USER", "tester")
			env.Setenv("SOPS_AGE_KEY_FILE", "")
			env.Setenv("SOPS_AGE_KEY", "")
			env.Setenv("CREDVM_REPO", "")
			env.Setenv("XDG_STATE_HOME", filepath.Join(env.WorkDir, ".state"))
			env.Setenv("CREDVM_NO_TTY", "1") // never ask the terminal of whoever runs the tests
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
			"tamper-backup": tamperBackup,
			// same-recipients A B: every secret of repository A has the
			// recipients and the links of the same secret of B.
			"same-recipients": sameRecipients,
			"forge-bundle":    forgeBundle,
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
			case "qemu":
				// Strict runs (make test) have QEMU: a missing one fails
				// the scenario instead of skipping it.
				_, err := exec.LookPath("qemu-system-x86_64")
				return err == nil || os.Getenv("CREDVM_TEST_STRICT") == "1", nil
			case "fixtures":
				_, err := os.Stat(filepath.Join(testenv.Root(), "..", "shared", "fixtures"))
				return err == nil || os.Getenv("CREDVM_TEST_STRICT") == "1", nil
			}
			return false, nil
		},
	})
}

// tamperBackup is the testscript command
//
//	tamper-backup IN OUT [+file PATH FROM MODE] [+link PATH TARGET] [+machine NAME]...
//
// which writes OUT: the backup IN with members and machine names added and
// the manifest's checksums recomputed — the backup an attacker would hand
// over, whole by every check a manifest can make.
func tamperBackup(ts *testscript.TestScript, neg bool, args []string) {
	if len(args) < 2 {
		ts.Fatalf("usage: tamper-backup IN OUT [+file PATH FROM MODE] [+link PATH TARGET] [+machine NAME]...")
	}
	in, err := os.Open(ts.MkAbs(args[0]))
	ts.Check(err)
	defer in.Close()
	man, files, err := backup.Read(in)
	ts.Check(err)
	for rest := args[2:]; len(rest) > 0; {
		switch rest[0] {
		case "+file":
			b, err := os.ReadFile(ts.MkAbs(rest[2]))
			ts.Check(err)
			mode, _ := strconv.ParseUint(rest[3], 8, 32)
			sum := sha256.Sum256(b)
			man.Entries = append(man.Entries, backup.Entry{Path: rest[1], Type: "file", Mode: uint32(mode), Size: int64(len(b)), SHA256: hex.EncodeToString(sum[:])})
			files[rest[1]] = b
			rest = rest[4:]
		case "+link":
			man.Entries = append(man.Entries, backup.Entry{Path: rest[1], Type: "symlink", Target: rest[2]})
			rest = rest[3:]
		case "+machine":
			man.Machines = append(man.Machines, rest[1])
			rest = rest[2:]
		default:
			ts.Fatalf("tamper-backup: unknown %q", rest[0])
		}
	}
	out, err := os.Create(ts.MkAbs(args[1]))
	ts.Check(err)
	defer out.Close()
	zw := gzip.NewWriter(out)
	tw := tar.NewWriter(zw)
	mb, _ := json.Marshal(man)
	tw.WriteHeader(&tar.Header{Name: "credvm-backup.json", Mode: 0o600, Size: int64(len(mb)), Typeflag: tar.TypeReg})
	tw.Write(mb)
	for _, e := range man.Entries {
		switch e.Type {
		case "dir":
			tw.WriteHeader(&tar.Header{Name: e.Path + "/", Mode: int64(e.Mode), Typeflag: tar.TypeDir})
		case "symlink":
			tw.WriteHeader(&tar.Header{Name: e.Path, Linkname: e.Target, Mode: 0o777, Typeflag: tar.TypeSymlink})
		case "file":
			tw.WriteHeader(&tar.Header{Name: e.Path, Mode: int64(e.Mode), Size: e.Size, Typeflag: tar.TypeReg})
			tw.Write(files[e.Path])
		}
	}
	ts.Check(tw.Close())
	ts.Check(zw.Close())
}

// forgeBundle is the testscript command
//
//	forge-bundle OUT RECIPIENT-FILE SIGN-KEY MACHINE MACHINE-FILE
//
// which writes what anyone can write: a bundle for MACHINE with the given
// machine file and no vars, sealed to the recipient and signed with
// SIGN-KEY — no credvm repository, no checks.
func forgeBundle(ts *testscript.TestScript, neg bool, args []string) {
	if len(args) != 5 {
		ts.Fatalf("usage: forge-bundle OUT RECIPIENT-FILE SIGN-KEY MACHINE MACHINE-FILE")
	}
	spec, err := os.ReadFile(ts.MkAbs(args[4]))
	ts.Check(err)
	rcpt, err := vars.ParseRecipient(ts.MkAbs(args[1]))
	ts.Check(err)
	b := &vars.Bundle{Format: vars.BundleFormat, Machine: args[3], Exported: time.Now(), MachineFile: "machine.toml", MachineSpec: string(spec)}
	sealed, err := vars.Seal(b, rcpt)
	ts.Check(err)
	signer, err := vars.FindSigner(ts.MkAbs(args[2]))
	ts.Check(err)
	signed, err := signer.Sign(sealed)
	ts.Check(err)
	ts.Check(os.WriteFile(ts.MkAbs(args[0]), signed, 0o600))
}

// sameRecipients compares two repositories' secrets: the same files, each
// encrypted to the same keys, with the same users/, machines/ and groups/
// link names.
func sameRecipients(ts *testscript.TestScript, neg bool, args []string) {
	if len(args) != 2 {
		ts.Fatalf("usage: same-recipients DIR DIR")
	}
	read := func(root string) map[string]string {
		out := map[string]string{}
		filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
			if err != nil || d.Name() != "secret" || d.IsDir() {
				return nil
			}
			b, _ := os.ReadFile(p)
			rs, err := sops.Recipients(b)
			if err != nil {
				ts.Fatalf("%s: %v", p, err)
			}
			keys := sops.Keys(rs)
			slices.Sort(keys)
			dir := filepath.Dir(p)
			var links []string
			for _, kind := range []string{"users", "machines", "groups"} {
				es, _ := os.ReadDir(filepath.Join(dir, kind))
				for _, e := range es {
					links = append(links, kind+"/"+e.Name())
				}
			}
			rel, _ := filepath.Rel(root, dir)
			out[rel] = strings.Join(keys, " ") + " | " + strings.Join(links, " ")
			return nil
		})
		return out
	}
	a, b := read(ts.MkAbs(args[0])), read(ts.MkAbs(args[1]))
	var diffs []string
	for k, v := range a {
		if b[k] != v {
			diffs = append(diffs, fmt.Sprintf("%s:\n  %s\n  %s", k, v, b[k]))
		}
	}
	for k := range b {
		if _, ok := a[k]; !ok {
			diffs = append(diffs, k+": only in "+args[1])
		}
	}
	if len(diffs) > 0 != neg {
		ts.Fatalf("recipients differ:\n%s", strings.Join(diffs, "\n"))
	}
}
