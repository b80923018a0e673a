// Package tap sets up a VM's network interfaces on the host the way
// microvm.nix does (`ip tuntap add NAME mode tap user U vnet_hdr`,
// macvtap on a link), through netlink (github.com/vishvananda/netlink,
// which creates taps with their owner and vnet_hdr, and macvtaps) rather
// than by running ip(8). No qemu-bridge-helper: it is not setuid on
// Debian and cannot run under QEMU's -sandbox spawn=deny, so attaching a
// tap to a bridge is done here.
//
// A tap credvm created is removed when the VM stops; one that existed is
// left as it was found (only attached to the bridge and brought up).
package tap

import (
	"errors"
	"fmt"
	"net"
	"os"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/credvm/credvm/internal/spec"
)

// Device is a VM's interface as set up on the host.
type Device struct {
	Name string
	// Created: credvm made it, and Remove deletes it.
	Created bool
	// File is a macvtap's /dev/tapN, opened for the hypervisor (nil for
	// a tap, which the hypervisor opens by name).
	File *os.File
	// MAC is the macvtap's address, which the guest's interface must use.
	MAC string
}

// Ensure sets up interface n for a hypervisor running as uid:gid.
func Ensure(n spec.Interface, uid, gid int) (*Device, error) {
	switch n.Type {
	case "tap":
		return ensureTap(n, uid, gid)
	case "macvtap":
		return ensureMacvtap(n, uid, gid)
	}
	return nil, nil
}

func ensureTap(n spec.Interface, uid, gid int) (*Device, error) {
	d, link, err := findOrCreate(n, "tap", func(l netlink.Link) bool { _, ok := l.(*netlink.Tuntap); return ok }, func() error {
		t := &netlink.Tuntap{
			LinkAttrs: netlink.LinkAttrs{Name: n.ID},
			Mode:      netlink.TUNTAP_MODE_TAP,
			Flags:     netlink.TUNTAP_NO_PI | netlink.TUNTAP_VNET_HDR | netlink.TUNTAP_ONE_QUEUE,
			Owner:     uint32(uid),
			Group:     uint32(gid),
		}
		if n.MultiQueue {
			t.Flags = netlink.TUNTAP_NO_PI | netlink.TUNTAP_VNET_HDR | netlink.TUNTAP_MULTI_QUEUE
			t.Queues = 1
		}
		if err := netlink.LinkAdd(t); err != nil {
			return explain(n.ID, "create tap", err, fmt.Sprintf("ip tuntap add %s mode tap user %d vnet_hdr", n.ID, uid))
		}
		for _, f := range t.Fds {
			f.Close()
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	if err := attach(link, n); err != nil {
		d.Remove()
		return nil, err
	}
	return d, nil
}

// findOrCreate finds interface n, which must be of the kind is accepts, or
// creates it with create; the Device says whether credvm made it.
func findOrCreate(n spec.Interface, kind string, is func(netlink.Link) bool, create func() error) (*Device, netlink.Link, error) {
	d := &Device{Name: n.ID}
	link, err := netlink.LinkByName(n.ID)
	switch {
	case err == nil:
		if !is(link) {
			return nil, nil, fmt.Errorf("interface %s exists and is a %s, not a %s: rename id in [[vm.interfaces]] or remove it", n.ID, link.Type(), kind)
		}
		return d, link, nil
	case !isNotFound(err):
		return nil, nil, explain(n.ID, "look up", err, "")
	}
	if err := create(); err != nil {
		return nil, nil, err
	}
	d.Created = true
	if link, err = netlink.LinkByName(n.ID); err != nil {
		d.Remove()
		return nil, nil, fmt.Errorf("interface %s: created, then not found: %w", n.ID, err)
	}
	return d, link, nil
}

// attach puts the interface on its bridge, if any, and brings it up.
func attach(link netlink.Link, n spec.Interface) error {
	name := link.Attrs().Name
	if n.Bridge != "" {
		br, err := netlink.LinkByName(n.Bridge)
		if isNotFound(err) {
			return fmt.Errorf("interface %s: bridge %s not found: create it (ip link add %s type bridge; ip link set %s up) or fix bridge in [[vm.interfaces]]", name, n.Bridge, n.Bridge, n.Bridge)
		}
		if err != nil {
			return explain(name, "look up bridge "+n.Bridge, err, "")
		}
		if _, ok := br.(*netlink.Bridge); !ok {
			return fmt.Errorf("interface %s: %s is a %s, not a bridge: fix bridge in [[vm.interfaces]]", name, n.Bridge, br.Type())
		}
		if err := netlink.LinkSetMaster(link, br); err != nil {
			return explain(name, "attach to bridge "+n.Bridge, err, "ip link set "+name+" master "+n.Bridge)
		}
	}
	if err := netlink.LinkSetUp(link); err != nil {
		return explain(name, "bring up", err, "ip link set "+name+" up")
	}
	return nil
}

func ensureMacvtap(n spec.Interface, uid, gid int) (*Device, error) {
	parent, err := netlink.LinkByName(n.Link)
	if isNotFound(err) {
		return nil, fmt.Errorf("interface %s: link %s not found: fix link in [[vm.interfaces]] (the host interface the macvtap sits on)", n.ID, n.Link)
	}
	if err != nil {
		return nil, explain(n.ID, "look up link "+n.Link, err, "")
	}
	d, link, err := findOrCreate(n, "macvtap", func(l netlink.Link) bool { _, ok := l.(*netlink.Macvtap); return ok }, func() error {
		attrs := netlink.LinkAttrs{Name: n.ID, ParentIndex: parent.Attrs().Index}
		if n.MAC != "" {
			attrs.HardwareAddr, _ = net.ParseMAC(n.MAC)
		}
		mv := &netlink.Macvtap{Macvlan: netlink.Macvlan{LinkAttrs: attrs, Mode: netlink.MACVLAN_MODE_BRIDGE}}
		if err := netlink.LinkAdd(mv); err != nil {
			return explain(n.ID, "create macvtap on "+n.Link, err, fmt.Sprintf("ip link add link %s name %s type macvtap mode bridge", n.Link, n.ID))
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	if err := netlink.LinkSetUp(link); err != nil {
		d.Remove()
		return nil, explain(n.ID, "bring up", err, "ip link set "+n.ID+" up")
	}
	d.MAC = link.Attrs().HardwareAddr.String()
	// Its character device appears root-owned 0600: open it for the
	// hypervisor, which inherits the descriptor (and so needs no access).
	dev := fmt.Sprintf("/dev/tap%d", link.Attrs().Index)
	f, err := os.OpenFile(dev, os.O_RDWR, 0)
	if err != nil {
		d.Remove()
		return nil, fmt.Errorf("interface %s: open %s: %w", n.ID, dev, err)
	}
	d.File = f
	return d, nil
}

// Remove deletes the interface if credvm created it, and closes its file.
func (d *Device) Remove() {
	if d == nil {
		return
	}
	if d.File != nil {
		d.File.Close()
	}
	if !d.Created {
		return
	}
	if link, err := netlink.LinkByName(d.Name); err == nil {
		netlink.LinkDel(link)
	}
}

func isNotFound(err error) bool {
	var nf netlink.LinkNotFoundError
	return errors.As(err, &nf)
}

// explain words a netlink failure with the interface and the fix.
func explain(name, what string, err error, manual string) error {
	if errors.Is(err, unix.EPERM) || errors.Is(err, unix.EACCES) {
		msg := fmt.Sprintf("interface %s: %s: permission denied: it takes CAP_NET_ADMIN — run credvm as root", name, what)
		if manual != "" {
			msg += ", or do it beforehand (" + manual + ")"
		}
		return errors.New(msg)
	}
	return fmt.Errorf("interface %s: %s: %w", name, what, err)
}
