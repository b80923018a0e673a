package spec

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"
)

// Inventory is the repository's inventory.toml: which machines exist
// beyond their directories, and their tags.
//
//	[machines.app-vm-01]
//	tags = ["app", "eu"]
type Inventory struct {
	Machines map[string]*InventoryMachine `toml:"machines" json:"machines"`
	// Hosts are the hosts VMs are placed on, reached over SSH:
	//
	//	[hosts.hv1]
	//	ssh = "root@hv1.example:22"
	Hosts map[string]*Host `toml:"hosts" json:"hosts"`
}

// InventoryMachine is one machine's inventory entry.
type InventoryMachine struct {
	Tags []string `toml:"tags" json:"tags"`
	// Host places the VM on a host of [hosts]; none: this one.
	Host string `toml:"host" json:"host"`
}

// Host is a host of the fleet.
type Host struct {
	// SSH is user@address[:port], as ssh takes it.
	SSH string `toml:"ssh" json:"ssh"`
	// SSHOptions are more `-o` options for ssh ("ConnectTimeout=5").
	SSHOptions []string `toml:"ssh_options" json:"ssh_options"`
	// Root prefixes the host's paths (its credvm, repository, state and
	// host key): "" on a real host; tests run several hosts on one
	// machine, each with its own root.
	Root string `toml:"root" json:"root"`
}

// Address splits SSH into destination (user@address) and port ("": ssh's).
func (h *Host) Address() (dest, port string) {
	dest = h.SSH
	if i := strings.LastIndex(dest, ":"); i > strings.LastIndex(dest, "]") && i > 0 {
		dest, port = dest[:i], dest[i+1:]
	}
	return dest, port
}

// LoadInventory reads an inventory file; a missing file is an empty
// inventory.
func LoadInventory(path string) (*Inventory, error) {
	data, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return &Inventory{}, nil
	}
	if err != nil {
		return nil, err
	}
	return ParseInventory(path, data)
}

// ParseInventory parses an inventory file's content (nil: none, an empty
// inventory); path names it in messages.
func ParseInventory(path string, data []byte) (*Inventory, error) {
	inv := &Inventory{}
	if data == nil {
		return inv, nil
	}
	doc, err := decodeFile(path, data, inv)
	if err != nil {
		return nil, err
	}
	ps := doc.unknown
	for name, m := range inv.Machines {
		key := "machines." + name
		if err := CheckMachineName(name); err != nil {
			ps = append(ps, doc.problem(key, "%v", err))
		}
		if m == nil {
			inv.Machines[name] = &InventoryMachine{}
			continue
		}
		for i, t := range m.Tags {
			if !isHostname(t) {
				ps = append(ps, doc.problem(fmt.Sprintf("%s.tags[%d]", key, i), "invalid tag %q: letters, digits and '-'", t))
			}
		}
	}
	for name, h := range inv.Hosts {
		key := "hosts." + name
		if err := CheckMachineName(name); err != nil {
			ps = append(ps, doc.problem(key, "invalid host name %q: a hostname label", name))
		}
		if h == nil || h.SSH == "" {
			ps = append(ps, doc.problem(key, "a host needs ssh = \"user@address[:port]\""))
			continue
		}
		if dest, port := h.Address(); strings.HasPrefix(dest, "-") || strings.ContainsAny(dest, " \t\n") || (port != "" && !isDigits(port)) {
			ps = append(ps, doc.problem(key+".ssh", "invalid ssh %q: write user@address[:port]", h.SSH))
		}
		for i, o := range h.SSHOptions {
			// The inventory is repository content: no option that runs a
			// command on this machine or changes whose host key is trusted.
			k, _, ok := strings.Cut(o, "=")
			lk := strings.ToLower(k)
			if !ok || k == "" || strings.ContainsAny(o, "\n") || strings.HasSuffix(lk, "command") || lk == "stricthostkeychecking" || lk == "userknownhostsfile" || lk == "globalknownhostsfile" || lk == "include" || lk == "match" {
				ps = append(ps, doc.problem(fmt.Sprintf("%s.ssh_options[%d]", key, i), "invalid ssh option %q: write Key=value; options that run commands (…Command) or choose which host keys are trusted are credvm's, not the repository's", o))
			}
		}
		if h.Root != "" && (!filepath.IsAbs(h.Root) || filepath.Clean(h.Root) != h.Root) {
			ps = append(ps, doc.problem(key+".root", "root must be a clean absolute path, not %q", h.Root))
		}
	}
	for name, m := range inv.Machines {
		if m != nil && m.Host != "" && inv.Hosts[m.Host] == nil {
			ps = append(ps, doc.problem("machines."+name+".host", "no host %q in [hosts]: add it with `credvm host add %s USER@ADDRESS`", m.Host, m.Host))
		}
	}
	if len(ps) > 0 {
		return nil, ps
	}
	return inv, nil
}

func isDigits(s string) bool {
	for _, c := range s {
		if c < '0' || c > '9' {
			return false
		}
	}
	return s != ""
}

// HostOf is the host a machine is placed on ("" : this one).
func (inv *Inventory) HostOf(machine string) string {
	if inv == nil || inv.Machines[machine] == nil {
		return ""
	}
	return inv.Machines[machine].Host
}

// Tagged returns the machines carrying tag, sorted.
// Tags lists every tag of the inventory, sorted.
func (inv *Inventory) Tags() []string {
	var out []string
	for _, m := range inv.Machines {
		out = append(out, m.Tags...)
	}
	slices.Sort(out)
	return slices.Compact(out)
}

func (inv *Inventory) Tagged(tag string) []string {
	var out []string
	for name, m := range inv.Machines {
		if slices.Contains(m.Tags, tag) {
			out = append(out, name)
		}
	}
	slices.Sort(out)
	return out
}

// Settings is the repository's optional credvm.toml. It marks the
// repository root and holds repository-wide settings:
//
//	[history]
//	retention = "24h"   # how long replaced vars are kept for rollback
type Settings struct {
	History struct {
		Retention string `toml:"retention" json:"retention"`
	} `toml:"history" json:"history"`
	// Limits bound each run of a generator's script:
	//
	//	[limits]
	//	output = "64MiB"    # each output file, and all of them together
	//	files = 1000        # files in $out
	//	processes = 512     # processes of the script at once
	//	memory = "2GiB"     # memory of the script's processes (and tmpfs they fill)
	// Sops configures recipients as clan's clan.core.sops options do:
	//
	//	[sops]
	//	default_groups = ["admins"]   # groups every new secret is shared with
	Sops struct {
		DefaultGroups *[]string `toml:"default_groups" json:"default_groups"`
	} `toml:"sops" json:"sops"`
	Limits struct {
		Output    string `toml:"output" json:"output"`
		Files     int    `toml:"files" json:"files"`
		Processes int    `toml:"processes" json:"processes"`
		Memory    string `toml:"memory" json:"memory"`
	} `toml:"limits" json:"limits"`

	retention time.Duration
	limits    GeneratorLimits
}

// DefaultGroupsDefault is [sops] default_groups when credvm.toml says
// nothing: clan's admins group.
var DefaultGroupsDefault = []string{"admins"}

// DefaultGroups are the groups every new secret is shared with.
func (s *Settings) DefaultGroups() []string {
	if s == nil || s.Sops.DefaultGroups == nil {
		return DefaultGroupsDefault
	}
	return *s.Sops.DefaultGroups
}

// GeneratorLimits are the parsed [limits].
type GeneratorLimits struct {
	Output    int64 // bytes
	Files     int
	Processes int
	Memory    int64 // bytes
}

// DefaultLimits apply where credvm.toml sets none.
var DefaultLimits = GeneratorLimits{Output: 64 << 20, Files: 1000, Processes: 512, Memory: 2 << 30}

// GeneratorLimits returns the limits, defaults filled in.
func (s *Settings) GeneratorLimits() GeneratorLimits {
	l := s.limits
	if l.Output == 0 {
		l.Output = DefaultLimits.Output
	}
	if l.Files == 0 {
		l.Files = DefaultLimits.Files
	}
	if l.Processes == 0 {
		l.Processes = DefaultLimits.Processes
	}
	if l.Memory == 0 {
		l.Memory = DefaultLimits.Memory
	}
	return l
}

// ParseSize reads a size: bytes, or with a unit (KiB, MiB, GiB; K, M, G).
func ParseSize(s string) (int64, error) {
	units := map[string]int64{"": 1, "B": 1, "K": 1 << 10, "KiB": 1 << 10, "M": 1 << 20, "MiB": 1 << 20, "G": 1 << 30, "GiB": 1 << 30}
	num := strings.TrimRight(s, "KMGiB")
	n, err := strconv.ParseInt(strings.TrimSpace(num), 10, 64)
	mul, ok := units[strings.TrimSpace(s[len(num):])]
	if err != nil || !ok || n <= 0 {
		return 0, fmt.Errorf("invalid size %q: write bytes or a number with KiB, MiB or GiB, such as \"64MiB\"", s)
	}
	return n * mul, nil
}

// Retention is the parsed [history] retention; 0 when not set.
func (s *Settings) Retention() time.Duration { return s.retention }

// LoadSettings reads credvm.toml strictly; a missing file is no settings.
func LoadSettings(path string) (*Settings, error) {
	data, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return &Settings{}, nil
	}
	if err != nil {
		return nil, err
	}
	return ParseSettings(path, data)
}

// ParseSettings parses credvm.toml's content (nil: none); path names it
// in messages.
func ParseSettings(path string, data []byte) (*Settings, error) {
	s := &Settings{}
	if data == nil {
		return s, nil
	}
	doc, err := decodeFile(path, data, s)
	if err != nil {
		return nil, err
	}
	ps := doc.unknown
	if r := s.History.Retention; r != "" {
		d, err := time.ParseDuration(r)
		if err != nil || d < 0 {
			ps = append(ps, doc.problem("history.retention", "invalid duration %q: write one such as \"24h\" or \"168h\"", r))
		}
		s.retention = d
	}
	for key, v := range map[string]*int64{"output": &s.limits.Output, "memory": &s.limits.Memory} {
		text := map[string]string{"output": s.Limits.Output, "memory": s.Limits.Memory}[key]
		if text == "" {
			continue
		}
		n, err := ParseSize(text)
		if err != nil {
			ps = append(ps, doc.problem("limits."+key, "%v", err))
		}
		*v = n
	}
	for key, v := range map[string]int{"files": s.Limits.Files, "processes": s.Limits.Processes} {
		if v < 0 {
			ps = append(ps, doc.problem("limits."+key, "must be a positive number, not %d", v))
		}
	}
	s.limits.Files, s.limits.Processes = s.Limits.Files, s.Limits.Processes
	if len(ps) > 0 {
		return nil, ps
	}
	return s, nil
}
