package cred

import "fmt"

// Transport is how credentials reach the guest.
type Transport string

// Each backend names its own transports (qemu.SMBIOS, qemu.FwCfg,
// cloudhypervisor.OEMStrings, firecracker.Cmdline).

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
	// Why explains the choice in one line.
	Why string `json:"why"`
}

// GuestDesc describes a guest by its declared systemd version, for
// messages about what it can read.
func GuestDesc(v int) string {
	if v == 0 {
		return "a guest with systemd ≤ 252 (the default assumption; set guest_systemd in [vm])"
	}
	return fmt.Sprintf("a guest with systemd %d", v)
}

// PrepareSet checks each credential and the set against systemd's limits
// and returns it with the manifest first, as every transport sends it.
func PrepareSet(vmName string, creds []Credential) ([]Credential, error) {
	total := 0
	for i := range creds {
		if err := creds[i].Check(); err != nil {
			return nil, fmt.Errorf("vm %s: %w", vmName, err)
		}
		total += len(creds[i].Value)
	}
	all := append([]Credential{Manifest(creds)}, creds...)
	total += len(all[0].Value)
	if total > MaxTotalSize {
		return nil, fmt.Errorf("vm %s: credentials total %d bytes; systemd accepts at most %d for all of them together", vmName, total, MaxTotalSize)
	}
	return all, nil
}
