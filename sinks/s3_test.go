package sinks_test

import (
	"bytes"
	"context"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/johannesboyne/gofakes3"
	"github.com/johannesboyne/gofakes3/backend/s3mem"

	"github.com/sellersnap/sellersnap/sinks"
)

// TestS3SDKLogsGoThroughSlog talks to an S3 server whose answers make the
// AWS SDK warn. The warning must reach
// the logger given to OpenBucket, as a structured record, instead of the
// SDK's own "SDK <time> WARN" line on stderr.
func TestS3SDKLogsGoThroughSlog(t *testing.T) {
	ctx := context.Background()
	backend := s3mem.New()
	if err := backend.CreateBucket("snap"); err != nil {
		t.Fatal(err)
	}
	fake := gofakes3.New(backend).Server()
	// A proxy in front that mangles the Date header: the SDK warns about
	// it on every response.
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Date", "yesterday")
		fake.ServeHTTP(w, r)
	}))
	defer srv.Close()
	t.Setenv("AWS_ACCESS_KEY_ID", "test")
	t.Setenv("AWS_SECRET_ACCESS_KEY", "test")
	t.Setenv("AWS_EC2_METADATA_DISABLED", "true")
	var logs bytes.Buffer
	logger := slog.New(slog.NewJSONHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	b, err := sinks.OpenBucket(ctx, "s3://snap?region=us-east-1&use_path_style=true&endpoint="+srv.URL, sinks.WithLogger(logger))
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	if err := b.Put(ctx, "a/b.json", []byte(`{}`), "application/json", nil); err != nil {
		t.Fatal(err)
	}
	if got, err := b.ReadAll(ctx, "a/b.json"); err != nil || string(got) != `{}` {
		t.Fatalf("ReadAll = %q, %v", got, err)
	}
	if !strings.Contains(logs.String(), `"level":"WARN"`) || !strings.Contains(logs.String(), `"source":"aws-sdk"`) {
		t.Fatalf("the SDK's warning did not reach the logger; got %q", logs.String())
	}
	for _, bad := range []string{"use_path_style=maybe", "ssetype=rot13", "bogus=1"} {
		if _, err := sinks.OpenBucket(ctx, "s3://snap?region=us-east-1&"+bad, sinks.WithLogger(logger)); err == nil {
			t.Errorf("s3 URL with %s: opened, want an error", bad)
		}
	}
}
