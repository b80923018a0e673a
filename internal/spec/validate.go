package spec

import (
	"fmt"
	"maps"
	"net"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/credvm/credvm/internal/cred"
)

// VolumeFilesystems are the filesystems a volume can be made with.
var VolumeFilesystems = []string{"ext4", "ext3", "ext2", "xfs", "btrfs"}

// labelMax is each filesystem's longest label.
var labelMax = map[string]int{"ext4": 16, "ext3": 16, "ext2": 16, "xfs": 12, "btrfs": 255}

// DefaultTimeout bounds a generator's script when it declares none.
const DefaultTimeout = 5 * time.Minute

// CheckMachineName reports whether name can be a machine: a hostname label.
func CheckMachineName(name string) error {
	if !isHostname(name) {
		return fmt.Errorf("invalid machine name %q: use a hostname (letters, digits and '-', at most 63, not starting or ending with '-')", name)
	}
	return nil
}

// CheckName reports whether name can be a generator, file or prompt name.
func CheckName(kind, name string) error {
	if name == "." || name == ".." || !isVarName(name) || strings.Contains(name, "..") {
		return fmt.Errorf("invalid %s name %q: use letters, digits and _ . + @ - (no '/', no '..', not starting with '.', at most 128)", kind, name)
	}
	return nil
}

// SplitVar splits "generator/file".
func SplitVar(ref string) (gen, file string, err error) {
	gen, file, ok := strings.Cut(ref, "/")
	if !ok || gen == "" || file == "" || strings.Contains(file, "/") {
		return "", "", fmt.Errorf("%q is not of the form GENERATOR/FILE", ref)
	}
	return gen, file, nil
}

func oneOf(v string, allowed ...string) bool { return slices.Contains(allowed, v) }

// QuoteList writes allowed values for a message: "a", "b", "c".
func QuoteList(allowed ...string) string {
	q := make([]string, len(allowed))
	for i, a := range allowed {
		q[i] = strconv.Quote(a)
	}
	return strings.Join(q, ", ")
}

func (m *Machine) validate(doc *document, dir string) Problems {
	ps := doc.unknown
	add := func(key, format string, args ...any) {
		ps = append(ps, doc.problem(key, format, args...))
	}
	if err := CheckMachineName(m.Name); err != nil {
		ps = append(ps, &Problem{File: doc.file, Msg: err.Error() + " (rename the directory under machines/)"})
	}
	m.VM.validate(add, dir)

	for name, g := range m.Vars.Generators {
		if g != nil && g.Imported {
			continue // validated with the machine that declares it
		}
		key := "vars.generators." + name
		if g == nil {
			m.Vars.Generators[name] = &Generator{}
			g = m.Vars.Generators[name]
		}
		g.Name = name
		if err := CheckName("generator", name); err != nil {
			add(key, "%v", err)
		}
		if strings.TrimSpace(g.Script) == "" {
			add(key, "no script: a generator must write its files to $out")
		}
		for pname, p := range g.Prompts {
			if p != nil && p.Persist && g.Files[pname] == nil {
				// clan: a persisted prompt is files.<prompt> (a secret),
				// copied into $out before the script runs.
				if g.Files == nil {
					g.Files = map[string]*File{}
				}
				g.Files[pname] = &File{}
			}
		}
		if len(g.Files) == 0 {
			add(key, "no files: declare each output under [%s.files.<name>]", key)
		}
		for fname, f := range g.Files {
			fkey := key + ".files." + fname
			if f == nil {
				g.Files[fname] = &File{}
				f = g.Files[fname]
			}
			f.Name = fname
			if err := CheckName("file", fname); err != nil {
				add(fkey, "%v", err)
			}
			f.mode = 0o400
			if f.Mode != "" {
				mode, err := strconv.ParseUint(f.Mode, 8, 32)
				if err != nil || mode > 0o777 || !strings.HasPrefix(f.Mode, "0") {
					add(fkey+".mode", "invalid mode %q: write an octal string such as \"0400\"", f.Mode)
				} else {
					f.mode = uint32(mode)
				}
			}
			if f.NeededFor != "" && !oneOf(f.NeededFor, "partitioning", "activation", "users", "services") {
				add(fkey+".needed_for", "invalid needed_for %q: use one of %s", f.NeededFor, QuoteList("partitioning", "activation", "users", "services"))
			}
			for _, who := range []struct{ k, v string }{{"owner", f.Owner}, {"group", f.Group}} {
				if who.v != "" && !isUserName(who.v) {
					add(fkey+"."+who.k, "invalid %s %q: a user or group name, or a number", who.k, who.v)
				}
			}
		}
		for pname, p := range g.Prompts {
			pkey := key + ".prompts." + pname
			if p == nil {
				g.Prompts[pname] = &Prompt{}
				p = g.Prompts[pname]
			}
			p.Name = pname
			if err := CheckName("prompt", pname); err != nil {
				add(pkey, "%v", err)
			}
			if p.Type == "" {
				p.Type = "line"
			}
			if !oneOf(p.Type, "line", "hidden", "multiline", "multiline-hidden") {
				add(pkey+".type", "invalid prompt type %q: use one of %s", p.Type, QuoteList("line", "hidden", "multiline", "multiline-hidden"))
			}
		}
		for i, d := range g.Dependencies {
			dkey := fmt.Sprintf("%s.dependencies[%d]", key, i)
			switch {
			case d == name:
				add(dkey, "generator %q depends on itself", name)
			case m.Vars.Generators[d] == nil:
				add(dkey, "unknown generator %q (declared generators: %s; no machine of the repository shares one of that name)", d, strings.Join(slices.Sorted(maps.Keys(m.Vars.Generators)), ", "))
			}
		}
		for i, in := range g.RuntimeInputs {
			if filepath.IsAbs(in) && filepath.Clean(in) == in && !strings.Contains(in, "..") {
				continue // a package's directory (a Nix store path): its bin/ goes on PATH
			}
			if !isCommandName(in) {
				add(fmt.Sprintf("%s.runtime_inputs[%d]", key, i), "invalid runtime input %q: name a command or a Debian package, or give a package's absolute directory (its bin/ goes on PATH)", in)
			}
		}
		g.timeout = DefaultTimeout
		if g.Timeout != "" {
			d, err := time.ParseDuration(g.Timeout)
			if err != nil || d <= 0 {
				add(key+".timeout", "invalid timeout %q: write a duration such as \"30s\" or \"5m\"", g.Timeout)
			} else {
				g.timeout = d
			}
		}
	}
	if cycle := m.dependencyCycle(); cycle != nil {
		add("vars.generators."+cycle[0]+".dependencies", "dependency cycle: %s", strings.Join(cycle, " → "))
	}

	for name, c := range m.Credentials {
		key := "credentials." + name
		if c == nil {
			m.Credentials[name] = &Credential{}
			c = m.Credentials[name]
		}
		c.Name = name
		if err := cred.CheckUserName(name); err != nil {
			add(key, "%v", err)
		}
		n := 0
		for _, s := range []string{c.Var, c.Value, c.File} {
			if s != "" {
				n++
			}
		}
		if n != 1 {
			add(key, "give exactly one of var = \"GENERATOR/FILE\", value = \"literal\" or file = \"/host/path\"")
			continue
		}
		switch {
		case c.Var != "":
			gen, file, err := SplitVar(c.Var)
			if err != nil {
				add(key+".var", "%v", err)
				break
			}
			g := m.Vars.Generators[gen]
			if g == nil {
				add(key+".var", "no generator %q in this machine", gen)
				break
			}
			if g.Imported {
				add(key+".var", "%q is a shared generator of another machine, a dependency here, not deployed to this machine: declare it in this machine file too (share = true) to pass it", gen)
				break
			}
			f := g.Files[file]
			if f == nil {
				add(key+".var", "generator %q declares no file %q", gen, file)
				break
			}
			if !f.IsDeployed() {
				add(key+".var", "%s has deploy = false, so it is not for this machine", c.Var)
			}
		case c.File != "":
			c.File = resolve(dir, c.File)
			if why := forbiddenHostFile(c.File); why != "" {
				add(key+".file", "%s is %s; no guest gets it: remove this credential", c.File, why)
			}
		}
	}
	slices.SortFunc(ps, func(a, b *Problem) int { return a.Line - b.Line })
	return ps
}

func (vm *VM) validate(add ProblemFunc, dir string) {
	if vm.Hypervisor == "" {
		vm.Hypervisor = DefaultHypervisor
	}
	if vm.Vcpu == 0 {
		vm.Vcpu = 1
	}
	if vm.Vcpu < 1 || vm.Vcpu > 255 {
		add("vm.vcpu", "vcpu must be between 1 and 255, not %d", vm.Vcpu)
	}
	if vm.Mem == 0 {
		vm.Mem = 512
	}
	if vm.Mem < 32 {
		add("vm.mem", "mem is in MiB and must be at least 32, not %d", vm.Mem)
	}
	if vm.Transport == "" {
		vm.Transport = "auto"
	}
	if vm.Accel == "" {
		vm.Accel = "auto"
	}
	if !oneOf(vm.Accel, "auto", "kvm", "tcg") {
		add("vm.accel", "unknown accel %q: use one of %s", vm.Accel, QuoteList("auto", "kvm", "tcg"))
	}
	if vm.GuestSystemd != 0 && (vm.GuestSystemd < 200 || vm.GuestSystemd > 999) {
		add("vm.guest_systemd", "guest_systemd is a systemd version such as 252 or 257, not %d", vm.GuestSystemd)
	}
	if vm.VsockCID != 0 && vm.VsockCID < 3 {
		add("vm.vsock_cid", "vsock_cid must be 3 or more (0–2 are reserved), not %d", vm.VsockCID)
	}
	if vm.Firmware == "" {
		vm.Firmware = "bios"
	}
	if !oneOf(vm.Firmware, "bios", "ovmf") {
		vm.Firmware = resolve(dir, vm.Firmware)
	}
	vm.Kernel = resolve(dir, vm.Kernel)
	vm.Initrd = resolve(dir, vm.Initrd)
	if vm.Initrd != "" && vm.Kernel == "" {
		add("vm.initrd", "an initrd needs a kernel")
	}
	for i := range vm.Disks {
		d := &vm.Disks[i]
		key := fmt.Sprintf("vm.disks[%d]", i)
		if d.Image == "" {
			add(key, "a disk needs image = \"/path/to/image\"")
		}
		d.Image = resolve(dir, d.Image)
		if d.Format == "" {
			d.Format = "raw"
		}
		if !oneOf(d.Format, "raw", "qcow2") {
			add(key+".format", "unknown disk format %q: use one of %s", d.Format, QuoteList("raw", "qcow2"))
		}
	}
	images := map[string]bool{}
	for i := range vm.Volumes {
		v := &vm.Volumes[i]
		key := fmt.Sprintf("vm.volumes[%d]", i)
		if v.Image == "" || strings.Contains(v.Image, "..") {
			add(key+".image", "a volume needs image = \"name.img\" (in the VM's state directory) or an absolute path, without '..'")
		}
		if images[v.Image] {
			add(key+".image", "image %q is used by another volume", v.Image)
		}
		images[v.Image] = true
		if v.Size <= 0 {
			add(key+".size", "a volume needs size = its size in MiB (it is created on the first start)")
		}
		if v.FS == "" {
			v.FS = "ext4"
		}
		if !oneOf(v.FS, VolumeFilesystems...) {
			add(key+".fs", "unknown filesystem %q: use one of %s", v.FS, QuoteList(VolumeFilesystems...))
		}
		if v.Label == "" {
			v.Label = strings.TrimSuffix(filepath.Base(v.Image), filepath.Ext(v.Image))
		}
		if max := labelMax[v.FS]; len(v.Label) > max || strings.ContainsAny(v.Label, " /,=") {
			add(key+".label", "label %q: at most %d characters for %s, without spaces, '/', ',' or '=' (the guest mounts the volume by it)", v.Label, max, v.FS)
		}
	}
	tags := map[string]bool{}
	for i := range vm.Shares {
		s := &vm.Shares[i]
		key := fmt.Sprintf("vm.shares[%d]", i)
		if s.Proto == "" {
			s.Proto = "virtiofs"
		}
		if !oneOf(s.Proto, "virtiofs", "9p") {
			add(key+".proto", "unknown share protocol %q: use one of %s", s.Proto, QuoteList("virtiofs", "9p"))
		}
		if s.Source == "" {
			add(key, "a share needs source = \"/host/dir\"")
		}
		s.Source = resolve(dir, s.Source)
		s.Socket = resolve(dir, s.Socket)
		if s.Tag == "" || len(s.Tag) > 31 || strings.ContainsAny(s.Tag, ", =") {
			add(key+".tag", "a share needs a tag of 1–31 characters without ',', '=' or spaces (the guest mounts it by this tag)")
		}
		if tags[s.Tag] {
			add(key+".tag", "tag %q is used by another share", s.Tag)
		}
		tags[s.Tag] = true
	}
	for i := range vm.Interfaces {
		n := &vm.Interfaces[i]
		key := fmt.Sprintf("vm.interfaces[%d]", i)
		if !oneOf(n.Type, "user", "tap", "macvtap") {
			add(key+".type", "unknown interface type %q: use one of %s", n.Type, QuoteList("user", "tap", "macvtap"))
		}
		if n.Type != "user" && (n.ID == "" || len(n.ID) > 15 || strings.ContainsAny(n.ID, "/ :") || n.ID == "." || n.ID == "..") {
			add(key+".id", "a %s interface needs id = the host interface's name (1–15 bytes, no '/', ':' or spaces): %q", n.Type, n.ID)
		}
		if n.Type == "macvtap" && n.Link == "" {
			add(key+".link", "a macvtap interface needs link = the host interface it sits on (such as \"eth0\")")
		}
		if n.Type != "macvtap" && n.Link != "" {
			add(key+".link", "link is for macvtap interfaces; a tap attaches with bridge = \"br0\"")
		}
		if n.Type != "tap" && (n.Bridge != "" || n.MultiQueue) {
			add(key+".bridge", "bridge and multi_queue are for tap interfaces")
		}
		if n.MAC != "" {
			if !isMAC(n.MAC) {
				add(key+".mac", "invalid MAC address %q: write six hex pairs such as \"02:00:00:00:00:01\"", n.MAC)
			}
		}
	}
	if vm.Ready == "" {
		vm.Ready = "receipt"
		if vm.Hypervisor != "" && vm.Hypervisor != "qemu" {
			vm.Ready = "started" // their guests have no port to say it yet
		}
	}
	if !oneOf(vm.Ready, "receipt", "started") {
		add("vm.ready", "unknown ready %q: use \"receipt\" (the guest says its credentials arrived) or \"started\" (the hypervisor runs)", vm.Ready)
	}
	if vm.ReadyTimeout != "" {
		d, err := time.ParseDuration(vm.ReadyTimeout)
		if err != nil || d <= 0 {
			add("vm.ready_timeout", "invalid duration %q: write one such as \"90s\"", vm.ReadyTimeout)
		}
		vm.readyTimeout = d
	}
	h := &vm.Health
	h.timeout = 60 * time.Second
	if h.Timeout != "" {
		d, err := time.ParseDuration(h.Timeout)
		if err != nil || d <= 0 {
			add("vm.health.timeout", "invalid timeout %q: write a duration such as \"60s\"", h.Timeout)
		} else {
			h.timeout = d
		}
	}
	if h.Console != "" {
		re, err := regexp.Compile(h.Console)
		if err != nil {
			add("vm.health.console", "invalid regular expression: %v", err)
		}
		h.console = re
	}
	if h.TCP != "" {
		if _, _, err := net.SplitHostPort(h.TCP); err != nil {
			add("vm.health.tcp", "invalid address %q: write HOST:PORT such as \"127.0.0.1:8080\"", h.TCP)
		}
	}
	vm.checkHypervisor(add)
}

// resolve makes p absolute against dir; "" stays "".
func resolve(dir, p string) string {
	if p == "" || filepath.IsAbs(p) {
		return p
	}
	return filepath.Join(dir, p)
}

// dependencyCycle returns one cycle among the generators' dependencies, as
// the list of names with the first repeated at the end, or nil.
func (m *Machine) dependencyCycle() []string {
	const (
		unvisited = iota
		visiting
		done
	)
	state := map[string]int{}
	var stack []string
	var visit func(string) []string
	visit = func(n string) []string {
		state[n] = visiting
		stack = append(stack, n)
		g := m.Vars.Generators[n]
		deps := slices.Clone(g.Dependencies)
		slices.Sort(deps)
		for _, d := range deps {
			if m.Vars.Generators[d] == nil || d == n {
				continue
			}
			switch state[d] {
			case visiting:
				i := slices.Index(stack, d)
				return append(slices.Clone(stack[i:]), d)
			case unvisited:
				if c := visit(d); c != nil {
					return c
				}
			}
		}
		stack = stack[:len(stack)-1]
		state[n] = done
		return nil
	}
	for _, n := range slices.Sorted(maps.Keys(m.Vars.Generators)) {
		if state[n] == unvisited {
			if c := visit(n); c != nil {
				return c
			}
		}
	}
	return nil
}

// GeneratorOrder returns the generators in dependency order (dependencies
// first, ties by name). The machine must be valid.
func (m *Machine) GeneratorOrder() []*Generator {
	var out []*Generator
	seen := map[string]bool{}
	var visit func(string)
	visit = func(n string) {
		if seen[n] {
			return
		}
		seen[n] = true
		deps := slices.Clone(m.Vars.Generators[n].Dependencies)
		slices.Sort(deps)
		for _, d := range deps {
			visit(d)
		}
		out = append(out, m.Vars.Generators[n])
	}
	for _, n := range slices.Sorted(maps.Keys(m.Vars.Generators)) {
		visit(n)
	}
	return out
}
