package cred

import (
	"fmt"
	"strings"
)

// Transport is how credentials reach the guest.
type Transport string

// Transports.
const (
	SMBIOS Transport = "smbios"
	FwCfg  Transport = "fw_cfg"
)

// SMBIOS type-11 limits.
const (
	// SMBIOSBudget252 is what systemd ≤ 252 reads of the type-11
	// structure: one read() of the sysfs raw file, capped at 4,096 bytes
	// by the kernel, header included (measured; DESIGN.md §3). Measured
	// here too: a 4,096-byte structure arrives whole; at 4,097 only the
	// final NUL of the string set is lost, which is harmless, so the
	// budget errs by a byte on the safe side.
	SMBIOSBudget252 = 4096
	// SMBIOSBudgetTable is the budget for guests that read the whole
	// structure: QEMU 7.2 refuses SMBIOS 2.1 tables over 65,535 bytes,
	// and its other structures need room too.
	SMBIOSBudgetTable = 60000
	// MaxSMBIOSStrings: a structure's string index is one byte.
	MaxSMBIOSStrings = 255
	// smbiosHeader is a type-11 structure's formatted area: type,
	// length, handle (2) and the string count.
	smbiosHeader = 5
	// WholeSMBIOSSystemd is the first systemd version measured to import
	// the whole type-11 structure (Debian 13). Versions 253–256 were not
	// measured and get the 252 budget.
	WholeSMBIOSSystemd = 257
)

// fw_cfg limits (QEMU): the number of files a machine type leaves for
// credentials before its file directory is full, measured on QEMU 7.2.
const (
	FwCfgSlotsQ35     = 16
	FwCfgSlotsMicrovm = 23
)

// SMBIOSBudget is the type-11 budget for a guest with the given systemd
// version (0: unknown, assume 252).
func SMBIOSBudget(guestSystemd int) int {
	if guestSystemd >= WholeSMBIOSSystemd {
		return SMBIOSBudgetTable
	}
	return SMBIOSBudget252
}

// SMBIOSSize is the size of the one type-11 structure QEMU builds from
// these credentials: the header, each string and its NUL, and the final
// NUL ending the string set.
func SMBIOSSize(creds []Credential) int {
	n := smbiosHeader
	for i := range creds {
		n += len(creds[i].SMBIOSString()) + 1
	}
	return n + 1
}

// Plan is the decision of how a VM's credentials travel.
type Plan struct {
	Transport Transport `json:"transport"`
	// Credentials in the order they are sent: the manifest first, then
	// the machine's in name order.
	Credentials []Credential `json:"-"`
	// SMBIOSSize is the type-11 structure these credentials need, and
	// SMBIOSBudget what the guest reads of it.
	SMBIOSSize   int `json:"smbios_bytes"`
	SMBIOSBudget int `json:"smbios_budget"`
	// FwCfgSlots is the number of fw_cfg file slots to ask QEMU for when
	// the machine type's default leaves too few (0: the default will do).
	FwCfgSlots int `json:"fw_cfg_slots,omitempty"`
	// Why explains the choice in one line.
	Why string `json:"why"`
}

// QEMUOptions are the facts the planner needs about the VM.
type QEMUOptions struct {
	Machine      string // q35, pc, microvm
	Transport    string // auto, smbios, fw_cfg
	GuestSystemd int
	VM           string // machine name, for messages
}

// PlanQEMU chooses the transport for a QEMU guest and checks every limit.
// creds must be the machine's credentials without the manifest.
func PlanQEMU(creds []Credential, o QEMUOptions) (*Plan, error) {
	total := 0
	for i := range creds {
		if err := creds[i].Check(); err != nil {
			return nil, fmt.Errorf("vm %s: %w", o.VM, err)
		}
		total += len(creds[i].Value)
	}
	all := append([]Credential{Manifest(creds)}, creds...)
	total += len(all[0].Value)
	if total > MaxTotalSize {
		return nil, fmt.Errorf("vm %s: credentials total %d bytes; systemd accepts at most %d for all of them together", o.VM, total, MaxTotalSize)
	}
	p := &Plan{Credentials: all, SMBIOSSize: SMBIOSSize(all), SMBIOSBudget: SMBIOSBudget(o.GuestSystemd)}

	smbiosProblem := ""
	switch {
	case o.Machine == "microvm":
		smbiosProblem = "SMBIOS never reaches a QEMU microvm guest"
	case len(all) > MaxSMBIOSStrings:
		smbiosProblem = fmt.Sprintf("%d credentials (with the manifest) exceed the %d strings one SMBIOS structure can hold", len(all), MaxSMBIOSStrings)
	case p.SMBIOSSize > p.SMBIOSBudget:
		smbiosProblem = fmt.Sprintf("the credentials need %d bytes of SMBIOS type 11 but %s reads only %d", p.SMBIOSSize, guestDesc(o.GuestSystemd), p.SMBIOSBudget)
	}

	switch o.Transport {
	case "smbios":
		if smbiosProblem != "" {
			hint := `set transport = "auto" or "fw_cfg" in [vm]`
			if o.GuestSystemd < WholeSMBIOSSystemd && o.Machine != "microvm" {
				hint += fmt.Sprintf(`, or guest_systemd = %d if the guest's systemd is that new`, WholeSMBIOSSystemd)
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
				return nil, fmt.Errorf("vm %s: credential %s cannot travel by fw_cfg: its name is %d bytes and fw_cfg allows %d (%q + name ≤ 55); shorten the name", o.VM, c.Name, len(c.Name), MaxFwCfgNameLen, FwCfgNamePrefix)
			}
		}
		slots := FwCfgSlotsQ35
		if o.Machine == "microvm" {
			slots = FwCfgSlotsMicrovm
		}
		if len(all) > slots {
			// QEMU aborts (exit 134) when its fw_cfg directory is full;
			// raise the slot count with room to spare.
			p.FwCfgSlots = max(64, len(all)+32)
		}
	}
	return p, nil
}

func guestDesc(v int) string {
	if v == 0 {
		return "a guest with systemd ≤ 252 (the default assumption; set guest_systemd in [vm])"
	}
	return fmt.Sprintf("a guest with systemd %d", v)
}

// EscapeQEMU doubles commas, as QEMU's option parser requires inside a
// value.
func EscapeQEMU(s string) string { return strings.ReplaceAll(s, ",", ",,") }
