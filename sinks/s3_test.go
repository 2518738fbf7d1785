package sinks_test

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"testing"
	"time"

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

// TestS3WithoutCredentialsIsPermanent: a request the SDK could not sign is
// not retried (the provider chain's wait on the EC2 metadata endpoint
// would repeat), and the error says what to set.
func TestS3WithoutCredentialsIsPermanent(t *testing.T) {
	ctx := context.Background()
	backend := s3mem.New()
	if err := backend.CreateBucket("snap"); err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(gofakes3.New(backend).Server())
	defer srv.Close()
	for _, k := range []string{"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_ROLE_ARN", "AWS_CONTAINER_CREDENTIALS_FULL_URI", "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI"} {
		t.Setenv(k, "")
	}
	t.Setenv("AWS_CONFIG_FILE", t.TempDir()+"/none")
	t.Setenv("AWS_SHARED_CREDENTIALS_FILE", t.TempDir()+"/none")
	t.Setenv("AWS_EC2_METADATA_DISABLED", "true")
	b, err := sinks.OpenBucket(ctx, "s3://snap?region=us-east-1&use_path_style=true&endpoint="+srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	err = b.Put(ctx, "a/b.json", []byte(`{}`), "application/json", nil)
	if err == nil {
		t.Fatal("Put without credentials succeeded")
	}
	if sinks.Transient(err) {
		t.Errorf("Transient(%v) = true, want false", err)
	}
	if !strings.Contains(err.Error(), "no AWS credentials found: set AWS_ACCESS_KEY_ID") {
		t.Errorf("error has no hint: %v", err)
	}
}

// TestS3WebIdentityCredentials is how pods get credentials for s3:// on
// EKS (IRSA, deploy/kubernetes/serviceaccount.yaml): the SDK reads the
// projected token at AWS_WEB_IDENTITY_TOKEN_FILE, exchanges it with STS
// (AssumeRoleWithWebIdentity, here a loopback STS) for AWS_ROLE_ARN's
// credentials and signs every S3 request with them. No static keys are
// set.
func TestS3WebIdentityCredentials(t *testing.T) {
	ctx := context.Background()
	token := t.TempDir() + "/token"
	if err := os.WriteFile(token, []byte("eyJ-projected-service-account-token"), 0o600); err != nil {
		t.Fatal(err)
	}
	var stsCalls []string
	sts := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_ = r.ParseForm()
		stsCalls = append(stsCalls, r.Form.Get("Action")+" "+r.Form.Get("RoleArn")+" "+r.Form.Get("WebIdentityToken"))
		w.Header().Set("Content-Type", "text/xml")
		fmt.Fprintf(w, `<AssumeRoleWithWebIdentityResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/"><AssumeRoleWithWebIdentityResult>
<Credentials><AccessKeyId>ASIAWEBIDENTITY</AccessKeyId><SecretAccessKey>secret</SecretAccessKey><SessionToken>session</SessionToken>
<Expiration>%s</Expiration></Credentials><SubjectFromWebIdentityToken>system:serviceaccount:data:sellersnap</SubjectFromWebIdentityToken>
</AssumeRoleWithWebIdentityResult><ResponseMetadata><RequestId>1</RequestId></ResponseMetadata></AssumeRoleWithWebIdentityResponse>`,
			time.Now().Add(time.Hour).UTC().Format(time.RFC3339))
	}))
	defer sts.Close()
	backend := s3mem.New()
	if err := backend.CreateBucket("snap"); err != nil {
		t.Fatal(err)
	}
	fake := gofakes3.New(backend).Server()
	var signedBy []string
	s3 := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		signedBy = append(signedBy, r.Header.Get("Authorization"))
		fake.ServeHTTP(w, r)
	}))
	defer s3.Close()
	for _, k := range []string{"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"} {
		t.Setenv(k, "")
	}
	t.Setenv("AWS_CONFIG_FILE", t.TempDir()+"/none")
	t.Setenv("AWS_SHARED_CREDENTIALS_FILE", t.TempDir()+"/none")
	t.Setenv("AWS_EC2_METADATA_DISABLED", "true")
	t.Setenv("AWS_WEB_IDENTITY_TOKEN_FILE", token)
	t.Setenv("AWS_ROLE_ARN", "arn:aws:iam::123456789012:role/sellersnap-writer")
	t.Setenv("AWS_ENDPOINT_URL_STS", sts.URL)
	b, err := sinks.OpenBucket(ctx, "s3://snap?region=us-east-1&use_path_style=true&endpoint="+s3.URL)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	if err := b.Put(ctx, "a/b.json", []byte(`{}`), "application/json", nil); err != nil {
		t.Fatal(err)
	}
	if len(stsCalls) == 0 || !strings.HasPrefix(stsCalls[0], "AssumeRoleWithWebIdentity arn:aws:iam::123456789012:role/sellersnap-writer eyJ-projected") {
		t.Errorf("STS calls: %q; want AssumeRoleWithWebIdentity with the role and the token", stsCalls)
	}
	if len(signedBy) == 0 || !strings.Contains(signedBy[0], "Credential=ASIAWEBIDENTITY/") {
		t.Errorf("S3 requests signed by %q; want the web identity's credentials", signedBy)
	}
}
