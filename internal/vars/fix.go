package vars

import (
	"errors"
	"fmt"
	"path/filepath"
	"slices"
	"strings"

	"github.com/credvm/credvm/internal/repo"
	"github.com/credvm/credvm/internal/sops"
	"github.com/credvm/credvm/internal/spec"
	"github.com/credvm/credvm/internal/words"
)

// Recipient health, as clan's vars check and vars fix have it: a secret
// is healthy when it is encrypted to exactly the keys its links grant,
// with its machines linked when it is deployed (and only then) and the
// default groups linked. Anything else is drift — a user who joined a
// group, a key someone committed into a link, a machine cloned onto a
// shared generator, deploy = false set later — and `vars fix` repairs it:
// widening access only once the operator has seen who gains it.

// AcceptRecipients is the ConfirmationError kind of fix and keygen.
const AcceptRecipients = "recipients"

// secretRef is one secret file of the repository and what it should be.
type secretRef struct {
	// Label names it in messages: "vm1/svc/token", "shared/ca/key",
	// "the machine key of vm1".
	Label string
	// Target is the transaction target holding it (a generator directory,
	// or the machine key's own); File is the file's name under it ("" for
	// the machine key, whose target is the secret directory itself).
	Target, File string
	// Machine decrypts it when the user is not a recipient ("": none).
	Machine string
	// Machines are the machines it is deployed to; nil for the machine
	// key, whose machine links are left as they are.
	Machines []string
}

func (s secretRef) dir() string { return filepath.Join(s.Target, s.File) }

// Drift is one secret whose recipients differ from what it should have.
type Drift struct {
	Label   string           `json:"var"`
	Added   []sops.Recipient `json:"added"`
	Removed []sops.Recipient `json:"removed"`
	// Change describes them: "+ user second, - machine old".
	Change string `json:"change"`
	ref    secretRef
	want   repo.Access
}

// secretsOf lists the secrets of the machines: their own generators',
// the shared generators they use (once each), and their machine keys.
func (e *Engine) secretsOf(machines []*spec.Machine) ([]secretRef, error) {
	var out []secretRef
	var sharedTo map[string][]string
	seen := map[string]bool{}
	for _, m := range machines {
		for _, g := range m.SortedGenerators() {
			target := e.GeneratorDir(m.Name, g)
			to := []string{m.Name}
			label := m.Name + "/" + g.Name
			if g.Share {
				if seen[g.Name] {
					continue
				}
				seen[g.Name] = true
				if sharedTo == nil {
					var err error
					if sharedTo, err = e.sharedMachines(); err != nil {
						return nil, err
					}
				}
				to, label = sharedTo[g.Name], "shared/"+g.Name
			}
			for _, f := range g.SortedFiles() {
				if !f.IsSecret() || !e.Repo.Exists(filepath.Join(target, f.Name, "secret")) {
					continue
				}
				ref := secretRef{Label: label + "/" + f.Name, Target: target, File: f.Name, Machine: m.Name, Machines: []string{}}
				switch {
				case m.FromLayout:
					ref.Machines = nil // no definition: its machine links say
				case f.IsDeployed():
					ref.Machines = to
				}
				out = append(out, ref)
			}
		}
		key := e.Repo.MachinePaths(m.Name).PrivateKey
		if e.Repo.Exists(filepath.Join(key, "secret")) {
			out = append(out, secretRef{Label: "the machine key of " + m.Name, Target: key})
		}
	}
	return out, nil
}

// desired is the access a secret should have: its links, dangling ones
// dropped, its deploy machines linked, and the default groups.
func (e *Engine) desired(s secretRef) repo.Access {
	r := e.Repo
	cur := r.AccessOf(s.dir())
	exists := func(kind string) func(string) bool {
		return func(n string) bool { return r.Exists(r.Path("sops", kind, n)) }
	}
	want := repo.Access{
		Users:    slices.DeleteFunc(cur.Users, func(n string) bool { return !exists("users")(n) }),
		Machines: slices.DeleteFunc(cur.Machines, func(n string) bool { return !exists("machines")(n) }),
		Groups:   slices.DeleteFunc(cur.Groups, func(n string) bool { return !exists("groups")(n) }),
	}
	if s.Machines != nil {
		want.Machines = slices.DeleteFunc(slices.Clone(s.Machines), func(n string) bool { return !exists("machines")(n) })
	}
	return want.Union(repo.Access{Groups: r.DefaultGroups()})
}

// Drift lists the machines' secrets whose recipients differ from what
// they should have.
func (e *Engine) Drift(machines []*spec.Machine) ([]Drift, error) {
	refs, err := e.secretsOf(machines)
	if err != nil {
		return nil, err
	}
	var out []Drift
	for _, s := range refs {
		want := e.desired(s)
		grants, err := e.Repo.Keys(want)
		if err != nil {
			return nil, fmt.Errorf("vars %s: %w", s.Label, err)
		}
		have, err := e.Repo.SecretRecipients(s.dir())
		if err != nil {
			return nil, fmt.Errorf("vars %s: %w", s.Label, err)
		}
		added, removed := repo.DiffRecipients(have, repo.RecipientsOf(grants))
		links := linkChange(e.Repo.AccessOf(s.dir()), want)
		if len(added)+len(removed) == 0 && links == "" {
			continue
		}
		change := e.Repo.DescribeChange(added, removed)
		if links != "" {
			change = strings.TrimPrefix(change+"; links "+links, "; ")
		}
		out = append(out, Drift{Label: s.Label, Added: nonNil(added), Removed: nonNil(removed), Change: change, ref: s, want: want})
	}
	return out, nil
}

// linkChange describes how want's links differ from cur's: "+ groups/admins,
// - machines/old", or "" when they are the same.
func linkChange(cur, want repo.Access) string {
	var parts []string
	diff := func(kind string, a, b []string) {
		for _, n := range b {
			if !slices.Contains(a, n) {
				parts = append(parts, "+ "+kind+"/"+n)
			}
		}
		for _, n := range a {
			if !slices.Contains(b, n) {
				parts = append(parts, "- "+kind+"/"+n)
			}
		}
	}
	diff("users", cur.Users, want.Users)
	diff("machines", cur.Machines, want.Machines)
	diff("groups", cur.Groups, want.Groups)
	return strings.Join(parts, ", ")
}

func nonNil(rs []sops.Recipient) []sops.Recipient {
	if rs == nil {
		return []sops.Recipient{}
	}
	return rs
}

// FixOptions configure Fix.
type FixOptions struct {
	// AcceptRecipients lets Fix give new recipients access to secrets
	// they cannot read now; without it Fix changes nothing and returns a
	// *repo.ConfirmationError naming them.
	AcceptRecipients bool
	NoCommit         bool
}

// FixResult says what Fix did.
type FixResult struct {
	Fixed []Drift `json:"fixed"`
}

// Fix re-encrypts every drifted secret of the machines to exactly what it
// should have (links, deploy machines, default groups), values unchanged,
// in one transaction, and commits it — clan's `vars fix`. Every secret is
// decrypted first: one the user cannot read is an error naming who can.
func (e *Engine) Fix(machines []*spec.Machine, o FixOptions) (*FixResult, error) {
	var res *FixResult
	err := e.locked(func() error {
		var err error
		res, err = e.fixLocked(machines, o)
		return err
	})
	return res, err
}

func (e *Engine) fixLocked(machines []*spec.Machine, o FixOptions) (*FixResult, error) {
	drifts, err := e.Drift(machines)
	if err != nil {
		return nil, err
	}
	res := &FixResult{Fixed: []Drift{}}
	if len(drifts) == 0 {
		return res, nil
	}
	values := map[string][]byte{}
	var unreadable []string
	for _, d := range drifts {
		v, err := e.Repo.DecryptSecret(d.ref.dir(), d.ref.Machine, e.User)
		if err != nil {
			unreadable = append(unreadable, d.Label+" ("+whoCanRead(e.Repo, d.ref.dir())+")")
			continue
		}
		values[d.Label] = v
	}
	if len(unreadable) > 0 {
		clearAll(values)
		return nil, fmt.Errorf("%w: you cannot read %s, so you cannot re-encrypt %s; nothing was changed: one of the users who can read %s must run `credvm vars fix`", errUnreadable, strings.Join(unreadable, "; "), words.Verb(len(unreadable), "it", "them"), words.Verb(len(unreadable), "it", "them"))
	}
	if changes := widening(e.Repo, drifts); len(changes) > 0 && !o.AcceptRecipients {
		clearAll(values)
		return nil, &repo.ConfirmationError{Op: "vars fix", Kind: AcceptRecipients, Changes: changes, Flag: "--accept-recipients",
			Why: fmt.Sprintf("%s would be able to read secrets they cannot read now", words.Plural(len(changes), "recipient", "recipients"))}
	}
	t := newTxn(e.Repo)
	t.noHistory = true
	staged := map[string]string{}
	for _, d := range drifts {
		staging, ok := staged[d.ref.Target]
		if !ok {
			if staging, err = t.stage(d.ref.Target); err != nil {
				t.abort()
				return nil, err
			}
			if err := copyTree(e.Repo, d.ref.Target, staging, func(rel string) bool { return rel == markerFile }); err != nil {
				t.abort()
				return nil, err
			}
			staged[d.ref.Target] = staging
		}
		if err := e.Repo.StageSecret(filepath.Join(staging, d.ref.File), values[d.Label], d.want); err != nil {
			t.abort()
			return nil, fmt.Errorf("vars %s: %w", d.Label, err)
		}
		clear(values[d.Label])
		res.Fixed = append(res.Fixed, d)
	}
	if err := t.commit(); err != nil {
		return nil, err
	}
	var paths []string
	for target := range staged {
		paths = append(paths, target)
	}
	slices.Sort(paths)
	names := make([]string, len(machines))
	for i, m := range machines {
		names[i] = m.Name
	}
	return res, e.commitGit(o.NoCommit, paths, "vars: fix recipients of %s", strings.Join(names, ", "))
}

func clearAll(values map[string][]byte) {
	for _, v := range values {
		clear(v)
	}
}

// widening lists, one line per new recipient, the secrets they would gain.
func widening(r *repo.Repo, drifts []Drift) []string {
	gains := map[string][]string{}
	var order []string
	for _, d := range drifts {
		for _, k := range d.Added {
			who := r.WhoseKey(k)
			if _, ok := gains[who]; !ok {
				order = append(order, who)
			}
			gains[who] = append(gains[who], d.Label)
		}
	}
	var out []string
	for _, who := range order {
		out = append(out, fmt.Sprintf("+ %s would read %s", who, strings.Join(gains[who], ", ")))
	}
	return out
}

// whoCanRead names the users a secret is encrypted to now.
func whoCanRead(r *repo.Repo, dir string) string {
	keys, err := r.SecretRecipients(dir)
	if err != nil {
		return err.Error()
	}
	var users []string
	for _, k := range keys {
		if who := r.WhoseKey(k); strings.HasPrefix(who, "user ") {
			users = append(users, strings.TrimPrefix(who, "user "))
		}
	}
	if len(users) == 0 {
		return "no user can: only machines"
	}
	return "readable by " + strings.Join(users, ", ")
}

// errUnreadable is Fix's error when the user cannot read a secret to
// re-encrypt.
var errUnreadable = errors.New("vars fix")

// ErrDrift is the error of a run refused because recipients drifted.
var ErrDrift = errors.New("recipients drifted")

// refuseDrift stops a generation when the machines' secrets are not
// encrypted to what their links grant, in a way that would give someone
// new access: new values must not go to keys nobody has reviewed (clan's
// generate refuses too). Machines gaining a shared var they deploy are
// not such a change — their machine file says so — and generation links
// them itself.
func (e *Engine) refuseDrift(machines []*spec.Machine) error {
	drifts, err := e.Drift(machines)
	if err != nil || len(drifts) == 0 {
		return err
	}
	var lines []string
	for _, d := range drifts {
		for _, k := range d.Added {
			if !strings.HasPrefix(e.Repo.WhoseKey(k), "machine ") {
				lines = append(lines, d.Label+": "+d.Change)
				break
			}
		}
	}
	if len(lines) == 0 {
		return nil
	}
	return fmt.Errorf("%w: %s; run `credvm vars fix` first (it shows who gains access and asks)", ErrDrift, strings.Join(lines, "; "))
}
