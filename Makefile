# sellersnap — see README.md.
GO      ?= go
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
COMMIT  ?= $(shell git rev-parse HEAD 2>/dev/null)
LDFLAGS := -X main.version=$(VERSION) -X main.commit=$(COMMIT)
TESTFLAGS ?=

BENCH_SELLERS ?= 1000000
BENCH_REPS    ?= 5

.PHONY: all build demo scale iceberg-scale test test-faults fuzz verify-readers test-minio bench check vet lint fmt clean image test-image release release-check bench-peer

all: build

build:
	$(GO) build -ldflags "$(LDFLAGS)" -o bin/sellersnap ./cmd/sellersnap
	$(GO) build -o bin/snapdev ./cmd/snapdev

# A throwaway PostgreSQL with demo data, one export into ./snapshots, then the files.
demo:
	@echo "make demo: 1/3 building bin/sellersnap and bin/snapdev (first time only: downloads modules and"
	@echo "compiles for 3-10 minutes on 2 cores, silent meanwhile; later runs take seconds)…"
	@$(MAKE) --no-print-directory build
	@echo "make demo: 2/3 a throwaway PostgreSQL with demo data; 3/3 validate and export into ./snapshots (~10 s)…"
	rm -rf ./snapshots
	./bin/snapdev demo -bin ./bin/sellersnap -config pipeline.yaml -out ./snapshots

# End to end against Postgres: sellersnap vs psql's binary \copy of the same rows.
# The loaded cluster is kept in .cache/ and reused. BENCH_SELLERS=10000000 for 10M.
bench: build
	./bin/snapdev bench -bin ./bin/sellersnap -sellers $(BENCH_SELLERS) -reps $(BENCH_REPS)

# sellersnap's Parquet encoder against DuckDB's (threads=1) on the same rows in memory:
# CPU ns per row and file bytes, PEER_ROWS=200000 demo sellers, the shipped columns.
# Needs the verify/ module's C++ toolchain (DuckDB via cgo). Medians: benchstat-style, 5 counts.
PEER_ROWS ?= 200000
bench-peer:
	cd verify && PEER_ROWS=$(PEER_ROWS) CGO_ENABLED=1 $(GO) test -run '^$$' -bench '^BenchmarkParquetPeer$$' -benchtime 5x -count 5 .

# Iceberg: 10,000 commits to one table (a run a minute, every 50th an overwrite, default
# retention) through a throwaway PostgreSQL catalog into a file:// bucket: commit time,
# requests and metadata growth at checkpoints, and a cold commit (docs/benchmarks.md). ~10 min.
ICEBERG_COMMITS ?= 10000
iceberg-scale: build
	./bin/snapdev iceberg -commits $(ICEBERG_COMMITS)

# Discovery and full snapshots as the history grows (docs/scaling.md): a throwaway
# PostgreSQL with 100 to 100,000 completed runs and 1,000 orgs. ~2 minutes.
scale: build
	./bin/snapdev scale -history 100,1000,10000,100000 -orgs 1000

# The whole suite against a real PostgreSQL (DATABASE_URL, or a throwaway cluster),
# except the slow process-fault tests (see test-faults).
test:
	@echo "make test: go vet, then go test -race against a throwaway PostgreSQL. The first run compiles every"
	@echo "package twice (vet, race detector): 10-20 minutes on 2 cores, silent meanwhile; later runs reuse the cache."
	@$(MAKE) --no-print-directory vet
	$(GO) test -race -short -count=1 $(TESTFLAGS) ./...
	@missing=""; \
	 command -v promtool >/dev/null 2>&1 || missing="$$missing promtool (apt-get install prometheus: the alert scenarios);"; \
	 command -v chromium >/dev/null 2>&1 || missing="$$missing chromium (apt-get install chromium: the status page in a browser);"; \
	 command -v systemd-analyze >/dev/null 2>&1 || missing="$$missing systemd-analyze (apt-get install systemd: the unit's checks);"; \
	 if [ -n "$$missing" ]; then echo "SKIPPED, not installed:$$missing CI installs them and fails without them."; fi

# Real sellersnap processes killed (SIGKILL at 14 points), a PostgreSQL restarted
# under the daemon, a stalled or slow network, a full disk. ~2 minutes; CI runs it.
test-faults:
	$(GO) test -race -count=1 -run '^TestFault' $(TESTFLAGS) ./cmd/sellersnap

# Exports the demo data and reads every file back with readers nobody here wrote
# (DuckDB via cgo, parquet-go, and hyparquet from npm: a JavaScript reader strict
# about the footer), and runs the DuckDB recipes of docs/reading.md.
# Its own module (verify/), so the main module stays free of cgo. Needs a C++
# toolchain and Node.js with npm.
verify-readers:
	cd verify/hyparquet && npm ci --no-audit --no-fund --loglevel=error
	cd verify && CGO_ENABLED=1 $(GO) test -count=1 -v ./...

# Each fuzz target for a number of executions, ~15 s each on these machines (new failing
# inputs land in testdata/fuzz; CI runs this). Counts, not durations: a duration-based
# -fuzztime can fail with "context deadline exceeded" at its end, no crasher involved
# (golang/go#75804, not fixed in Go 1.26). FUZZTIME=30s or =1000x overrides all four.
FUZZ_CSV      ?= 20000x
FUZZ_NDJSON   ?= 10000x
FUZZ_KEYS     ?= 200000x
FUZZ_CONFIG   ?= 40000x
FUZZ_REDACT   ?= 30000x
fuzz:
	$(GO) test -run '^$$' -fuzz '^FuzzCSV$$' -fuzztime $(or $(FUZZTIME),$(FUZZ_CSV)) ./sinks
	$(GO) test -run '^$$' -fuzz '^FuzzNDJSON$$' -fuzztime $(or $(FUZZTIME),$(FUZZ_NDJSON)) ./sinks
	$(GO) test -run '^$$' -fuzz '^FuzzExecute$$' -fuzztime $(or $(FUZZTIME),$(FUZZ_KEYS)) ./internal/keys
	$(GO) test -run '^$$' -fuzz '^FuzzParse$$' -fuzztime $(or $(FUZZTIME),$(FUZZ_CONFIG)) ./config
	$(GO) test -run '^$$' -fuzz '^FuzzRedact$$' -fuzztime $(or $(FUZZTIME),$(FUZZ_REDACT)) ./sinks

# The container image, offline: bin/sellersnap-image.tar (an OCI image layout; load it
# with podman load, skopeo copy oci-archive:…, or docker load on Docker 25+). The
# static binary, Debian's CA certificates and tzdata, user 65532, no shell; the same
# commit gives the same digest. IMAGE_ARCH=arm64 for arm64.
IMAGE_ARCH ?= $(shell $(GO) env GOARCH)
IMAGE_FLAGS = -trimpath -buildvcs=false -ldflags "-s -w -buildid= $(LDFLAGS)"
image:
	CGO_ENABLED=0 GOOS=linux GOARCH=$(IMAGE_ARCH) $(GO) build $(IMAGE_FLAGS) -o bin/image/sellersnap ./cmd/sellersnap
	cd release && $(GO) run ./cmd/imagebuild -binary ../bin/image/sellersnap -arch $(IMAGE_ARCH) \
		-version $(VERSION) -revision $(COMMIT) -created $$(git log -1 --format=%ct) -out ../bin/sellersnap-image.tar

# Builds the image twice and runs its binary from the unpacked image (chrooted as
# its user when run as root): version, and validate against a throwaway PostgreSQL.
test-image:
	cd release && $(GO) test -count=1 $(TESTFLAGS) ./...

# Release archives of the current commit (clean tree) for linux/amd64, linux/arm64,
# darwin/arm64 and windows/amd64, each with a CycloneDX SBOM, and SHA256SUMS, in
# bin/release: make release VERSION=v1.2.3 (PLATFORMS="linux/amd64" for fewer).
release:
	VERSION=$(VERSION) ./scripts/release.sh

# Reproducibility: one release target built twice, the second time with an empty
# build cache, must give byte-identical archives (CI runs it).
release-check:
	VERSION=v0.0.0-check PLATFORMS=linux/amd64 OUT=bin/release-a ./scripts/release.sh >/dev/null
	rm -rf bin/.gocache-check
	GOCACHE=$(CURDIR)/bin/.gocache-check VERSION=v0.0.0-check PLATFORMS=linux/amd64 OUT=bin/release-b ./scripts/release.sh >/dev/null
	rm -rf bin/.gocache-check
	cmp bin/release-a/SHA256SUMS bin/release-b/SHA256SUMS
	@echo "release-check: two builds of $$(git rev-parse --short HEAD) are byte-identical:"; cat bin/release-a/SHA256SUMS

# The bucket conformance tests against a real S3 server (versitygw, built once
# into ~/.cache; or SELLERSNAP_TEST_S3_ENDPOINT for a MinIO of yours). Not in make test.
test-minio:
	./scripts/test-s3.sh

vet:
	@test -z "$$(gofmt -l $$(git ls-files '*.go'))" || { echo "gofmt needed:"; gofmt -l $$(git ls-files '*.go'); exit 1; }
	$(GO) vet ./...

lint:
	$(GO) run honnef.co/go/tools/cmd/staticcheck@v0.8.2 ./...

check: lint test

fmt:
	gofmt -w $$(git ls-files '*.go')

clean:
	rm -rf bin snapshots
