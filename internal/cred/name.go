package cred

import (
	"fmt"
	"strings"
)

// MaxNameLen is systemd's limit on a credential name.
const MaxNameLen = 255

// FwCfgNamePrefix is the fw_cfg directory systemd imports credentials from.
const FwCfgNamePrefix = "opt/io.systemd.credentials/"

// ReservedPrefix names credentials credvm itself passes (the manifest); a
// machine may not declare its own under it.
const ReservedPrefix = "credvm."

// CheckName applies systemd's rules for a credential name (v252
// credential_name_valid: a valid file name and a valid fd name): 1–255
// bytes of printable ASCII, no "/", no ":", not "." or "..". It adds one
// rule of the SMBIOS importer: no "=", which ends the name in NAME=VALUE.
func CheckName(name string) error {
	switch {
	case name == "":
		return fmt.Errorf("credential name is empty")
	case len(name) > MaxNameLen:
		return fmt.Errorf("credential name is %d bytes; systemd allows at most %d", len(name), MaxNameLen)
	case name == "." || name == "..":
		return fmt.Errorf("credential name %q is not allowed by systemd", name)
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		switch {
		case c < 0x20 || c > 0x7e:
			return fmt.Errorf("credential name %q: byte %d is not printable ASCII; systemd allows only 0x20–0x7E", name, i)
		case c == '/':
			return fmt.Errorf("credential name %q contains \"/\"; systemd refuses it", name)
		case c == '=':
			return fmt.Errorf("credential name %q contains \"=\", which ends the name in the SMBIOS form NAME=VALUE", name)
		case c == ':':
			return fmt.Errorf("credential name %q contains \":\"; systemd refuses it", name)
		}
	}
	return nil
}

// CheckUserName is CheckName plus the names credvm reserves for itself.
func CheckUserName(name string) error {
	if err := CheckName(name); err != nil {
		return err
	}
	if strings.HasPrefix(name, ReservedPrefix) {
		return fmt.Errorf("credential name %q: names starting with %q are reserved for credvm", name, ReservedPrefix)
	}
	return nil
}
