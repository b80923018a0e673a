// Package vm runs credvm machines: it resolves a machine's credentials from
// its vars, plans how they reach the guest, keeps the VM's state directory,
// and drives the hypervisor.
package vm

import (
	"bytes"
	"fmt"
	"io"
	"os"
	"strings"
	"text/tabwriter"

	"github.com/credvm/credvm/internal/cred"
	"github.com/credvm/credvm/internal/hypervisor"
	"github.com/credvm/credvm/internal/sops"
	"github.com/credvm/credvm/internal/spec"
	"github.com/credvm/credvm/internal/vars"
)

// Credentials reads the values of a machine's [credentials] at start
// time. Vars that are missing or outdated stop it before anything starts,
// with the command that fixes them.
//
// Secrets are decrypted with machineKey when given (the machine's own age
// identity, as a host service has it), else with the engine's user
// identities — directly, or through the machine's key in the repository.
func Credentials(e *vars.Engine, m *spec.Machine, machineKey *sops.Identities) ([]cred.Credential, error) {
	status, err := e.Status(m)
	if err != nil {
		return nil, err
	}
	var bad []string
	for _, g := range status {
		if g.Status != vars.StatusOK {
			bad = append(bad, fmt.Sprintf("%s is %s (%s)", g.Name, g.Status, g.Reason))
		}
	}
	if len(bad) > 0 {
		return nil, fmt.Errorf("vm %s: vars not ready: %s: run 'credvm vars generate %s' first", m.Name, strings.Join(bad, "; "), m.Name)
	}
	reader := e
	if machineKey != nil {
		reader = &vars.Engine{Repo: e.Repo, User: machineKey}
	}
	var out []cred.Credential
	for _, c := range m.SortedCredentials() {
		cr := cred.Credential{Name: c.Name, ForceBinary: c.Binary}
		switch {
		case c.Var != "":
			gen, file, _ := spec.SplitVar(c.Var)
			g := m.Vars.Generators[gen]
			v, err := reader.Get(m.Name, m, gen, file)
			if err != nil {
				return nil, fmt.Errorf("vm %s: credential %s: %w", m.Name, c.Name, err)
			}
			cr.Value, cr.Secret, cr.Source = v, g.Files[file].IsSecret(), "var "+c.Var
		case c.File != "":
			v, err := os.ReadFile(c.File)
			if err != nil {
				return nil, fmt.Errorf("vm %s: credential %s: %w (fix the path in %s)", m.Name, c.Name, err, m.File)
			}
			if kind := privateKeyIn(v); kind != "" {
				clear(v)
				return nil, fmt.Errorf("vm %s: credential %s: %s holds %s, which no guest gets: remove the credential from %s", m.Name, c.Name, c.File, kind, m.File)
			}
			// A host file may hold anything; treat it as secret.
			cr.Value, cr.Secret, cr.Source = v, true, "file "+c.File
		default:
			cr.Value, cr.Source = []byte(c.Value), "value"
		}
		out = append(out, cr)
	}
	return out, nil
}

// privateKeyIn says what kind of private key b holds, or "": the markers
// of age identities, PEM and OpenSSH private keys.
func privateKeyIn(b []byte) string {
	switch {
	case bytes.Contains(b, []byte("AGE-SECRET-KEY-")):
		return "an age secret key"
	case bytes.Contains(b, []byte("PRIVATE KEY-----")):
		return "a private key"
	}
	return ""
}

// Plan decides how the credentials reach this machine's guest.
func Plan(m *spec.Machine, creds []cred.Credential) (*cred.Plan, error) {
	d, err := hypervisor.For(m)
	if err != nil {
		return nil, err
	}
	return d.Plan(m, creds)
}

// wipe overwrites credential values in memory once they have been handed
// on (best effort: the Go runtime may have copied them).
func wipe(creds []cred.Credential) {
	for i := range creds {
		clear(creds[i].Value)
	}
}

// CredentialRow describes one credential a VM would receive — never its
// value.
type CredentialRow struct {
	Name     string `json:"name"`
	Source   string `json:"source"`
	Secret   bool   `json:"secret"`
	Size     int    `json:"size"`
	Encoding string `json:"encoding"`
	// SHA256 is given for public values only: a secret's digest would let
	// anyone test guesses.
	SHA256 string `json:"sha256,omitempty"`
	// RestartUnits are the guest units clan restarts when the var changes
	// (its file's restart_units).
	RestartUnits []string `json:"restart_units"`
}

// CredentialsReport is what `credvm creds show` prints: the plan and a
// row per credential, the manifest included.
type CredentialsReport struct {
	Name string `json:"name"`
	// Created: the machine is a created VM, and the report is of its
	// configuration, which a start uses; Note says when the machine file
	// was edited since.
	Created bool   `json:"created"`
	Note    string `json:"note,omitempty"`
	*cred.Plan
	Credentials []CredentialRow `json:"credentials"`
}

// restartUnits are the restart_units of the var behind credential name.
func restartUnits(m *spec.Machine, name string) []string {
	c := m.Credentials[name]
	if c == nil || c.Var == "" {
		return []string{}
	}
	gen, file, _ := spec.SplitVar(c.Var)
	if g := m.Vars.Generators[gen]; g != nil && g.Files[file] != nil && len(g.Files[file].RestartUnits) > 0 {
		return g.Files[file].RestartUnits
	}
	return []string{}
}

// WriteTable writes the report as `credvm creds show` prints it, each line
// after indent: a row per credential — the digest of public values, a
// dash for secrets —, the transport, and the note.
func (rep *CredentialsReport) WriteTable(w io.Writer, indent string) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, indent+"NAME\tSOURCE\tKIND\tSIZE\tENCODING\tSHA256")
	for _, r := range rep.Credentials {
		kind, digest := "public", r.SHA256
		if r.Secret {
			kind, digest = "secret", "-"
		}
		fmt.Fprintf(tw, "%s%s\t%s\t%s\t%d\t%s\t%s\n", indent, r.Name, r.Source, kind, r.Size, r.Encoding, digest)
	}
	tw.Flush()
	for _, r := range rep.Credentials {
		if len(r.RestartUnits) > 0 {
			fmt.Fprintf(w, "%s%s changes restart %s (restart_units)\n", indent, r.Name, strings.Join(r.RestartUnits, ", "))
		}
	}
	fmt.Fprintf(w, "%stransport: %s: %s\n", indent, rep.Transport, rep.Why)
	if rep.Note != "" {
		fmt.Fprintf(w, "%snote: %s\n", indent, rep.Note)
	}
}

// ShowCredentials decrypts the machine's credentials to measure them and
// plans their transport, as a start would now; values are wiped, never
// returned.
//
// For a created VM of this repository (s), it reports the VM's own
// configuration — what a start uses — not the machine file, if that was
// edited since, and says so.
func ShowCredentials(e *vars.Engine, m *spec.Machine, s StateDir, machineKeyFile string) (*CredentialsReport, error) {
	created, note := false, ""
	if s.Exists() {
		if reg, err := s.Registration(); err == nil && reg.Repo == e.Repo.Root {
			cur, err := reg.Machine()
			if err != nil {
				return nil, err
			}
			created = true
			if ConfigHash(m) != reg.Current.Hash {
				note = (&Target{Machine: cur}).EditedNotice()
			}
			m = cur
		}
	}
	var mk *sops.Identities
	if machineKeyFile != "" {
		var err error
		if mk, err = sops.LoadIdentityFile(machineKeyFile); err != nil {
			return nil, fmt.Errorf("the machine's age key: %w", err)
		}
	}
	creds, err := Credentials(e, m, mk)
	if err != nil {
		return nil, err
	}
	defer wipe(creds)
	plan, err := Plan(m, creds)
	if err != nil {
		return nil, err
	}
	defer wipe(plan.Credentials)
	rep := &CredentialsReport{Name: m.Name, Created: created, Note: note, Plan: plan}
	for _, c := range plan.Credentials {
		row := CredentialRow{Name: c.Name, Source: c.Source, Secret: c.Secret, Size: len(c.Value), Encoding: "text", RestartUnits: restartUnits(m, c.Name)}
		if c.IsBinary() {
			row.Encoding = "base64"
		}
		if !c.Secret {
			row.SHA256 = c.Digest()
		}
		rep.Credentials = append(rep.Credentials, row)
	}
	return rep, nil
}
