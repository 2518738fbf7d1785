package pipeline

import (
	"context"
	"errors"
	"fmt"
	"io"
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
	enc    encoder
	finish func() error
	rows   int64
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
	g.Go(func() error { return s.extract(ctx, fail, extracted) })
	g.Go(func() error { return s.transform(ctx, fail, extracted, fans) })
	for i, sk := range s.sinks {
		g.Go(func() error { return encode(ctx, fail, sk, fans[i]) })
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
	for {
		rec, err := s.rd.Next()
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
	for rec := range in {
		out, err := project(rec, s.schema, s.tfs)
		rec.Release()
		if err != nil {
			return fail(err)
		}
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
	}
	return nil
}

// encode writes every record of in to sk, then finishes it.
func encode(ctx context.Context, fail func(error) error, sk *sink, in <-chan arrow.Record) error {
	for rec := range in {
		err := sk.enc.Write(rec)
		sk.rows += rec.NumRows()
		rec.Release()
		if err != nil {
			return fail(err)
		}
	}
	if err := context.Cause(ctx); err != nil {
		return err
	}
	if err := sk.finish(); err != nil {
		return fail(err)
	}
	return nil
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
