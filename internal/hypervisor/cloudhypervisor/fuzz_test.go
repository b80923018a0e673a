package cloudhypervisor

import (
	"bytes"
	"encoding/base64"
	"strings"
	"testing"

	"github.com/credvm/credvm/internal/cred"
)

// FuzzArgvQuoting: any credential that the argv form accepts comes back
// whole through cloud-hypervisor's option and string-list parsing rules.
func FuzzArgvQuoting(f *testing.F) {
	f.Add("API_KEY", []byte("v,a=l\"ue]"))
	f.Add("A B", []byte{0, ',', '[', 0xff})
	f.Fuzz(func(t *testing.T, name string, value []byte) {
		m := machine(t, "cloud_hypervisor.oem_strings_on_argv = true\n")
		if cred.CheckUserName(name) != nil {
			return
		}
		p, err := Driver{}.Plan(m, []cred.Credential{{Name: name, Value: value}})
		if err != nil {
			if strings.ContainsAny(name, `,[]"`) {
				return // refused, as it must be
			}
			t.Fatalf("plan refused %q: %v", name, err)
		}
		argv, err := Argv(m.Name, m.VM, p, "/s")
		if err != nil {
			t.Fatal(err)
		}
		strs := parseCHList(t, argv[len(argv)-1])
		if len(strs) != 2 {
			t.Fatalf("%d strings after parsing, want 2: %q", len(strs), strs)
		}
		body, ok := strings.CutPrefix(strs[1], cred.SMBIOSBinaryPrefix)
		if !ok {
			t.Fatalf("not binary: %q", strs[1])
		}
		n, b64, _ := strings.Cut(body, "=")
		v, err := base64.StdEncoding.DecodeString(b64)
		if err != nil || n != name || !bytes.Equal(v, value) {
			t.Fatalf("%q=%q came back as %q=%q (%v)", name, value, n, v, err)
		}
	})
}
