package hypervisor

import (
	"fmt"
	"os"
	"os/user"
	"strconv"
	"syscall"
)

// DefaultUser is the user a hypervisor runs as when credvm runs as root
// and [vm] user names none — when it exists (microvm.nix's is "microvm").
const DefaultUser = "credvm"

// Identity is the unprivileged user a hypervisor runs as. credvm sets the
// process's credentials at exec — never QEMU's -runas, which calls
// setgid after -sandbox elevateprivileges=deny is in force and is killed
// with SIGSYS.
type Identity struct {
	Name     string
	UID, GID int
	Groups   []uint32
}

// Credential is the identity as exec takes it.
func (id *Identity) Credential() *syscall.Credential {
	if id == nil {
		return nil
	}
	return &syscall.Credential{Uid: uint32(id.UID), Gid: uint32(id.GID), Groups: id.Groups}
}

// IDs are the uid and gid the hypervisor's files are handed to: the
// identity's, or credvm's own.
func (id *Identity) IDs() (uid, gid int) {
	if id == nil {
		return os.Getuid(), os.Getgid()
	}
	return id.UID, id.GID
}

// ResolveUser decides who the hypervisor runs as: as root, the user named
// ([vm] user), else DefaultUser when it exists, else root (nil, with a
// notice saying how to change that); "root" keeps root. Not as root, the
// hypervisor runs as credvm's user, and naming another is an error.
func ResolveUser(name string) (id *Identity, notice string, err error) {
	if os.Geteuid() != 0 {
		if name != "" {
			if me, err := user.Current(); err == nil && me.Username == name {
				return nil, "", nil
			}
			return nil, "", fmt.Errorf("[vm] user = %q: running the hypervisor as another user needs root; remove user, or run credvm as root", name)
		}
		return nil, "", nil
	}
	if name == "root" {
		return nil, "", nil
	}
	lookup := name
	if lookup == "" {
		lookup = DefaultUser
	}
	u, err := user.Lookup(lookup)
	if err != nil {
		if name == "" {
			return nil, fmt.Sprintf("the hypervisor runs as root: create the user %s (useradd --system --no-create-home --groups kvm %s) or set [vm] user to run it unprivileged", DefaultUser, DefaultUser), nil
		}
		return nil, "", fmt.Errorf("[vm] user = %q: no such user: create it (useradd --system --no-create-home --groups kvm %s) or fix user", name, name)
	}
	id = &Identity{Name: u.Username}
	id.UID, _ = strconv.Atoi(u.Uid)
	id.GID, _ = strconv.Atoi(u.Gid)
	if gids, err := u.GroupIds(); err == nil {
		for _, g := range gids {
			if n, err := strconv.Atoi(g); err == nil {
				id.Groups = append(id.Groups, uint32(n))
			}
		}
	}
	return id, "", nil
}
