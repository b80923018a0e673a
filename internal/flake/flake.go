// Package flake reads a machine from a guest's NixOS configuration: it
// evaluates REF#nixosConfigurations.NAME.config.credvm.machine (credvm's
// guest module, nix/guest.nix) with `nix eval --json`, builds the kernel
// and initrd when they are derivations not yet in the store, and
// records which flake revision it came from, so that `credvm update`
// can evaluate it again and `list` can tell when the flake moved on.
//
// Everything here runs the real nix command: there is no evaluator of
// our own. A flake evaluation is input like any other: what it returns is
// parsed and validated as a machine file (spec), never executed.
package flake

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"

	"github.com/credvm/credvm/internal/spec"
)

// Nix is the nix command: $CREDVM_NIX when set (another Nix, or none).
var Nix = func() string {
	if n := os.Getenv("CREDVM_NIX"); n != "" {
		return n
	}
	return "nix"
}()

// experimental: flakes are experimental in Nix 2.8 (Debian 12).
var experimental = []string{"--extra-experimental-features", "nix-command flakes"}

// Source is where a machine was evaluated from, as machine.json records
// it ("generated").
type Source = spec.Generated

// Attribute is the attribute of a machine's configuration.
func Attribute(name string) string {
	return "nixosConfigurations." + name + ".config.credvm.machine"
}

// Evaluated is a machine read from a flake: its machine.json, with the
// source recorded in it.
type Evaluated struct {
	JSON   []byte
	Source Source
	// Built are the store paths nix build made (kernel, initrd).
	Built []string
}

// Eval evaluates machine name of flake ref.
func Eval(ref, name string) (*Evaluated, error) {
	if _, err := exec.LookPath(Nix); err != nil {
		return nil, fmt.Errorf("flake %s: the nix command is not installed (apt-get install nix-bin, or see nixos.org/download)", ref)
	}
	src, err := Metadata(ref)
	if err != nil {
		return nil, err
	}
	src.Attribute = Attribute(name)
	out, err := run("eval", "--json", ref+"#"+src.Attribute)
	if err != nil {
		return nil, fmt.Errorf("flake %s: evaluating %s: %w", ref, src.Attribute, err)
	}
	var m map[string]any
	if err := json.Unmarshal(out, &m); err != nil {
		return nil, fmt.Errorf("flake %s: %s is not a machine (JSON object): %w", ref, src.Attribute, err)
	}
	ev := &Evaluated{Source: *src}
	// The kernel and initrd: store paths of derivations, built if absent.
	if vm, ok := m["vm"].(map[string]any); ok {
		for _, key := range []string{"kernel", "initrd"} {
			p, _ := vm[key].(string)
			if !strings.HasPrefix(p, "/nix/store/") {
				continue
			}
			if _, err := os.Stat(p); err == nil {
				continue
			}
			attr := "nixosConfigurations." + name + ".config.credvm.boot." + key
			if _, err := run("build", "--no-link", ref+"#"+attr); err != nil {
				return nil, fmt.Errorf("flake %s: building the %s (%s): %w", ref, key, attr, err)
			}
			ev.Built = append(ev.Built, p)
		}
	}
	m["generated"] = src
	ev.JSON, err = json.MarshalIndent(m, "", "  ")
	if err != nil {
		return nil, err
	}
	ev.JSON = append(ev.JSON, '\n')
	return ev, nil
}

// Metadata is the flake's locked identity (nix flake metadata).
func Metadata(ref string) (*Source, error) {
	out, err := run("flake", "metadata", "--json", ref)
	if err != nil {
		return nil, fmt.Errorf("flake %s: %w", ref, err)
	}
	var md struct {
		Revision     string `json:"revision"`
		LastModified int64  `json:"lastModified"`
		Locked       struct {
			NarHash string `json:"narHash"`
			Rev     string `json:"rev"`
		} `json:"locked"`
	}
	if err := json.Unmarshal(out, &md); err != nil {
		return nil, fmt.Errorf("flake %s: nix flake metadata: %w", ref, err)
	}
	s := &Source{Flake: ref, Revision: md.Revision, NarHash: md.Locked.NarHash, LastModified: md.LastModified}
	if s.Revision == "" {
		s.Revision = md.Locked.Rev
	}
	return s, nil
}

// run runs nix with the experimental features on and returns its output;
// its error carries nix's own message, trimmed.
func run(args ...string) ([]byte, error) {
	cmd := exec.Command(Nix, append(append([]string{}, experimental...), args...)...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return nil, errors.New(trimNixError(stderr.String(), err))
	}
	return out, nil
}

// trimNixError keeps what a nix error says: its "error:" lines, without
// the trace hint and the source excerpt, at most a few lines.
func trimNixError(stderr string, err error) string {
	var keep []string
	for _, l := range strings.Split(stderr, "\n") {
		t := strings.TrimSpace(l)
		switch {
		case t == "", strings.HasPrefix(t, "(use '--show-trace'"), strings.HasPrefix(t, "warning: "):
			continue
		case strings.Contains(t, "|"), strings.HasPrefix(t, "at "):
			continue // the source excerpt
		}
		keep = append(keep, t)
		if len(keep) == 4 {
			break
		}
	}
	if len(keep) == 0 {
		return err.Error()
	}
	return strings.Join(keep, " ")
}
