package config

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"
)

// Column is a sellers column and the name it gets in the output.
type Column struct {
	Name string `yaml:"name"`
	As   string `yaml:"as"`
	// Mask replaces each value by its keyed hash: "hmac-sha256" writes the
	// lowercase hex HMAC-SHA256 of the value under the job's mask key, so
	// equal values stay joinable without being readable. Text columns only.
	Mask string `yaml:"mask"`
	// Redact writes NULL for every value (the column stays in the schema).
	Redact bool `yaml:"redact"`
}

// MaskHMACSHA256 is the one supported Column.Mask.
const MaskHMACSHA256 = "hmac-sha256"

// DefaultMaskKeyEnv is the environment variable holding the mask key
// unless a job names another.
const DefaultMaskKeyEnv = "SELLERSNAP_MASK_KEY"

// minMaskKey is the shortest accepted mask key, in bytes.
const minMaskKey = 16

// UnmarshalYAML accepts "display_name" or {name: created_at, as: discovered_at, mask: hmac-sha256, redact: true}.
func (c *Column) UnmarshalYAML(n *yaml.Node) error {
	if n.Kind == yaml.ScalarNode {
		c.Name = n.Value
		return nil
	}
	if n.Kind != yaml.MappingNode {
		return errors.New("want a column name or {name: …, as: …, mask: …, redact: …}")
	}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := n.Content[i], n.Content[i+1]
		if v.Kind != yaml.ScalarNode {
			return fmt.Errorf("%s: want a string", k.Value)
		}
		switch k.Value {
		case "name":
			c.Name = v.Value
		case "as":
			c.As = v.Value
		case "mask":
			c.Mask = v.Value
		case "redact":
			switch v.Value {
			case "true":
				c.Redact = true
			case "false":
			default:
				return fmt.Errorf("redact: want true or false, got %q", v.Value)
			}
		default:
			return fmt.Errorf("unknown key %q (known keys: name, as, mask, redact)", k.Value)
		}
	}
	return nil
}

// Output is the column's name in the files.
func (c Column) Output() string {
	if c.As != "" {
		return c.As
	}
	return c.Name
}

// Duration is a time.Duration written as "30s", "10m", "1h30m".
type Duration struct{ time.Duration }

// UnmarshalYAML parses a Go duration string.
func (d *Duration) UnmarshalYAML(n *yaml.Node) error {
	v, err := time.ParseDuration(n.Value)
	if err != nil {
		return fmt.Errorf("want a duration such as 30s or 10m, got %q", n.Value)
	}
	if v < 0 {
		return fmt.Errorf("duration %q is negative", n.Value)
	}
	d.Duration = v
	return nil
}

// ByteSize is a size in bytes written as 268435456, "256MiB" or "1GB".
type ByteSize int64

var byteUnits = map[string]int64{"": 1, "B": 1, "KB": 1e3, "MB": 1e6, "GB": 1e9, "TB": 1e12,
	"KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30, "TiB": 1 << 40}

// UnmarshalYAML parses a whole number with an optional unit.
func (b *ByteSize) UnmarshalYAML(n *yaml.Node) error {
	v := strings.TrimSpace(n.Value)
	i := strings.IndexFunc(v, func(r rune) bool { return r < '0' || r > '9' })
	if i < 0 {
		i = len(v)
	}
	num, err := strconv.ParseInt(v[:i], 10, 64)
	unit, ok := byteUnits[strings.TrimSpace(v[i:])]
	if err != nil || !ok || num > (1<<62)/unit {
		return fmt.Errorf("want a size such as 268435456, 256MiB or 1GB, got %q", n.Value)
	}
	*b = ByteSize(num * unit)
	return nil
}
