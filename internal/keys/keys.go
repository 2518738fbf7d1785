// Package keys turns object key templates such as
// "sellers/new/org={org_id}/run={run_id}/sellers_{run_date}_run-{run_id8}.{ext}"
// into keys, with every placeholder value made path-safe: a value can never
// add a path segment, climb out with "..", or push a key past MaxKeyLength.
package keys

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"slices"
	"strings"
)

// MaxKeyLength is the longest key Execute returns (S3's and GCS's limit).
const MaxKeyLength = 1024

// maxValueLength bounds one escaped placeholder value; longer values are
// cut and suffixed with a hash of the whole value, so they stay distinct.
const maxValueLength = 128

type part struct {
	literal     string
	placeholder string
}

// Template is a parsed key template.
type Template struct {
	raw   string
	parts []part
}

// Parse parses a template whose placeholders must be among allowed.
func Parse(s string, allowed []string) (*Template, error) {
	if s == "" {
		return nil, errors.New("empty path template")
	}
	if strings.HasPrefix(s, "/") {
		return nil, errors.New("path template must be relative to the bucket root (no leading /)")
	}
	t := &Template{raw: s}
	for rest := s; rest != ""; {
		i := strings.IndexAny(rest, "{}")
		if i < 0 {
			t.parts = append(t.parts, part{literal: rest})
			break
		}
		if rest[i] == '}' {
			return nil, fmt.Errorf("unmatched } in path template %q", s)
		}
		if i > 0 {
			t.parts = append(t.parts, part{literal: rest[:i]})
		}
		end := strings.IndexByte(rest[i:], '}')
		if end < 0 {
			return nil, fmt.Errorf("unclosed { in path template %q", s)
		}
		name := rest[i+1 : i+end]
		if !slices.Contains(allowed, name) {
			return nil, fmt.Errorf("unknown placeholder {%s} in path template (allowed: {%s})", name, strings.Join(allowed, "}, {"))
		}
		t.parts = append(t.parts, part{placeholder: name})
		rest = rest[i+end+1:]
	}
	for _, seg := range strings.Split(s, "/") {
		if seg == "" || seg == "." || seg == ".." {
			return nil, fmt.Errorf("path template %q has an empty, . or .. segment", s)
		}
	}
	return t, nil
}

// String returns the template as written.
func (t *Template) String() string { return t.raw }

// InDir reports whether placeholder name appears before the last '/',
// that is, in the folder part of the key.
func (t *Template) InDir(name string) bool {
	dir := t.raw[:max(strings.LastIndexByte(t.raw, '/'), 0)]
	return strings.Contains(dir, "{"+name+"}")
}

// InBase reports whether placeholder name appears after the last '/'.
func (t *Template) InBase(name string) bool {
	return strings.Contains(t.raw[strings.LastIndexByte(t.raw, '/')+1:], "{"+name+"}")
}

// Execute fills in the placeholders, escaping each value with Escape.
func (t *Template) Execute(values map[string]string) (string, error) {
	var b strings.Builder
	for _, p := range t.parts {
		if p.placeholder == "" {
			b.WriteString(p.literal)
			continue
		}
		v, ok := values[p.placeholder]
		if !ok {
			return "", fmt.Errorf("no value for placeholder {%s}", p.placeholder)
		}
		if p.placeholder == "ext" {
			b.WriteString(v) // chosen by the program, never by data
			continue
		}
		b.WriteString(Escape(v))
	}
	key := b.String()
	if len(key) > MaxKeyLength {
		return "", fmt.Errorf("key %.80q… is %d bytes, more than %d", key, len(key), MaxKeyLength)
	}
	return key, nil
}

// Escape makes a placeholder value safe inside one path segment. Letters,
// digits, '-', '_' and '.' stand for themselves (but "." and ".." are
// escaped); every other byte becomes %XX. Values escaping to more than 128
// bytes are cut and suffixed with "~" and 16 hex digits of their SHA-256.
// An empty value becomes "_".
func Escape(v string) string {
	if v == "" {
		return "_"
	}
	var b strings.Builder
	for i := 0; i < len(v); i++ {
		c := v[i]
		if c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_' || c == '.' {
			b.WriteByte(c)
			continue
		}
		fmt.Fprintf(&b, "%%%02X", c)
	}
	s := b.String()
	if s == "." || s == ".." {
		s = strings.ReplaceAll(s, ".", "%2E")
	}
	if len(s) > maxValueLength {
		sum := sha256.Sum256([]byte(v))
		cut := s[:maxValueLength-17]
		if i := strings.LastIndexByte(cut[max(len(cut)-2, 0):], '%'); i >= 0 { // never cut inside an escape
			cut = cut[:len(cut)-2+i]
		}
		s = cut + "~" + hex.EncodeToString(sum[:8])
	}
	return s
}
