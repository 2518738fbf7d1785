package pipeline

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/sellersnap/sellersnap/sinks"
)

// ConflictError reports a manifest at a unit's key that another job wrote:
// two jobs (or two deployments) write the same keys. It is never taken for
// "already exported".
type ConflictError struct {
	Key      string
	Job      string // the job that looked
	OtherJob string // the job the manifest names ("" when it names none)
}

func (e *ConflictError) Error() string {
	return fmt.Sprintf("%s was written by job %q, not by job %q: two jobs write the same keys; give each its own path (e.g. with {job} in it)",
		e.Key, e.OtherJob, e.Job)
}

func isConflict(err error) bool {
	_, ok := errors.AsType[*ConflictError](err)
	return ok
}

// exported reports whether key, a unit's manifest, exists and was written
// by job. A manifest of another job is a *ConflictError; one that is not a
// manifest at all is an error too. A manifest once read is remembered, so a
// pass costs one HEAD per unit, as before, and one GET per unit and process.
func (r *Runner) exported(ctx context.Context, bucket *sinks.Bucket, job *Job, key string) (bool, error) {
	ok, err := bucket.Exists(ctx, key)
	if err != nil || !ok {
		return false, err
	}
	return r.owned(ctx, bucket, job, key, true)
}

// owned reports whether the manifest at key names job (false if it is
// gone); see exported. remember keeps the answer for the process (a
// reconciliation records it in the export state instead).
func (r *Runner) owned(ctx context.Context, bucket *sinks.Bucket, job *Job, key string, remember bool) (bool, error) {
	own := job.Name + "\x00" + bucket.URL() + "\x00" + key
	r.mu.Lock()
	_, seen := r.ownedKeys[own]
	r.mu.Unlock()
	if seen {
		return true, nil
	}
	data, err := bucket.ReadAll(ctx, key)
	if sinks.IsNotFound(err) {
		return false, nil // deleted since
	}
	if err != nil {
		return false, err
	}
	var m struct {
		Job string `json:"job"`
	}
	if err := json.Unmarshal(data, &m); err != nil {
		return false, fmt.Errorf("%s is not a manifest (%v); not counting the unit as exported", key, err)
	}
	if m.Job != job.Name {
		return false, &ConflictError{Key: key, Job: job.Name, OtherJob: m.Job}
	}
	if !remember {
		return true, nil
	}
	r.mu.Lock()
	if r.ownedKeys == nil {
		r.ownedKeys = map[string]struct{}{}
	}
	r.ownedKeys[own] = struct{}{}
	r.mu.Unlock()
	return true, nil
}
