package pipeline

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"

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

// ownership remembers the manifests read and found to be a job's, for
// the process: a unit's manifest once read costs a HEAD per pass, not a
// GET.
type ownership struct {
	mu   sync.Mutex
	keys map[string]struct{} // job, bucket URL and key
}

// exported reports whether key, a unit's manifest, exists and was written
// by job. A manifest of another job is a *ConflictError; one that is not a
// manifest at all is an error too. A manifest once read is remembered, so a
// pass costs one HEAD per unit, as before, and one GET per unit and process.
func (ow *ownership) exported(ctx context.Context, bucket *sinks.Bucket, job *Job, key string) (bool, error) {
	ok, err := bucket.Exists(ctx, key)
	if err != nil || !ok {
		return false, err
	}
	return ow.owned(ctx, bucket, job, key, true)
}

// owned reports whether the manifest at key names job (false if it is
// gone); see exported. remember keeps the answer for the process (a
// reconciliation records it in the export state instead).
func (ow *ownership) owned(ctx context.Context, bucket *sinks.Bucket, job *Job, key string, remember bool) (bool, error) {
	own := job.Name + "\x00" + bucket.URL() + "\x00" + key
	ow.mu.Lock()
	_, seen := ow.keys[own]
	ow.mu.Unlock()
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
	ow.mu.Lock()
	if ow.keys == nil {
		ow.keys = map[string]struct{}{}
	}
	ow.keys[own] = struct{}{}
	ow.mu.Unlock()
	return true, nil
}
