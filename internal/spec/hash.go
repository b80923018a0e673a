package spec

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"time"
)

// ValidationHash is what clan stores in <generator dir>/.validation-hash:
// the hex SHA-256 of Nix's builtins.toJSON of the generator's validation
// value (object keys sorted, no whitespace, no HTML escaping). "" when the
// generator declares no validation — clan then writes no file and checks
// nothing.
func (g *Generator) ValidationHash() string {
	if g.Validation == nil {
		return ""
	}
	return hashJSON(g.Validation)
}

// DefinitionHash covers everything that shapes a generator's output: its
// script, declared files (names and whether secret), prompts, dependencies,
// runtime inputs, sharing and validation. When it changes, the stored vars
// are outdated. Deployment properties (mode, owner, group) are left out:
// changing who owns a file in the guest must not rotate the secret.
func (g *Generator) DefinitionHash() string {
	type file struct {
		Name   string `json:"name"`
		Secret bool   `json:"secret"`
	}
	type prompt struct {
		Name string `json:"name"`
		Type string `json:"type"`
	}
	def := struct {
		Script        string   `json:"script"`
		Files         []file   `json:"files"`
		Prompts       []prompt `json:"prompts"`
		Dependencies  []string `json:"dependencies"`
		RuntimeInputs []string `json:"runtime_inputs"`
		Share         bool     `json:"share"`
		Validation    any      `json:"validation"`
	}{Script: g.Script, Dependencies: g.Dependencies, RuntimeInputs: g.RuntimeInputs, Share: g.Share, Validation: normalize(g.Validation)}
	for _, f := range g.SortedFiles() {
		def.Files = append(def.Files, file{f.Name, f.IsSecret()})
	}
	for _, p := range g.SortedPrompts() {
		def.Prompts = append(def.Prompts, prompt{p.Name, p.Type})
	}
	return hashJSON(def)
}

func hashJSON(v any) string {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(normalize(v)); err != nil {
		// Every value here came from a TOML or JSON document.
		panic("spec: hashing a value that does not encode as JSON: " + err.Error())
	}
	sum := sha256.Sum256(bytes.TrimSuffix(buf.Bytes(), []byte("\n")))
	return hex.EncodeToString(sum[:])
}

// normalize turns TOML-only types into JSON ones (dates become RFC 3339
// strings), so a value hashes the same from machine.toml and machine.json.
func normalize(v any) any {
	switch v := v.(type) {
	case map[string]any:
		out := make(map[string]any, len(v))
		for k, x := range v {
			out[k] = normalize(x)
		}
		return out
	case []any:
		out := make([]any, len(v))
		for i, x := range v {
			out[i] = normalize(x)
		}
		return out
	case time.Time:
		return v.Format(time.RFC3339Nano)
	}
	return v
}
