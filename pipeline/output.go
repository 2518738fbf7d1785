package pipeline

import (
	"context"
	"fmt"

	"github.com/apache/arrow/go/v17/arrow"
	"github.com/apache/arrow/go/v17/arrow/array"

	"github.com/sellersnap/sellersnap/sinks"
)

// output is one format's files of a unit: a single file, or numbered parts
// when the job splits its output. It is the encoder the stages write to.
type output struct {
	format *sinks.Format
	parts  []*part // in order; the last one is open until Close
	rows   int64
	open   func(n int) (*part, error)
	split  bool
	maxRow int64
	maxLen int64
	// cols, when not nil, are the indices of the columns this format
	// writes (csv/ndjson/parquet include or exclude), schema their schema.
	cols   []int
	schema *arrow.Schema
	held   func() error // nil while the unit's lock is held
}

// part is one file being written.
type part struct {
	obj   *sinks.Object // at final, or its staged key (a replacing attempt)
	final string
	enc   sinks.Encoder // its Close flushes a compressed stream too, and does not close obj
	rows  int64
	// committed: parts that were full were committed as soon as they
	// ended, so that no more than one part per format is held open.
	committed bool
}

func (o *output) cur() *part { return o.parts[len(o.parts)-1] }

// Write encodes rec, ending the current part and starting the next where
// the limits say.
func (o *output) Write(rec arrow.Record) error {
	if o.cols != nil {
		arrs := make([]arrow.Array, len(o.cols))
		for i, c := range o.cols {
			arrs[i] = rec.Column(c)
		}
		rec = array.NewRecord(o.schema, arrs, rec.NumRows())
		defer rec.Release()
	}
	for off := int64(0); off < rec.NumRows(); {
		p := o.cur()
		if o.full(p) {
			if err := o.next(); err != nil {
				return err
			}
			p = o.cur()
		}
		n := rec.NumRows() - off
		if o.maxRow > 0 {
			n = min(n, o.maxRow-p.rows)
		}
		piece := rec
		if off > 0 || n < rec.NumRows() {
			piece = rec.NewSlice(off, off+n)
		}
		// A panic of the encoder (Arrow's Parquet writer when the disk
		// is full) fails the export naming the file, like an error.
		err := guard(func() error { return p.enc.Write(piece) })
		if _, ok := err.(*PanicError); ok {
			err = fmt.Errorf("%s: %w", o.format.Name(), cause(err, p.obj))
		}
		if piece != rec {
			piece.Release()
		}
		if err != nil {
			return err
		}
		p.rows += n
		o.rows += n
		off += n
	}
	return nil
}

func (o *output) full(p *part) bool {
	return o.maxRow > 0 && p.rows >= o.maxRow || o.maxLen > 0 && p.obj.Size() >= o.maxLen
}

// next finishes and commits the current part and opens the next one.
func (o *output) next() error {
	p := o.cur()
	if err := p.enc.Close(); err != nil {
		return err
	}
	if err := o.held(); err != nil {
		return err
	}
	if err := p.obj.Commit(); err != nil {
		return err
	}
	p.committed = true
	np, err := o.open(len(o.parts) + 1)
	if err != nil {
		return err
	}
	o.parts = append(o.parts, np)
	return nil
}

// Close finishes the last part; it is committed with the manifest. Its
// bytes are made durable here, in the format's own goroutine, so that the
// formats' syncs overlap with each other and with encoding still going on.
func (o *output) Close() error {
	p := o.cur()
	if err := p.enc.Close(); err != nil {
		return err
	}
	return p.obj.Sync()
}

// abort cancels every part not yet committed.
func (o *output) abort() {
	for _, p := range o.parts {
		p.obj.Abort() // no-op once committed
	}
}

// columnNames lists the columns of this format's files when they are a
// subset of the job's, else nil.
func (o *output) columnNames() []string {
	if o.schema == nil {
		return nil
	}
	names := make([]string, o.schema.NumFields())
	for i, f := range o.schema.Fields() {
		names[i] = f.Name
	}
	return names
}

// manifestFile describes part p, the k-th (from 0), for the manifest.
func (o *output) manifestFile(p *part, k int) ManifestFile {
	mf := ManifestFile{
		Format: o.format.Name(), Key: p.final, Rows: p.rows, Bytes: p.obj.Size(),
		SHA256: p.obj.SHA256(), ContentType: o.format.ContentType(), Compression: o.format.Compression(),
		Columns: o.columnNames(),
	}
	if o.split {
		mf.Part = k + 1
	}
	return mf
}

// committedKeys are the keys of the parts already committed.
func (o *output) committedKeys() []string {
	var keys []string
	for _, p := range o.parts {
		if p.committed {
			keys = append(keys, p.obj.Key())
		}
	}
	return keys
}

func (a *attempt) openOutput(ctx context.Context, f *sinks.Format, schema *arrow.Schema) (*output, error) {
	bucket, u := a.bucket, a.u
	job := u.job
	o := &output{format: f, split: job.Split(), maxRow: job.maxRows, maxLen: job.maxBytes,
		held: func() error { return u.stillHeld(ctx) }}
	if idx := job.selects[f.Name()]; idx != nil && len(idx) < schema.NumFields() {
		fields := make([]arrow.Field, len(idx))
		for i, c := range idx {
			fields[i] = schema.Field(c)
		}
		o.cols, o.schema = idx, arrow.NewSchema(fields, nil)
		schema = o.schema
	}
	o.open = func(n int) (*part, error) {
		key, err := u.key(f, n)
		if err != nil {
			return nil, err
		}
		okey := a.objectKey(key)
		if err := bucket.RemoveStaleTemp(ctx, okey); err != nil {
			return nil, err
		}
		obj, err := bucket.NewObject(ctx, okey, f.ContentType())
		if err != nil {
			return nil, err
		}
		var enc sinks.Encoder
		// Arrow's Parquet writer panics when it cannot write its header
		// (a nearly full disk): an error naming the key, like any other.
		err = guard(func() error {
			var err error
			enc, err = f.NewEncoder(obj, schema)
			return err
		})
		if err != nil {
			obj.Abort()
			return nil, fmt.Errorf("%s: start %s: %w", f.Name(), okey, cause(err, obj))
		}
		return &part{obj: obj, final: key, enc: enc}, nil
	}
	p, err := o.open(1)
	if err != nil {
		return nil, err
	}
	o.parts = []*part{p}
	return o, nil
}
