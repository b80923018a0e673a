package qemu

import (
	"io"
	"slices"
	"strings"
	"testing"

	"github.com/credvm/credvm/internal/cred"
	"github.com/credvm/credvm/internal/hypervisor"
	"github.com/credvm/credvm/internal/spec"
)

func TestArgs(t *testing.T) {
	secret := []byte("s3cret,value=with\ncommas")
	creds := []cred.Credential{{Name: "API,KEY", Value: secret, Secret: true}}
	vm := spec.VM{Machine: "q35", Vcpu: 2, Mem: 512, Kernel: "/k", Initrd: "/i", Cmdline: "console=ttyS0", Firmware: "bios",
		Disks:      []spec.Disk{{Image: "/d,1.img", Format: "raw", ReadOnly: true}},
		Shares:     []spec.Share{{Proto: "9p", Source: "/src", Tag: "src"}},
		Interfaces: []spec.Interface{{Type: "user", MAC: "02:00:00:00:00:01"}},
		VsockCID:   3}
	for _, transport := range []string{"smbios", "fw_cfg"} {
		plan, err := Plan(creds, Options{Machine: "q35", Transport: transport})
		if err != nil {
			t.Fatal(err)
		}
		args, err := Args(Config{Name: "vm1", VM: vm, Plan: plan, Accel: "tcg", QMP: "/s/qmp.sock", Console: "/dev/fd/9"}, 3)
		if err != nil {
			t.Fatal(err)
		}
		joined := strings.Join(args, " ")
		if strings.Contains(joined, "s3cret") || strings.Contains(joined, "czNjcmV0") {
			t.Fatalf("a secret is on QEMU's command line: %s", joined)
		}
		for _, want := range []string{
			"-M q35", "-accel tcg", "-smp 2", "-m 512", "-kernel /k", "-initrd /i", "-append console=ttyS0",
			"-drive file=/d,,1.img,format=raw,if=none,id=disk0,readonly=on",
			"-fsdev local,id=fs0,path=/src,security_model=none", "-device virtio-9p-pci,fsdev=fs0,mount_tag=src",
			"-netdev user,id=net0", "-device virtio-net-pci,netdev=net0,mac=02:00:00:00:00:01",
			"-device vhost-vsock-pci,guest-cid=3",
			"-qmp unix:/s/qmp.sock,server=on,wait=off", "-chardev file,id=console,path=/dev/fd/9",
		} {
			if !strings.Contains(joined, want) {
				t.Errorf("%s: missing %q in\n%s", transport, want, joined)
			}
		}
		switch transport {
		case "smbios":
			if n := strings.Count(joined, "-smbios type=11,path=/dev/fd/"); n != 2 {
				t.Errorf("want 2 SMBIOS fds (manifest, API,KEY), got %d", n)
			}
			if !slices.Contains(args, "type=11,path=/dev/fd/3") || !slices.Contains(args, "type=11,path=/dev/fd/4") {
				t.Errorf("fds must be numbered from 3 in plan order: %s", joined)
			}
		case "fw_cfg":
			if !slices.Contains(args, "name=opt/io.systemd.credentials/API,,KEY,file=/dev/fd/4") {
				t.Errorf("comma in a fw_cfg name must be doubled: %s", joined)
			}
		}
	}
}

func TestArgsMicrovm(t *testing.T) {
	vm := spec.VM{Machine: "microvm", Vcpu: 1, Mem: 256, Kernel: "/k", Firmware: "bios", Cmdline: "console=ttyS0",
		Disks: []spec.Disk{{Image: "/d", Format: "raw"}}}
	args, err := Args(Config{Name: "m", VM: vm, Accel: "tcg", QMP: "/q", Console: "/dev/fd/3", HostKHz: 2000000}, 3)
	if err != nil {
		t.Fatal(err)
	}
	joined := strings.Join(args, " ")
	for _, want := range []string{"-M microvm,", "-device virtio-blk-device,drive=disk0", "-append console=ttyS0 tsc_early_khz=2000000"} {
		if !strings.Contains(joined, want) {
			t.Errorf("missing %q in %s", want, joined)
		}
	}
}

func TestSecretFileSealed(t *testing.T) {
	f, err := SecretFile("x", []byte("value"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.Write([]byte("more")); err == nil {
		t.Error("a sealed memfd accepted a write")
	}
	b, _ := io.ReadAll(f)
	if string(b) != "value" {
		t.Errorf("content = %q", b)
	}
}

func TestSocketPathOK(t *testing.T) {
	if err := hypervisor.SocketPathOK("/" + strings.Repeat("a", 120)); err == nil || !strings.Contains(err.Error(), "use a shorter --state-dir") {
		t.Errorf("long path: %v", err)
	}
}

// TestArgsUnprivileged: QEMU's seccomp sandbox is always on; disks given
// as descriptors go through fd sets; a macvtap by its descriptor; the
// console is a socket that also logs.
func TestArgsUnprivileged(t *testing.T) {
	vm := spec.VM{Machine: "q35", Vcpu: 1, Mem: 256, Kernel: "/k",
		Disks:      []spec.Disk{{Image: "/d.img", Format: "raw"}, {Image: "/ro.img", Format: "raw", ReadOnly: true}},
		Interfaces: []spec.Interface{{Type: "macvtap", ID: "mv0", Link: "eth0", MAC: "02:00:00:00:00:09"}, {Type: "tap", ID: "tap0"}}}
	args, err := Args(Config{Name: "vm1", VM: vm, Accel: "tcg", QMP: "/s/qmp.sock", Console: "/dev/fd/9", ConsoleSocket: "/s/console.sock",
		DiskFDs: map[int][]int{0: {20, 21}, 1: {22}}, NetFDs: map[int]int{0: 19}}, 3)
	if err != nil {
		t.Fatal(err)
	}
	joined := strings.Join(args, " ")
	for _, want := range []string{
		"-sandbox on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny",
		"-add-fd fd=20,set=1 -add-fd fd=21,set=1 -drive file=/dev/fdset/1,format=raw,if=none,id=disk0",
		"-add-fd fd=22,set=2 -drive file=/dev/fdset/2,format=raw,if=none,id=disk1,readonly=on",
		"-netdev tap,id=net0,fd=19 ", "-device virtio-net-pci,netdev=net0,mac=02:00:00:00:00:09",
		"-netdev tap,id=net1,ifname=tap0,script=no,downscript=no,vnet_hdr=on",
		"-chardev socket,id=console,path=/s/console.sock,server=on,wait=off,logfile=/dev/fd/9",
	} {
		if !strings.Contains(joined, want) {
			t.Errorf("missing %q in\n%s", want, joined)
		}
	}
}
