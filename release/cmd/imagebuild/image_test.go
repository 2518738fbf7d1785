package main

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/sellersnap/sellersnap/internal/pgtest"
)

func TestMain(m *testing.M) { os.Exit(pgtest.Main(m)) }

// TestImageIsReproducibleAndRuns builds the static binary as make image
// does, the image twice, and compares the archives byte for byte; then it
// unpacks the image as a container runtime would (index, manifest, config,
// layers) and checks what the image promises: a non-root user, no shell,
// TLS roots and zoneinfo present; and runs the binary from the unpacked
// root (chrooted as the image's user when the test runs as root):
// `version`, and `validate` against the throwaway PostgreSQL with a config
// in a time zone.
func TestImageIsReproducibleAndRuns(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binary (make test-image)")
	}
	dir := t.TempDir()
	bin := filepath.Join(dir, "sellersnap")
	gobuild := exec.Command("go", "build", "-trimpath", "-buildvcs=false", "-ldflags", "-s -w -buildid= -X main.version=v0.0.0-test",
		"-o", bin, "./cmd/sellersnap")
	gobuild.Dir = "../../.." // the main module, with its own go.sum
	gobuild.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux")
	if out, err := gobuild.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	var digests []string
	var archives [][]byte
	for i := range 2 {
		out := filepath.Join(dir, fmt.Sprintf("image%d.tar", i))
		d, err := build(options{binary: bin, arch: goarch(t), version: "v0.0.0-test", revision: "0123abc", created: 1764583200,
			certs: "/etc/ssl/certs/ca-certificates.crt", zoneinfo: "/usr/share/zoneinfo", out: out})
		if err != nil {
			t.Fatal(err)
		}
		data, err := os.ReadFile(out)
		if err != nil {
			t.Fatal(err)
		}
		digests, archives = append(digests, d.String()), append(archives, data)
	}
	if digests[0] != digests[1] || !bytes.Equal(archives[0], archives[1]) {
		t.Fatalf("two builds differ: %s and %s", digests[0], digests[1])
	}
	t.Logf("image %s, archive %d bytes", digests[0], len(archives[0]))

	img := readLayout(t, archives[0])
	if img.digest != digests[0] {
		t.Errorf("index.json names %s, want %s", img.digest, digests[0])
	}
	if img.config.OS != "linux" || img.config.Architecture != goarch(t) {
		t.Errorf("platform %s/%s", img.config.OS, img.config.Architecture)
	}
	cfg := img.config.Config
	if cfg.User != "65532:65532" {
		t.Errorf("user %q, want 65532:65532 (not root)", cfg.User)
	}
	if len(cfg.Entrypoint) != 1 || cfg.Entrypoint[0] != "/usr/local/bin/sellersnap" {
		t.Errorf("entrypoint %q", cfg.Entrypoint)
	}
	if _, ok := cfg.ExposedPorts[Port]; !ok {
		t.Errorf("exposed ports %v, want %s", cfg.ExposedPorts, Port)
	}

	root := filepath.Join(dir, "rootfs")
	files := unpack(t, img.layers, root)
	for _, want := range []string{"usr/local/bin/sellersnap", "etc/ssl/certs/ca-certificates.crt", "usr/share/zoneinfo/America/Los_Angeles",
		"usr/share/zoneinfo/Europe/Berlin", "etc/passwd", "etc/group", "tmp/"} {
		if !files[want] {
			t.Errorf("%s missing from the image", want)
		}
	}
	for f := range files {
		if base := path.Base(f); base == "sh" || base == "bash" || base == "busybox" || base == "apt" || base == "dpkg" {
			t.Errorf("the image holds %s", f)
		}
	}
	if certs, err := os.ReadFile(filepath.Join(root, "etc/ssl/certs/ca-certificates.crt")); err != nil || bytes.Count(certs, []byte("BEGIN CERTIFICATE")) < 100 {
		t.Errorf("TLS roots: %d certificates, %v", bytes.Count(certs, []byte("BEGIN CERTIFICATE")), err)
	}
	if zi, err := os.ReadFile(filepath.Join(root, "usr/share/zoneinfo/America/Los_Angeles")); err != nil || !bytes.HasPrefix(zi, []byte("TZif")) {
		t.Errorf("zoneinfo America/Los_Angeles is not a TZif file: %v", err)
	}

	// Run it from the image's root.
	dbURL := pgtest.NewDatabase(t)
	conf := fmt.Sprintf("source: {dsn: %q}\njobs:\n  - {name: new-sellers, mode: per_run, destination: 'file:///tmp/out', timezone: America/Los_Angeles}\n", dbURL)
	if err := os.WriteFile(filepath.Join(root, "etc/sellersnap/pipeline.yaml"), []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	run := func(args ...string) string {
		t.Helper()
		cmd := exec.Command(filepath.Join(root, "usr/local/bin/sellersnap"), args...)
		cmd.Env = cfg.Env
		if os.Geteuid() == 0 {
			// As a container runtime would: the image's root, its user.
			cmd.Path, cmd.Dir = "/usr/local/bin/sellersnap", "/"
			cmd.SysProcAttr = &syscall.SysProcAttr{Chroot: root, Credential: &syscall.Credential{Uid: 65532, Gid: 65532}}
		} else {
			args = append([]string{}, args...)
			for i, a := range args {
				if strings.HasPrefix(a, "/etc/sellersnap/") {
					args[i] = filepath.Join(root, a)
				}
			}
			cmd.Args = append([]string{cmd.Path}, args...)
		}
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("sellersnap %s in the image: %v\n%s", strings.Join(args, " "), err, out)
		}
		return string(out)
	}
	if out := run("version"); !strings.HasPrefix(out, "sellersnap v0.0.0-test") {
		t.Errorf("version: %q", out)
	}
	if out := run("validate", "-config", "/etc/sellersnap/pipeline.yaml"); !strings.Contains(out, "ok") {
		t.Errorf("validate: %q", out)
	}
	if os.Geteuid() != 0 {
		t.Log("not root: ran the binary from the unpacked image without chroot or the image's user")
	}
}

func goarch(t *testing.T) string {
	out, err := exec.Command("go", "env", "GOARCH").Output()
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(out))
}

type image struct {
	digest string
	config struct {
		OS           string `json:"os"`
		Architecture string `json:"architecture"`
		Config       struct {
			User         string              `json:"User"`
			Entrypoint   []string            `json:"Entrypoint"`
			Env          []string            `json:"Env"`
			ExposedPorts map[string]struct{} `json:"ExposedPorts"`
		} `json:"config"`
	}
	layers [][]byte
}

// readLayout reads an OCI layout archive the way a runtime does, checking
// every blob against its digest.
func readLayout(t *testing.T, archive []byte) image {
	t.Helper()
	files := map[string][]byte{}
	tr := tar.NewReader(bytes.NewReader(archive))
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		data, _ := io.ReadAll(tr)
		files[h.Name] = data
	}
	if !bytes.Contains(files["oci-layout"], []byte(`"imageLayoutVersion"`)) {
		t.Fatalf("no oci-layout file: %q", files["oci-layout"])
	}
	blob := func(digest string) []byte {
		t.Helper()
		data, ok := files["blobs/sha256/"+strings.TrimPrefix(digest, "sha256:")]
		sum := sha256.Sum256(data)
		if !ok || "sha256:"+hex.EncodeToString(sum[:]) != digest {
			t.Fatalf("blob %s missing or corrupt", digest)
		}
		return data
	}
	type descriptor struct {
		MediaType string `json:"mediaType"`
		Digest    string `json:"digest"`
	}
	var index struct {
		Manifests []descriptor `json:"manifests"`
	}
	if err := json.Unmarshal(files["index.json"], &index); err != nil || len(index.Manifests) != 1 {
		t.Fatalf("index.json: %v, %d manifests", err, len(index.Manifests))
	}
	var manifest struct {
		MediaType string       `json:"mediaType"`
		Config    descriptor   `json:"config"`
		Layers    []descriptor `json:"layers"`
	}
	if err := json.Unmarshal(blob(index.Manifests[0].Digest), &manifest); err != nil {
		t.Fatal(err)
	}
	if manifest.MediaType != "application/vnd.oci.image.manifest.v1+json" || manifest.Config.MediaType != "application/vnd.oci.image.config.v1+json" {
		t.Errorf("media types %s, %s: want OCI", manifest.MediaType, manifest.Config.MediaType)
	}
	img := image{digest: index.Manifests[0].Digest}
	if err := json.Unmarshal(blob(manifest.Config.Digest), &img.config); err != nil {
		t.Fatal(err)
	}
	for _, l := range manifest.Layers {
		img.layers = append(img.layers, blob(l.Digest))
	}
	return img
}

// unpack extracts gzip'd layers into root and lists the entries.
func unpack(t *testing.T, layers [][]byte, root string) map[string]bool {
	t.Helper()
	files := map[string]bool{}
	for _, l := range layers {
		zr, err := gzip.NewReader(bytes.NewReader(l))
		if err != nil {
			t.Fatal(err)
		}
		tr := tar.NewReader(zr)
		for {
			h, err := tr.Next()
			if errors.Is(err, io.EOF) {
				break
			}
			if err != nil {
				t.Fatal(err)
			}
			if h.Uid != 0 && h.Name != "home/nonroot/" {
				t.Errorf("%s owned by %d", h.Name, h.Uid)
			}
			files[h.Name] = true
			p := filepath.Join(root, filepath.FromSlash(h.Name))
			switch h.Typeflag {
			case tar.TypeDir:
				if err := os.MkdirAll(p, 0o755); err != nil {
					t.Fatal(err)
				}
				_ = os.Chmod(p, os.FileMode(h.Mode&0o777)|modeBits(h.Mode))
				_ = os.Lchown(p, h.Uid, h.Gid)
			case tar.TypeSymlink:
				if err := os.Symlink(h.Linkname, p); err != nil {
					t.Fatal(err)
				}
			case tar.TypeReg:
				data, _ := io.ReadAll(tr)
				if err := os.WriteFile(p, data, os.FileMode(h.Mode&0o777)); err != nil {
					t.Fatal(err)
				}
			default:
				t.Errorf("%s: unexpected entry type %c", h.Name, h.Typeflag)
			}
		}
	}
	return files
}

func modeBits(m int64) os.FileMode {
	if m&0o1000 != 0 {
		return os.ModeSticky
	}
	return 0
}
