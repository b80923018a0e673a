package vars

import (
	"errors"
	"fmt"
	"strings"

	"github.com/credvm/credvm/internal/repo"
	"github.com/credvm/credvm/internal/sops"
	"github.com/credvm/credvm/internal/spec"
)

// Joining a team is one command for the newcomer and one for someone with
// access (clan: `clan vars keygen`, then `clan secrets groups add-user`,
// which re-encrypts at once): Join registers the user's key, adds them to
// the repository's default groups, and — when the person running it can
// read the secrets those groups are linked from — re-encrypts them, after
// showing who gains access. When they cannot (the newcomer themselves),
// the result names the secrets still waiting and who can run `vars fix`.

// JoinOptions configure Join.
type JoinOptions struct {
	User string
	// Named: User was given (--user), not taken from $USER.
	Named bool
	Key   sops.Recipient
	// Force replaces the keys of a user registered with others.
	Force bool
	// AcceptRecipients lets the re-encryption give the new key (and any
	// other pending recipient) access; without it Join registers the user
	// and returns a *repo.ConfirmationError before re-encrypting.
	AcceptRecipients bool
	NoCommit         bool
}

// JoinResult says what Join did.
type JoinResult struct {
	User string `json:"user"`
	// Key is the registered key (as key.json has it).
	Key string `json:"-"`
	// Registered: the key is new in the repository; else it was known.
	Registered bool     `json:"registered"`
	Groups     []string `json:"groups"`
	// Fixed are the secrets re-encrypted for the new key (and any other
	// drift); Pending those the person running Join could not read, and
	// FixBy the users who can.
	Fixed   []string `json:"fixed"`
	Pending []string `json:"pending"`
	FixBy   []string `json:"fix_by"`
	// Skipped are machine files that do not load: their secrets were not
	// looked at (fix them, then run `vars fix`).
	Skipped []string `json:"skipped"`
}

// Join registers a user's key and gives it access, as described above.
func (e *Engine) Join(o JoinOptions) (*JoinResult, error) {
	var res *JoinResult
	err := e.locked(func() error {
		var err error
		res, err = e.joinLocked(o)
		return err
	})
	return res, err
}

func (e *Engine) joinLocked(o JoinOptions) (*JoinResult, error) {
	r := e.Repo
	res := &JoinResult{User: o.User, Key: o.Key.String(), Groups: []string{}, Fixed: []string{}, Pending: []string{}, FixBy: []string{}, Skipped: []string{}}
	owner, err := r.UserFor([]string{o.Key.Key})
	if err != nil {
		return nil, err
	}
	users, err := r.Users()
	if err != nil {
		return nil, err
	}
	switch {
	case owner != "" && o.Named && owner != o.User:
		return nil, fmt.Errorf("that key is registered as user %s already; it is not registered again as %s", owner, o.User)
	case owner != "":
		res.User = owner // the key is known: nothing to register
	case len(users[o.User]) > 0 && !o.Force:
		var have []string
		for _, k := range users[o.User] {
			have = append(have, k.String())
		}
		return nil, fmt.Errorf("user %s is registered with another key (%s): pass --force to replace it, or choose another --user", o.User, strings.Join(have, ", "))
	default:
		if err := r.SetUserKeys(o.User, []sops.Recipient{o.Key}); err != nil {
			return nil, err
		}
		res.Registered = true
	}
	for _, g := range r.Settings.DefaultGroups() {
		added, err := r.AddGroupMember(g, "users", res.User)
		if err != nil {
			return nil, err
		}
		if added {
			res.Groups = append(res.Groups, g)
		}
	}
	paths := []string{r.Path("sops", "users", res.User), r.Path("sops", "groups")}
	if err := e.commitGit(o.NoCommit, paths, "vars: register user %s", res.User); err != nil {
		return res, err
	}
	machines, skipped := e.allMachines()
	res.Skipped = skipped
	fixed, err := e.fixLocked(machines, FixOptions{AcceptRecipients: o.AcceptRecipients, NoCommit: o.NoCommit})
	var ce *repo.ConfirmationError
	switch {
	case errors.As(err, &ce):
		ce.Op = "vars keygen"
		return res, ce
	case errors.Is(err, errUnreadable):
		res.Pending, res.FixBy = e.pendingFor(machines)
		return res, nil
	case err != nil:
		return res, err
	}
	for _, d := range fixed.Fixed {
		res.Fixed = append(res.Fixed, d.Label)
	}
	return res, nil
}

// allMachines are every machine of the repository whose machine file
// loads, and the errors of those that do not.
func (e *Engine) allMachines() ([]*spec.Machine, []string) {
	names, _ := e.Repo.MachineNames()
	var out []*spec.Machine
	skipped := []string{}
	for _, n := range names {
		if !e.Repo.Exists(e.Repo.MachinePaths(n).Dir) {
			continue
		}
		m, err := e.Repo.Machine(n)
		if err != nil {
			skipped = append(skipped, n+": "+firstLine(err.Error()))
			continue
		}
		out = append(out, m)
	}
	return out, skipped
}

func firstLine(s string) string {
	l, _, _ := strings.Cut(s, "\n")
	return l
}

// pendingFor lists the drifted secrets and the users who can fix them.
func (e *Engine) pendingFor(machines []*spec.Machine) (pending, fixBy []string) {
	drifts, _ := e.Drift(machines)
	seen := map[string]bool{}
	for _, d := range drifts {
		pending = append(pending, d.Label)
		keys, _ := e.Repo.SecretRecipients(d.ref.dir())
		for _, k := range keys {
			if who := e.Repo.WhoseKey(k); strings.HasPrefix(who, "user ") && !seen[who] {
				seen[who] = true
				fixBy = append(fixBy, strings.TrimPrefix(who, "user "))
			}
		}
	}
	if pending == nil {
		pending = []string{}
	}
	if fixBy == nil {
		fixBy = []string{}
	}
	return pending, fixBy
}
