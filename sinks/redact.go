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

// secretParams are bucket URL query parameters known to hold credentials:
// their names are shown, their values never. A parameter that is neither
// safe nor known is hidden whole, name included (a name may be a secret
// typed in the wrong place, or the tail of a secret holding '&').
var secretParams = map[string]bool{
	"sas_token": true, "token": true, "access_key_id": true, "secret_access_key": true, "session_token": true,
	"access_key": true, "secret_key": true, "account_key": true, "key": true, "password": true,
	"client_secret": true, "credentials_file": true, "credentials": true, "sig": true, "signature": true,
}

// Redact drops the user info and the values of parameters that may hold
// credentials from a bucket URL, for logs, errors and pages. It works on
// the string as written, without parsing it, so a URL that url.Parse
// rejects, or that it reads otherwise than a driver does (a value with no
// scheme, an unclosed IPv6 bracket, a stray '%'), loses its secrets too:
// the user info before the last '@' of the authority, every value of a
// parameter not known to be safe, the user info inside a safe one
// (endpoint=user:pass@host, encoded or not), and the fragment.
func Redact(rawURL string) string {
	rest, _, hasFrag := strings.Cut(rawURL, "#")
	base, query, hasQuery := strings.Cut(rest, "?")
	out := stripUserinfo(base)
	if hasQuery {
		parts := strings.Split(query, "&")
		for i, kv := range parts {
			k, v, hasValue := strings.Cut(kv, "=")
			key, err := url.QueryUnescape(k)
			switch {
			case err != nil || !safeParams[key] && !secretParams[key]:
				parts[i] = "REDACTED"
			case secretParams[key] || !hasValue:
				parts[i] = k + "=REDACTED"
			default:
				parts[i] = k + "=" + redactValue(v)
			}
		}
		out += "?" + strings.Join(parts, "&")
	}
	if hasFrag {
		out += "#REDACTED"
	}
	return out
}

// stripUserinfo drops what comes before the last '@' of s's authority:
// after "scheme://" (or from the start, without one) up to the first '/'.
func stripUserinfo(s string) string {
	scheme, rest, ok := strings.Cut(s, "://")
	if !ok {
		scheme, rest = "", s
	}
	auth, path := rest, ""
	if j := strings.IndexByte(rest, '/'); j >= 0 {
		auth, path = rest[:j], rest[j:]
	}
	if at := strings.LastIndexByte(auth, '@'); at >= 0 {
		auth = auth[at+1:]
	}
	if ok {
		return scheme + "://" + auth + path
	}
	return auth + path
}

// redactValue is the value of a safe parameter without user info: a value
// that holds an '@' (in any spelling) is decoded, loses the user info of
// its authority, and is encoded again; one that cannot be decoded, or
// that still holds an '@' after that, is hidden.
func redactValue(v string) string {
	if !strings.Contains(v, "@") && !strings.Contains(strings.ToLower(v), "%40") {
		return v
	}
	dec, err := url.QueryUnescape(v)
	if err != nil {
		return "REDACTED"
	}
	clean := stripUserinfo(dec)
	if strings.Contains(clean, "@") || strings.Contains(strings.ToLower(clean), "%40") {
		return "REDACTED"
	}
	return url.QueryEscape(clean)
}

// urlSecrets lists the strings of rawURL that Redact hides, in every
// spelling an error message may carry them (as written, escaped,
// unescaped), longest first. Strings shorter than 3 bytes are left out:
// replacing them would garble messages and protect nothing. Like Redact,
// it does not parse the URL.
func urlSecrets(rawURL string) []string {
	var out []string
	add := func(s string) {
		for _, v := range []string{s, url.QueryEscape(s), url.PathEscape(s)} {
			if len(v) >= 3 {
				out = append(out, v)
			}
		}
		// Unescaped once and twice (a value escaped twice over).
		for _, unescape := range []func(string) (string, error){url.QueryUnescape, url.PathUnescape} {
			v := s
			for range 2 {
				un, err := unescape(v)
				if err != nil || un == v {
					break
				}
				if len(un) >= 3 {
					out = append(out, un)
				}
				v = un
			}
		}
	}
	// userinfo adds what comes before the last '@' of s's authority, and
	// its user and password.
	userinfo := func(s string) {
		_, rest, ok := strings.Cut(s, "://")
		if !ok {
			rest = s
		}
		if j := strings.IndexByte(rest, '/'); j >= 0 {
			rest = rest[:j]
		}
		at := strings.LastIndexByte(rest, '@')
		if at < 0 {
			return
		}
		add(rest[:at])
		if user, pass, ok := strings.Cut(rest[:at], ":"); ok {
			add(user)
			add(pass)
		}
	}
	rest, frag, hasFrag := strings.Cut(rawURL, "#")
	if hasFrag {
		add(frag)
	}
	base, query, _ := strings.Cut(rest, "?")
	userinfo(base)
	for _, kv := range strings.Split(query, "&") {
		if kv == "" {
			continue
		}
		k, v, _ := strings.Cut(kv, "=")
		key, err := url.QueryUnescape(k)
		if err != nil || !safeParams[key] {
			if err != nil || !secretParams[key] {
				add(k)
			}
			add(v)
			continue
		}
		userinfo(v)
		if dec, err := url.QueryUnescape(v); err == nil {
			userinfo(dec)
		}
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
