package spec

import (
	"testing"
)

// FuzzParseMachine: any machine file, TOML or JSON, loads or gives
// problems — never a panic — and what loads is valid.
func FuzzParseMachine(f *testing.F) {
	f.Add([]byte(example), false)
	f.Add([]byte(exampleJSON), true)
	f.Add([]byte("[vm]\nvcpu = 1\n[[vm.disks]]\nimage='x'\n[credentials]\nA = { value = 'b' }\n"), false)
	f.Add([]byte("{\"vm\": {\"disks\": [{\"image\": \"x\"}]}}"), true)
	f.Add([]byte("[vars.generators.a]\nscript='x'\ndependencies=['a']\nfiles.f={}\n"), false)
	f.Fuzz(func(t *testing.T, data []byte, asJSON bool) {
		name := "/r/machines/m/machine.toml"
		if asJSON {
			name = "/r/machines/m/machine.json"
		}
		m, err := ParseMachine(name, "m", data)
		if err != nil {
			return
		}
		if m.dependencyCycle() != nil {
			t.Fatal("a machine with a dependency cycle loaded")
		}
		for _, g := range m.GeneratorOrder() {
			if g == nil || CheckName("generator", g.Name) != nil {
				t.Fatalf("invalid generator loaded: %+v", g)
			}
		}
		for _, c := range m.Credentials {
			if c.Name == "" {
				t.Fatal("credential without a name")
			}
		}
	})
}
