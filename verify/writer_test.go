package verify

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestAnotherWriterNeverStopsTheJob: iceberg-go, as another writer of the
// job's table, sets a property, adds a column (rewriting the schema in its
// own spelling, decimal(5, 2)) and appends a row of its own. sellersnap's
// next commit (a rerun) succeeds under on_schema_change: evolve and keeps
// all of it, as iceberg-go reads the table; under fail it names the column
// and keeps the published export.
func TestAnotherWriterNeverStopsTheJob(t *testing.T) {
	e := newExport(t)
	tool := buildIcebergTool(t)
	dir := t.TempDir()
	cfg, _ := os.ReadFile(e.cfg)
	base := strings.Replace(string(cfg), "file://"+e.dir, "file://"+dir, 1)
	tableCfg := func(mode string) string {
		p := filepath.Join(t.TempDir(), mode+".yaml")
		os.WriteFile(p, []byte(base+fmt.Sprintf("    on_schema_change: %s\n    iceberg: {catalog: sql, uri: %q, namespace: verify, table: shared}\n", mode, e.dbURL)), 0o644)
		return p
	}
	evolve, fail := tableCfg("evolve"), tableCfg("fail")
	e.run(t, "once", "-config", evolve)

	if out, err := exec.Command(tool, "write", "-uri", e.dbURL, "-table", "verify.shared", "-set", "owner.team=analytics",
		"-add-column", "note", "-append", "org=other-writer,date=2026-01-01,run=iceberg-go,display_name=written by iceberg-go").CombinedOutput(); err != nil {
		t.Fatalf("iceberg-go as another writer: %v\n%s", err, out)
	}
	md := readHead(t, e)
	before := md.CurrentSchemaID
	if !strings.Contains(string(md.raw), `"decimal(5, 2)"`) {
		t.Logf("iceberg-go's schema does not spell decimal(5, 2) (this test then checks less): %s", md.raw)
	}

	ms := e.readManifests(t)
	run := ms[0]
	for _, m := range ms {
		if m.Rows > run.Rows {
			run = m
		}
	}
	cmd := exec.Command(e.bin, "rerun", "-config", fail, "-job", "new-sellers", "-run", run.RunID)
	out, err := cmd.CombinedOutput()
	if err == nil || !strings.Contains(string(out), "column note") {
		t.Errorf("rerun under on_schema_change: fail: %v, want a failure naming the column note:\n%s", err, out)
	}
	if strings.Contains(string(out), "decimal(5, 2) → decimal(5,2)") {
		t.Errorf("a type taken for another by its spelling:\n%s", out)
	}
	if out, err := exec.Command(e.bin, "rerun", "-config", evolve, "-job", "new-sellers", "-run", run.RunID).CombinedOutput(); err != nil {
		t.Fatalf("rerun under evolve: %v\n%s", err, out)
	}

	md = readHead(t, e)
	if md.Properties["owner.team"] != "analytics" {
		t.Errorf("properties %v: iceberg-go's owner.team dropped", md.Properties)
	}
	if md.CurrentSchemaID != before {
		t.Errorf("schema %d after sellersnap's commit, iceberg-go's was %d: sellersnap rewrote it", md.CurrentSchemaID, before)
	}
	ops := map[string]int{}
	for _, s := range md.Snapshots {
		ops[s.Summary["operation"]]++
	}
	if ops["overwrite"] != 1 {
		t.Errorf("snapshots %v: want the rerun's overwrite", ops)
	}
	head, cols, rows := icebergRead(t, tool, "-uri", e.dbURL, "-table", "verify.shared")
	if cols[len(cols)-1] != "note" {
		t.Errorf("columns %v: iceberg-go's note is not the last", cols)
	}
	perRun := map[string]int{}
	foreign, notes := 0, 0
	for _, r := range rows {
		perRun[r[len(cols)-2]]++
		if r[len(cols)-2] == "iceberg-go" && r[2] == "written by iceberg-go" {
			foreign++
		}
		if r[len(cols)-1] != "NULL" {
			notes++
		}
	}
	if notes > 0 {
		t.Errorf("a note in %d rows; nobody wrote one", notes)
	}
	if foreign != 1 {
		t.Errorf("iceberg-go's row read %d times, want once (snapshot %v)", foreign, head["summary"])
	}
	for _, m := range e.readManifests(t) {
		if int64(perRun[m.RunID]) != m.Rows {
			t.Errorf("run %s: %d rows in the table, its manifest says %d", m.RunID, perRun[m.RunID], m.Rows)
		}
	}
}

// buildIcebergTool builds verify/iceberg (iceberg-go as reader and writer).
func buildIcebergTool(t *testing.T) string {
	t.Helper()
	tool := filepath.Join(t.TempDir(), "iceberg-tool")
	if out, err := exec.Command("go", "build", "-C", "iceberg", "-o", tool, ".").CombinedOutput(); err != nil {
		t.Fatalf("build the iceberg-go tool: %v\n%s", err, out)
	}
	return tool
}

type headMetadata struct {
	raw             []byte
	CurrentSchemaID int               `json:"current-schema-id"`
	Properties      map[string]string `json:"properties"`
	Snapshots       []struct {
		Summary map[string]string `json:"summary"`
	} `json:"snapshots"`
}

// readHead reads the metadata the catalog names for verify.shared.
func readHead(t *testing.T, e *export) headMetadata {
	t.Helper()
	var loc string
	if err := e.pg.QueryRow(context.Background(), `SELECT metadata_location FROM iceberg_tables WHERE table_namespace = 'verify' AND table_name = 'shared'`).Scan(&loc); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(strings.TrimPrefix(loc, "file://"))
	if err != nil {
		t.Fatal(err)
	}
	md := headMetadata{raw: b}
	if err := json.Unmarshal(b, &md); err != nil {
		t.Fatal(err)
	}
	return md
}

// TestIcebergGoReadsARepairedTable: a table dropped from the catalog with
// its files purged is refused by the next export and rebuilt by
// repair-table from the exports' Parquet files; iceberg-go reads every
// run's rows from it, as many as each manifest says.
func TestIcebergGoReadsARepairedTable(t *testing.T) {
	e := newExport(t)
	tool := buildIcebergTool(t)
	dir := t.TempDir()
	cfg, _ := os.ReadFile(e.cfg)
	p := filepath.Join(t.TempDir(), "table.yaml")
	os.WriteFile(p, []byte(strings.Replace(string(cfg), "file://"+e.dir, "file://"+dir, 1)+
		fmt.Sprintf("    iceberg: {catalog: sql, uri: %q, namespace: verify, table: shared}\n", e.dbURL)), 0o644)
	e.run(t, "once", "-config", p)
	if _, err := e.pg.Exec(context.Background(), `DELETE FROM iceberg_tables WHERE table_name = 'shared'`); err != nil {
		t.Fatal(err)
	}
	os.RemoveAll(filepath.Join(dir, "iceberg"))
	if out, err := exec.Command(e.bin, "rerun", "-config", p, "-job", "new-sellers", "-run", e.manifests[0].RunID).CombinedOutput(); err == nil || !strings.Contains(string(out), "repair-table") {
		t.Fatalf("an export with the table dropped: %v, want it refused naming repair-table:\n%s", err, out)
	}
	out, err := exec.Command(e.bin, "repair-table", "-config", p, "-job", "new-sellers").CombinedOutput()
	if err != nil || !strings.Contains(string(out), "created table") {
		t.Fatalf("repair-table: %v\n%s", err, out)
	}
	_, cols, rows := icebergRead(t, tool, "-uri", e.dbURL, "-table", "verify.shared")
	perRun := map[string]int64{}
	for _, r := range rows {
		perRun[r[len(cols)-1]]++
	}
	for _, m := range e.readManifests(t) {
		if perRun[m.RunID] != m.Rows {
			t.Errorf("run %s: iceberg-go reads %d rows, its manifest says %d", m.RunID, perRun[m.RunID], m.Rows)
		}
	}
	if out, err := exec.Command(e.bin, "status", "-config", p, "-job", "new-sellers", "-verify", "-from", "2000-01-01").CombinedOutput(); err != nil {
		t.Errorf("status -verify after the repair: %v\n%s", err, out)
	}
}
