package vars

import (
	"github.com/credvm/credvm/internal/spec"
)

// CheckProblem is one generator whose vars are not ready.
type CheckProblem struct {
	Machine   string `json:"machine"`
	Generator string `json:"generator"`
	Status    string `json:"status"`
	Reason    string `json:"reason"`
	Fix       string `json:"fix"`
}

// Check lists every generator of the machines whose vars are missing or
// outdated, with the command that fixes it.
func (e *Engine) Check(machines []*spec.Machine) ([]CheckProblem, error) {
	problems := []CheckProblem{}
	for _, m := range machines {
		st, err := e.Status(m)
		if err != nil {
			return nil, err
		}
		for _, gs := range st {
			if gs.Status != StatusOK {
				problems = append(problems, CheckProblem{m.Name, gs.Name, gs.Status, gs.Reason, "credvm vars generate " + m.Name})
			}
		}
	}
	return problems, nil
}

// GetVar is Get for "GENERATOR/FILE" of a machine named by the user: by
// its machine file when the repository has one, else from the layout
// alone (a clan repository without credvm's machine files).
func (e *Engine) GetVar(machine, ref string) ([]byte, error) {
	gen, file, err := spec.SplitVar(ref)
	if err != nil {
		return nil, err
	}
	if err := spec.CheckMachineName(machine); err != nil {
		return nil, err
	}
	var m *spec.Machine
	paths := e.Repo.MachinePaths(machine)
	switch {
	case e.Repo.Exists(paths.Dir):
		if m, err = e.Repo.Machine(machine); err != nil {
			return nil, err
		}
	case !e.Repo.Exists(paths.Vars) && !e.Repo.Exists(paths.PublicKey):
		// Neither a machine file nor clan's vars or key: a typo, most
		// likely — never "not generated yet".
		_, err := e.Repo.Machine(machine)
		return nil, err
	}
	return e.Get(machine, m, gen, file)
}
