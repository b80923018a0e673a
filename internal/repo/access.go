package repo

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/credvm/credvm/internal/sops"
)

// Who may read a secret is clan's rule, kept in links next to it:
//
//	<secret>/users/<u>     → sops/users/<u>       the user's keys
//	<secret>/machines/<m>  → sops/machines/<m>    the machine's key
//	<secret>/groups/<g>    → sops/groups/<g>      every member of the group:
//	sops/groups/<g>/users/<u>, sops/groups/<g>/machines/<m>
//
// The file is encrypted to exactly the keys those links lead to. A
// directory in sops/users grants nothing by itself: only a link or a
// group does (clan's collect_keys_for_path). Links are read by name, so a
// copy whose archiver turned them into files reads the same.

// Access names the users, machines and groups a secret's links grant.
type Access struct {
	Users    []string `json:"users"`
	Machines []string `json:"machines"`
	Groups   []string `json:"groups"`
}

// AccessOf reads a secret directory's links.
func (r *Repo) AccessOf(dir string) Access {
	return Access{Users: r.LinkedNames(dir, "users"), Machines: r.LinkedNames(dir, "machines"), Groups: r.LinkedNames(dir, "groups")}
}

// Union is a and b together, sorted, without duplicates.
func (a Access) Union(b Access) Access {
	merge := func(x, y []string) []string {
		out := append(slices.Clone(x), y...)
		slices.Sort(out)
		return slices.Compact(out)
	}
	return Access{Users: merge(a.Users, b.Users), Machines: merge(a.Machines, b.Machines), Groups: merge(a.Groups, b.Groups)}
}

// Without is a without the machine m.
func (a Access) Without(m string) Access {
	a.Machines = slices.DeleteFunc(slices.Clone(a.Machines), func(x string) bool { return x == m })
	return a
}

// A Grant is one key a secret is encrypted to, and why.
type Grant struct {
	sops.Recipient
	// From says which link grants it: "user alice", "machine m1",
	// "group admins: user bob".
	From string
}

// Keys resolves an Access to the keys it grants, sorted, without
// duplicates (the first reason kept). A link to a user, machine or group
// that does not exist is an error naming it: a dangling link would
// otherwise drop someone's access without a word.
func (r *Repo) Keys(a Access) ([]Grant, error) {
	var out []Grant
	addUser := func(u, why string) error {
		keys, err := r.readKeyFile(r.Path("sops", "users", u, "key.json"))
		if err != nil {
			return fmt.Errorf("%s: %w", why, err)
		}
		for _, k := range keys {
			out = append(out, Grant{k, why})
		}
		return nil
	}
	addMachine := func(m, why string) error {
		pub, err := r.MachinePublicKey(m)
		if err != nil {
			return err
		}
		if pub == "" {
			return fmt.Errorf("%s has no key (sops/machines/%s/key.json)", why, m)
		}
		out = append(out, Grant{sops.Age(pub), why})
		return nil
	}
	for _, u := range a.Users {
		if err := addUser(u, "user "+u); err != nil {
			return nil, err
		}
	}
	for _, m := range a.Machines {
		if err := addMachine(m, "machine "+m); err != nil {
			return nil, err
		}
	}
	for _, g := range a.Groups {
		users, machines, err := r.GroupMembers(g)
		if err != nil {
			return nil, err
		}
		for _, u := range users {
			if err := addUser(u, "group "+g+": user "+u); err != nil {
				return nil, err
			}
		}
		for _, m := range machines {
			if err := addMachine(m, "group "+g+": machine "+m); err != nil {
				return nil, err
			}
		}
	}
	slices.SortStableFunc(out, func(x, y Grant) int { return strings.Compare(x.Type+" "+x.Key, y.Type+" "+y.Key) })
	return slices.CompactFunc(out, func(x, y Grant) bool { return x.Type == y.Type && SameKey(x.Key, y.Key) }), nil
}

// RecipientsOf are the grants' keys.
func RecipientsOf(gs []Grant) []sops.Recipient {
	out := make([]sops.Recipient, len(gs))
	for i, g := range gs {
		out[i] = g.Recipient
	}
	return out
}

// GroupNames lists the groups of sops/groups.
func (r *Repo) GroupNames() []string {
	entries, _ := r.ReadDir(r.Path("sops", "groups"))
	var out []string
	for _, e := range entries {
		if e.IsDir() && CheckUserName(e.Name()) == nil {
			out = append(out, e.Name())
		}
	}
	return out
}

// GroupMembers lists a group's users and machines.
func (r *Repo) GroupMembers(g string) (users, machines []string, err error) {
	if err := CheckUserName(g); err != nil {
		return nil, nil, err
	}
	dir := r.Path("sops", "groups", g)
	if !r.IsDir(dir) {
		return nil, nil, fmt.Errorf("group %s: no sops/groups/%s (a secret links to it)", g, g)
	}
	return r.LinkedNames(dir, "users"), r.LinkedNames(dir, "machines"), nil
}

// AddGroupMember links a user or machine (kind "users" or "machines")
// into a group, creating the group: sops/groups/<g>/<kind>/<name>, as
// clan's `secrets groups add-user` does. It says whether the member is
// new.
func (r *Repo) AddGroupMember(g, kind, name string) (bool, error) {
	if err := errors.Join(CheckUserName(g), CheckUserName(name)); err != nil {
		return false, err
	}
	if !r.IsDir(r.Path("sops", kind, name)) {
		return false, fmt.Errorf("no %s %s in sops/%s", strings.TrimSuffix(kind, "s"), name, kind)
	}
	dir := r.Path("sops", "groups", g)
	existing := r.LinkedNames(dir, kind)
	if slices.Contains(existing, name) {
		return false, nil
	}
	return true, r.link(dir, kind, append(existing, name))
}

// RemoveGroupMember unlinks a member from a group.
func (r *Repo) RemoveGroupMember(g, kind, name string) error {
	dir := r.Path("sops", "groups", g)
	existing := r.LinkedNames(dir, kind)
	if !slices.Contains(existing, name) {
		return fmt.Errorf("%s %s is not in group %s", strings.TrimSuffix(kind, "s"), name, g)
	}
	return r.link(dir, kind, slices.DeleteFunc(existing, func(x string) bool { return x == name }))
}

// DefaultGroups are credvm.toml's [sops] default_groups that exist in
// sops/groups: every new secret is shared with them.
func (r *Repo) DefaultGroups() []string {
	var out []string
	for _, g := range r.Settings.DefaultGroups() {
		if r.IsDir(r.Path("sops", "groups", g)) {
			out = append(out, g)
		}
	}
	return out
}

// CleanDanglingLinks removes a secret's links to users, machines or
// groups that no longer exist (a purged machine, a removed user), as
// clan's update_secrets does, and returns them.
func (r *Repo) CleanDanglingLinks(dir string) []string {
	var removed []string
	for _, kind := range []string{"users", "machines", "groups"} {
		for _, n := range r.LinkedNames(dir, kind) {
			if _, err := r.Stat(r.Path("sops", kind, n)); errors.Is(err, os.ErrNotExist) {
				if r.Remove(filepath.Join(dir, kind, n)) == nil {
					removed = append(removed, kind+"/"+n)
				}
			}
		}
		if len(r.LinkedNames(dir, kind)) == 0 {
			r.Remove(filepath.Join(dir, kind))
		}
	}
	return removed
}

// WhoseKey names the owner of a key for messages: "user alice",
// "machine m1", or the key itself when nobody here has it.
func (r *Repo) WhoseKey(k sops.Recipient) string {
	users, _ := r.Users()
	for _, u := range sortedKeys(users) {
		for _, uk := range users[u] {
			if uk.Type == k.Type && SameKey(uk.Key, k.Key) {
				return "user " + u
			}
		}
	}
	machines, _ := r.ReadDir(r.Path("sops", "machines"))
	for _, m := range machines {
		if pub, err := r.MachinePublicKey(m.Name()); err == nil && pub == k.Key {
			return "machine " + m.Name()
		}
	}
	short := k.String()
	if len(short) > 24 {
		short = short[:24] + "…"
	}
	return "key " + short
}

// DiffRecipients lists what b adds to a and what it drops.
func DiffRecipients(a, b []sops.Recipient) (added, removed []sops.Recipient) {
	has := func(set []sops.Recipient, k sops.Recipient) bool {
		return slices.ContainsFunc(set, func(x sops.Recipient) bool { return x.Type == k.Type && SameKey(x.Key, k.Key) })
	}
	for _, k := range b {
		if !has(a, k) {
			added = append(added, k)
		}
	}
	for _, k := range a {
		if !has(b, k) {
			removed = append(removed, k)
		}
	}
	return added, removed
}

// DescribeChange writes added and removed recipients for a message:
// "+ user second, - machine old".
func (r *Repo) DescribeChange(added, removed []sops.Recipient) string {
	var parts []string
	for _, k := range added {
		parts = append(parts, "+ "+r.WhoseKey(k))
	}
	for _, k := range removed {
		parts = append(parts, "- "+r.WhoseKey(k))
	}
	return strings.Join(parts, ", ")
}

// SecretRecipients are the keys a secret directory's file is encrypted
// to now.
func (r *Repo) SecretRecipients(dir string) ([]sops.Recipient, error) {
	b, err := r.ReadFile(filepath.Join(dir, "secret"))
	if err != nil {
		return nil, err
	}
	return sops.Recipients(b)
}

// NotReadableBy lists, relative to the root, the secrets under dirs that
// none of keys (public keys, as sops.Identities.Recipients holds them) is
// a recipient of: what an operator wrote into the repository — a restored
// backup — without being able to read it back.
func (r *Repo) NotReadableBy(dirs []string, keys []string) []string {
	var out []string
	for _, top := range dirs {
		r.WalkDir(top, func(p string, d fs.DirEntry, err error) error {
			if err != nil || d.IsDir() || d.Name() != "secret" {
				return nil
			}
			rs, err := r.SecretRecipients(filepath.Dir(p))
			if err == nil && slices.ContainsFunc(rs, func(k sops.Recipient) bool {
				return slices.ContainsFunc(keys, func(s string) bool { return SameKey(s, k.Key) })
			}) {
				return nil
			}
			out = append(out, r.Rel(filepath.Dir(p)))
			return nil
		})
	}
	slices.Sort(out)
	return slices.Compact(out)
}
