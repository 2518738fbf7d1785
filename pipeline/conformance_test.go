package pipeline_test

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/storage/azblob"
	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/fsouza/fake-gcs-server/fakestorage"
	"github.com/johannesboyne/gofakes3"
	"github.com/johannesboyne/gofakes3/backend/s3mem"
	"gocloud.dev/blob"
	_ "gocloud.dev/blob/azureblob"
	_ "gocloud.dev/blob/gcsblob"
	_ "gocloud.dev/blob/s3blob"

	"github.com/sellersnap/sellersnap/internal/pgtest"
	"github.com/sellersnap/sellersnap/internal/pipelinetest"
	"github.com/sellersnap/sellersnap/pipeline"
	"github.com/sellersnap/sellersnap/sinks"
	"github.com/sellersnap/sellersnap/sources"
)

// bucketDriver is one place exports can go, served on loopback by a real
// implementation of its protocol where it is remote.
type bucketDriver struct {
	name string
	// open returns the destination URL and, for file://, its directory.
	open func(t *testing.T) (dest, dir string)
	// read, when set, reads an object through the server's own API.
	read func(key string) ([]byte, error)
	// ifNotExist says whether create-only writes are enforced.
	ifNotExist bool
}

// azuriteContainers numbers the containers of the shared Azurite server.
var azuriteContainers atomic.Int64

func bucketDrivers() []bucketDriver {
	var gcs *fakestorage.Server
	drivers := []bucketDriver{
		{name: "mem", ifNotExist: true, open: func(t *testing.T) (string, string) { return "mem://", "" }},
		{name: "file", ifNotExist: true, open: func(t *testing.T) (string, string) {
			dir := t.TempDir()
			return "file://" + dir, dir
		}},
		{name: "s3", ifNotExist: true, open: func(t *testing.T) (string, string) {
			backend := s3mem.New()
			if err := backend.CreateBucket("snap"); err != nil {
				t.Fatal(err)
			}
			srv := httptest.NewServer(gofakes3.New(backend).Server())
			t.Cleanup(srv.Close)
			t.Setenv("AWS_ACCESS_KEY_ID", "test")
			t.Setenv("AWS_SECRET_ACCESS_KEY", "test")
			t.Setenv("AWS_EC2_METADATA_DISABLED", "true")
			return "s3://snap?region=us-east-1&use_path_style=true&endpoint=" + srv.URL, ""
		}},
		{name: "azure", ifNotExist: true, open: func(t *testing.T) (string, string) {
			port := startAzurite(t)
			conn := fmt.Sprintf("DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey=%s;BlobEndpoint=http://127.0.0.1:%d/devstoreaccount1;", azuriteKey, port)
			client, err := azblob.NewClientFromConnectionString(conn, nil)
			if err != nil {
				t.Fatal(err)
			}
			container := fmt.Sprintf("snap%d", azuriteContainers.Add(1))
			if _, err := client.CreateContainer(context.Background(), container, nil); err != nil {
				t.Fatal(err)
			}
			t.Setenv("AZURE_STORAGE_CONNECTION_STRING", conn)
			return "azblob://" + container, ""
		}},
		{name: "gcs", ifNotExist: true, read: func(key string) ([]byte, error) {
			// The storage client downloads through the XML API host, which
			// this in-process emulator does not serve; writes, listings and
			// attributes go through the driver as in production.
			obj, err := gcs.GetObject("snap", key)
			return obj.Content, err
		}, open: func(t *testing.T) (string, string) {
			srv, err := fakestorage.NewServerWithOptions(fakestorage.Options{Scheme: "http", Host: "127.0.0.1", Port: 0})
			if err != nil {
				t.Fatal(err)
			}
			gcs = srv
			t.Cleanup(srv.Stop)
			srv.CreateBucketWithOpts(fakestorage.CreateBucketOpts{Name: "snap"})
			t.Setenv("STORAGE_EMULATOR_HOST", strings.TrimPrefix(srv.URL(), "http://"))
			return "gs://snap", ""
		}},
	}
	// A real S3 server (MinIO, versitygw) on loopback, started by make
	// test-minio: SELLERSNAP_TEST_S3_ENDPOINT, AWS_ACCESS_KEY_ID and
	// AWS_SECRET_ACCESS_KEY.
	if endpoint := os.Getenv("SELLERSNAP_TEST_S3_ENDPOINT"); endpoint != "" {
		drivers = append(drivers, bucketDriver{name: "s3-external", ifNotExist: true, open: func(t *testing.T) (string, string) {
			name := fmt.Sprintf("snap-%d", time.Now().UnixNano())
			client := s3.New(s3.Options{Region: "us-east-1", BaseEndpoint: aws.String(endpoint), UsePathStyle: true,
				Credentials: credentials.NewStaticCredentialsProvider(os.Getenv("AWS_ACCESS_KEY_ID"), os.Getenv("AWS_SECRET_ACCESS_KEY"), "")})
			if _, err := client.CreateBucket(context.Background(), &s3.CreateBucketInput{Bucket: aws.String(name)}); err != nil {
				t.Fatal(err)
			}
			t.Setenv("AWS_EC2_METADATA_DISABLED", "true")
			return "s3://" + name + "?region=us-east-1&use_path_style=true&endpoint=" + endpoint, ""
		}})
	}
	return drivers
}

// TestBucketConformance runs the whole export against every driver.
func TestBucketConformance(t *testing.T) {
	for _, d := range bucketDrivers() {
		t.Run(d.name, func(t *testing.T) {
			dest, dir := d.open(t)
			f := newFixtureAt(t, dest, dir, "    csv: {compression: gzip}\n")
			f.ReadObject = d.read
			ctx := context.Background()
			bucket, err := f.Runner.Bucket(ctx, dest)
			if err != nil {
				t.Fatal(err)
			}

			res, err := f.Runner.Once(ctx, f.Job("new-sellers"))
			if err != nil || len(res.Exported) != 10 {
				t.Fatalf("once: %d exported, %v", len(res.Exported), err)
			}
			files := f.Files()
			wantTypes := map[string]string{"csv": "application/gzip", "ndjson": "application/x-ndjson", "parquet": "application/vnd.apache.parquet"}
			wantExt := map[string]string{"csv": ".csv.gz", "ndjson": ".ndjson", "parquet": ".parquet"}
			for _, m := range res.Exported {
				for _, mf := range m.Files {
					data, ok := files[mf.Key]
					if !ok {
						t.Fatalf("%s is in the manifest, not in the bucket", mf.Key)
					}
					sum := sha256.Sum256(data)
					if hex.EncodeToString(sum[:]) != mf.SHA256 || int64(len(data)) != mf.Bytes {
						t.Errorf("%s: bytes or sha256 differ from the manifest", mf.Key)
					}
					ct, err := bucket.ContentType(ctx, mf.Key)
					if d.name != "file" && (err != nil || !strings.HasPrefix(ct, wantTypes[mf.Format])) {
						// file:// buckets keep no attributes (metadata=skip): no check.
						t.Errorf("%s: content type %q, want %q (%v)", mf.Key, ct, wantTypes[mf.Format], err)
					}
					if !strings.HasSuffix(mf.Key, wantExt[mf.Format]) || mf.ContentType != wantTypes[mf.Format] {
						t.Errorf("%s: extension or manifest content type %q", mf.Key, mf.ContentType)
					}
				}
				if _, ok := files[path.Dir(m.Files[0].Key)+"/manifest.json"]; !ok {
					t.Errorf("no manifest beside %s", m.Files[0].Key)
				}
				if b, ok := files[path.Dir(m.Files[0].Key)+"/"+pipeline.SuccessName]; !ok || len(b) != 0 {
					t.Errorf("no empty _SUCCESS beside %s", m.Files[0].Key)
				}
			}
			// latest.json per org names the manifest of its newest run.
			newest := map[string]*pipeline.Manifest{}
			for _, m := range res.Exported {
				if n := newest[m.OrgID]; n == nil || m.Snapshot.RunCompletedAt.After(*n.Snapshot.RunCompletedAt) {
					newest[m.OrgID] = m
				}
			}
			for org, m := range newest {
				var l pipeline.Latest
				b := files["sellers/new/org="+org+"/latest.json"]
				if err := json.Unmarshal(b, &l); err != nil || l.RunID != m.RunID || l.Manifest != path.Dir(m.Files[0].Key)+"/manifest.json" {
					t.Errorf("org %s: latest.json %s (%v), want run %s", org, b, err, m.RunID)
				}
			}
			if n := len(files); n != 10*5+len(newest)+1 {
				t.Errorf("%d objects, want %d (3 files, a manifest and _SUCCESS per run, latest.json per org, schema.json)", n, 10*5+len(newest)+1)
			}

			// Create-only writes (the manifest fence): a second writer loses.
			fence := path.Dir(res.Exported[0].Files[0].Key) + "/fence-test.json"
			if err := bucket.Put(ctx, fence, []byte("{}"), "application/json", &sinks.PutOptions{IfNotExist: true}); err != nil {
				t.Fatalf("first create-only write: %v", err)
			}
			err = bucket.Put(ctx, fence, []byte("{}"), "application/json", &sinks.PutOptions{IfNotExist: true})
			switch {
			case d.ifNotExist && !errors.Is(err, sinks.ErrExists):
				t.Errorf("a second create-only write: %v, want ErrExists", err)
			case !d.ifNotExist:
				t.Logf("%s: this server does not enforce create-only writes (second write: %v); the advisory locks are the guard", d.name, err)
			}

			// A failure mid-stream and a cancelled export leave nothing behind.
			pgtest.Exec(t, f.DBURL, `
				CREATE FUNCTION boom(t text) RETURNS text LANGUAGE plpgsql IMMUTABLE AS $$
				BEGIN IF t = 'BOOM' THEN RAISE EXCEPTION 'injected failure'; END IF; RETURN t; END $$;
				CREATE FUNCTION slow(uuid) RETURNS bool LANGUAGE plpgsql VOLATILE AS $$ BEGIN PERFORM pg_sleep(0.01); RETURN true; END $$;
				CREATE VIEW sellers_boom AS SELECT id, org_id, boom(display_name) AS display_name, normalized_name, platform,
					platform_id, feedback_score, feedback_percent, feedback_count, times_seen, flagged, first_seen_run_id,
					last_seen_run_id, created_at, updated_at, deleted_at FROM sellers WHERE slow(id);
				UPDATE sellers SET display_name = 'BOOM' WHERE id = (SELECT id FROM sellers WHERE deleted_at IS NULL
					AND first_seen_run_id = (SELECT id FROM collection_runs WHERE status = 'completed' ORDER BY completed_at LIMIT 1 OFFSET 2)
					ORDER BY created_at LIMIT 1)`)
			for _, name := range []string{"new-sellers", "full-nightly"} {
				before := f.Files()
				src, err := sources.Open(ctx, sources.Config{DSN: f.DBURL, SellersTable: "sellers_boom"})
				if err != nil {
					t.Fatal(err)
				}
				f.Runner.Source = src
				cctx, cancel := context.WithTimeout(ctx, 700*time.Millisecond)
				job := f.Job(name)
				if name == "new-sellers" {
					_, err = f.Runner.RerunRun(ctx, job, res.Exported[2].RunID) // fails on BOOM
				} else {
					_, err = f.Runner.RerunDate(cctx, job, "2026-01-01") // cancelled while streaming
				}
				cancel()
				src.Close()
				if err == nil {
					t.Fatalf("%s: the injected failure did not fail the export", name)
				}
				after := f.Files()
				for k, v := range after {
					if len(v) == 0 && !strings.HasSuffix(k, ".ndjson") && path.Base(k) != pipeline.SuccessName {
						t.Errorf("%s: zero-byte object %s", name, k)
					}
					if _, old := before[k]; !old {
						t.Errorf("%s: a failed export left %s", name, k)
					}
				}
			}
		})
	}
}

// TestS3CancelledUploadsLeaveNothing checks gocloud's s3blob traps against a
// real S3 protocol server: a cancelled multipart write leaves an incomplete
// upload behind (the trap), Object.Abort leaves none (the fix), and an
// aborted object that was never written does not appear.
func TestS3CancelledUploadsLeaveNothing(t *testing.T) {
	for _, d := range bucketDrivers() {
		if strings.HasPrefix(d.name, "s3") {
			t.Run(d.name, func(t *testing.T) { testS3CancelledUploads(t, d) })
		}
	}
}

func testS3CancelledUploads(t *testing.T, s3d bucketDriver) {
	dest, _ := s3d.open(t)
	u, _ := url.Parse(dest)
	bucketName := u.Host
	ctx := context.Background()
	raw, err := blob.OpenBucket(ctx, dest)
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	var client *s3.Client
	if !raw.As(&client) {
		t.Fatal("no S3 client")
	}
	uploads := func() int {
		out, err := client.ListMultipartUploads(ctx, &s3.ListMultipartUploadsInput{Bucket: aws.String(bucketName)})
		if err != nil && strings.Contains(err.Error(), "NoSuchUpload") {
			return 0 // gofakes3's answer when the bucket has none
		}
		if err != nil {
			t.Fatal(err)
		}
		return len(out.Uploads)
	}

	// The trap: cancel a multipart write, then Close.
	wctx, cancel := context.WithCancel(ctx)
	w, err := raw.NewWriter(wctx, "trap/big.parquet", &blob.WriterOptions{BufferSize: 5 << 20})
	if err != nil {
		t.Fatal(err)
	}
	writeMiB(t, w, 24)                 // past the 16 MiB multipart threshold
	time.Sleep(200 * time.Millisecond) // let the first parts go out
	cancel()
	_ = w.Close()
	trapped := uploads()
	t.Logf("a cancelled raw s3blob writer left %d incomplete multipart uploads on this server: the trap", trapped)

	// The fix.
	b, err := sinks.OpenBucket(ctx, dest)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	if trapped > 0 {
		// Clean the trap's upload the same way, so the count below is ours alone.
		obj, _ := b.NewObject(ctx, "trap/big.parquet", "application/octet-stream")
		obj.Abort()
		if n := uploads(); n != 0 {
			t.Fatalf("%d uploads left after aborting", n)
		}
	}
	obj, err := b.NewObject(ctx, "fix/big.parquet", "application/vnd.apache.parquet")
	if err != nil {
		t.Fatal(err)
	}
	writeMiB(t, obj, 24) // past the 16 MiB multipart threshold
	time.Sleep(200 * time.Millisecond)
	obj.Abort()
	if n := uploads(); n != 0 {
		t.Errorf("Object.Abort left %d incomplete multipart uploads", n)
	}
	empty, err := b.NewObject(ctx, "fix/empty.csv", "text/csv")
	if err != nil {
		t.Fatal(err)
	}
	empty.Abort()
	for _, k := range []string{"fix/big.parquet", "fix/empty.csv", "trap/big.parquet"} {
		if ok, err := b.Exists(ctx, k); err != nil || ok {
			t.Errorf("%s exists after an abort (%v)", k, err)
		}
	}
}

// azuriteKey is Azurite's well-known development account key.
const azuriteKey = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="

// startAzurite runs Azurite's blob service on a free loopback port for the
// test, or skips the test when it is not installed (.ci/run installs it:
// npm install azurite, then azurite-blob on PATH or in AZURITE_BLOB).
// azurite is the one Azurite server of the test process: gocloud's
// azureblob URL opener reads AZURE_STORAGE_CONNECTION_STRING once per
// process, so every test that opens azblob:// must talk to the same
// server (each in a container of its own). stopAzurite ends it.
var azurite struct {
	once sync.Once
	port int
	cmd  *exec.Cmd
	dir  string
	skip string
	err  error
}

func startAzurite(t *testing.T) int {
	t.Helper()
	azurite.once.Do(func() {
		bin := os.Getenv("AZURITE_BLOB")
		if bin == "" {
			bin, _ = exec.LookPath("azurite-blob")
		}
		if bin == "" {
			if home, err := os.UserHomeDir(); err == nil {
				if p := filepath.Join(home, ".cache", "sellersnap-azurite", "node_modules", ".bin", "azurite-blob"); fileExists(p) {
					bin = p
				}
			}
		}
		if bin == "" {
			azurite.skip = "azurite-blob is not installed (npm install azurite); .ci/run installs it"
			return
		}
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			azurite.err = err
			return
		}
		port := l.Addr().(*net.TCPAddr).Port
		l.Close()
		if azurite.dir, err = os.MkdirTemp("", "sellersnap-azurite-"); err != nil {
			azurite.err = err
			return
		}
		cmd := exec.Command(bin, "--blobHost", "127.0.0.1", "--blobPort", strconv.Itoa(port), "--inMemoryPersistence",
			"--skipApiVersionCheck", "--loose", "--silent")
		cmd.Dir = azurite.dir // azurite writes its debug and extent files in the working directory
		if err := cmd.Start(); err != nil {
			azurite.err = err
			return
		}
		azurite.cmd = cmd
		for deadline := time.Now().Add(30 * time.Second); ; {
			if c, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", port)); err == nil {
				c.Close()
				azurite.port = port
				return
			}
			if time.Now().After(deadline) {
				azurite.err = errors.New("azurite did not start")
				return
			}
			time.Sleep(50 * time.Millisecond)
		}
	})
	if azurite.skip != "" {
		t.Skip(azurite.skip)
	}
	if azurite.err != nil {
		t.Fatal(azurite.err)
	}
	return azurite.port
}

// stopAzurite ends the test process's Azurite server, if it started one.
func stopAzurite() {
	if azurite.cmd != nil {
		_ = azurite.cmd.Process.Kill()
		_ = azurite.cmd.Wait()
	}
	if azurite.dir != "" {
		os.RemoveAll(azurite.dir)
	}
}

func fileExists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}

// faultyProxy forwards to an S3 server but answers the first failures
// requests of each kind (method + whether it is a multipart call) with the
// next status of codes, or resets the connection for status 0.
type faultyProxy struct {
	target   *url.URL
	codes    []int
	failures int
	mu       sync.Mutex
	seen     map[string]int
	injected int
	inFlight map[string]int // kind → requests being served now
	maxIn    map[string]int // kind → most at once
}

func (p *faultyProxy) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	kind := r.Method
	switch q := r.URL.Query(); {
	case q.Has("uploads"):
		kind += " CreateMultipartUpload"
	case q.Has("partNumber"):
		kind += " UploadPart"
	case q.Has("uploadId") && r.Method == http.MethodPost:
		kind += " CompleteMultipartUpload"
	}
	p.mu.Lock()
	if p.inFlight == nil {
		p.inFlight, p.maxIn = map[string]int{}, map[string]int{}
	}
	p.inFlight[kind]++
	p.maxIn[kind] = max(p.maxIn[kind], p.inFlight[kind])
	defer func() {
		p.mu.Lock()
		p.inFlight[kind]--
		p.mu.Unlock()
	}()
	n := p.seen[kind]
	p.seen[kind]++
	fail := r.Method != http.MethodGet && r.Method != http.MethodHead && n < p.failures
	var code int
	if fail {
		code = p.codes[p.injected%len(p.codes)]
		p.injected++
	}
	p.mu.Unlock()
	if fail {
		_, _ = io.Copy(io.Discard, r.Body)
		if code == 0 {
			if hj, ok := w.(http.Hijacker); ok {
				if c, _, err := hj.Hijack(); err == nil {
					c.Close() // connection reset
					return
				}
			}
			code = http.StatusBadGateway
		}
		w.Header().Set("Retry-After", "0")
		http.Error(w, "<Error><Code>InternalError</Code><Message>injected</Message></Error>", code)
		return
	}
	httputil.NewSingleHostReverseProxy(p.target).ServeHTTP(w, r)
}

// TestS3ServerFaults puts a fault-injecting proxy between the exporter and
// the S3 server: a few 500/503/429/resets on every kind of write are
// retried away (exactly one object per key, checksums match); faults on
// every write fail the run with nothing published.
func TestS3ServerFaults(t *testing.T) {
	for _, tc := range []struct {
		name     string
		failures int
		wantOK   bool
	}{{"transient", 1, true}, {"persistent", 1 << 30, false}} {
		t.Run(tc.name, func(t *testing.T) {
			backend := s3mem.New()
			if err := backend.CreateBucket("snap"); err != nil {
				t.Fatal(err)
			}
			s3srv := httptest.NewServer(gofakes3.New(backend).Server())
			defer s3srv.Close()
			target, _ := url.Parse(s3srv.URL)
			proxy := &faultyProxy{target: target, codes: []int{500, 503, 429, 0}, failures: tc.failures, seen: map[string]int{}}
			psrv := httptest.NewServer(proxy)
			defer psrv.Close()
			t.Setenv("AWS_ACCESS_KEY_ID", "test")
			t.Setenv("AWS_SECRET_ACCESS_KEY", "test")
			t.Setenv("AWS_EC2_METADATA_DISABLED", "true")
			t.Setenv("AWS_MAX_ATTEMPTS", "2") // the SDK's own retries, then the exporter's
			dest := "s3://snap?region=us-east-1&use_path_style=true&endpoint=" + psrv.URL
			// Large enough for multipart (gocloud v0.47 switches at 16 MiB): ~21 MB of NDJSON.
			f := newFixtureAt(t, dest, "", "    formats: [ndjson, parquet]\n")
			pipelinetest.InsertRun(t, f.DBURL, f.AnyOrg(), 100000, false)
			f.Runner.Retry = pipeline.Backoff{Attempts: 2, Initial: 10 * time.Millisecond, Max: 50 * time.Millisecond}
			var res pipeline.Result
			var err error
			if tc.wantOK {
				res, err = f.Runner.Once(context.Background(), f.Job("new-sellers"))
			} else {
				runs, _ := f.Src.CompletedRuns(context.Background())
				res, err = f.Runner.RerunRun(context.Background(), f.Job("new-sellers"), runs[len(runs)-1].ID) // the big one
			}
			files := f.Files()
			if tc.wantOK {
				if err != nil || len(res.Exported) != 11 {
					t.Fatalf("with transient faults: %d exported, %v", len(res.Exported), err)
				}
				for _, m := range res.Exported {
					for _, mf := range m.Files {
						sum := sha256.Sum256(files[mf.Key])
						if hex.EncodeToString(sum[:]) != mf.SHA256 {
							t.Errorf("%s: checksum differs", mf.Key)
						}
					}
				}
				// 11 runs × (2 data files, manifest, _SUCCESS), latest.json per org, schema.json.
				if len(files) != 11*4+3+1 {
					t.Errorf("%d objects, want 48", len(files))
				}
				if proxy.injected == 0 {
					t.Error("no fault was injected")
				}
				var sizes []int64
				for _, m := range res.Exported {
					for _, mf := range m.Files {
						if mf.Bytes > 1<<20 {
							sizes = append(sizes, mf.Bytes)
						}
					}
				}
				t.Logf("injected %d faults over %v; large objects %v", proxy.injected, proxy.seen, sizes)
				return
			}
			if err == nil || len(res.Exported) != 0 {
				t.Fatalf("with persistent faults: %d exported, err %v", len(res.Exported), err)
			}
			if len(files) != 0 {
				t.Errorf("a failed run left %v", keysOf(files))
			}
		})
	}
}

func keysOf(m map[string][]byte) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	return out
}

// BenchmarkS3Upload writes 32 MiB objects through sinks.Object to an
// in-process S3 server: throughput, and bytes allocated per upload (the
// transfer manager's buffers: a 16 MiB single-part buffer, then 5 MiB parts).
//
// With SELLERSNAP_TEST_S3_ENDPOINT (a server in another process, as make
// test-minio starts) the allocations are the client's alone.
func BenchmarkS3Upload(b *testing.B) {
	ctx := context.Background()
	endpoint, name := os.Getenv("SELLERSNAP_TEST_S3_ENDPOINT"), "snap"
	if endpoint == "" {
		backend := s3mem.New()
		if err := backend.CreateBucket("snap"); err != nil {
			b.Fatal(err)
		}
		srv := httptest.NewServer(gofakes3.New(backend).Server())
		defer srv.Close()
		endpoint = srv.URL
		b.Setenv("AWS_ACCESS_KEY_ID", "test")
		b.Setenv("AWS_SECRET_ACCESS_KEY", "test")
	} else {
		name = fmt.Sprintf("bench-%d", time.Now().UnixNano())
		client := s3.New(s3.Options{Region: "us-east-1", BaseEndpoint: aws.String(endpoint), UsePathStyle: true,
			Credentials: credentials.NewStaticCredentialsProvider(os.Getenv("AWS_ACCESS_KEY_ID"), os.Getenv("AWS_SECRET_ACCESS_KEY"), "")})
		if _, err := client.CreateBucket(ctx, &s3.CreateBucketInput{Bucket: aws.String(name)}); err != nil {
			b.Fatal(err)
		}
	}
	b.Setenv("AWS_EC2_METADATA_DISABLED", "true")
	bucket, err := sinks.OpenBucket(ctx, "s3://"+name+"?region=us-east-1&use_path_style=true&endpoint="+endpoint)
	if err != nil {
		b.Fatal(err)
	}
	defer bucket.Close()
	chunk := make([]byte, 256<<10)
	const size = 32 << 20
	b.SetBytes(size)
	b.ReportAllocs()
	for i := 0; i < b.N; i++ {
		o, err := bucket.NewObject(ctx, fmt.Sprintf("bench/%d.parquet", i), "application/vnd.apache.parquet")
		if err != nil {
			b.Fatal(err)
		}
		for n := 0; n < size; n += len(chunk) {
			if _, err := o.Write(chunk); err != nil {
				b.Fatal(err)
			}
		}
		if err := o.Commit(); err != nil {
			b.Fatal(err)
		}
	}
}

// TestS3UploadMemoryIsBounded checks the bound on what one object holds:
// parts of sinks.PartSize, at most sinks.PartConcurrency in flight (the
// transfer manager's defaults are 8 MiB parts, 5 at a time).
func TestS3UploadMemoryIsBounded(t *testing.T) {
	backend := s3mem.New()
	if err := backend.CreateBucket("snap"); err != nil {
		t.Fatal(err)
	}
	s3srv := httptest.NewServer(gofakes3.New(backend).Server())
	defer s3srv.Close()
	target, _ := url.Parse(s3srv.URL)
	proxy := &faultyProxy{target: target, codes: []int{500}, failures: 0, seen: map[string]int{}}
	psrv := httptest.NewServer(proxy)
	defer psrv.Close()
	t.Setenv("AWS_ACCESS_KEY_ID", "test")
	t.Setenv("AWS_SECRET_ACCESS_KEY", "test")
	t.Setenv("AWS_EC2_METADATA_DISABLED", "true")
	ctx := context.Background()
	b, err := sinks.OpenBucket(ctx, "s3://snap?region=us-east-1&use_path_style=true&endpoint="+psrv.URL)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	o, err := b.NewObject(ctx, "big.ndjson", "application/x-ndjson")
	if err != nil {
		t.Fatal(err)
	}
	const size = 40 << 20
	writeMiB(t, o, size>>20)
	if err := o.Commit(); err != nil {
		t.Fatal(err)
	}
	proxy.mu.Lock()
	defer proxy.mu.Unlock()
	parts, most := proxy.seen["PUT UploadPart"], proxy.maxIn["PUT UploadPart"]
	if want := (size + sinks.PartSize - 1) / sinks.PartSize; parts != want {
		t.Errorf("%d parts for %d MiB, want %d of %d MiB", parts, size>>20, want, sinks.PartSize>>20)
	}
	if most > sinks.PartConcurrency {
		t.Errorf("%d parts in flight at once, want at most %d", most, sinks.PartConcurrency)
	}
	t.Logf("%d parts, at most %d at once", parts, most)
}

// writeMiB writes n MiB of zeros to w.
func writeMiB(t *testing.T, w io.Writer, n int) {
	t.Helper()
	chunk := make([]byte, 1<<20)
	for i := 0; i < n; i++ {
		if _, err := w.Write(chunk); err != nil {
			t.Fatal(err)
		}
	}
}
