package iceberg

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"path"
	"slices"
	"strings"
	"time"

	"github.com/google/uuid"

	"github.com/sellersnap/sellersnap/sinks"
)

// Options describe a table and where its files go.
type Options struct {
	Catalog *Catalog
	Ident   Ident
	// Bucket holds the table's files under KeyPrefix.
	Bucket    *sinks.Bucket
	KeyPrefix string
	// Location is KeyPrefix as readers name it (s3://bucket/iceberg/ns/t).
	Location string
	// Properties of a new table.
	Properties map[string]string
	// MergeMin: when this many manifests cover the same dates, the next
	// commit merges them into one. Default 16.
	MergeMin int
	// Retries of a commit that lost a race with another writer. Default 20.
	Retries int
	// Retention of snapshots; expiry is part of a commit.
	Retention Retention
	Logger    *slog.Logger
	// Now is the clock of snapshot timestamps and of expiry. Default: the
	// catalog database's clock, one for every replica, so that the
	// snapshot log stays in order (Java refuses metadata whose entries go
	// back more than a minute) whatever the replicas' clocks say.
	Now func() time.Time
}

// Table commits data files to one Iceberg table.
type Table struct {
	o     Options
	cache *fileCache
}

// Open returns the table described by o; nothing is read or written until
// Prepare or Commit.
func Open(o Options) (*Table, error) {
	if o.Catalog == nil || o.Bucket == nil || o.Location == "" || o.Ident.Namespace == "" || o.Ident.Table == "" {
		return nil, errors.New("iceberg: catalog, bucket, location, namespace and table are required")
	}
	o.KeyPrefix = strings.Trim(o.KeyPrefix, "/")
	o.Location = strings.TrimRight(o.Location, "/")
	o.MergeMin = cmp.Or(o.MergeMin, 16)
	o.Retries = cmp.Or(o.Retries, 20)
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	o.Properties = maps.Clone(o.Properties)
	if o.Properties == nil {
		o.Properties = map[string]string{}
	}
	return &Table{o: o, cache: newFileCache(64 << 20)}, nil
}

// Ident is the table's name in its catalog.
func (t *Table) Ident() Ident { return t.o.Ident }

// Location is the table's location.
func (t *Table) Location() string { return t.o.Location }

// key is the bucket key of a file of the table at loc; files outside the
// table's location are refused, whatever metadata names them.
func (t *Table) key(loc string) (string, error) {
	rest, ok := strings.CutPrefix(loc, t.o.Location+"/")
	if !ok || rest == "" || slices.Contains(strings.Split(rest, "/"), "..") {
		return "", fmt.Errorf("%s is not a file of the table at %s", loc, t.o.Location)
	}
	return path.Join(t.o.KeyPrefix, rest), nil
}

func (t *Table) loc(rel string) string { return t.o.Location + "/" + rel }

// dataFileLoc is the location of the table's file at bucket key key.
func (t *Table) dataFileLoc(key string) string {
	return t.loc(strings.TrimPrefix(strings.TrimPrefix(key, t.o.KeyPrefix), "/"))
}

// DataFileLocation is the location the table names its data file at
// bucket key key by.
func (t *Table) DataFileLocation(key string) string { return t.dataFileLoc(key) }

// FindSnapshot returns the snapshot of the table's current metadata whose
// summary has prop = value, or nil: whether a commit made with that
// property is the table's, after its outcome was unknown or its writer
// was killed.
func (t *Table) FindSnapshot(ctx context.Context, prop, value string) (*Snapshot, error) {
	md, _, err := t.head(ctx)
	if err != nil || md == nil {
		return nil, err
	}
	for _, s := range md.Snapshots {
		if s.Summary[prop] == value {
			return s, nil
		}
	}
	return nil, nil
}

// Live reads the table's current metadata (nil when the catalog has no
// such table) and the data files its current snapshot reads (a file live
// twice is listed in Twice, not an error).
func (t *Table) Live(ctx context.Context) (*Metadata, *Contents, error) {
	md, _, err := t.head(ctx)
	if err != nil || md == nil {
		return md, nil, err
	}
	c, err := readContents(md, func(loc string) ([]byte, error) {
		key, err := t.key(loc)
		if err != nil {
			return nil, err
		}
		return t.o.Bucket.ReadAll(ctx, key)
	}, false)
	if err != nil {
		return nil, nil, fmt.Errorf("iceberg table %s: %w", t.o.Ident, err)
	}
	return md, c, nil
}

// SnapshotOf returns md's snapshot id, nil if md does not keep it.
func (md *Metadata) SnapshotOf(id int64) *Snapshot { return md.snapshot(id) }

// head reads the table's current metadata through the catalog: nil when
// the catalog has no such table.
func (t *Table) head(ctx context.Context) (*Metadata, string, error) {
	loc, err := t.o.Catalog.Location(ctx, t.o.Ident)
	if err != nil || loc == "" {
		return nil, "", err
	}
	md, err := t.readMetadata(ctx, loc)
	return md, loc, err
}

func (t *Table) readMetadata(ctx context.Context, loc string) (*Metadata, error) {
	return readCached(ctx, t, loc, "metadata", func(b []byte) (*Metadata, error) {
		md, err := ParseMetadata(b)
		if err != nil {
			return nil, err
		}
		if strings.TrimRight(md.Location, "/") != t.o.Location {
			return nil, fmt.Errorf("the table is at %s, the job writes it at %s", md.Location, t.o.Location)
		}
		return md, nil
	})
}

// Create creates the table (a metadata file without snapshots) for p's
// layout if the catalog has no such table; it reports whether it did.
func (p *Plan) Create(ctx context.Context) (bool, error) {
	t := p.t
	tx, err := t.o.Catalog.begin(ctx, t.o.Ident)
	if err != nil {
		return false, err
	}
	defer tx.rollback(ctx)
	if tx.base != "" {
		return false, nil
	}
	nowMS := tx.nowMS
	if t.o.Now != nil {
		nowMS = t.o.Now().UnixMilli()
	}
	md := newMetadata(uuid.NewString(), t.o.Location, p.schema, maxFieldID(p.schema), p.spec, t.o.Properties, nowMS)
	data, err := md.Marshal()
	if err != nil {
		return false, err
	}
	last, err := t.freshVersion(ctx)
	if err != nil {
		return false, err
	}
	var written []string
	rel := fmt.Sprintf("metadata/%05d-%s.metadata.json", last+1, uuid.NewString())
	if err := t.put(ctx, rel, data, "application/json", &written); err != nil {
		return false, err
	}
	if err := tx.swap(ctx, t.loc(rel)); err != nil {
		if errors.Is(err, ErrConflict) {
			t.removeUnreferenced(ctx, written)
			return false, nil
		}
		return false, err
	}
	t.writeHint(ctx, last+1, data)
	return true, nil
}

// Status is a table's current state.
type Status struct {
	Ident     Ident
	Location  string
	Metadata  string // the catalog's metadata_location; "" when the table does not exist
	Snapshot  *Snapshot
	Snapshots int // kept in the metadata
	Schema    *Schema
	Spec      *Spec
	Retention Retention
}

// Status reads the table's current state through the catalog.
func (t *Table) Status(ctx context.Context) (*Status, error) {
	md, loc, err := t.head(ctx)
	if err != nil {
		return nil, err
	}
	st := &Status{Ident: t.o.Ident, Location: t.o.Location, Metadata: loc, Retention: t.o.Retention.withDefaults()}
	if md != nil {
		st.Snapshot, st.Snapshots, st.Schema, st.Spec = md.Current(), len(md.Snapshots), md.Schema(), md.Spec()
	}
	return st, nil
}
