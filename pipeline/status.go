package pipeline

import (
	"html/template"
	"net/http"
	"slices"
	"time"

	"github.com/sellersnap/sellersnap/config"
	"github.com/sellersnap/sellersnap/sinks"
)

// statusPage renders what the daemon is doing: per job the schedule, the
// next fire time, the backlog and the recent exports with their manifests.
var statusPage = template.Must(template.New("status").Funcs(template.FuncMap{
	"ago": func(t time.Time, now time.Time) string { return now.Sub(t).Round(time.Second).String() + " ago" },
	"ms":  func(d time.Duration) string { return d.Round(time.Millisecond).String() },
}).Parse(`<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>sellersnap</title>
<style>
body{font:14px/1.4 system-ui,sans-serif;margin:2em;color:#222}
table{border-collapse:collapse;margin:.5em 0 2em}td,th{padding:.25em .8em;border-bottom:1px solid #ddd;text-align:left}
.failure{color:#b00}.success{color:#070}code{font-size:12px}
</style></head><body>
<h1>sellersnap {{.Version}}</h1>
<p>Now {{.Now.Format "2006-01-02 15:04:05 MST"}}. <a href="/metrics">metrics</a> · <a href="/readyz">readiness</a></p>
{{range .Jobs}}
<section class="job" id="job-{{.Name}}">
<h2>{{.Name}} <small>({{.Mode}})</small></h2>
<p>Schedule <code>{{.Schedule}}</code> in {{.Timezone}}; next run <span class="next">{{.Next.Format "2006-01-02 15:04:05 MST"}}</span>.
Backlog: <span class="backlog">{{.Backlog}}</span>. Destination <code>{{.Destination}}</code>.</p>
{{if .Exports}}
<table><thead><tr><th>finished</th><th>run / date</th><th>org</th><th>rows</th><th>files</th><th>duration</th><th>outcome</th><th>manifest</th></tr></thead><tbody>
{{range .Exports}}<tr class="export {{.Outcome}}">
<td>{{ago .At $.Now}}</td><td>{{if .RunID}}{{.RunID}}{{else}}{{.Date}}{{end}}</td><td>{{.OrgID}}</td><td class="rows">{{.Rows}}</td><td>{{.Files}}</td>
<td>{{ms .Duration}}</td><td class="outcome">{{.Outcome}}{{if .Error}}: {{.Error}}{{end}}</td>
<td>{{if .Manifest}}<a href="/manifest?key={{.Manifest}}&amp;job={{.Job}}">{{.Manifest}}</a>{{end}}</td></tr>
{{end}}</tbody></table>
{{else}}<p class="none">No exports since this process started.</p>{{end}}
</section>
{{end}}
</body></html>
`))

type statusJob struct {
	*config.Job
	Destination string // redacted: the page is unauthenticated
	Next        time.Time
	Backlog     int
	Exports     []Export
}

func (d *Daemon) serveStatus(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path != "/" {
		http.NotFound(w, r)
		return
	}
	now := d.Runner.now()
	data := struct {
		Version string
		Now     time.Time
		Jobs    []statusJob
	}{Version: d.Runner.Version, Now: now}
	for _, j := range d.Jobs {
		data.Jobs = append(data.Jobs, statusJob{Job: j, Destination: sinks.Redact(j.Destination), Next: j.Cron.Next(now.In(j.Location)),
			Backlog: d.Runner.Metrics.Backlog(j.Name), Exports: d.Runner.Metrics.History(j.Name)})
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
	i := slices.IndexFunc(d.Jobs, func(j *config.Job) bool { return j.Name == job })
	if i < 0 || !slices.ContainsFunc(d.Runner.Metrics.History(job), func(e Export) bool { return e.Manifest == key && key != "" }) {
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
