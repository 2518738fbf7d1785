package sinks

import (
	"cmp"
	"net/url"
	"slices"
	"strings"
)

// safeParams are bucket URL query parameters whose values are shown: they
// configure a driver and hold no credentials (a URL inside one, such as
// endpoint=http://user:pass@host, still loses its user info). The value of
// any other parameter is a secret until known otherwise.
var safeParams = map[string]bool{
	"region": true, "endpoint": true, "create_dir": true, "no_tmp_dir": true, "metadata": true,
	"protocol": true, "domain": true, "use_path_style": true, "prefix": true, "awssdk": true,
	"disable_https": true, "dualstack": true, "fips": true, "accelerate": true, "anonymous": true,
	"hostname_immutable": true, "localdomain": true, "cdn": true, "storage_account": true,
	"dir_file_mode": true, "s3ForcePathStyle": true, "disableSSL": true, "rate_limiter_capacity": true,
}

// Redact drops the user info and the values of parameters that may hold
// credentials from a bucket URL, for logs, errors and pages.
func Redact(rawURL string) string {
	u, err := url.Parse(rawURL)
	if err != nil {
		return "(unparsable URL)"
	}
	u.User = nil
	if u.RawQuery != "" {
		q := u.Query()
		for k, vs := range q {
			for i, v := range vs {
				if !safeParams[k] {
					vs[i] = "REDACTED"
				} else if inner, err := url.Parse(v); err == nil && inner.User != nil {
					inner.User = nil
					vs[i] = inner.String()
				}
			}
		}
		u.RawQuery = q.Encode()
	}
	return u.String()
}

// urlSecrets lists the strings of rawURL that Redact hides, in every
// spelling an error message may carry them (as written, escaped,
// unescaped), longest first. Strings shorter than 3 bytes are left out:
// replacing them would garble messages and protect nothing.
func urlSecrets(rawURL string) []string {
	var out []string
	add := func(s string) {
		for _, v := range []string{s, url.QueryEscape(s), url.PathEscape(s)} {
			if len(v) >= 3 {
				out = append(out, v)
			}
		}
		if un, err := url.QueryUnescape(s); err == nil && len(un) >= 3 {
			out = append(out, un)
		}
	}
	userinfo := func(u *url.Userinfo) {
		if u == nil {
			return
		}
		add(u.String())
		add(u.Username())
		if p, ok := u.Password(); ok {
			add(p)
		}
	}
	// The raw query, before parsing: a value may not survive it intact.
	_, rest, _ := strings.Cut(rawURL, "://")
	if at := strings.LastIndex(strings.SplitN(rest, "/", 2)[0], "@"); at >= 0 {
		add(rest[:at])
		if user, pass, ok := strings.Cut(rest[:at], ":"); ok {
			add(user)
			add(pass)
		}
	}
	if _, rawQuery, ok := strings.Cut(rawURL, "?"); ok {
		for _, kv := range strings.Split(rawQuery, "&") {
			k, v, _ := strings.Cut(kv, "=")
			key, err := url.QueryUnescape(k)
			if err != nil || !safeParams[key] {
				add(v)
				continue
			}
			val, err := url.QueryUnescape(v)
			if err != nil {
				val = v
			}
			if inner, err := url.Parse(val); err == nil {
				userinfo(inner.User)
			}
		}
	}
	if u, err := url.Parse(rawURL); err == nil {
		userinfo(u.User)
	}
	slices.SortFunc(out, func(a, b string) int { return cmp.Compare(len(b), len(a)) })
	return slices.Compact(out)
}

// redactString replaces every secret in s.
func redactString(s string, secrets []string) string {
	for _, sec := range secrets {
		s = strings.ReplaceAll(s, sec, "REDACTED")
	}
	return s
}

// BucketError is an error of a bucket operation (open, read, list, write,
// commit, delete). Its message has the bucket URL's secrets replaced;
// errors.Is and errors.As still see the error it wraps.
type BucketError struct {
	msg string
	err error
}

func (e *BucketError) Error() string { return e.msg }
func (e *BucketError) Unwrap() error { return e.err }

func redactError(err error, secrets []string) error {
	if err == nil {
		return nil
	}
	if _, ok := err.(*BucketError); ok {
		return err
	}
	msg := redactString(err.Error(), secrets)
	if missingCredentials(err) {
		msg += credentialsHint
	}
	return &BucketError{msg: msg, err: err}
}

// redact hides the bucket URL's secrets in err and marks it a BucketError.
func (b *Bucket) redact(err error) error { return redactError(err, b.secrets) }
