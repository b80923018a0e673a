// Package spec loads and validates the files a user writes: a machine's
// machine.toml (or machine.json, the same schema, for Nix and other
// generators) and the repository's inventory.toml.
//
// Validation is strict and happens at load time, so that nothing later —
// generating vars, planning a VM start — meets a half-valid machine: an
// unknown key, a wrong type, an invalid name or an impossible combination is
// an error naming the file, the line and the key, with what to write instead.
// All problems of a file are reported together.
//
// The schema mirrors clan's `clan.core.vars.generators` where it overlaps
// (files with secret/mode/owner/group/deploy, prompts, dependencies, share,
// runtime_inputs, validation), so a clan user reads it without a manual.
package spec

import (
	"path/filepath"
	"regexp"
	"time"
)

// Machine is one VM as declared in machines/<name>/machine.toml.
type Machine struct {
	// Name is the machine's directory name under machines/.
	Name string `toml:"-" json:"-"`
	// File is the path the machine was loaded from.
	File string `toml:"-" json:"-"`
	// FromLayout: no machine file declares it; its generators and files are
	// what the repository's layout holds (repo.LayoutMachine), without
	// scripts or validation — enough to list, read, set and check
	// recipients, not to generate or tell what is outdated.
	FromLayout bool `toml:"-" json:"-"`

	VM          VM                     `toml:"vm" json:"vm"`
	Vars        Vars                   `toml:"vars" json:"vars"`
	Credentials map[string]*Credential `toml:"credentials" json:"credentials"`
	// Generated marks a machine file credvm wrote from a guest's NixOS
	// configuration (`create --flake`): edit the configuration, not it.
	Generated *Generated `toml:"generated" json:"generated,omitempty"`
}

// Generated is where a machine file was evaluated from: a flake's
// attribute, at the flake's locked revision — or, for a path: flake,
// which has none, its NAR hash and modification time.
type Generated struct {
	Flake        string `toml:"flake" json:"flake"`
	Attribute    string `toml:"attribute" json:"attribute"`
	Revision     string `toml:"revision" json:"revision,omitempty"`
	NarHash      string `toml:"nar_hash" json:"nar_hash,omitempty"`
	LastModified int64  `toml:"last_modified" json:"last_modified,omitempty"`
}

// Version is what identifies the flake's content.
func (g Generated) Version() string {
	if g.Revision != "" {
		return g.Revision
	}
	return g.NarHash
}

// Vars holds the machine's generators.
type Vars struct {
	Generators map[string]*Generator `toml:"generators" json:"generators"`
}

// Generator produces a set of files by running a script, like clan's
// clan.core.vars.generators.<name>.
type Generator struct {
	Name string `toml:"-" json:"-"`

	Script        string             `toml:"script" json:"script"`
	RuntimeInputs []string           `toml:"runtime_inputs" json:"runtime_inputs"`
	Dependencies  []string           `toml:"dependencies" json:"dependencies"`
	Files         map[string]*File   `toml:"files" json:"files"`
	Prompts       map[string]*Prompt `toml:"prompts" json:"prompts"`
	Share         bool               `toml:"share" json:"share"`
	// Imported: a shared generator another machine declares, joined as a
	// dependency of this one's (ParseMachineWith); never deployed here.
	Imported bool `toml:"-" json:"-"`
	// Validation is any value; when it changes, the generator is outdated.
	// Its hash is stored as clan stores it (.validation-hash), so clan and
	// credvm agree on what is outdated.
	Validation any `toml:"validation" json:"validation"`
	// Timeout bounds one run of the script ("30s", "5m"); default 5m.
	Timeout string `toml:"timeout" json:"timeout"`

	timeout time.Duration
}

// File is one output of a generator.
type File struct {
	Name string `toml:"-" json:"-"`

	// Secret files are stored encrypted; public ones in plain text. Default true.
	Secret *bool `toml:"secret" json:"secret"`
	// Mode, Owner and Group apply where the file is deployed. Mode is an
	// octal string; default "0400".
	Mode  string `toml:"mode" json:"mode"`
	Owner string `toml:"owner" json:"owner"`
	Group string `toml:"group" json:"group"`
	// Deploy false keeps the file from the machine: it is not encrypted to
	// the machine's key and cannot be passed to the VM. Default true.
	Deploy *bool `toml:"deploy" json:"deploy"`
	// NeededFor is clan's phase the secret is deployed in (partitioning,
	// activation, users, services; default services). credvm hands every
	// deployed file over at start; it is kept for clan, and shown.
	NeededFor string `toml:"needed_for" json:"needed_for"`
	// RestartUnits are the guest's units to restart when the file
	// changes (clan, with sops-nix); kept, and listed by creds show.
	RestartUnits []string `toml:"restart_units" json:"restart_units"`

	mode uint32
}

// Prompt is a value asked of the user when the generator runs.
type Prompt struct {
	Name string `toml:"-" json:"-"`

	// Type is "line" (default), "hidden" (not echoed), "multiline" or
	// "multiline-hidden".
	Type        string `toml:"type" json:"type"`
	Description string `toml:"description" json:"description"`
	// Persist stores the answer as a secret file of the generator named
	// after the prompt, as clan does (files.<name> and a copy into $out
	// before the script runs); a later run offers it again, and without a
	// terminal reuses it.
	Persist bool `toml:"persist" json:"persist"`
	// Display is clan's presentation of the prompt; Label, when set, is
	// what is asked.
	Display struct {
		Group      string `toml:"group" json:"group"`
		Label      string `toml:"label" json:"label"`
		Required   bool   `toml:"required" json:"required"`
		HelperText string `toml:"helper_text" json:"helper_text"`
	} `toml:"display" json:"display"`
}

// IsHidden reports whether the answer is not echoed.
func (p *Prompt) IsHidden() bool { return p.Type == "hidden" || p.Type == "multiline-hidden" }

// IsMultiline reports whether the answer spans lines.
func (p *Prompt) IsMultiline() bool { return p.Type == "multiline" || p.Type == "multiline-hidden" }

// Credential maps a systemd credential name to where its value comes from:
// exactly one of Var ("generator/file"), Value (a public literal) or File
// (a host path read at start).
type Credential struct {
	Name string `toml:"-" json:"-"`

	Var   string `toml:"var" json:"var"`
	Value string `toml:"value" json:"value"`
	File  string `toml:"file" json:"file"`
	// Binary forces the io.systemd.credential.binary form (base64) even
	// when the value could travel as text.
	Binary bool `toml:"binary" json:"binary"`
}

// VM is the hypervisor configuration. It is parsed and validated here;
// the runner gives it meaning.
type VM struct {
	// Hypervisor is "qemu" (default), "cloud-hypervisor" or "firecracker".
	Hypervisor string `toml:"hypervisor" json:"hypervisor"`
	// Machine is QEMU's machine type: "q35" (default), "pc" or "microvm".
	Machine string `toml:"machine" json:"machine"`
	// Vcpu and Mem (MiB) default to 1 and 512.
	Vcpu int `toml:"vcpu" json:"vcpu"`
	Mem  int `toml:"mem" json:"mem"`
	// Kernel, Initrd: paths, relative to the machine's directory unless
	// absolute. Cmdline is the kernel command line (never a secret).
	Kernel  string `toml:"kernel" json:"kernel"`
	Initrd  string `toml:"initrd" json:"initrd"`
	Cmdline string `toml:"cmdline" json:"cmdline"`
	// Firmware is "bios" (SeaBIOS, default), "ovmf", or a path to a
	// firmware image.
	Firmware string `toml:"firmware" json:"firmware"`
	// Accel is "auto" (KVM when it works, else TCG; default), "kvm" or "tcg".
	Accel string `toml:"accel" json:"accel"`
	// Transport chooses how credentials reach the guest: "auto" (default),
	// "smbios" or "fw_cfg".
	Transport string `toml:"transport" json:"transport"`
	// GuestSystemd is the guest's systemd version, when known. systemd up to
	// 252 imports only the first 4 KiB of the SMBIOS type-11 structure; a
	// declared 253 or newer raises the budget to the table limit.
	GuestSystemd int `toml:"guest_systemd" json:"guest_systemd"`
	// VsockCID gives the guest a vsock device with this context ID (≥ 3).
	VsockCID uint32 `toml:"vsock_cid" json:"vsock_cid"`
	// User is who the hypervisor runs as when credvm runs as root
	// (default: the user "credvm" when it exists; "root" keeps root).
	User string `toml:"user" json:"user"`
	// Virtiofsd chooses the virtiofsd for shares without a socket (a path
	// or a command; default: virtiofsd on $PATH, else QEMU's).
	Virtiofsd string `toml:"virtiofsd" json:"virtiofsd"`

	Disks      []Disk      `toml:"disks" json:"disks"`
	Volumes    []Volume    `toml:"volumes" json:"volumes"`
	Shares     []Share     `toml:"shares" json:"shares"`
	Interfaces []Interface `toml:"interfaces" json:"interfaces"`

	// Health says how `credvm rotate` knows a restarted VM is healthy.
	Health Health `toml:"health" json:"health"`
	// Ready says when a VM counts as up: "receipt" (default on QEMU:
	// when its guest says its credentials arrived — package receipt —
	// or, from a guest that never says, after ReadyTimeout, marked
	// unverified) or "started" (once the hypervisor runs).
	Ready        string `toml:"ready" json:"ready"`
	ReadyTimeout string `toml:"ready_timeout" json:"ready_timeout"`
	readyTimeout time.Duration

	// CloudHypervisor holds settings only that backend reads.
	CloudHypervisor CloudHypervisor `toml:"cloud_hypervisor" json:"cloud_hypervisor"`
	// Firecracker holds settings only that backend reads.
	Firecracker Firecracker `toml:"firecracker" json:"firecracker"`
}

// Health is a VM's health check after a (re)start: a line on its console
// matching Console, and/or a TCP port accepting connections, within
// Timeout (default 60s). Without either, a VM is healthy when its
// hypervisor still runs a few seconds after the start.
type Health struct {
	Console string `toml:"console" json:"console"`
	TCP     string `toml:"tcp" json:"tcp"`
	Timeout string `toml:"timeout" json:"timeout"`

	console *regexp.Regexp
	timeout time.Duration
}

// ReadyWait is how long a VM with ready = "receipt" waits for its
// guest's word (default 2 minutes).
func (vm *VM) ReadyWait() time.Duration {
	if vm.readyTimeout == 0 {
		return 2 * time.Minute
	}
	return vm.readyTimeout
}

// ConsoleRe is the compiled console pattern (nil when none).
func (h *Health) ConsoleRe() *regexp.Regexp { return h.console }

// CheckTimeout is the parsed Timeout (default 60s).
func (h *Health) CheckTimeout() time.Duration { return h.timeout }

// Disk is a block device.
type Disk struct {
	Image    string `toml:"image" json:"image"`
	Format   string `toml:"format" json:"format"` // "raw" (default) or "qcow2"
	ReadOnly bool   `toml:"read_only" json:"read_only"`
}

// Share is a host directory shared with the guest.
// Volume is a disk credvm creates on the VM's first start — a sparse
// image of Size MiB formatted with FS and labelled Label, for the guest to
// mount by label — and never touches again (microvm.nix's volumes). A
// relative Image lives in the VM's state directory.
type Volume struct {
	Image string `toml:"image" json:"image"`
	Size  int    `toml:"size" json:"size"` // MiB
	FS    string `toml:"fs" json:"fs"`     // "ext4" (default), "ext2", "ext3", "xfs", "btrfs"
	Label string `toml:"label" json:"label"`
}

// ImagePath is where the volume's image is.
func (v Volume) ImagePath(stateDir string) string {
	if filepath.IsAbs(v.Image) {
		return v.Image
	}
	return filepath.Join(stateDir, v.Image)
}

type Share struct {
	// Proto is "virtiofs" (default) or "9p".
	Proto  string `toml:"proto" json:"proto"`
	Source string `toml:"source" json:"source"`
	Tag    string `toml:"tag" json:"tag"`
	// Socket is the socket of a virtiofsd the user starts. Without one,
	// credvm starts and supervises virtiofsd itself (package virtiofs).
	Socket   string `toml:"socket" json:"socket"`
	ReadOnly bool   `toml:"read_only" json:"read_only"`
}

// Interface is a network interface.
type Interface struct {
	// Type is "user" (QEMU's user-mode network), "tap" (created when
	// missing, removed on stop if credvm created it) or "macvtap" (on
	// Link, as microvm.nix has it).
	Type string `toml:"type" json:"type"`
	// ID is the host interface's name (at most 15 bytes).
	ID  string `toml:"id" json:"id"`
	MAC string `toml:"mac" json:"mac"`
	// Bridge, for a tap: the bridge to attach it to.
	Bridge string `toml:"bridge" json:"bridge"`
	// MultiQueue, for a tap: one queue per vCPU.
	MultiQueue bool `toml:"multi_queue" json:"multi_queue"`
	// Link, for a macvtap: the host interface it sits on.
	Link string `toml:"link" json:"link"`
}

// CloudHypervisor is cloud-hypervisor specific configuration.
type CloudHypervisor struct {
	// OEMStringsOnArgv puts credentials on cloud-hypervisor's command line
	// (--platform oem_strings=[…]) instead of its API socket. Every local
	// user can read them there; off by default.
	OEMStringsOnArgv bool `toml:"oem_strings_on_argv" json:"oem_strings_on_argv"`
}

// Firecracker is firecracker specific configuration.
type Firecracker struct {
	// SecretsOnCmdline allows secret credentials on the guest kernel command
	// line, the only transport firecracker has; every guest process can read
	// /proc/cmdline. Off by default.
	SecretsOnCmdline bool `toml:"secrets_on_cmdline" json:"secrets_on_cmdline"`
}

// IsSecret reports whether the file is stored encrypted.
func (f *File) IsSecret() bool { return f.Secret == nil || *f.Secret }

// IsDeployed reports whether the file goes to the machine.
func (f *File) IsDeployed() bool { return f.Deploy == nil || *f.Deploy }

// FileMode is the parsed Mode.
func (f *File) FileMode() uint32 { return f.mode }

// RunTimeout is the parsed Timeout.
func (g *Generator) RunTimeout() time.Duration { return g.timeout }

// SortedFiles returns the generator's files in name order.
func (g *Generator) SortedFiles() []*File {
	return sortedValues(g.Files)
}

// SortedPrompts returns the generator's prompts in name order.
func (g *Generator) SortedPrompts() []*Prompt {
	return sortedValues(g.Prompts)
}

// SortedGenerators returns the machine's generators in name order.
func (m *Machine) SortedGenerators() []*Generator {
	return sortedValues(m.Vars.Generators)
}

// SortedCredentials returns the machine's credentials in name order.
func (m *Machine) SortedCredentials() []*Credential {
	return sortedValues(m.Credentials)
}

// Managed reports whether credvm runs the share's virtiofsd.
func (s Share) Managed() bool { return s.Proto == "virtiofs" && s.Socket == "" }

// SocketPath is the share's vhost-user socket: the user's, or the one
// credvm's virtiofsd makes in the VM's state directory.
func (s Share) SocketPath(stateDir string) string {
	if s.Socket != "" {
		return s.Socket
	}
	return filepath.Join(stateDir, "virtiofs-"+s.Tag+".sock")
}
