package config

import (
	"errors"
	"fmt"
	"os"
	"reflect"
	"strings"

	"go.yaml.in/yaml/v3"
)

// FieldError is one problem in a config file: the field path (jobs[1].schedule),
// the line it is on (0 when unknown), and what is wrong.
type FieldError struct {
	File string
	Line int
	Path string
	Msg  string
}

func (e *FieldError) Error() string {
	var b strings.Builder
	if e.File != "" {
		b.WriteString(e.File)
		if e.Line > 0 {
			fmt.Fprintf(&b, ":%d", e.Line)
		}
		b.WriteString(": ")
	} else if e.Line > 0 {
		fmt.Fprintf(&b, "line %d: ", e.Line)
	}
	if e.Path != "" {
		b.WriteString(e.Path)
		b.WriteString(": ")
	}
	b.WriteString(e.Msg)
	return b.String()
}

// decoder decodes a YAML node tree into Go values strictly: unknown and
// duplicate keys are errors, and every error carries its field path and
// line. It also records the line of every field it sees.
type decoder struct {
	file  string
	lines map[string]int
	errs  []error
	nodes int // values decoded so far, aliases counted each time they are used
}

// maxNodes bounds the values one config file may decode to, aliases
// expanded: a real pipeline.yaml has a few hundred, while a few kilobytes of
// aliases that fan out would otherwise decode to millions of values.
const maxNodes = 50_000

// maxListItems bounds one list: a reruns: entry naming more runs than
// this selects a date range instead.
const maxListItems = 10_000

// maxErrors is how many problems an error lists before it says how many more.
const maxErrors = 20

// joinErrors joins errs like errors.Join, listing at most maxErrors of them.
func joinErrors(errs []error) error {
	if len(errs) <= maxErrors {
		return errors.Join(errs...)
	}
	shown := append(errs[:maxErrors:maxErrors], fmt.Errorf("… and %d more problems", len(errs)-maxErrors))
	return errors.Join(shown...)
}

func (d *decoder) fail(n *yaml.Node, path, format string, args ...any) {
	line := 0
	if n != nil {
		line = n.Line
	}
	d.errs = append(d.errs, &FieldError{File: d.file, Line: line, Path: path, Msg: fmt.Sprintf(format, args...)})
}

var unmarshalerType = reflect.TypeFor[yaml.Unmarshaler]()

func (d *decoder) decode(n *yaml.Node, v reflect.Value, path string) {
	if d.nodes++; d.nodes > maxNodes {
		if d.nodes == maxNodes+1 {
			// First, so that it is not among the problems left unlisted.
			d.fail(n, path, "the file decodes to more than %d values (aliases that fan out?); stopped here", maxNodes)
			last := len(d.errs) - 1
			d.errs = append([]error{d.errs[last]}, d.errs[:last]...)
		}
		return
	}
	if n.Kind == yaml.AliasNode {
		n = n.Alias
	}
	d.lines[path] = n.Line
	if v.Kind() != reflect.Pointer && reflect.PointerTo(v.Type()).Implements(unmarshalerType) {
		if err := n.Decode(v.Addr().Interface()); err != nil {
			d.fail(n, path, "%s", cleanYAMLError(err))
		}
		return
	}
	switch v.Kind() {
	case reflect.Pointer:
		if n.Kind == yaml.ScalarNode && n.ShortTag() == "!!null" {
			v.SetZero()
			return
		}
		if v.IsNil() {
			v.Set(reflect.New(v.Type().Elem()))
		}
		d.decode(n, v.Elem(), path)
	case reflect.Struct:
		if n.Kind != yaml.MappingNode {
			if n.Kind == yaml.ScalarNode && n.ShortTag() == "!!null" {
				return
			}
			d.fail(n, path, "want a mapping of keys, got %s", describe(n))
			return
		}
		fields := map[string]int{}
		var known []string
		for i := 0; i < v.NumField(); i++ {
			tag := strings.Split(v.Type().Field(i).Tag.Get("yaml"), ",")[0]
			if tag == "" || tag == "-" {
				continue
			}
			fields[tag] = i
			known = append(known, tag)
		}
		seen := map[string]int{}
		for i := 0; i+1 < len(n.Content); i += 2 {
			k, val := n.Content[i], n.Content[i+1]
			fp := join(path, k.Value)
			if line, dup := seen[k.Value]; dup {
				d.fail(k, fp, "duplicate key (first set on line %d)", line)
				continue
			}
			seen[k.Value] = k.Line
			idx, ok := fields[k.Value]
			if !ok {
				d.fail(k, fp, "unknown key %q (known keys: %s)", k.Value, strings.Join(known, ", "))
				continue
			}
			d.decode(val, v.Field(idx), fp)
			d.lines[fp] = k.Line
		}
	case reflect.Slice:
		if n.Kind == yaml.ScalarNode && n.ShortTag() == "!!null" {
			v.SetZero()
			return
		}
		if n.Kind != yaml.SequenceNode {
			d.fail(n, path, "want a list, got %s", describe(n))
			return
		}
		if len(n.Content) > maxListItems {
			d.fail(n, path, "lists %d items; at most %d (for reruns: runs, select a date range with from and to, or split the entry)", len(n.Content), maxListItems)
			return
		}
		s := reflect.MakeSlice(v.Type(), len(n.Content), len(n.Content))
		for i, item := range n.Content {
			d.decode(item, s.Index(i), fmt.Sprintf("%s[%d]", path, i))
		}
		v.Set(s)
	default:
		if n.Kind != yaml.ScalarNode {
			d.fail(n, path, "want a %s, got %s", kindName(v.Kind()), describe(n))
			return
		}
		if v.Kind() == reflect.String && n.ShortTag() == "!!null" {
			v.SetString("")
			return
		}
		if err := n.Decode(v.Addr().Interface()); err != nil {
			d.fail(n, path, "want a %s, got %q", kindName(v.Kind()), n.Value)
		}
	}
}

func join(path, key string) string {
	if path == "" {
		return key
	}
	return path + "." + key
}

func kindName(k reflect.Kind) string {
	switch k {
	case reflect.Bool:
		return "boolean (true or false)"
	case reflect.Int, reflect.Int32, reflect.Int64:
		return "whole number"
	case reflect.String:
		return "string"
	}
	return k.String()
}

func describe(n *yaml.Node) string {
	switch n.Kind {
	case yaml.MappingNode:
		return "a mapping"
	case yaml.SequenceNode:
		return "a list"
	default:
		return fmt.Sprintf("%q", n.Value)
	}
}

func cleanYAMLError(err error) string {
	s := err.Error()
	s = strings.TrimPrefix(s, "yaml: unmarshal errors:\n")
	s = strings.TrimSpace(s)
	if i := strings.Index(s, ": "); strings.HasPrefix(s, "line ") && i > 0 {
		s = s[i+2:]
	}
	return s
}

// expandEnv replaces ${VAR} and ${VAR:-default} in every scalar value (never
// in keys); "$$" stands for a literal "$". Plain scalars are re-typed after
// expansion, so "batch_rows: ${ROWS:-8192}" is a number. A ${VAR} without a
// default whose variable is unset or empty is an error naming the variable,
// line and field: an empty value must be asked for with ${VAR:-}, so a
// missing variable never silently turns a mask, a filter or a destination
// into its default.
func (d *decoder) expandEnv(n *yaml.Node, path string) {
	switch n.Kind {
	case yaml.DocumentNode, yaml.SequenceNode:
		for i, c := range n.Content {
			p := path
			if n.Kind == yaml.SequenceNode {
				p = fmt.Sprintf("%s[%d]", path, i)
			}
			d.expandEnv(c, p)
		}
	case yaml.MappingNode:
		for i := 0; i+1 < len(n.Content); i += 2 {
			d.expandEnv(n.Content[i+1], join(path, n.Content[i].Value))
		}
	case yaml.ScalarNode:
		if !strings.Contains(n.Value, "$") {
			return
		}
		out, err := expand(n.Value)
		if err != nil {
			d.fail(n, path, "%v", err)
			// Decoded as null: one message for one mistake.
			n.Value, n.Tag, n.Style = "", "!!null", 0
			return
		}
		if out != n.Value {
			n.Value = out
			if n.Style == 0 {
				n.Tag = "" // re-resolve the type of a plain scalar
			}
		}
	}
}

func expand(s string) (string, error) {
	var b strings.Builder
	var problems []string
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c != '$' {
			b.WriteByte(c)
			continue
		}
		if i+1 < len(s) && s[i+1] == '$' {
			b.WriteByte('$')
			i++
			continue
		}
		if i+1 >= len(s) || s[i+1] != '{' {
			b.WriteByte(c)
			continue
		}
		end := strings.IndexByte(s[i:], '}')
		if end < 0 {
			return "", fmt.Errorf("unclosed ${ in %q", s)
		}
		expr := s[i+2 : i+end]
		name, def, hasDef := strings.Cut(expr, ":-")
		if !validVarName(name) {
			return "", fmt.Errorf("invalid variable name %q in ${%s}", name, expr)
		}
		val, ok := os.LookupEnv(name)
		switch {
		case ok && val != "":
			b.WriteString(val)
		case hasDef:
			b.WriteString(def)
		case !ok:
			problems = append(problems, fmt.Sprintf("environment variable %s is not set (write ${%s:-} for an explicit empty value)", name, name))
		default:
			problems = append(problems, fmt.Sprintf("environment variable %s is empty (write ${%s:-} for an explicit empty value)", name, name))
		}
		i += end
	}
	if len(problems) > 0 {
		return "", errors.New(strings.Join(problems, "; "))
	}
	return b.String(), nil
}

func validVarName(s string) bool {
	if s == "" {
		return false
	}
	for i, r := range s {
		if !(r == '_' || r >= 'A' && r <= 'Z' || r >= 'a' && r <= 'z' || i > 0 && r >= '0' && r <= '9') {
			return false
		}
	}
	return true
}
