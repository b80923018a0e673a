package vm

import (
	"errors"
	"fmt"
	"os"
	"slices"

	"github.com/credvm/credvm/internal/spec"
	"github.com/credvm/credvm/internal/tap"
	"github.com/credvm/credvm/internal/virtiofs"
	"github.com/credvm/credvm/internal/volume"
)

// devices is the host side of a VM's [vm] that credvm sets up before the
// hypervisor starts and takes down after it stops: virtiofsd per managed
// share, taps and macvtaps, volumes made on the first start.
type devices struct {
	servers []*virtiofs.Server
	netdevs []*tap.Device
	// vm is the [vm] the hypervisor gets: volumes as disks, macvtaps'
	// addresses filled in.
	vm       spec.VM
	netFiles map[int]*os.File
	// died receives one line when a virtiofsd dies while the VM runs.
	died chan string
}

// setUpDevices sets up m's devices for a hypervisor running as uid:gid,
// with volumes in stateDir and virtiofsd's sockets in sockets. On error,
// whatever it set up is taken down again.
func setUpDevices(m *spec.Machine, stateDir, sockets string, uid, gid int, notice func(string, ...any)) (d *devices, err error) {
	d = &devices{vm: m.VM, netFiles: map[int]*os.File{}, died: make(chan string, len(m.VM.Shares))}
	d.vm.Disks = slices.Clone(m.VM.Disks)
	d.vm.Interfaces = slices.Clone(m.VM.Interfaces)
	defer func() {
		if err != nil {
			d.tearDown()
			err = fmt.Errorf("vm %s: %w", m.Name, err)
		}
	}()
	for _, v := range m.VM.Volumes {
		path := v.ImagePath(stateDir)
		created, err := volume.Ensure(v, path, uid, gid)
		if err != nil {
			return d, err
		}
		if created {
			notice("created volume %s (%d MiB, %s, label %s)", path, v.Size, v.FS, v.Label)
		}
		d.vm.Disks = append(d.vm.Disks, spec.Disk{Image: path, Format: "raw"})
	}
	for i, n := range m.VM.Interfaces {
		dev, err := tap.Ensure(n, uid, gid)
		if err != nil {
			return d, err
		}
		if dev == nil {
			continue
		}
		d.netdevs = append(d.netdevs, dev)
		if dev.Created {
			notice("created %s %s", n.Type, n.ID)
		}
		if dev.File != nil {
			d.netFiles[i] = dev.File
			d.vm.Interfaces[i].MAC = dev.MAC
		}
	}
	var daemon *virtiofs.Daemon
	for _, s := range m.VM.Shares {
		if !s.Managed() {
			continue
		}
		if daemon == nil {
			found, err := virtiofs.Find(m.VM.Virtiofsd)
			if err != nil {
				return d, err
			}
			daemon = &found
		}
		srv, err := virtiofs.Start(*daemon, s, sockets, uid, gid)
		if err != nil {
			return d, err
		}
		d.servers = append(d.servers, srv)
		go func() {
			<-srv.Done()
			d.died <- fmt.Sprintf("virtiofsd of share %q %s", srv.Share.Tag, srv.Exited())
		}()
	}
	return d, nil
}

// tearDown stops the virtiofsds and removes the interfaces credvm created.
func (d *devices) tearDown() {
	if d == nil {
		return
	}
	for _, s := range d.servers {
		s.Stop()
	}
	for _, n := range d.netdevs {
		n.Remove()
	}
}

// errDeviceDied is how a run ended because a device it needs died.
var errDeviceDied = errors.New("a device of the VM died")
