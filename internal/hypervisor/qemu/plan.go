package qemu

import (
	"fmt"
	"strings"

	"github.com/credvm/credvm/internal/cred"
	"github.com/credvm/credvm/internal/spec"
)

// QEMU's transports.
const (
	// SMBIOS: -smbios type=11,path=/dev/fd/N, one OEM string each.
	SMBIOS cred.Transport = "smbios"
	// FwCfg: -fw_cfg name=opt/io.systemd.credentials/NAME,file=/dev/fd/N.
	FwCfg cred.Transport = "fw_cfg"
)

// fw_cfg limits, from QEMU and measured on QEMU 7.2 (DESIGN.md §3).
const (
	// maxFwCfgFileName is QEMU's limit on a fw_cfg file name ("name too
	// long (max. 55 char)"), which systemd's 27-byte directory shares.
	maxFwCfgFileName = 55
	// MaxFwCfgNameLen is the longest credential name fw_cfg can carry.
	MaxFwCfgNameLen = maxFwCfgFileName - len(cred.FwCfgNamePrefix)
	// The number of fw_cfg files a machine type leaves for credentials
	// before its file directory is full: one more aborts QEMU (exit 134,
	// "Assertion 'count < fw_cfg_file_slots(s)' failed").
	fwCfgSlotsQ35     = 16
	fwCfgSlotsMicrovm = 23
)

// Options are the facts the planner needs about a VM.
type Options struct {
	Machine      string // q35, pc, microvm
	Transport    string // auto, smbios, fw_cfg
	GuestSystemd int
	VM           string // machine name, for messages
}

// PlanFor plans machine m's credentials.
func PlanFor(m *spec.Machine, creds []cred.Credential) (*cred.Plan, error) {
	return Plan(creds, Options{Machine: m.VM.Machine, Transport: m.VM.Transport, GuestSystemd: m.VM.GuestSystemd, VM: m.Name})
}

// Plan chooses the transport for a QEMU guest and checks every limit:
// SMBIOS type 11 while everything fits what the guest's systemd reads,
// fw_cfg beyond — never a transport that would cut. creds are the
// machine's credentials without the manifest.
func Plan(creds []cred.Credential, o Options) (*cred.Plan, error) {
	all, err := cred.PrepareSet(o.VM, creds)
	if err != nil {
		return nil, err
	}
	p := &cred.Plan{Credentials: all, SMBIOSSize: cred.SMBIOSSize(all), SMBIOSBudget: cred.SMBIOSBudget(o.GuestSystemd)}
	smbiosProblem := ""
	switch {
	case o.Machine == "microvm":
		smbiosProblem = "SMBIOS never reaches a QEMU microvm guest"
	case len(all) > cred.MaxSMBIOSStrings:
		smbiosProblem = fmt.Sprintf("%d credentials (with the manifest) exceed the %d strings one SMBIOS structure can hold", len(all), cred.MaxSMBIOSStrings)
	case p.SMBIOSSize > p.SMBIOSBudget:
		smbiosProblem = fmt.Sprintf("the credentials need %d bytes of SMBIOS type 11 but %s reads only %d", p.SMBIOSSize, cred.GuestDesc(o.GuestSystemd), p.SMBIOSBudget)
	}
	switch o.Transport {
	case "smbios":
		if smbiosProblem != "" {
			hint := `set transport = "auto" or "fw_cfg" in [vm]`
			if o.GuestSystemd < cred.WholeSMBIOSSystemd && o.Machine != "microvm" {
				hint += fmt.Sprintf(`, or guest_systemd = %d if the guest's systemd is that new`, cred.WholeSMBIOSSystemd)
			}
			return nil, fmt.Errorf("vm %s: cannot use the forced transport smbios: %s; the guest would get cut or missing credentials, so it is not started: %s", o.VM, smbiosProblem, hint)
		}
		p.Transport, p.Why = SMBIOS, "forced by transport = \"smbios\""
	case "fw_cfg":
		p.Transport, p.Why = FwCfg, "forced by transport = \"fw_cfg\""
	default:
		if smbiosProblem == "" {
			p.Transport, p.Why = SMBIOS, fmt.Sprintf("fits the SMBIOS budget (%d of %d bytes)", p.SMBIOSSize, p.SMBIOSBudget)
		} else {
			p.Transport, p.Why = FwCfg, smbiosProblem
		}
	}
	if p.Transport == FwCfg {
		for _, c := range all {
			if len(c.Name) > MaxFwCfgNameLen {
				return nil, fmt.Errorf("vm %s: credential %s cannot travel by fw_cfg: its name is %d bytes and fw_cfg allows %d (%q + name ≤ %d); shorten the name", o.VM, c.Name, len(c.Name), MaxFwCfgNameLen, cred.FwCfgNamePrefix, maxFwCfgFileName)
			}
		}
	}
	return p, nil
}

// fwCfgSlots is the number of fw_cfg file slots to ask QEMU for so that n
// credential files fit a machine type, or 0 when its default will do:
// with room to spare, since QEMU aborts when its directory is full.
func fwCfgSlots(machine string, n int) int {
	slots := fwCfgSlotsQ35
	if machine == "microvm" {
		slots = fwCfgSlotsMicrovm
	}
	if n <= slots {
		return 0
	}
	return max(64, n+32)
}

// Escape doubles commas, as QEMU's option parser requires inside a value.
func Escape(s string) string { return strings.ReplaceAll(s, ",", ",,") }
