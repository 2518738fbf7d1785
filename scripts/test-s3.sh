#!/usr/bin/env bash
# make test-minio: the bucket conformance tests against a real S3 server on
# loopback. Uses SELLERSNAP_TEST_S3_ENDPOINT (+ AWS_ACCESS_KEY_ID and
# AWS_SECRET_ACCESS_KEY) if set, e.g. for a MinIO you run; otherwise builds
# versitygw once (cached outside the repository) and starts it with a posix
# backend in a temporary directory.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${SELLERSNAP_TEST_S3_ENDPOINT:-}" ]; then
  cache="${SELLERSNAP_S3_CACHE:-$HOME/.cache/sellersnap-s3}"
  bin="$cache/bin/versitygw"
  if [ ! -x "$bin" ]; then
    echo "building versitygw into $cache (once, a few minutes)"
    GOBIN="$cache/bin" go install github.com/versity/versitygw/cmd/versitygw@v1.8.0
  fi
  data=$(mktemp -d)
  port=$((20000 + RANDOM % 20000))
  export AWS_ACCESS_KEY_ID=sellersnap AWS_SECRET_ACCESS_KEY=sellersnap-secret
  "$bin" --access "$AWS_ACCESS_KEY_ID" --secret "$AWS_SECRET_ACCESS_KEY" --port "127.0.0.1:$port" posix "$data" >"$data.log" 2>&1 &
  pid=$!
  trap 'kill $pid 2>/dev/null; rm -rf "$data" "$data.log"' EXIT
  for _ in $(seq 1 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
    sleep 0.1
  done
  export SELLERSNAP_TEST_S3_ENDPOINT="http://127.0.0.1:$port"
fi
go test -race -count=1 -v -run 'TestBucketConformance/s3-external|TestS3CancelledUploadsLeaveNothing/s3-external' ./pipeline
