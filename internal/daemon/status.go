package daemon

import (
	"context"
	"fmt"
	"html/template"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/sellersnap/sellersnap/pipeline"
	"github.com/sellersnap/sellersnap/sinks"
)

// statusPage renders what the daemon is doing: per job its health (and the
// last error while it fails), the last success, the schedule and next run,
// the backlog and the recent exports with their manifests (read from the
// bucket at start-up, so a restart loses nothing). It refreshes itself
// every 30 s and needs no JavaScript.
var statusPage = template.Must(template.New("status").Funcs(template.FuncMap{
	"ago":    func(t time.Time, now time.Time) string { return now.Sub(t).Round(time.Second).String() + " ago" },
	"ms":     func(d time.Duration) string { return d.Round(time.Millisecond).String() },
	"age":    func(d time.Duration) string { return d.Round(time.Second).String() },
	"chart":  chart,
	"millis": func(ms int64) time.Time { return time.UnixMilli(ms) },
	"updown": func(up *bool) string {
		switch {
		case up == nil:
			return "unchecked"
		case *up:
			return "up"
		}
		return "down"
	},
}).Parse(`<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<meta http-equiv="refresh" content="30"><title>sellersnap</title>
<style>
body{font:14px/1.4 system-ui,sans-serif;margin:1em auto;padding:0 1em;max-width:1200px;color:#222}
.scroll{overflow-x:auto}table{border-collapse:collapse;margin:.5em 0 1.5em;width:100%}
td,th{padding:.25em .6em;border-bottom:1px solid #ddd;text-align:left;vertical-align:top}
td.id,td.key{overflow-wrap:anywhere;word-break:break-all;font-family:ui-monospace,monospace;font-size:12px}
.failure,.failing,.down{color:#b00}.success,.ok,.up{color:#070}code{font-size:12px;overflow-wrap:anywhere}
.health{font-weight:600}.error{white-space:pre-wrap;overflow-wrap:anywhere;font-weight:normal;color:#600}
section.job{border-top:1px solid #ccc;margin-top:1em}
svg.chart{display:block;width:100%;max-width:640px;height:90px}svg.chart text{font-size:10px;fill:#555}
@media (max-width:700px){body{font-size:13px}th.opt,td.opt{display:none}}
</style></head><body>
<h1>sellersnap {{.Version}}</h1>
<p>Now {{.Now.Format "2006-01-02 15:04:05 MST"}} · PostgreSQL <span class="db {{updown .DatabaseUp}}">{{updown .DatabaseUp}}</span> ·
LISTEN <span class="listen">{{.Listen}}</span> · <a href="/metrics">metrics</a> · <a href="/readyz">readiness</a></p>
{{range .Jobs}}
<section class="job" id="job-{{.Name}}">
<h2>{{.Name}} <small>({{.Mode}})</small></h2>
{{if .FailingSince.IsZero}}<p class="health ok">ok</p>{{else}}<p class="health failing">failing since {{.FailingSince.Format "2006-01-02 15:04:05 MST"}} ({{ago .FailingSince $.Now}})
<span class="error">{{.LastError}}</span></p>{{end}}
<p>Last success: <span class="last-success">{{if .LastSuccess.IsZero}}never{{else}}{{ago .LastSuccess $.Now}}{{end}}</span>.
Schedule <code>{{.Schedule}}</code> in {{.Location}}; next run <span class="next">{{.Next.Format "2006-01-02 15:04:05 MST"}}</span>.
Backlog: <span class="backlog">{{.Backlog}}</span>{{if .OldestPending}} (oldest pending for {{age .OldestPending}}){{end}}.
Bucket <span class="bucket {{updown .BucketUp}}">{{updown .BucketUp}}</span>: <code>{{.Destination}}</code>.</p>
{{if .HasTable}}<p class="table">Iceberg table{{if .Table}} <code>{{.Table.Name}}</code>{{end}}, catalog <span class="catalog {{updown .CatalogUp}}">{{updown .CatalogUp}}</span>:
{{with .Table}}{{with .Current}}snapshot <span class="snapshot">{{.ID}}</span> ({{index .Summary "operation"}}, {{ago (millis .TimestampMS) $.Now}}): {{index .Summary "total-records"}} records in {{index .Summary "total-data-files"}} files{{else}}no snapshot yet{{end}}; {{.Snapshots}} snapshots kept, retention {{.Retention}}.{{else}}not read yet.{{end}}</p>{{end}}
{{if .Exports}}{{chart .Exports}}<div class="scroll">
<table><thead><tr><th>finished</th><th>run / date</th><th class="opt">org</th><th>rows</th><th class="opt">files</th><th class="opt">duration</th><th>outcome</th><th class="opt">manifest</th></tr></thead><tbody>
{{range .Exports}}<tr class="export {{.Outcome}}">
<td>{{ago .At $.Now}}</td><td class="id">{{if .RunID}}{{.RunID}}{{else}}{{.Date}}{{end}}</td><td class="id opt">{{.OrgID}}</td><td class="rows">{{.Rows}}</td><td class="opt">{{.Files}}</td>
<td class="opt">{{ms .Duration}}</td><td class="outcome">{{.Outcome}}{{if .Error}}: <span class="error">{{.Error}}</span>{{end}}</td>
<td class="key opt">{{if .Manifest}}<a href="/manifest?key={{.Manifest}}&amp;job={{.Job}}">{{.Manifest}}</a>{{end}}</td></tr>
{{end}}</tbody></table></div>
{{else}}<p class="none">No exports yet: none in the bucket, none by this process.</p>{{end}}
{{if .Reruns}}<h3>Declared reruns</h3><div class="scroll">
<table class="reruns"><thead><tr><th>id</th><th>status</th><th>selects</th><th>reason</th><th class="opt">attempts</th><th>rewritten</th><th class="opt">updated</th></tr></thead><tbody>
{{range .Reruns}}<tr class="rerun {{.Status}}"><td class="id">{{.ID}}</td><td class="status">{{.Status}}{{if .Error}}: <span class="error">{{.Error}}</span>{{end}}</td>
<td class="id">{{.Selection}}</td><td>{{.Reason}}</td>
<td class="opt">{{if .Record}}{{.Record.Attempts}}{{end}}</td><td>{{if .Record}}{{.Record.Rewritten}} of {{.Record.Units}}{{end}}</td>
<td class="opt">{{if .Record}}{{ago .Record.UpdatedAt $.Now}}{{end}}</td></tr>
{{end}}</tbody></table></div>{{end}}
</section>
{{end}}
</body></html>
`))

// chart draws the recent exports, oldest on the left: a bar per export for
// its rows (red for a failure) and a line for its duration, each scaled to
// the largest shown, with the values in each bar's tooltip.
func chart(exports []pipeline.Export) template.HTML {
	const w, h, top = 640.0, 90.0, 14.0
	n := len(exports)
	var maxRows int64
	var maxDur time.Duration
	for _, e := range exports {
		maxRows, maxDur = max(maxRows, e.Rows), max(maxDur, e.Duration)
	}
	var b strings.Builder
	fmt.Fprintf(&b, `<svg class="chart" viewBox="0 0 %.0f %.0f" role="img" aria-label="rows and duration of the last %d exports">`, w, h, n)
	fmt.Fprintf(&b, `<text x="0" y="10">rows (bars, max %d) · duration (line, max %s)</text>`, maxRows, maxDur.Round(time.Millisecond))
	slot := w / float64(n)
	var line []string
	for i := range exports {
		e := exports[n-1-i] // History is newest first
		x := float64(i) * slot
		bh := 1.0
		if maxRows > 0 {
			bh = max((h-top)*float64(e.Rows)/float64(maxRows), 1)
		}
		color := "#7a7"
		if e.Outcome != "success" {
			color, bh = "#c44", h-top
		}
		what := e.RunID
		if what == "" {
			what = e.Date + " " + e.OrgID
		}
		fmt.Fprintf(&b, `<rect class="bar" x="%.1f" y="%.1f" width="%.1f" height="%.1f" fill="%s"><title>%s: %s, %d rows, %s</title></rect>`,
			x+slot*0.1, h-bh, slot*0.8, bh, color, template.HTMLEscapeString(what), e.Outcome, e.Rows, e.Duration.Round(time.Millisecond))
		if maxDur > 0 {
			line = append(line, fmt.Sprintf("%.1f,%.1f", x+slot/2, h-(h-top)*float64(e.Duration)/float64(maxDur)))
		}
	}
	if len(line) > 1 {
		fmt.Fprintf(&b, `<polyline class="duration" points="%s" fill="none" stroke="#336" stroke-width="1.5"/>`, strings.Join(line, " "))
	}
	b.WriteString(`</svg>`)
	return template.HTML(b.String())
}

type statusJob struct {
	*pipeline.Job
	JobStatus
	Destination string // redacted: the page is unauthenticated
	Next        time.Time
	Exports     []pipeline.Export
	Reruns      []statusRerun
}

// statusRerun is a reruns: entry with its record from the bucket.
type statusRerun struct {
	ID, Status, Selection, Reason, Error string
	Record                               *pipeline.RerunRecord
}

func (d *Daemon) serveStatus(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path != "/" {
		http.NotFound(w, r)
		return
	}
	now := d.now()
	data := struct {
		Version    string
		Now        time.Time
		DatabaseUp *bool
		Listen     string
		Jobs       []statusJob
	}{Version: d.Runner.Version, Now: now, DatabaseUp: d.Metrics.DatabaseUp(), Listen: d.ListenState()}
	for _, j := range d.Jobs {
		sj := statusJob{Job: j, JobStatus: d.Metrics.Status(j.Name), Destination: sinks.Redact(j.Destination),
			Next: j.Cron.Next(now.In(j.Location)), Exports: d.Metrics.History(j.Name)}
		for _, dr := range j.Reruns {
			st := statusRerun{ID: dr.ID, Status: "pending", Selection: dr.Selection.String(), Reason: dr.Reason}
			ctx, cancel := context.WithTimeout(r.Context(), 5*time.Second)
			rec, err := d.Runner.ReadRerunRecord(ctx, j, dr)
			cancel()
			switch {
			case err != nil:
				st.Status, st.Error = "unknown", err.Error() // bucket errors are redacted
			case rec != nil:
				st.Status, st.Record, st.Error = rec.Status, rec, rec.LastError
			}
			sj.Reruns = append(sj.Reruns, st)
		}
		data.Jobs = append(data.Jobs, sj)
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	if err := statusPage.Execute(w, data); err != nil {
		d.logger().Warn("status page", "err", err)
	}
}

// serveManifest shows a manifest this process wrote (and only those: the
// page is no window onto the rest of the bucket).
func (d *Daemon) serveManifest(w http.ResponseWriter, r *http.Request) {
	job, key := r.URL.Query().Get("job"), r.URL.Query().Get("key")
	i := slices.IndexFunc(d.Jobs, func(j *pipeline.Job) bool { return j.Name == job })
	if i < 0 || !slices.ContainsFunc(d.Metrics.History(job), func(e pipeline.Export) bool { return e.Manifest == key && key != "" }) {
		http.NotFound(w, r)
		return
	}
	b, err := d.Runner.Bucket(r.Context(), d.Jobs[i].Destination)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadGateway)
		return
	}
	data, err := b.ReadAll(r.Context(), key)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadGateway)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	_, _ = w.Write(data)
}
