package qemu

import (
	"strings"
	"testing"

	"github.com/credvm/credvm/internal/spec"
)

// TestCheckVM pins what a machine file may ask of QEMU, as a user sees it
// when the file is loaded.
func TestCheckVM(t *testing.T) {
	tests := []struct {
		name, data string
		want       string // "" for valid
	}{
		{"default machine type", "[vm]\nvcpu = 1\n", ""},
		{"microvm", "[vm]\nmachine = 'microvm'\n", ""},
		{"unknown machine type", "[vm]\nmachine = 'virt'\n", `machine.toml:2: vm.machine: unknown QEMU machine type "virt": use one of "q35", "pc", "microvm"`},
		{"smbios on microvm", "[vm]\nmachine = 'microvm'\ntransport = 'smbios'\n", "machine.toml:3: vm.transport: SMBIOS never reaches a QEMU microvm guest"},
		{"unknown transport", "[vm]\ntransport = 'vsock'\n", `machine.toml:2: vm.transport: unknown transport "vsock": use one of "auto", "smbios", "fw_cfg"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m, err := spec.ParseMachine("machine.toml", "m", []byte(tt.data))
			switch {
			case tt.want == "" && err != nil:
				t.Fatal(err)
			case tt.want == "" && m.VM.Machine == "":
				t.Errorf("no machine type defaulted")
			case tt.want != "" && (err == nil || !strings.Contains(err.Error(), tt.want)):
				t.Errorf("error:\n%v\nwant:\n%s", err, tt.want)
			}
		})
	}
}
