package pipeline

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"time"

	"github.com/apache/arrow/go/v17/arrow"
	"github.com/apache/arrow/go/v17/arrow/array"
	"golang.org/x/sync/errgroup"
)

// recordReader is a stream of Arrow records; *sources.Reader is one. The
// caller owns each record Next returns. Next returns io.EOF at the end.
type recordReader interface {
	Next() (arrow.Record, error)
}

// encoder writes records in one file format; sinks.CSV, sinks.NDJSON and
// sinks.Parquet are encoders. Close flushes without closing the writer.
type encoder interface {
	Write(arrow.Record) error
	Close() error
}

// sink is one encoder and the stream it writes into. finish flushes what
// the encoder and any compressor still hold; it does not commit anything.
type sink struct {
	name   string // the format, for the timings
	enc    encoder
	finish func() error
	rows   int64
	timing timing
}

// timing is where one stage's goroutine spent an export: working (for the
// extract stage that includes waiting for PostgreSQL's rows), waiting for
// a record from the stage before, and waiting for room in the stage after.
// A stage that waits for input is faster than the one before it; one
// that waits for room is faster than one after it.
type timing struct {
	work, waitIn, waitOut time.Duration
}

// since adds the time since *t0 to *d and moves *t0 to now.
func since(d *time.Duration, t0 *time.Time) {
	now := time.Now()
	*d += now.Sub(*t0)
	*t0 = now
}

func (t timing) attr(name string) slog.Attr {
	return slog.Group(name, "work", t.work.Round(time.Millisecond), "wait_in", t.waitIn.Round(time.Millisecond),
		"wait_out", t.waitOut.Round(time.Millisecond))
}

// stages is one export's stream: where it reads, how it transforms, and
// the sinks it writes to.
type stages struct {
	rd     recordReader
	schema *arrow.Schema     // the output schema: projection and renames
	tfs    []columnTransform // per column; nil entries (or nil) pass through
	sinks  []*sink
	// progress, if not nil, is called with the rows read so far at most
	// once per every.
	progress func(rows int64)
	every    time.Duration
	// Where the extract and transform stages spent the export.
	extractTiming, transformTiming timing
}

// timings are the stages' timings as log attributes, in stream order.
func (s *stages) timings() []any {
	out := []any{s.extractTiming.attr("extract"), s.transformTiming.attr("transform")}
	for _, sk := range s.sinks {
		out = append(out, sk.timing.attr(sk.name))
	}
	return out
}

// run streams the records through the stages
//
//	extract → transform → one encoder per sink
//
// Each stage runs in its own goroutine, closes its output channel when it
// ends and selects on ctx for every send. The first error cancels ctx
// (with that error as its cause), which stops every stage and, since the
// caller's blob writers hang off ctx, every upload. Channels hold one
// record: memory is bounded by the batch size times the number of stages,
// never by the size of the run. On return every record has been released.
func (s *stages) run(ctx context.Context, cancel context.CancelCauseFunc) error {
	var g errgroup.Group
	fail := func(err error) error {
		cancel(err)
		return err
	}
	extracted := make(chan arrow.Record, 1)
	fans := make([]chan arrow.Record, len(s.sinks))
	for i := range fans {
		fans[i] = make(chan arrow.Record, 1)
	}
	// A stage that panics fails the export like one that returns an
	// error: its deferred close runs, and the others are cancelled.
	stage := func(f func() error) func() error {
		return func() error {
			err := guard(f)
			if _, ok := err.(*PanicError); ok {
				return fail(err)
			}
			return err
		}
	}
	g.Go(stage(func() error { return s.extract(ctx, fail, extracted) }))
	g.Go(stage(func() error { return s.transform(ctx, fail, extracted, fans) }))
	for i, sk := range s.sinks {
		g.Go(stage(func() error { return encode(ctx, fail, sk, fans[i]) }))
	}
	err := g.Wait()
	// A stage that stopped early may have left records in a channel.
	for _, ch := range append([]chan arrow.Record{extracted}, fans...) {
		for rec := range ch {
			rec.Release()
		}
	}
	if cause := context.Cause(ctx); cause != nil {
		return cause
	}
	return err
}

// extract reads every record into out, then closes it.
func (s *stages) extract(ctx context.Context, fail func(error) error, out chan<- arrow.Record) error {
	defer close(out)
	var rows int64
	last := time.Now()
	t := &s.extractTiming
	t0 := time.Now()
	for {
		rec, err := s.rd.Next()
		since(&t.work, &t0)
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return fail(err)
		}
		rows += rec.NumRows()
		if s.progress != nil && time.Since(last) >= s.every {
			s.progress(rows)
			last = time.Now()
		}
		select {
		case out <- rec:
		case <-ctx.Done():
			rec.Release()
			return context.Cause(ctx)
		}
		since(&t.waitOut, &t0)
	}
}

// transform projects each record of in and sends it to every fan, then
// closes them.
func (s *stages) transform(ctx context.Context, fail func(error) error, in <-chan arrow.Record, fans []chan arrow.Record) error {
	defer func() {
		for _, ch := range fans {
			close(ch)
		}
	}()
	t := &s.transformTiming
	t0 := time.Now()
	for rec := range in {
		since(&t.waitIn, &t0)
		out, err := project(rec, s.schema, s.tfs)
		rec.Release()
		if err != nil {
			return fail(err)
		}
		since(&t.work, &t0)
		for _, ch := range fans {
			out.Retain()
			select {
			case ch <- out:
			case <-ctx.Done():
				out.Release()
				out.Release()
				return context.Cause(ctx)
			}
		}
		out.Release()
		since(&t.waitOut, &t0)
	}
	return nil
}

// encode writes every record of in to sk, then finishes it.
func encode(ctx context.Context, fail func(error) error, sk *sink, in <-chan arrow.Record) error {
	t := &sk.timing
	t0 := time.Now()
	for rec := range in {
		since(&t.waitIn, &t0)
		sk.rows += rec.NumRows()
		err := writeRecord(sk.enc, rec)
		since(&t.work, &t0)
		if err != nil {
			return fail(err)
		}
	}
	since(&t.waitIn, &t0)
	if err := context.Cause(ctx); err != nil {
		return err
	}
	err := sk.finish()
	since(&t.work, &t0)
	if err != nil {
		return fail(err)
	}
	return nil
}

// writeRecord writes rec and releases it, also when the encoder panics.
func writeRecord(enc encoder, rec arrow.Record) error {
	defer rec.Release()
	return enc.Write(rec)
}

// project is the transform stage: it gives rec the output schema (renamed
// columns) and applies the column transforms (tfs may be nil; masked and
// redacted columns). Other columns are shared, not copied.
func project(rec arrow.Record, schema *arrow.Schema, tfs []columnTransform) (arrow.Record, error) {
	if int(rec.NumCols()) != schema.NumFields() {
		return nil, fmt.Errorf("transform: record has %d columns, schema %d", rec.NumCols(), schema.NumFields())
	}
	for i, f := range schema.Fields() {
		if !arrow.TypeEqual(rec.Column(i).DataType(), f.Type) {
			return nil, fmt.Errorf("transform: column %q is %s, schema says %s", f.Name, rec.Column(i).DataType(), f.Type)
		}
	}
	cols := rec.Columns()
	var made []arrow.Array
	for i, tf := range tfs {
		if tf == nil {
			continue
		}
		if len(made) == 0 {
			cols = append([]arrow.Array(nil), cols...)
		}
		a, err := tf(cols[i])
		if err != nil {
			for _, m := range made {
				m.Release()
			}
			return nil, fmt.Errorf("transform: column %q: %w", schema.Field(i).Name, err)
		}
		cols[i] = a
		made = append(made, a)
	}
	out := array.NewRecord(schema, cols, rec.NumRows())
	for _, m := range made {
		m.Release() // the record holds its own reference
	}
	return out, nil
}
