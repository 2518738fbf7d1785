package sinks

import (
	"errors"
	"fmt"
	"strings"
	"testing"
)

func TestRedact(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"s3://b?region=eu-west-1", "s3://b?region=eu-west-1"},
		{"s3://AKID:hunter2secret@b?region=eu-west-1", "s3://b?region=eu-west-1"},
		{"s3://b?endpoint=http://u:hunter2secret@minio:9000&region=x", "s3://b?endpoint=http%3A%2F%2Fminio%3A9000&region=x"},
		{"azblob://c?sas_token=hunter2secret&protocol=http", "azblob://c?protocol=http&sas_token=REDACTED"},
		{"file:///tmp/x?create_dir=true", "file:///tmp/x?create_dir=true"},
		{"s3://b\x7f", "(unparsable URL)"},
	} {
		if got := Redact(tc.in); got != tc.want {
			t.Errorf("Redact(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}

// TestRedactErrorHidesEverySpelling: a driver's error may quote the URL as
// written, escaped or unescaped; the secret goes in every spelling, and the
// error still unwraps to what it wraps.
func TestRedactErrorHidesEverySpelling(t *testing.T) {
	raw := "s3://AKID:p%40ss%2Fw0rd@b?endpoint=http%3A%2F%2Fme%3Ahunter2secret%40h%3A1&token=t%2Bk3n&region=us-east-1"
	secrets := urlSecrets(raw)
	inner := errors.New("boom")
	for _, msg := range []string{raw, "p@ss/w0rd", "p%40ss%2Fw0rd", "hunter2secret", "me:hunter2secret", "t+k3n", "t%2Bk3n"} {
		err := redactError(fmt.Errorf("open %s: %w", msg, inner), secrets)
		for _, s := range []string{"w0rd", "hunter2secret", "k3n"} {
			if strings.Contains(err.Error(), s) {
				t.Errorf("%q: %v", msg, err)
			}
		}
		if !errors.Is(err, inner) {
			t.Errorf("%q: the redacted error does not unwrap", msg)
		}
	}
	if err := redactError(errors.New("region us-east-1"), secrets); err.Error() != "region us-east-1" {
		t.Errorf("a safe value was redacted: %v", err)
	}
}
