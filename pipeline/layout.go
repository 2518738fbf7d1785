package pipeline

import (
	"fmt"
	"path"
	"strings"

	"github.com/sellersnap/sellersnap/internal/keys"
)

// Layout names every key of a job: its data files (and their parts), the
// manifest and _SUCCESS beside them, latest.json, schema.json, and the
// static prefix all of them live under. It is the one place that turns a
// path template into keys.
type Layout struct {
	tmpl   *keys.Template
	split  bool
	prefix string   // the template's folders before the first placeholder, with a trailing /
	dirs   []string // the template's folder segments
}

func newLayout(t *keys.Template, split bool) Layout {
	raw := t.String()
	prefix := raw[:strings.IndexByte(raw+"{", '{')]
	prefix = prefix[:strings.LastIndexByte(prefix, '/')+1]
	dirs := strings.Split(raw, "/")
	return Layout{tmpl: t, split: split, prefix: prefix, dirs: dirs[:len(dirs)-1]}
}

// String is the path template.
func (l Layout) String() string { return l.tmpl.String() }

// Prefix is the folder part of the template before its first placeholder
// ("sellers/new/"): every key of the job starts with it.
func (l Layout) Prefix() string { return l.prefix }

// File is the key of a data file with extension ext for the placeholder
// values (ext excluded). When the job splits its output, part n (from 1)
// gets _part-000n before the extension; part 0 is the unsplit name.
func (l Layout) File(values map[string]string, ext string, part int) (string, error) {
	vals := make(map[string]string, len(values)+1)
	for k, v := range values {
		vals[k] = v
	}
	vals["ext"] = ext
	key, err := l.tmpl.Execute(vals)
	if err != nil || !l.split || part == 0 {
		return key, err
	}
	return strings.TrimSuffix(key, "."+ext) + fmt.Sprintf("_part-%04d", part) + "." + ext, nil
}

// Folder is the folder of a unit's files (the template's folders never
// hold {ext}).
func (l Layout) Folder(values map[string]string) (string, error) {
	key, err := l.File(values, "x", 0)
	if err != nil {
		return "", err
	}
	return path.Dir(key), nil
}

// Manifest is the key of the manifest in folder.
func (l Layout) Manifest(folder string) string { return path.Join(folder, ManifestName) }

// Success is the key of the _SUCCESS marker beside manifestKey.
func (l Layout) Success(manifestKey string) string {
	return path.Join(path.Dir(manifestKey), SuccessName)
}

// Schema is the key of the job's schema.json, at the static prefix.
func (l Layout) Schema() string { return path.Join(l.prefix, SchemaName) }

// Latest is where latest.json of the unit of manifestKey (and org) lives:
// in the folder of the path's first segment holding {org_id}
// (sellers/new/org=…/latest.json), or, without one, under the static
// prefix as latest/org=….json.
func (l Layout) Latest(manifestKey, org string) string {
	rendered := strings.Split(manifestKey, "/") // Escape never adds a '/'
	for i, seg := range l.dirs {
		if strings.Contains(seg, "{org_id}") {
			return path.Join(path.Join(rendered[:i+1]...), LatestName)
		}
	}
	return path.Join(l.prefix, "latest", "org="+keys.Escape(org)+".json")
}
