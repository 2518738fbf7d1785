package sinks

import (
	"context"
	"fmt"
	"log/slog"
	"net/url"
	"strconv"
	"strings"

	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/aws/aws-sdk-go-v2/service/s3/types"
	"github.com/aws/smithy-go/logging"
	gcaws "gocloud.dev/aws"
	"gocloud.dev/blob"
	"gocloud.dev/blob/s3blob"
)

// openS3 opens an s3:// URL with the parameters s3blob's URL opener takes
// (gocloud v0.47: ssetype, kmskeyid, accelerate, disable_https,
// use_path_style and the AWS ones: region, endpoint, profile, …). It exists
// for one difference: the SDK's logger. Left alone the SDK writes its own
// plain-text "SDK <time> WARN …" lines to stderr (a response without a
// checksum, a retried request), past -log-format json and the log level;
// here they go through the process's slog logger.
func openS3(ctx context.Context, u *url.URL, logger *slog.Logger) (*blob.Bucket, error) {
	q := u.Query()
	var opts s3blob.Options
	var client []func(*s3.Options)
	take := func(key string) string {
		v := q.Get(key)
		q.Del(key)
		return v
	}
	boolParam := func(key string) (value, set bool, err error) {
		v := take(key)
		if v == "" {
			return false, false, nil
		}
		value, err = strconv.ParseBool(v)
		if err != nil {
			return false, false, fmt.Errorf("invalid value for %q: %w", key, err)
		}
		return value, true, nil
	}
	if v := take("ssetype"); v != "" {
		opts.EncryptionType = ""
		for _, t := range types.ServerSideEncryptionAes256.Values() {
			if strings.EqualFold(string(t), v) {
				opts.EncryptionType = t
			}
		}
		if opts.EncryptionType == "" {
			return nil, fmt.Errorf("%q is not a valid value for %q", v, "ssetype")
		}
	}
	opts.KMSEncryptionID = take("kmskeyid")
	accelerate, _, err := boolParam("accelerate")
	if err != nil {
		return nil, err
	}
	client = append(client, func(o *s3.Options) { o.UseAccelerate = accelerate })
	if v, set, err := boolParam("disable_https"); err != nil {
		return nil, err
	} else if set {
		client = append(client, func(o *s3.Options) { o.EndpointOptions.DisableHTTPS = v })
	}
	for _, key := range []string{"use_path_style", "s3ForcePathStyle"} {
		if v, set, err := boolParam(key); err != nil {
			return nil, err
		} else if set {
			client = append(client, func(o *s3.Options) { o.UsePathStyle = v })
		}
	}
	cfg, err := gcaws.V2ConfigFromURLParams(ctx, q)
	if err != nil {
		return nil, err
	}
	cfg.Logger = sdkLogger{logger}
	opts.RequestChecksumCalculation = cfg.RequestChecksumCalculation
	return s3blob.OpenBucket(ctx, s3.NewFromConfig(cfg, client...), u.Host, &opts)
}

// sdkLogger hands the AWS SDK's log lines to slog: WARN as warnings, the
// rest (DEBUG, only with a ClientLogMode set) as debug.
type sdkLogger struct{ l *slog.Logger }

func (s sdkLogger) Logf(c logging.Classification, format string, v ...any) {
	level := slog.LevelDebug
	if c == logging.Warn {
		level = slog.LevelWarn
	}
	s.l.Log(context.Background(), level, fmt.Sprintf(format, v...), "source", "aws-sdk")
}
