package spec

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strconv"
	"strings"

	"github.com/credvm/credvm/internal/words"
	toml "github.com/pelletier/go-toml/v2"
	"github.com/pelletier/go-toml/v2/unstable"
)

// Problem is one thing wrong with a file, at a line and key.
type Problem struct {
	File string
	Line int    // 0 when unknown
	Key  string // dotted path, "" for the whole file
	Msg  string
}

func (p *Problem) Error() string {
	var b strings.Builder
	b.WriteString(p.File)
	if p.Line > 0 {
		b.WriteString(":" + strconv.Itoa(p.Line))
	}
	b.WriteString(": ")
	if p.Key != "" {
		b.WriteString(p.Key + ": ")
	}
	b.WriteString(p.Msg)
	return b.String()
}

// Problems is every problem found in one file.
type Problems []*Problem

func (ps Problems) Error() string {
	var msgs []string
	for _, p := range ps {
		msgs = append(msgs, p.Error())
	}
	return strings.Join(msgs, "\n")
}

// document is a decoded file with a map from key paths to lines, so that
// problems found after decoding still point at the right line.
type document struct {
	file  string
	lines map[string]int
	// unknown lists unknown keys: problems that do not stop validation.
	unknown Problems
}

// line returns the line of key, or of its longest known prefix.
func (d *document) line(key string) int {
	for k := key; k != ""; {
		if l, ok := d.lines[k]; ok {
			return l
		}
		i := strings.LastIndexAny(k, ".[")
		if i < 0 {
			break
		}
		k = k[:i]
	}
	return 0
}

func (d *document) problem(key, format string, args ...any) *Problem {
	return &Problem{File: d.file, Line: d.line(key), Key: key, Msg: fmt.Sprintf(format, args...)}
}

// decodeFile decodes a TOML or JSON file (by extension) strictly into v.
func decodeFile(path string, data []byte, v any) (*document, error) {
	doc := &document{file: path, lines: map[string]int{}}
	tomlData := data
	if strings.HasSuffix(path, ".json") {
		if err := indexJSON(data, doc.lines); err != nil {
			return doc, Problems{{File: path, Line: jsonErrorLine(data, err), Msg: "invalid JSON: " + err.Error()}}
		}
		// The JSON data model is a subset of TOML's but for null: convert
		// and decode with the one strict decoder, so both formats get the
		// same checks and messages.
		var generic map[string]any
		dec := json.NewDecoder(bytes.NewReader(data))
		dec.UseNumber()
		if err := dec.Decode(&generic); err != nil {
			return doc, Problems{{File: path, Msg: "invalid JSON: " + err.Error()}}
		}
		conv, err := jsonToTOML(generic, "")
		if err != nil {
			var p *Problem
			if errors.As(err, &p) {
				p.File, p.Line = path, doc.line(p.Key)
				return doc, Problems{p}
			}
			return doc, err
		}
		tomlData, err = toml.Marshal(conv)
		if err != nil {
			return doc, fmt.Errorf("%s: %w", path, err)
		}
	} else {
		if err := indexTOML(data, doc.lines); err != nil {
			var pe *unstable.ParserError
			line := 0
			if errors.As(err, &pe) {
				line = lineOf(data, pe.Highlight)
			}
			return doc, Problems{{File: path, Line: line, Msg: "invalid TOML: " + err.Error()}}
		}
	}
	renamed := false
	if hasClanName(doc.lines) {
		// clan's camelCase names (runtimeInputs, neededFor, …): decode
		// them as ours. Lines come from the index, under both names.
		var generic map[string]any
		if err := toml.Unmarshal(tomlData, &generic); err != nil {
			return doc, fmt.Errorf("%s: %w", path, err)
		}
		renameClanKeys(generic, "", doc.lines)
		b, err := toml.Marshal(generic)
		if err != nil {
			return doc, fmt.Errorf("%s: %w", path, err)
		}
		tomlData, renamed = b, true
	}
	dec := toml.NewDecoder(bytes.NewReader(tomlData))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		var de *toml.DecodeError
		var sm *toml.StrictMissingError
		switch {
		case errors.As(err, &sm):
			var ps Problems
			for _, e := range sm.Errors {
				key := strings.Join(e.Key(), ".")
				msg := "unknown key (check the spelling against the documentation in README.md)"
				if k := e.Key(); len(k) > 0 {
					if near := words.Nearest(k[len(k)-1], knownKeys(reflect.TypeOf(v), k[:len(k)-1])); near != "" {
						msg = fmt.Sprintf("unknown key; did you mean %s?", near)
					}
				}
				p := doc.problem(key, "%s", msg)
				if !strings.HasSuffix(path, ".json") && !renamed {
					p.Line, _ = e.Position()
				}
				ps = append(ps, p)
			}
			// Decode again without the strict check, so that validation
			// can report the file's other problems in the same run.
			if err := toml.NewDecoder(bytes.NewReader(tomlData)).Decode(v); err != nil {
				return doc, ps
			}
			doc.unknown = ps
			return doc, nil
		case errors.As(err, &de):
			key := strings.Join(de.Key(), ".")
			p := doc.problem(key, "%s", typeMessage(de.Error()))
			if !strings.HasSuffix(path, ".json") && !renamed {
				p.Line, _ = de.Position()
			}
			return doc, Problems{p}
		}
		return doc, fmt.Errorf("%s: %w", path, err)
	}
	return doc, nil
}

// typeMessage turns go-toml's "cannot decode TOML string into struct field
// spec.VM.Vcpu of type int" into "expected int, got string".
func typeMessage(msg string) string {
	msg = strings.TrimPrefix(msg, "toml: ")
	const pre = "cannot decode TOML "
	if strings.HasPrefix(msg, pre) {
		rest := msg[len(pre):]
		got, _, _ := strings.Cut(rest, " ")
		if i := strings.LastIndex(rest, " of type "); i >= 0 {
			want := rest[i+len(" of type "):]
			want = strings.NewReplacer("*", "", "[]", "list of ", "map[string]", "table of ", "spec.", "").Replace(want)
			if want == "uint32" || want == "int" {
				want = "integer"
			}
			return fmt.Sprintf("expected %s, got %s", want, got)
		}
	}
	return msg
}

func lineOf(data, highlight []byte) int {
	if len(highlight) == 0 {
		return 0
	}
	// highlight is a subslice of data
	start := cap(data) - cap(highlight)
	if start < 0 || start > len(data) {
		return 0
	}
	return bytes.Count(data[:start], []byte("\n")) + 1
}

// indexTOML records the line of every key path in a TOML document. Array
// tables get indices: [[vm.disks]] → "vm.disks[0]", "vm.disks[1]".
func indexTOML(data []byte, lines map[string]int) error {
	var p unstable.Parser
	p.Reset(data)
	var table string
	counts := map[string]int{}
	for p.NextExpression() {
		e := p.Expression()
		keys, line := keyOf(&p, e)
		switch e.Kind {
		case unstable.Table:
			table = joinKey("", keys)
			setLine(lines, table, line)
		case unstable.ArrayTable:
			base := joinKey("", keys)
			table = fmt.Sprintf("%s[%d]", base, counts[base])
			counts[base]++
			setLine(lines, base, line)
			setLine(lines, table, line)
		case unstable.KeyValue:
			k := joinKey(table, keys)
			setLine(lines, k, line)
			indexTOMLValue(&p, e.Value(), k, lines)
		}
	}
	return p.Error()
}

func indexTOMLValue(p *unstable.Parser, v *unstable.Node, prefix string, lines map[string]int) {
	switch v.Kind {
	case unstable.InlineTable:
		it := v.Children()
		for it.Next() {
			kv := it.Node()
			if kv.Kind != unstable.KeyValue {
				continue
			}
			keys, line := keyOf(p, kv)
			k := joinKey(prefix, keys)
			setLine(lines, k, line)
			indexTOMLValue(p, kv.Value(), k, lines)
		}
	case unstable.Array:
		it := v.Children()
		for i := 0; it.Next(); i++ {
			n := it.Node()
			k := fmt.Sprintf("%s[%d]", prefix, i)
			setLine(lines, k, p.Shape(n.Raw).Start.Line)
			indexTOMLValue(p, n, k, lines)
		}
	}
}

func keyOf(p *unstable.Parser, e *unstable.Node) ([]string, int) {
	var keys []string
	line := 0
	it := e.Key()
	for it.Next() {
		n := it.Node()
		keys = append(keys, string(n.Data))
		if line == 0 {
			line = p.Shape(n.Raw).Start.Line
		}
	}
	return keys, line
}

func joinKey(prefix string, keys []string) string {
	out := prefix
	for _, k := range keys {
		if out != "" {
			out += "."
		}
		out += k
	}
	return out
}

func setLine(lines map[string]int, key string, line int) {
	if _, ok := lines[key]; !ok && line > 0 {
		lines[key] = line
	}
}

// indexJSON records the line of every key path in a JSON document.
func indexJSON(data []byte, lines map[string]int) error {
	dec := json.NewDecoder(bytes.NewReader(data))
	lineAt := func(off int64) int { return bytes.Count(data[:off], []byte("\n")) + 1 }
	var walk func(prefix string) error
	walk = func(prefix string) error {
		tok, err := dec.Token()
		if err != nil {
			return err
		}
		switch tok {
		case json.Delim('{'):
			for dec.More() {
				k, err := dec.Token()
				if err != nil {
					return err
				}
				key := joinKey(prefix, []string{k.(string)})
				setLine(lines, key, lineAt(dec.InputOffset()))
				if err := walk(key); err != nil {
					return err
				}
			}
			_, err = dec.Token()
		case json.Delim('['):
			for i := 0; dec.More(); i++ {
				key := fmt.Sprintf("%s[%d]", prefix, i)
				setLine(lines, key, lineAt(dec.InputOffset()))
				if err := walk(key); err != nil {
					return err
				}
			}
			_, err = dec.Token()
		}
		return err
	}
	if err := walk(""); err != nil {
		return err
	}
	if _, err := dec.Token(); err == nil {
		return errors.New("trailing data after the top-level object")
	}
	return nil
}

func jsonErrorLine(data []byte, err error) int {
	var se *json.SyntaxError
	if errors.As(err, &se) && se.Offset <= int64(len(data)) {
		return bytes.Count(data[:se.Offset], []byte("\n")) + 1
	}
	return 0
}

// jsonToTOML converts a decoded JSON value to one go-toml can marshal:
// json.Number becomes int64 or float64, null is refused.
func jsonToTOML(v any, key string) (any, error) {
	switch v := v.(type) {
	case nil:
		return nil, &Problem{Key: key, Msg: "null is not allowed here; leave the key out instead"}
	case json.Number:
		if i, err := v.Int64(); err == nil {
			return i, nil
		}
		f, err := v.Float64()
		if err != nil {
			return nil, &Problem{Key: key, Msg: "invalid number " + v.String()}
		}
		return f, nil
	case map[string]any:
		out := make(map[string]any, len(v))
		for k, x := range v {
			c, err := jsonToTOML(x, joinKey(key, []string{k}))
			if err != nil {
				return nil, err
			}
			out[k] = c
		}
		return out, nil
	case []any:
		out := make([]any, len(v))
		for i, x := range v {
			c, err := jsonToTOML(x, fmt.Sprintf("%s[%d]", key, i))
			if err != nil {
				return nil, err
			}
			out[i] = c
		}
		return out, nil
	}
	return v, nil
}

// MachineFiles are the file names a machine may be declared in, in the
// order they are looked for.
var MachineFiles = []string{"machine.toml", "machine.json"}

// LoadMachine loads machines/<name>/machine.toml (or .json) from dir, the
// machine's directory, and validates it.
func LoadMachine(dir string) (*Machine, error) {
	name := filepath.Base(dir)
	var path string
	var data []byte
	for _, f := range MachineFiles {
		p := filepath.Join(dir, f)
		b, err := os.ReadFile(p)
		if err == nil {
			if path != "" {
				return nil, fmt.Errorf("machine %s: both %s and %s exist; keep one", name, filepath.Base(path), f)
			}
			path, data = p, b
			continue
		}
		if !errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("machine %s: %w", name, err)
		}
	}
	if path == "" {
		return nil, fmt.Errorf("machine %s: no machine.toml or machine.json in %s", name, dir)
	}
	return ParseMachine(path, name, data)
}

// ParseMachine decodes and validates a machine file's content. path names
// the file in messages and selects the format (".json" or TOML); relative
// paths inside are resolved against its directory.
func ParseMachine(path, name string, data []byte) (*Machine, error) {
	return ParseMachineWith(path, name, data, nil)
}

// SharedResolver finds a shared generator another machine of the
// repository declares, for a dependency a machine does not declare itself;
// nil when none does.
type SharedResolver func(name string) *Generator

// ParseMachineWith is ParseMachine with a resolver for dependencies on
// shared generators declared by other machines (as clan allows): such a
// generator joins the machine as Imported — a dependency, run and read
// where it is stored, never deployed to this machine.
func ParseMachineWith(path, name string, data []byte, shared SharedResolver) (*Machine, error) {
	m := &Machine{}
	doc, err := decodeFile(path, data, m)
	if err != nil {
		return nil, err
	}
	m.Name, m.File = name, path
	if shared != nil {
		m.importShared(shared)
	}
	if ps := m.validate(doc, filepath.Dir(path)); len(ps) > 0 {
		return nil, ps
	}
	return m, nil
}

// importShared adds the shared generators the machine's generators depend
// on but do not declare, when the resolver knows them.
func (m *Machine) importShared(shared SharedResolver) {
	for _, g := range m.Vars.Generators {
		if g == nil {
			continue
		}
		for _, d := range g.Dependencies {
			if m.Vars.Generators[d] != nil {
				continue
			}
			if sg := shared(d); sg != nil && sg.Share {
				c := *sg
				c.Imported = true
				m.Vars.Generators[d] = &c
			}
		}
	}
}

func sortedValues[V any](m map[string]V) []V {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	out := make([]V, len(keys))
	for i, k := range keys {
		out[i] = m[k]
	}
	return out
}

// knownKeys are the TOML keys of the table at path in a value of type t
// (map levels take any key), for suggesting the one a typo meant.
func knownKeys(t reflect.Type, path []string) []string {
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	if len(path) > 0 {
		switch t.Kind() {
		case reflect.Map, reflect.Slice:
			return knownKeys(t.Elem(), path[1:])
		case reflect.Struct:
			for i := range t.NumField() {
				f := t.Field(i)
				if name, _, _ := strings.Cut(f.Tag.Get("toml"), ","); name == path[0] {
					return knownKeys(f.Type, path[1:])
				}
			}
		}
		return nil
	}
	var out []string
	if t.Kind() == reflect.Struct {
		for i := range t.NumField() {
			if name, _, _ := strings.Cut(t.Field(i).Tag.Get("toml"), ","); name != "" && name != "-" {
				out = append(out, name)
			}
		}
	}
	return out
}

// clanNames are clan's option names that credvm spells its own way, in
// a machine file's generators: both spellings are accepted, in TOML and
// in JSON, so that clan's machine.json reads as it is.
var clanNames = map[string]string{
	"runtimeInputs": "runtime_inputs",
	"neededFor":     "needed_for",
	"restartUnits":  "restart_units",
	"helperText":    "helper_text",
}

func hasClanName(lines map[string]int) bool {
	for k := range lines {
		i := strings.LastIndexByte(k, '.')
		if _, ok := clanNames[k[i+1:]]; ok {
			return true
		}
	}
	return false
}

// renameClanKeys renames clan's keys in a decoded document, adding the new
// dotted keys to lines (at the old keys' lines).
func renameClanKeys(v any, prefix string, lines map[string]int) {
	m, ok := v.(map[string]any)
	if !ok {
		if list, ok := v.([]any); ok {
			for i, x := range list {
				renameClanKeys(x, fmt.Sprintf("%s[%d]", prefix, i), lines)
			}
		}
		return
	}
	for k, x := range m {
		key := joinKey(prefix, []string{k})
		if ours, ok := clanNames[k]; ok {
			if _, both := m[ours]; !both {
				delete(m, k)
				m[ours] = x
				nk := joinKey(prefix, []string{ours})
				if l, ok := lines[key]; ok {
					lines[nk] = l
				}
				key = nk
			}
		}
		renameClanKeys(x, key, lines)
	}
}
