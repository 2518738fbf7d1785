package config

import (
	"cmp"
	"regexp"
	"slices"
	"strings"
	"time"
)

// Iceberg is the Iceberg table a job commits its exports to.
type Iceberg struct {
	// Catalog is the catalog's kind: sql, a SQL catalog in PostgreSQL
	// (the tables of the Java JDBC catalog, pyiceberg and iceberg-go).
	// Required.
	Catalog string `yaml:"catalog"`
	// URI is the catalog database's connection string: a role that may
	// create and write the catalog's tables (never printed). Required.
	URI string `yaml:"uri"`
	// Name is the catalog's name (catalog_name). Default sellersnap.
	Name string `yaml:"name"`
	// Namespace of the table. Default sellersnap.
	Namespace string `yaml:"namespace"`
	// Table is the table's name. Required.
	Table string `yaml:"table"`
	// Warehouse is the folder of the job's destination bucket under which
	// the table lives (<warehouse>/<namespace>/<table>/{data,metadata}).
	// Default DefaultWarehouse.
	Warehouse string `yaml:"warehouse"`
	// SnapshotRetention: snapshots older than this expire, and the files
	// only they read are deleted (the table's own files, never the job's
	// exports), but for the newest KeepSnapshots. A duration of at least
	// 1m, or "forever" to keep every snapshot. Default 24h.
	SnapshotRetention string `yaml:"snapshot_retention"`
	// KeepSnapshots never expire, whatever their age. Default 10.
	KeepSnapshots int `yaml:"keep_snapshots"`

	// Resolved: Retention is SnapshotRetention, 0 for forever.
	Retention time.Duration `yaml:"-"`
}

// icebergName is what catalog, namespace and table names may be: they
// become keys of the bucket and identifiers in Spark and Trino.
var icebergName = regexp.MustCompile(`^[a-z_][a-z0-9_]{0,127}$`)

func (ic *Iceberg) check(p string, bad bad) {
	p += ".iceberg"
	switch ic.Catalog {
	case IcebergCatalogSQL:
	case "":
		bad(p+".catalog", "is required: sql (a SQL catalog in PostgreSQL)")
	default:
		bad(p+".catalog", "unknown catalog %q: want sql (a SQL catalog in PostgreSQL)", ic.Catalog)
	}
	if strings.TrimSpace(ic.URI) == "" {
		bad(p+".uri", "is required: the catalog database's connection string (e.g. ${ICEBERG_CATALOG_URL})")
	}
	ic.Name = cmp.Or(ic.Name, DefaultCatalogName)
	ic.Namespace = cmp.Or(ic.Namespace, DefaultNamespace)
	for field, v := range map[string]string{"name": ic.Name, "namespace": ic.Namespace, "table": ic.Table} {
		if v == "" {
			bad(p+"."+field, "is required")
		} else if !icebergName.MatchString(v) {
			bad(p+"."+field, "%q: want lowercase letters, digits and _, not starting with a digit", v)
		}
	}
	switch r := cmp.Or(ic.SnapshotRetention, DefaultSnapshotRetention); r {
	case "forever":
		ic.Retention = 0
	default:
		d, err := time.ParseDuration(r)
		if err != nil || d < time.Minute {
			bad(p+".snapshot_retention", "%q: want a duration of at least 1m (e.g. 24h, 168h), or forever", r)
		}
		ic.Retention = d
	}
	if ic.KeepSnapshots < 0 {
		bad(p+".keep_snapshots", "must be at least 1, got %d", ic.KeepSnapshots)
	}
	ic.KeepSnapshots = cmp.Or(ic.KeepSnapshots, DefaultKeepSnapshots)
	ic.Warehouse = strings.Trim(cmp.Or(ic.Warehouse, DefaultWarehouse), "/")
	switch {
	case strings.Contains(ic.Warehouse, "://"):
		bad(p+".warehouse", "%q: want a folder of the job's destination bucket (e.g. iceberg), not a URL", ic.Warehouse)
	case slices.Contains(strings.Split(ic.Warehouse, "/"), ".."), strings.ContainsAny(ic.Warehouse, "{}\\"):
		bad(p+".warehouse", "%q: want a plain folder name such as iceberg or lake/tables", ic.Warehouse)
	}
}
