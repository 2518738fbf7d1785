package config

import (
	"encoding/json"
	"fmt"
	"regexp"
	"slices"
	"time"
	"unicode/utf8"
)

// Rerun is one entry of the config's reruns: section: units of a job to
// export again, applied once (sellersnap records it in the bucket) by
// whichever process gets to it first.
type Rerun struct {
	// ID names the entry for good: an applied ID is never applied again,
	// and changing its selectors is a configuration error.
	ID  string `yaml:"id"`
	Job string `yaml:"job"`
	// Runs are collection run ids (per_run jobs).
	Runs []string `yaml:"runs"`
	// From and To (YYYY-MM-DD, both inclusive, in the job's time zone):
	// per_run jobs rerun the runs completed on those days, full jobs
	// write the snapshot of those dates.
	From string `yaml:"from"`
	To   string `yaml:"to"`
	// Orgs limits the entry to these org ids.
	Orgs []string `yaml:"orgs"`
	// Reason says why, for whoever reads the record later. Required.
	Reason string `yaml:"reason"`
	// AllowPast lets a full job's entry write dates before today: today's
	// rows under those dates (manifests say data_as_of).
	AllowPast bool `yaml:"allow_past"`
}

// Selectors is the canonical form of what the entry selects: equal for
// two entries that rerun the same units, whatever their order or reason.
func (r *Rerun) Selectors() string {
	s := struct {
		Job       string   `json:"job"`
		Runs      []string `json:"runs,omitempty"`
		From      string   `json:"from,omitempty"`
		To        string   `json:"to,omitempty"`
		Orgs      []string `json:"orgs,omitempty"`
		AllowPast bool     `json:"allow_past,omitempty"`
	}{r.Job, sortedLower(r.Runs), r.From, r.To, sortedLower(r.Orgs), r.AllowPast}
	b, _ := json.Marshal(s)
	return string(b)
}

func sortedLower(ids []string) []string {
	if len(ids) == 0 {
		return nil
	}
	out := make([]string, len(ids))
	for i, id := range ids {
		out[i] = toLowerASCII(id)
	}
	slices.Sort(out)
	return slices.Compact(out)
}

func toLowerASCII(s string) string {
	b := []byte(s)
	for i, c := range b {
		if 'A' <= c && c <= 'Z' {
			b[i] = c + 'a' - 'A'
		}
	}
	return string(b)
}

var (
	rerunID = regexp.MustCompile(`^[a-z0-9][a-z0-9_.-]{0,62}$`)
	uuidID  = regexp.MustCompile(`^[0-9a-fA-F]{8}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{12}$`)
)

// validateReruns checks the reruns: section against the jobs (after the
// jobs were validated, so their modes and time zones are known).
func (f *File) validateReruns(bad bad) {
	ids := map[string]int{}
	for i, r := range f.Reruns {
		p := fmt.Sprintf("reruns[%d]", i)
		if r == nil {
			bad(p, "empty entry")
			continue
		}
		switch {
		case r.ID == "":
			bad(p+".id", "is required: it names the entry in the record sellersnap keeps of what it applied")
		case !rerunID.MatchString(r.ID):
			bad(p+".id", "%q: use lowercase letters, digits, '.', '-' and '_' (at most 63)", r.ID)
		default:
			if first, dup := ids[r.ID]; dup {
				bad(p+".id", "duplicate rerun id %q (also reruns[%d], line %d)", r.ID, first, f.lines[fmt.Sprintf("reruns[%d].id", first)])
			} else {
				ids[r.ID] = i
			}
		}
		if r.Reason == "" {
			bad(p+".reason", "is required: say why the units are exported again (it is recorded with the rerun)")
		} else if n := utf8.RuneCountInString(r.Reason); n > MaxRerunReason {
			bad(p+".reason", "is %d characters; at most %d (link to the ticket for the rest)", n, MaxRerunReason)
		}
		j, _, err := f.Job(r.Job)
		if err != nil {
			bad(p+".job", "%v", err)
			continue
		}
		// No "today" here: a date rule judges an entry when it is applied
		// (pipeline), so that an entry valid then stays valid after
		// midnight and a restarted daemon still loads its file.
		CheckSelectors(j, r.Runs, r.From, r.To, r.Orgs, r.AllowPast, time.Time{}, func(field, format string, args ...any) {
			bad(p+"."+field, format, args...)
		})
	}
}

// MaxRerunReason bounds a reruns: entry's reason, which every record and
// status page repeats.
const MaxRerunReason = 2000

// CheckSelectors checks what a rerun of job j selects (from the command
// line or a reruns: entry): run ids for per_run jobs only, dates as
// YYYY-MM-DD with from ≤ to, org ids as UUIDs, and for full jobs no date
// after today (in the job's time zone, at now) and none before it unless
// allowPast; with a zero now, the rules that depend on today are left to
// the time the rerun is applied. Fields are reported as they are named in
// a reruns: entry.
func CheckSelectors(j *Job, runs []string, from, to string, orgs []string, allowPast bool, now time.Time, bad func(field, format string, args ...any)) {
	if len(runs) == 0 && from == "" && to == "" {
		bad("runs", "select something: runs (per_run jobs), or from and to (dates)")
	}
	if len(runs) > 0 && j.Mode != ModePerRun {
		bad("runs", "job %s is a %s job: select dates with from and to", j.Name, j.Mode)
	}
	for i, id := range runs {
		if !uuidID.MatchString(id) {
			bad(fmt.Sprintf("runs[%d]", i), "%q: want a collection run id (a UUID)", id)
		}
	}
	for i, id := range orgs {
		if !uuidID.MatchString(id) {
			bad(fmt.Sprintf("orgs[%d]", i), "%q: want an org id (a UUID)", id)
		}
	}
	if (from == "") != (to == "") {
		bad("from", "from and to go together (both inclusive; the same date for one day)")
		return
	}
	if from == "" {
		if allowPast {
			bad("allow_past", "goes with dates of a full job")
		}
		return
	}
	df, errF := time.Parse(time.DateOnly, from)
	dt, errT := time.Parse(time.DateOnly, to)
	if errF != nil {
		bad("from", "%q: want a calendar date YYYY-MM-DD", from)
	}
	if errT != nil {
		bad("to", "%q: want a calendar date YYYY-MM-DD", to)
	}
	if errF != nil || errT != nil {
		return
	}
	if dt.Before(df) {
		bad("to", "%s is before from (%s)", to, from)
		return
	}
	if j.Mode != ModeFull {
		if allowPast {
			bad("allow_past", "only full jobs write a date other than the data's")
		}
		return
	}
	if now.IsZero() {
		return // judged when applied
	}
	loc := j.Location
	if loc == nil {
		loc = time.UTC
	}
	today := now.In(loc).Format(time.DateOnly)
	switch {
	case to > today:
		bad("to", "%s is after today (%s in %s): a full snapshot holds the rows as they are when it is taken", to, today, loc)
	case from < today && !allowPast:
		bad("from", "%s is before today (%s in %s): the snapshots would hold today's rows under those dates; allow it with allow_past: true (the manifests then say data_as_of)", from, today, loc)
	}
}
