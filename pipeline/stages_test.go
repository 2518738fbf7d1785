package pipeline

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/apache/arrow/go/v17/arrow"
	"github.com/apache/arrow/go/v17/arrow/array"
	"github.com/apache/arrow/go/v17/arrow/memory"

	"github.com/sellersnap/sellersnap/sinks"
)

// fakeReader yields n records of 100 rows, then err (io.EOF for a clean end).
// A fake is fine here: it only injects faults into the stages.
type fakeReader struct {
	mem    memory.Allocator
	schema *arrow.Schema
	n      int
	err    error
	before func(i int) // called before record i is produced
	i      int
}

func (f *fakeReader) Next() (arrow.Record, error) {
	if f.i == f.n {
		return nil, f.err
	}
	if f.before != nil {
		f.before(f.i)
	}
	f.i++
	b := array.NewRecordBuilder(f.mem, f.schema)
	defer b.Release()
	for r := 0; r < 100; r++ {
		b.Field(0).(*array.Int64Builder).Append(int64(f.i*100 + r))
		b.Field(1).(*array.StringBuilder).Append("row")
	}
	return b.NewRecord(), nil
}

var stageSchema = arrow.NewSchema([]arrow.Field{
	{Name: "n", Type: arrow.PrimitiveTypes.Int64},
	{Name: "s", Type: arrow.BinaryTypes.String},
}, nil)

type failingWriter struct{ after int }

func (w *failingWriter) Write(p []byte) (int, error) {
	if w.after <= 0 {
		return 0, errors.New("disk full")
	}
	w.after--
	return len(p), nil
}

// panickingWriter panics on its first write, as Arrow's Parquet writer does
// when it cannot write its magic number (a nearly full disk).
type panickingWriter struct{}

func (panickingWriter) Write([]byte) (int, error) { panic("failed to write magic number") }

func newSinks(t *testing.T, w ...io.Writer) []*sink {
	var out []*sink
	for i, wr := range w {
		var enc encoder
		var err error
		switch i % 3 {
		case 0:
			enc, err = sinks.NewCSV(wr, stageSchema, sinks.CSVOptions{})
		case 1:
			enc, err = sinks.NewNDJSON(wr, stageSchema)
		default:
			enc, err = sinks.NewParquet(wr, stageSchema, sinks.ParquetOptions{})
		}
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, &sink{enc: enc, finish: enc.Close})
	}
	return out
}

func TestStages(t *testing.T) {
	boom := errors.New("source broke")
	for _, tc := range []struct {
		name    string
		records int
		readErr error
		writers func() []io.Writer
		cancel  bool
		want    error
		wantMsg string
	}{
		{name: "clean", records: 50, readErr: io.EOF},
		{name: "empty", records: 0, readErr: io.EOF},
		{name: "source error midway", records: 20, readErr: boom, want: boom},
		{name: "encoder error midway", records: 2000, readErr: io.EOF, writers: func() []io.Writer {
			return []io.Writer{&bytes.Buffer{}, &failingWriter{after: 2}, &bytes.Buffer{}}
		}, wantMsg: "disk full"},
		{name: "encoder error at flush", records: 5, readErr: io.EOF, writers: func() []io.Writer {
			return []io.Writer{&failingWriter{after: 0}, &bytes.Buffer{}, &bytes.Buffer{}}
		}, wantMsg: "disk full"},
		{name: "encoder panics", records: 2000, readErr: io.EOF, writers: func() []io.Writer {
			return []io.Writer{&bytes.Buffer{}, &bytes.Buffer{}, panickingWriter{}}
		}, wantMsg: "panic in export: failed to write magic number"},
		{name: "cancelled", records: 1000, readErr: io.EOF, cancel: true, want: context.Canceled},
	} {
		t.Run(tc.name, func(t *testing.T) {
			mem := memory.NewCheckedAllocator(memory.NewGoAllocator())
			defer mem.AssertSize(t, 0)
			parent, stop := context.WithCancel(context.Background())
			defer stop()
			ctx, cancel := context.WithCancelCause(parent)
			defer cancel(nil)
			rd := &fakeReader{mem: mem, schema: stageSchema, n: tc.records, err: tc.readErr}
			if tc.cancel {
				rd.before = func(i int) {
					if i == 10 {
						stop()
					}
				}
			}
			writers := []io.Writer{&bytes.Buffer{}, &bytes.Buffer{}, &bytes.Buffer{}}
			if tc.writers != nil {
				writers = tc.writers()
			}
			ss := newSinks(t, writers...)
			st := &stages{rd: rd, schema: stageSchema, sinks: ss}
			err := st.run(ctx, cancel)
			switch {
			case tc.want != nil:
				if !errors.Is(err, tc.want) {
					t.Fatalf("err = %v, want %v", err, tc.want)
				}
			case tc.wantMsg != "":
				if err == nil || !bytes.Contains([]byte(err.Error()), []byte(tc.wantMsg)) {
					t.Fatalf("err = %v, want %q", err, tc.wantMsg)
				}
			default:
				if err != nil {
					t.Fatal(err)
				}
				for _, s := range ss {
					if s.rows != int64(tc.records*100) {
						t.Errorf("sink wrote %d rows, want %d", s.rows, tc.records*100)
					}
				}
			}
			if err != nil && ctx.Err() == nil {
				t.Error("a failed run did not cancel its context (uploads would go on)")
			}
		})
	}
}

func TestProjectRejectsMismatchedRecords(t *testing.T) {
	mem := memory.NewCheckedAllocator(memory.NewGoAllocator())
	defer mem.AssertSize(t, 0)
	rd := &fakeReader{mem: mem, schema: stageSchema, n: 1}
	rec, _ := rd.Next()
	defer rec.Release()
	other := arrow.NewSchema([]arrow.Field{{Name: "n", Type: arrow.PrimitiveTypes.Int32}, {Name: "s", Type: arrow.BinaryTypes.String}}, nil)
	if _, err := project(rec, other, nil); err == nil {
		t.Fatal("type mismatch accepted")
	}
}

// slowEncoder takes d per record: an encoder slower than the rest.
type slowEncoder struct{ d time.Duration }

func (e slowEncoder) Write(arrow.Record) error { time.Sleep(e.d); return nil }
func (slowEncoder) Close() error               { return nil }

// TestStageTimingsShowTheSlowestStage: with one slow sink, the timings say
// that sink worked while the others and the extract stage waited for it.
func TestStageTimingsShowTheSlowestStage(t *testing.T) {
	ctx, cancel := context.WithCancelCause(context.Background())
	defer cancel(nil)
	rd := &fakeReader{mem: memory.NewGoAllocator(), schema: stageSchema, n: 20, err: io.EOF}
	ss := newSinks(t, &bytes.Buffer{}, &bytes.Buffer{})
	ss[0].name, ss[1].name = "csv", "ndjson"
	ss = append(ss, &sink{name: "slow", enc: slowEncoder{20 * time.Millisecond}, finish: func() error { return nil }})
	st := &stages{rd: rd, schema: stageSchema, sinks: ss}
	if err := st.run(ctx, cancel); err != nil {
		t.Fatal(err)
	}
	if w := ss[2].timing.work; w < 20*20*time.Millisecond {
		t.Errorf("slow sink worked %v, want ≥ 400ms", w)
	}
	if w := ss[0].timing.waitIn; w < 200*time.Millisecond {
		t.Errorf("fast sink waited %v for records, want most of the slow sink's 400ms", w)
	}
	if w := st.extractTiming.waitOut; w < 200*time.Millisecond {
		t.Errorf("extract waited %v for room, want most of the slow sink's 400ms", w)
	}
	var got []string
	for _, a := range st.timings() {
		got = append(got, a.(slog.Attr).Key)
	}
	if want := "extract transform csv ndjson slow"; strings.Join(got, " ") != want {
		t.Errorf("timings %q, want %q", got, want)
	}
}
