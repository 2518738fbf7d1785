package pipeline

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"path"
	"slices"
	"strings"
	"time"

	"github.com/sellersnap/sellersnap/internal/failpoint"
	"github.com/sellersnap/sellersnap/internal/keys"
	"github.com/sellersnap/sellersnap/sinks"
	"github.com/sellersnap/sellersnap/sources"
)

// A rerun replaces a published export, and an output is never removed
// before its replacement is complete. So an attempt that replaces a
// manifest (a replacing attempt) writes its files beside the export, not
// over it, and keeps a record of what it is doing, the intent:
//
//  1. the intent, state "staging": the unit, the attempt, where its files go;
//  2. the files, under _sellersnap/<job>/staging/<attempt>/ (named .staged,
//     so no glob of the data matches them), the table's data file at its
//     own new key;
//  3. the intent, state "staged": every file's final key, size and sha256,
//     the new manifest, the replaced export's files to remove;
//  4. the table commit (its snapshot carries sellersnap.attempt);
//  5. each staged file moved to its key, the manifest, _SUCCESS, the
//     replaced export's files the new one has not;
//  6. the staging folder and the intent removed.
//
// A failure before 4 takes back 1–3: the published export is as it was.
// A failure from 4 on, or a kill anywhere, leaves the intent, which the
// unit's next attempt (and every pass, for units nothing else exports)
// settles under the unit's lock before anything else: a "staging"
// intent, or a "staged" one whose commit the table does not hold, is
// rolled back; a "staged" one whose commit the table holds (or without a
// table) is rolled forward, from where it stopped: a move is idempotent.
// status -verify names the units with an intent meanwhile.
const intentVersion = 1

// Intent states.
const (
	intentStaging = "staging"
	intentStaged  = "staged"
)

// intent is the record of a replacing attempt; see above.
type intent struct {
	IntentVersion int          `json:"intent_version"`
	State         string       `json:"state"`
	Attempt       string       `json:"attempt"`
	Unit          string       `json:"unit"` // the lock key
	Run           *sources.Run `json:"run,omitempty"`
	OrgID         string       `json:"org_id"`
	Date          string       `json:"date"`
	ManifestKey   string       `json:"manifest_key"`
	Staging       string       `json:"staging"` // the folder of the staged files
	// TableFile is the bucket key of the table's data file ("" without a
	// table); TableRows and TableBytes describe it.
	TableFile  string `json:"table_file,omitempty"`
	TableRows  int64  `json:"table_rows,omitempty"`
	TableBytes int64  `json:"table_bytes,omitempty"`
	Table      bool   `json:"table"`
	// Staged (state staged): the files to move, the replaced export's
	// files to remove, the new manifest less its table snapshot.
	Moves    []stagedMove    `json:"moves,omitempty"`
	Remove   []string        `json:"remove,omitempty"`
	Manifest json.RawMessage `json:"manifest,omitempty"`
	At       time.Time       `json:"at"`
}

// stagedMove is a staged file and its final key.
type stagedMove struct {
	From   string `json:"from"`
	To     string `json:"to"`
	Bytes  int64  `json:"bytes"`
	SHA256 string `json:"sha256"`
}

// intentDir is where a job's intents live, in the folder readers skip.
func intentDir(job *Job) string {
	return path.Join(job.Layout.Prefix(), "_sellersnap", job.Name, "intents") + "/"
}

// intentKey is the key of u's intent.
func intentKey(u unit) string {
	return intentDir(u.job) + keys.Escape(u.lockKey()) + ".json"
}

// stagingDir is the folder of an attempt's staged files.
func stagingDir(job *Job, attempt string) string {
	return path.Join(job.Layout.Prefix(), "_sellersnap", job.Name, "staging", attempt) + "/"
}

// newAttemptID names an attempt: in its staging folder and in its table
// snapshot's summary.
func newAttemptID() string {
	var b [8]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// objectKey is where the attempt writes the file whose key is final.
func (a *attempt) objectKey(final string) string {
	if a.in == nil {
		return final
	}
	return a.in.Staging + strings.TrimPrefix(final, a.u.job.Layout.Prefix()) + ".staged"
}

// readIntent reads the intent at key; nil when there is none.
func readIntent(ctx context.Context, bucket *sinks.Bucket, key string) (*intent, error) {
	data, err := bucket.ReadAll(ctx, key)
	if sinks.IsNotFound(err) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var in intent
	if err := json.Unmarshal(data, &in); err != nil {
		return nil, fmt.Errorf("%s: not an intent record: %w", key, err)
	}
	if in.IntentVersion != intentVersion || in.Attempt == "" || in.ManifestKey == "" || !strings.HasSuffix(in.Staging, "/") {
		return nil, fmt.Errorf("%s: intent record of version %d with attempt %q, manifest %q: not one this version settles",
			key, in.IntentVersion, in.Attempt, in.ManifestKey)
	}
	return &in, nil
}

// putIntent records the attempt's intent, under the unit's lock.
func (a *attempt) putIntent(ctx context.Context) error {
	data, err := json.MarshalIndent(a.in, "", "  ")
	if err != nil {
		return err
	}
	if err := a.u.stillHeld(ctx); err != nil {
		return err
	}
	return a.bucket.Put(ctx, intentKey(a.u), append(data, '\n'), "application/json", nil)
}

// replacing starts a replacing attempt when a manifest is at the unit's
// key: the intent, state staging. Without one the attempt writes the
// final keys itself.
func (a *attempt) replacing(ctx context.Context) error {
	data, err := a.bucket.ReadAll(ctx, a.mkey)
	if sinks.IsNotFound(err) {
		return nil
	}
	if err != nil {
		return err
	}
	a.old = &Manifest{}
	if err := json.Unmarshal(data, a.old); err != nil {
		a.old = &Manifest{} // replaced all the same; none of its files is known
	}
	u := a.u
	a.in = &intent{IntentVersion: intentVersion, State: intentStaging, Attempt: a.id, Unit: u.lockKey(), Run: u.run,
		OrgID: u.orgID, Date: u.date, ManifestKey: a.mkey, Staging: stagingDir(u.job, a.id), Table: u.job.table != nil, At: a.r.now().UTC()}
	return nil
}

// staged records the staged files and the new manifest m (less its
// table snapshot) in the intent: from here on the attempt can be
// finished by another process.
func (a *attempt) staged(ctx context.Context, m *Manifest) error {
	in := a.in
	in.State, in.Moves = intentStaged, nil
	keep := map[string]bool{}
	for _, f := range m.Files {
		keep[f.Key] = true
		in.Moves = append(in.Moves, stagedMove{From: a.objectKey(f.Key), To: f.Key, Bytes: f.Bytes, SHA256: f.SHA256})
	}
	in.Remove = nil
	for _, f := range a.old.Files {
		if !keep[f.Key] && f.Key != "" {
			in.Remove = append(in.Remove, f.Key)
		}
	}
	if a.table != nil {
		in.TableFile, in.TableRows, in.TableBytes = a.table.obj.Key(), a.table.rows, a.table.obj.Size()
	}
	var err error
	if in.Manifest, err = m.encode(); err != nil {
		return fmt.Errorf("encode manifest: %w", err)
	}
	if err := a.putIntent(ctx); err != nil {
		return err
	}
	failpoint.Hit("after-intent")
	return nil
}

// errBetween wraps a failure that leaves the unit between its two
// exports: its intent stays, and the next attempt settles it.
func (a *attempt) errBetween(err error) error {
	return fmt.Errorf("%w; the unit is between two exports: the next pass finishes it (intent %s)", err, intentKey(a.u))
}

// rollForward finishes a staged intent whose table commit (if any) is the
// table's, m its manifest: the moves, the manifest, _SUCCESS, the removal
// of the replaced export's other files, the staging folder and the
// intent. It returns the manifest's bytes. Doing it again after a
// failure is safe.
func (a *attempt) rollForward(ctx context.Context, m *Manifest) ([]byte, error) {
	bucket, in := a.bucket, a.in
	for i, mv := range in.Moves {
		if i > 0 {
			failpoint.Hit("between-moves")
		}
		if err := a.u.stillHeld(ctx); err != nil {
			return nil, err
		}
		// Temporary files beside the key are a killed holder's.
		if err := bucket.RemoveStaleTemp(ctx, mv.To); err != nil {
			return nil, a.errBetween(err)
		}
		moved, err := bucket.Move(ctx, mv.From, mv.To)
		if err != nil {
			return nil, a.errBetween(err)
		}
		if !moved { // moved before: the key must hold the file
			size, err := bucket.Size(ctx, mv.To)
			if err != nil || size != mv.Bytes {
				return nil, a.errBetween(fmt.Errorf("staged file %s is gone and %s does not hold its %d bytes (%d, %v)", mv.From, mv.To, mv.Bytes, size, err))
			}
		}
	}
	data, err := m.encode()
	if err != nil {
		return nil, fmt.Errorf("encode manifest: %w", err)
	}
	if err := a.u.stillHeld(ctx); err != nil {
		return nil, err
	}
	// _SUCCESS (the replaced export's, or anew) before the manifest, as
	// for any export.
	if err := bucket.Put(ctx, a.u.job.Layout.Success(a.mkey), nil, "application/octet-stream", nil); err != nil {
		return nil, a.errBetween(err)
	}
	failpoint.Hit("before-manifest")
	if err := bucket.Put(ctx, a.mkey, data, "application/json", nil); err != nil {
		return nil, a.errBetween(err)
	}
	for _, k := range in.Remove {
		if err := bucket.Delete(ctx, k); err != nil {
			return nil, a.errBetween(err)
		}
	}
	a.dropIntent(ctx)
	return data, nil
}

// rollBack takes back a replacing attempt whose table commit is not the
// table's: the staged files, the table's data file, the intent. The
// published export was never touched.
func (a *attempt) rollBack(ctx context.Context) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
	defer cancel()
	if err := a.u.stillHeld(ctx); err != nil {
		a.r.logger().Warn("could not take back the failed rerun (lock not held); its next attempt does", append(a.u.logAttrs(), "err", err)...)
		return
	}
	if a.in.TableFile != "" {
		if err := a.bucket.Delete(ctx, a.in.TableFile); err != nil {
			a.r.logger().Warn("could not remove the table data file of a failed rerun; its next attempt does", append(a.u.logAttrs(), "err", err)...)
			return
		}
	}
	a.dropIntent(ctx)
}

// dropIntent removes the staging folder, then the intent.
func (a *attempt) dropIntent(ctx context.Context) {
	err := a.bucket.RemoveTree(ctx, a.in.Staging)
	if err == nil {
		err = a.bucket.Delete(ctx, intentKey(a.u))
	}
	if err != nil {
		a.r.logger().Warn("could not remove a rerun's staging folder or intent; the unit's next attempt does", append(a.u.logAttrs(), "err", err)...)
	}
}

// settle finishes or takes back the intent a replacing attempt of u left
// (killed, or failed between its two exports), under u's lock. It returns
// the manifest when it rolled forward, nil when there was nothing to
// settle or it rolled back.
func (a *attempt) settle(ctx context.Context) (*Manifest, error) {
	r, u := a.r, a.u
	in, err := readIntent(ctx, a.bucket, intentKey(u))
	if err != nil || in == nil {
		return nil, err
	}
	a.in, a.id, a.mkey = in, in.Attempt, in.ManifestKey
	forward := in.State == intentStaged
	var m Manifest
	if forward {
		if err := json.Unmarshal(in.Manifest, &m); err != nil {
			return nil, fmt.Errorf("%s: its manifest: %w", intentKey(u), err)
		}
		if in.Table {
			if forward, err = a.findCommit(ctx, &m, in.TableFile, in.TableRows, in.TableBytes); err != nil {
				return nil, fmt.Errorf("settle %s: %w", intentKey(u), err)
			}
		}
	}
	if !forward {
		a.rollBack(ctx)
		r.logger().Warn("a rerun stopped before its table commit was taken back; the published export is kept",
			append(u.logAttrs(), "attempt", in.Attempt, "state", in.State)...)
		return nil, nil
	}
	start := time.Now()
	// schema.json as it is (a read that fails leaves the intent for the
	// next pass: recorded from nothing, its history would be lost).
	current, err := readSchema(ctx, a.bucket, u.job)
	if err != nil {
		return nil, err
	}
	if _, err := a.rollForward(ctx, &m); err != nil {
		return nil, err
	}
	r.logger().Warn("a rerun stopped after its table commit was finished", append(u.logAttrs(), "attempt", in.Attempt, "manifest", a.mkey)...)
	a.after(ctx, &m, current, time.Since(start))
	return &m, nil
}

// findCommit reports whether the table holds the attempt's commit, and
// records its snapshot in m when it does: the commit's data file at
// bucket key file, of rows rows and size bytes.
func (a *attempt) findCommit(ctx context.Context, m *Manifest, file string, rows, size int64) (bool, error) {
	u := a.u
	tb, err := a.r.table(ctx, u.job)
	if err != nil {
		return false, &TableError{Job: u.job.Name, Err: err}
	}
	snap, err := tb.FindSnapshot(ctx, attemptProp, a.id)
	if err != nil || snap == nil {
		return false, err
	}
	cfg := u.job.table.cfg
	m.Table = &ManifestTable{Catalog: cfg.Name, Namespace: cfg.Namespace, Name: cfg.Table, SnapshotID: snap.ID,
		Operation: snap.Summary["operation"], Rows: rows}
	if rows > 0 {
		m.Table.DataFile, m.Table.Bytes = tb.DataFileLocation(file), size
	}
	return true, nil
}

// attemptProp is the summary property of a table snapshot naming the
// attempt that committed it.
const attemptProp = "sellersnap.attempt"

// pendingIntents lists the intents of job's units.
func pendingIntents(ctx context.Context, bucket *sinks.Bucket, job *Job) ([]*intent, error) {
	objs, err := bucket.List(ctx, intentDir(job), ".json")
	if err != nil {
		return nil, err
	}
	var out []*intent
	var errs []error
	for _, o := range objs {
		in, err := readIntent(ctx, bucket, o.Key)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if in != nil {
			out = append(out, in)
		}
	}
	slices.SortFunc(out, func(x, y *intent) int { return strings.Compare(x.Unit, y.Unit) })
	return out, errors.Join(errs...)
}

// unit is the unit an intent is of.
func (in *intent) unit(job *Job) unit {
	if in.Run != nil {
		return newRunUnit(job, *in.Run)
	}
	return newOrgUnit(job, in.OrgID, in.Date)
}
