package sinks

import (
	"errors"
	"fmt"
	"net/url"
	"strings"
	"testing"
	"unicode/utf8"
)

func TestRedact(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"s3://b?region=eu-west-1", "s3://b?region=eu-west-1"},
		{"s3://AKID:hunter2secret@b?region=eu-west-1", "s3://b?region=eu-west-1"},
		{"s3://b?endpoint=http://u:hunter2secret@minio:9000&region=x", "s3://b?endpoint=http%3A%2F%2Fminio%3A9000&region=x"},
		{"azblob://c?sas_token=hunter2secret&protocol=http", "azblob://c?sas_token=REDACTED&protocol=http"},
		{"file:///tmp/x?create_dir=true", "file:///tmp/x?create_dir=true"},
		{"s3://b\x7f", "s3://b\x7f"},
		// Spellings url.Parse does not read as a driver does.
		{"s3://bkt?endpoint=usr:Sup3rS3cretPw@127.0.0.1:9&region=x", "s3://bkt?endpoint=127.0.0.1%3A9&region=x"},
		{"s3://bkt?endpoint=http://usr:Sup3rS3cretPw@[::1&region=x", "s3://bkt?endpoint=http%3A%2F%2F%5B%3A%3A1&region=x"},
		{"s3://bkt?endpoint=usr%3ASup3rS3cretPw%40127.0.0.1%3A9", "s3://bkt?endpoint=127.0.0.1%3A9"},
		{"s3://bkt?endpoint=%zzusr:Sup3rS3cretPw@h", "s3://bkt?endpoint=REDACTED"},
		{"s3://bkt?Sup3rS3cretPw&region=x", "s3://bkt?REDACTED&region=x"},
		{"s3://bkt?region=x#Sup3rS3cretPw", "s3://bkt?region=x#REDACTED"},
		{"s3://usr:Sup3r@S3cretPw@bkt/pre", "s3://bkt/pre"},
	} {
		if got := Redact(tc.in); got != tc.want {
			t.Errorf("Redact(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}

// FuzzRedact puts a password in every query parameter (and the user
// info), as written, query-escaped, path-escaped or double-escaped, in
// URLs url.Parse accepts and in ones it rejects. Pass: neither Redact nor
// an error message quoting the URL in any spelling shows the password.
func FuzzRedact(f *testing.F) {
	f.Add("Sup3rS3cretPw", uint8(0), uint8(0))
	f.Add("p@ss:w/rd%zz", uint8(3), uint8(1))
	f.Add("[::1", uint8(7), uint8(2))
	params := []string{"endpoint", "region", "sas_token", "protocol", "unknown_param", "prefix", "awssdk", "user", "fragment"}
	f.Fuzz(func(t *testing.T, pw string, where, form uint8) {
		// A password is long enough to be told from the URL around it.
		pw = "Zq" + pw + "Xj"
		if strings.ContainsAny(pw, "&#?/ \t\n") || !utf8.ValidString(pw) {
			return // these split the URL itself: not a value any more
		}
		spell := []func(string) string{
			func(s string) string { return s },
			url.QueryEscape,
			url.PathEscape,
			func(s string) string { return url.QueryEscape(url.QueryEscape(s)) },
		}[int(form)%4]
		v := spell(pw)
		var raw string
		switch p := params[int(where)%len(params)]; p {
		case "user":
			raw = "s3://AKID:" + v + "@bkt/pre?region=eu-west-1"
		case "fragment":
			raw = "s3://bkt?region=x#" + v
		case "endpoint", "prefix", "protocol", "region", "awssdk":
			raw = "s3://bkt?" + p + "=http://usr:" + v + "@[::1&region=x"
			if form%2 == 1 {
				raw = "s3://bkt?" + p + "=usr:" + v + "@127.0.0.1:9"
			}
		default:
			raw = "s3://bkt?" + p + "=" + v + "&region=x"
		}
		leaks := func(s string) bool {
			for _, sp := range []string{pw, url.QueryEscape(pw), url.PathEscape(pw), v} {
				if strings.Contains(s, sp) {
					return true
				}
			}
			return false
		}
		if got := Redact(raw); leaks(got) {
			t.Fatalf("Redact(%q) = %q shows the password", raw, got)
		}
		secrets := urlSecrets(raw)
		for _, msg := range []string{raw, url.QueryEscape(raw), url.PathEscape(raw), v, pw} {
			if got := redactError(fmt.Errorf("open bucket %s: boom", msg), secrets).Error(); leaks(got) {
				t.Fatalf("an error quoting %q shows the password: %s", msg, got)
			}
		}
	})
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
