// Command imagebuild writes sellersnap's container image, offline, as an
// OCI image layout in a tar archive (make image): one layer on an empty
// base holding the static binary, the build machine's CA certificates
// (Debian's ca-certificates) and zoneinfo (tzdata), and /etc/passwd and
// /etc/group naming the non-root user 65532. There is no shell and no
// package manager. The image is reproducible: entries sorted, owned by
// 0:0 (the user's home by 65532), dated at -created (the commit's time),
// gzip without name or time, so the same binary and the same Debian files
// give the same digest.
//
// Load it with `podman load -i`, `skopeo copy oci-archive:…`, or
// `docker load -i` (Docker 25 or later).
package main

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// UID is the image's user: not root, the number distroless images use.
const UID = 65532

// Port is where `sellersnap run` serves /healthz, /readyz and /metrics in
// the shipped manifests (deploy/kubernetes).
const Port = "9464/tcp"

func main() {
	var o options
	flag.StringVar(&o.binary, "binary", "", "the static sellersnap binary (CGO_ENABLED=0) for linux/-arch")
	flag.StringVar(&o.arch, "arch", "amd64", "GOARCH of the binary")
	flag.StringVar(&o.version, "version", "dev", "image version (a label and the layout's ref name)")
	flag.StringVar(&o.revision, "revision", "", "commit the binary was built from (a label)")
	flag.Int64Var(&o.created, "created", 0, "creation time, Unix seconds (SOURCE_DATE_EPOCH: the commit's time)")
	flag.StringVar(&o.certs, "certs", "/etc/ssl/certs/ca-certificates.crt", "CA bundle to copy (Debian's ca-certificates)")
	flag.StringVar(&o.zoneinfo, "zoneinfo", "/usr/share/zoneinfo", "zoneinfo tree to copy (Debian's tzdata)")
	flag.StringVar(&o.out, "out", "bin/sellersnap-image.tar", "the archive to write")
	flag.Parse()
	digest, err := build(o)
	if err != nil {
		fmt.Fprintln(os.Stderr, "imagebuild:", err)
		os.Exit(1)
	}
	fmt.Printf("%s %s\n", o.out, digest)
}

type options struct {
	binary, arch, version, revision string
	created                         int64
	certs, zoneinfo, out            string
}

// build writes the archive and returns the image's manifest digest.
func build(o options) (v1.Hash, error) {
	if o.binary == "" {
		return v1.Hash{}, errors.New("-binary is required")
	}
	created := time.Unix(o.created, 0).UTC()
	layer, err := rootfs(o, created)
	if err != nil {
		return v1.Hash{}, err
	}
	l, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(layer)), nil },
		tarball.WithMediaType(types.OCILayer))
	if err != nil {
		return v1.Hash{}, err
	}
	img := mutate.MediaType(empty.Image, types.OCIManifestSchema1)
	img = mutate.ConfigMediaType(img, types.OCIConfigJSON)
	img, err = mutate.Append(img, mutate.Addendum{Layer: l, MediaType: types.OCILayer,
		History: v1.History{Created: v1.Time{Time: created}, CreatedBy: "make image (release/cmd/imagebuild)", Comment: "sellersnap " + o.version}})
	if err != nil {
		return v1.Hash{}, err
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return v1.Hash{}, err
	}
	cf = cf.DeepCopy()
	cf.Architecture, cf.OS, cf.Created = o.arch, "linux", v1.Time{Time: created}
	labels := map[string]string{
		"org.opencontainers.image.title":       "sellersnap",
		"org.opencontainers.image.description": "Snapshots of a PostgreSQL database of marketplace sellers as CSV, NDJSON and Parquet files in a bucket",
		"org.opencontainers.image.version":     o.version,
		"org.opencontainers.image.created":     created.Format(time.RFC3339),
	}
	if o.revision != "" {
		labels["org.opencontainers.image.revision"] = o.revision
	}
	cf.Config = v1.Config{
		User:         fmt.Sprintf("%d:%d", UID, UID),
		Entrypoint:   []string{"/usr/local/bin/sellersnap"},
		Cmd:          []string{"run", "-config", "/etc/sellersnap/pipeline.yaml"},
		Env:          []string{"PATH=/usr/local/bin", "SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt", "ZONEINFO=/usr/share/zoneinfo"},
		WorkingDir:   "/",
		ExposedPorts: map[string]struct{}{Port: {}},
		Labels:       labels,
		StopSignal:   "SIGTERM",
	}
	if img, err = mutate.ConfigFile(img, cf); err != nil {
		return v1.Hash{}, err
	}
	digest, err := img.Digest()
	if err != nil {
		return v1.Hash{}, err
	}

	dir, err := os.MkdirTemp("", "sellersnap-image-")
	if err != nil {
		return v1.Hash{}, err
	}
	defer os.RemoveAll(dir)
	p, err := layout.Write(dir, empty.Index)
	if err != nil {
		return v1.Hash{}, err
	}
	if err := p.AppendImage(img, layout.WithAnnotations(map[string]string{
		"org.opencontainers.image.ref.name": o.version,
	})); err != nil {
		return v1.Hash{}, err
	}
	if err := os.MkdirAll(filepath.Dir(o.out), 0o755); err != nil {
		return v1.Hash{}, err
	}
	return digest, tarDir(dir, o.out, created)
}

// entry is one file of the layer.
type entry struct {
	hdr  tar.Header
	data []byte
}

// rootfs returns the layer, gzip-compressed.
func rootfs(o options, created time.Time) ([]byte, error) {
	t := &tree{dirs: map[string]bool{}}
	if err := t.addBinary(o.binary); err != nil {
		return nil, err
	}
	if err := t.addCerts(o.certs); err != nil {
		return nil, err
	}
	if err := t.addZoneinfo(o.zoneinfo); err != nil {
		return nil, err
	}
	uid := strconv.Itoa(UID)
	t.addFile("etc/passwd", 0o644, []byte("root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:"+uid+":"+uid+":nonroot:/home/nonroot:/sbin/nologin\n"))
	t.addFile("etc/group", 0o644, []byte("root:x:0:\nnonroot:x:"+uid+":\n"))
	t.addDir("home/nonroot", 0o700, UID)
	t.addDir("etc/sellersnap", 0o755, 0)
	t.addDir("tmp", 0o1777, 0)
	return t.gzipTar(created)
}

// tree is the image's file system being assembled: entries in the order
// added, each parent directory once.
type tree struct {
	entries []entry
	dirs    map[string]bool
}

// addDir adds name and its missing parents (0755, root); name itself gets
// mode and uid.
func (t *tree) addDir(name string, mode int64, uid int) {
	for d := name; d != "." && d != "/" && !t.dirs[d]; d = path.Dir(d) {
		t.dirs[d] = true
		m, u := int64(0o755), 0
		if d == name {
			m, u = mode, uid
		}
		t.entries = append(t.entries, entry{hdr: tar.Header{Typeflag: tar.TypeDir, Name: d + "/", Mode: m, Uid: u, Gid: u}})
	}
}

func (t *tree) addFile(name string, mode int64, data []byte) {
	t.addDir(path.Dir(name), 0o755, 0)
	t.entries = append(t.entries, entry{hdr: tar.Header{Typeflag: tar.TypeReg, Name: name, Mode: mode, Size: int64(len(data))}, data: data})
}

func (t *tree) addSymlink(name, target string) {
	t.addDir(path.Dir(name), 0o755, 0)
	t.entries = append(t.entries, entry{hdr: tar.Header{Typeflag: tar.TypeSymlink, Name: name, Linkname: target, Mode: 0o777}})
}

// addBinary adds the sellersnap binary, which must be a static Linux one.
func (t *tree) addBinary(file string) error {
	bin, err := os.ReadFile(file)
	if err != nil {
		return err
	}
	if !bytes.HasPrefix(bin, []byte("\x7fELF")) {
		return fmt.Errorf("%s is not a Linux binary", file)
	}
	if bytes.Contains(bin, []byte("/lib64/ld-linux")) || bytes.Contains(bin, []byte("/lib/ld-linux")) {
		return fmt.Errorf("%s is linked dynamically: build it with CGO_ENABLED=0", file)
	}
	t.addFile("usr/local/bin/sellersnap", 0o755, bin)
	return nil
}

// addCerts adds the build machine's CA bundle.
func (t *tree) addCerts(file string) error {
	certs, err := os.ReadFile(file)
	if err != nil {
		return fmt.Errorf("CA certificates: %w (install Debian's ca-certificates)", err)
	}
	if n := bytes.Count(certs, []byte("BEGIN CERTIFICATE")); n < 10 {
		return fmt.Errorf("%s holds %d certificates: not a CA bundle", file, n)
	}
	t.addFile("etc/ssl/certs/ca-certificates.crt", 0o644, certs)
	return nil
}

// addZoneinfo adds the build machine's zoneinfo tree, without its right/
// and posix/ variants.
func (t *tree) addZoneinfo(dir string) error {
	zones := 0
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		rel = filepath.ToSlash(rel)
		if rel == "right" || rel == "posix" {
			return filepath.SkipDir // leap-second and duplicate variants
		}
		name := path.Join("usr/share/zoneinfo", rel)
		switch {
		case d.IsDir():
			t.addDir(name, 0o755, 0)
		case d.Type()&fs.ModeSymlink != 0:
			target, err := os.Readlink(p)
			if err != nil {
				return err
			}
			t.addSymlink(name, target)
		case d.Type().IsRegular():
			data, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			t.addFile(name, 0o644, data)
			zones++
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("zoneinfo: %w (install Debian's tzdata)", err)
	}
	if zones < 100 {
		return fmt.Errorf("%s holds %d zone files: not a zoneinfo tree", dir, zones)
	}
	return nil
}

// gzipTar writes the entries sorted by name and dated at created, as a
// gzip-compressed tar with no name or time in its header: reproducible.
func (t *tree) gzipTar(created time.Time) ([]byte, error) {
	slices.SortFunc(t.entries, func(a, b entry) int { return strings.Compare(a.hdr.Name, b.hdr.Name) })
	var buf bytes.Buffer
	zw, _ := gzip.NewWriterLevel(&buf, gzip.BestCompression)
	tw := tar.NewWriter(zw)
	for _, e := range t.entries {
		h := e.hdr
		h.ModTime, h.Format = created, tar.FormatPAX
		if err := tw.WriteHeader(&h); err != nil {
			return nil, err
		}
		if _, err := tw.Write(e.data); err != nil {
			return nil, err
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	if err := zw.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// tarDir writes the OCI layout in dir as a tar archive at out, entries
// sorted and dated at created.
func tarDir(dir, out string, created time.Time) error {
	var names []string
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err == nil && p != dir {
			names = append(names, p)
		}
		return err
	})
	if err != nil {
		return err
	}
	slices.Sort(names)
	f, err := os.CreateTemp(filepath.Dir(out), ".sellersnap-image-*.tmp")
	if err != nil {
		return err
	}
	defer os.Remove(f.Name())
	tw := tar.NewWriter(f)
	for _, p := range names {
		fi, err := os.Lstat(p)
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		h := &tar.Header{Name: filepath.ToSlash(rel), ModTime: created, Format: tar.FormatPAX, Mode: 0o644}
		if fi.IsDir() {
			h.Typeflag, h.Name, h.Mode = tar.TypeDir, h.Name+"/", 0o755
		} else {
			h.Typeflag, h.Size = tar.TypeReg, fi.Size()
		}
		if err := tw.WriteHeader(h); err != nil {
			return err
		}
		if !fi.IsDir() {
			data, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			if _, err := tw.Write(data); err != nil {
				return err
			}
		}
	}
	if err := tw.Close(); err != nil {
		return err
	}
	if err := f.Chmod(0o644); err != nil {
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	return os.Rename(f.Name(), out)
}
