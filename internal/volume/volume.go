// Package volume creates a VM's volumes on its first start, as
// microvm.nix does: a sparse image (copy-on-write off where the
// filesystem has it, so btrfs hosts do not fragment it), formatted with
// mkfs and labelled for the guest to mount by label. An existing image is
// never touched again: it holds the guest's data.
//
// The image is made under a temporary name next to its place and renamed
// there only once mkfs has succeeded, so a failed or interrupted creation
// never leaves a half-made volume that a later start would take as the
// guest's.
package volume

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/credvm/credvm/internal/spec"
)

// Ensure creates the volume at path unless it exists, owned by uid:gid
// (the hypervisor's user); created reports whether it made it.
func Ensure(v spec.Volume, path string, uid, gid int) (created bool, err error) {
	if fi, err := os.Lstat(path); err == nil {
		if !fi.Mode().IsRegular() {
			return false, fmt.Errorf("volume %s: %s is not a regular file; move it away or fix image in [[vm.volumes]]", v.Label, path)
		}
		return false, nil
	} else if !errors.Is(err, os.ErrNotExist) {
		return false, fmt.Errorf("volume %s: %w", v.Label, err)
	}
	mkfs, err := exec.LookPath("mkfs." + v.FS)
	if err != nil {
		return false, fmt.Errorf("volume %s: mkfs.%s not found (apt-get install %s)", v.Label, v.FS, mkfsPackage[v.FS])
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return false, fmt.Errorf("volume %s: %w", v.Label, err)
	}
	tmp := filepath.Join(filepath.Dir(path), "."+filepath.Base(path)+".credvm-new")
	os.Remove(tmp) // left by an interrupted creation: never a guest's data
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return false, fmt.Errorf("volume %s: %w", v.Label, err)
	}
	defer os.Remove(tmp) // a no-op once renamed
	noCOW(f)
	err = f.Truncate(int64(v.Size) << 20)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return false, fmt.Errorf("volume %s: %w", v.Label, err)
	}
	args := []string{"-q", "-L", v.Label, tmp}
	if strings.HasPrefix(v.FS, "ext") {
		args = append([]string{"-F"}, args...) // a file, not a block device
	}
	if out, err := exec.Command(mkfs, args...).CombinedOutput(); err != nil {
		return false, fmt.Errorf("volume %s: mkfs.%s: %v: %s", v.Label, v.FS, err, strings.TrimSpace(string(out)))
	}
	if err := os.Chown(tmp, uid, gid); err != nil {
		return false, fmt.Errorf("volume %s: %w", v.Label, err)
	}
	// Never over an image that appeared meanwhile: it would be data.
	if err := unix.Renameat2(unix.AT_FDCWD, tmp, unix.AT_FDCWD, path, unix.RENAME_NOREPLACE); err != nil {
		return false, fmt.Errorf("volume %s: %w", v.Label, err)
	}
	return true, nil
}

// noCOW sets the no-copy-on-write attribute (chattr +C) where the
// filesystem has it; elsewhere it does nothing.
func noCOW(f *os.File) {
	flags, err := unix.IoctlGetUint32(int(f.Fd()), unix.FS_IOC_GETFLAGS)
	if err != nil {
		return
	}
	unix.IoctlSetPointerInt(int(f.Fd()), unix.FS_IOC_SETFLAGS, int(flags|fsNOCOWFL))
}

var mkfsPackage = map[string]string{"ext2": "e2fsprogs", "ext3": "e2fsprogs", "ext4": "e2fsprogs", "xfs": "xfsprogs", "btrfs": "btrfs-progs"}

// fsNOCOWFL is FS_NOCOW_FL of linux/fs.h, which x/sys/unix does not name.
const fsNOCOWFL = 0x00800000
