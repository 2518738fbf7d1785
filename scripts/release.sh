#!/bin/sh
# make release VERSION=vX.Y.Z [PLATFORMS="linux/amd64 …"] [OUT=bin/release]
#
# Builds the release archives of one commit, reproducibly: the same commit,
# Go toolchain and module versions give byte-identical archives on any
# machine (static binaries built with -trimpath and no build id, archive
# entries sorted, owned by 0:0 and dated at the commit's time, gzip without
# a name or time), each with a CycloneDX SBOM made from the binary's own
# build information, and SHA256SUMS over all of it. Nothing is downloaded
# but Go modules (from the module proxy, or the cache).
set -eu

die() { echo "release: $*" >&2; exit 2; }

VERSION=${VERSION:-}
case "$VERSION" in
v[0-9]*.[0-9]*.[0-9]*) ;;
*) die "VERSION must be a semantic version such as v1.2.3 (got '${VERSION}')" ;;
esac
PLATFORMS=${PLATFORMS:-linux/amd64 linux/arm64 darwin/arm64 windows/amd64}
OUT=${OUT:-bin/release}
GO=${GO:-go}

cd "$(dirname "$0")/.."
if [ -n "$(git status --porcelain --untracked-files=no)" ] && [ "${RELEASE_DIRTY:-}" != 1 ]; then
	die "the work tree has uncommitted changes: a release is built from a commit (RELEASE_DIRTY=1 to build anyway, marked -dirty)"
fi
COMMIT=$(git rev-parse HEAD)
[ -n "$(git status --porcelain --untracked-files=no)" ] && COMMIT="$COMMIT-dirty"
SOURCE_DATE_EPOCH=$(git log -1 --format=%ct HEAD)
export SOURCE_DATE_EPOCH

rm -rf "$OUT"
mkdir -p "$OUT/.stage"
OUT=$(cd "$OUT" && pwd)
for platform in $PLATFORMS; do
	os=${platform%/*}
	arch=${platform#*/}
	name="sellersnap_${VERSION#v}_${os}_${arch}"
	exe=sellersnap
	[ "$os" = windows ] && exe=sellersnap.exe
	stage="$OUT/.stage/$name"
	mkdir -p "$stage"
	echo "release: building $name"
	CGO_ENABLED=0 GOOS=$os GOARCH=$arch $GO build -trimpath -buildvcs=false \
		-ldflags "-s -w -buildid= -X main.version=$VERSION -X main.commit=$COMMIT" \
		-o "$stage/$exe" ./cmd/sellersnap
	cp README.md CHANGELOG.md "$stage/"
	# The SBOM reads the module list Go embedded in the binary, so it
	# describes exactly what was linked for this platform.
	(cd release && $GO tool cyclonedx-gomod bin -json -noserial -notimestamp \
		-version "$VERSION" -output "$OUT/$name.cdx.json" "$stage/$exe") ||
		die "SBOM of $name failed (cd release && go tool cyclonedx-gomod bin …)"
	cp "$OUT/$name.cdx.json" "$stage/sbom.cdx.json"
	find "$stage" -exec touch -h -d "@$SOURCE_DATE_EPOCH" {} +
	chmod 0755 "$stage/$exe"
	chmod 0644 "$stage/README.md" "$stage/CHANGELOG.md" "$stage/sbom.cdx.json"
	tar --sort=name --mtime="@$SOURCE_DATE_EPOCH" --owner=0 --group=0 --numeric-owner \
		--format=posix --pax-option=exthdr.name=%d/PaxHeaders/%f,delete=atime,delete=ctime \
		-C "$OUT/.stage" -cf - "$name" | gzip -9n >"$OUT/$name.tar.gz"
done
rm -rf "$OUT/.stage"
(cd "$OUT" && sha256sum -- *.tar.gz *.cdx.json >SHA256SUMS)
echo "release: $OUT"
ls -l "$OUT"
