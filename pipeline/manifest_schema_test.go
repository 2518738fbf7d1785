package pipeline_test

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/sellersnap/sellersnap/internal/pgtest"
	"github.com/sellersnap/sellersnap/pipeline"
)

// validate checks v against the subset of JSON Schema that
// docs/manifest.schema.json uses: type, required, properties,
// additionalProperties: false, items, enum, const, pattern, minimum.
func validate(schema map[string]any, v any, at string) []string {
	var errs []string
	fail := func(format string, args ...any) { errs = append(errs, at+": "+fmt.Sprintf(format, args...)) }
	if t, ok := schema["type"]; ok {
		var types []string
		switch t := t.(type) {
		case string:
			types = []string{t}
		case []any:
			for _, x := range t {
				types = append(types, x.(string))
			}
		}
		if !slices.Contains(types, jsonType(v)) {
			fail("%s, want %v", jsonType(v), types)
			return errs
		}
	}
	if c, ok := schema["const"]; ok && fmt.Sprint(c) != fmt.Sprint(v) {
		fail("%v, want %v", v, c)
	}
	if e, ok := schema["enum"].([]any); ok && !slices.ContainsFunc(e, func(x any) bool { return fmt.Sprint(x) == fmt.Sprint(v) }) {
		fail("%v not in %v", v, e)
	}
	if p, ok := schema["pattern"].(string); ok && !regexp.MustCompile(p).MatchString(v.(string)) {
		fail("%q does not match %s", v, p)
	}
	if m, ok := schema["minimum"].(float64); ok && v.(float64) < m {
		fail("%v < %v", v, m)
	}
	switch v := v.(type) {
	case map[string]any:
		props, _ := schema["properties"].(map[string]any)
		for _, r := range schema["required"].([]any) {
			if _, ok := v[r.(string)]; !ok {
				fail("missing %s", r)
			}
		}
		for k, x := range v {
			sub, ok := props[k].(map[string]any)
			if !ok {
				if schema["additionalProperties"] == false {
					fail("%s is not in the schema", k)
				}
				continue
			}
			errs = append(errs, validate(sub, x, at+"."+k)...)
		}
	case []any:
		if items, ok := schema["items"].(map[string]any); ok {
			for i, x := range v {
				errs = append(errs, validate(items, x, fmt.Sprintf("%s[%d]", at, i))...)
			}
		}
	}
	return errs
}

func jsonType(v any) string {
	switch v := v.(type) {
	case nil:
		return "null"
	case bool:
		return "boolean"
	case string:
		return "string"
	case []any:
		return "array"
	case map[string]any:
		return "object"
	case float64:
		if v == float64(int64(v)) {
			return "integer"
		}
		return "number"
	}
	return "unknown"
}

// TestManifestsMatchTheJSONSchema validates every manifest of exports
// with every optional field in play (a run, full snapshots, split files,
// masked and redacted columns, an evolved schema) against
// docs/manifest.schema.json, and checks that the schema's top-level
// properties are exactly the manifest's fields.
func TestManifestsMatchTheJSONSchema(t *testing.T) {
	raw, err := os.ReadFile("../docs/manifest.schema.json")
	if err != nil {
		t.Fatal(err)
	}
	var schema map[string]any
	if err := json.Unmarshal(raw, &schema); err != nil {
		t.Fatalf("docs/manifest.schema.json: %v", err)
	}
	t.Setenv("SELLERSNAP_MASK_KEY", "0123456789abcdef0123456789abcdef")
	f := newFixture(t, "    max_rows_per_file: 100\n    columns: [display_name, {name: platform_id, mask: hmac-sha256}, {name: normalized_name, redact: true}, created_at]")
	f.Once("new-sellers")
	f.Once("full-nightly")
	// A rerun of an earlier date: rerun, rerun_id and data_as_of.
	if _, err := f.Runner.RerunSelection(context.Background(), f.Job("full-nightly"),
		pipeline.Selection{From: "2026-11-21", To: "2026-11-21", AllowPast: true}, pipeline.RerunOptions{ID: "schema-check"}); err != nil {
		t.Fatal(err)
	}
	pgtest.Exec(t, f.DBURL, `UPDATE sellers SET feedback_percent = 'NaN' WHERE id IN (SELECT id FROM sellers WHERE feedback_percent IS NOT NULL LIMIT 3)`)
	// The last export also commits to an Iceberg table: table.
	f.Load("    on_schema_change: evolve\n    formats: [csv]\n" + icebergYAML(f.DBURL))
	pgtest.Exec(t, f.DBURL, `INSERT INTO collection_runs (id, org_id, status, started_at, completed_at)
		SELECT '00000000-0000-4000-8000-0000000000bb', org_id, 'completed', now() - interval '1 hour', now() FROM collection_runs LIMIT 1`)
	f.Once("new-sellers")
	checked, seen := 0, map[string]bool{}
	for key, data := range f.Files() {
		if path.Base(key) != "manifest.json" {
			continue
		}
		var v map[string]any
		if err := json.Unmarshal(data, &v); err != nil {
			t.Fatal(err)
		}
		for k := range v {
			seen[k] = true
		}
		for _, e := range validate(schema, v, strings.TrimSuffix(key, "/manifest.json")) {
			t.Error(e)
		}
		checked++
	}
	for k := range schema["properties"].(map[string]any) {
		if !seen[k] {
			t.Errorf("the schema has %s, which no manifest used", k)
		}
	}
	if checked < 10 {
		t.Fatalf("%d manifests checked", checked)
	}
}
