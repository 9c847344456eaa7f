#!/bin/bash
# build-debs.sh [amd64] [arm64] [armhf]: build the Debian packages (default: all three).
#
#   1. man pages and completions from the real clap Command (examples/gen-docs.rs) into
#      target/gen-docs (architecture-independent, made once);
#   2. the release binary per architecture (fat LTO, one codegen unit): amd64 natively, arm64
#      and armhf through packaging/cross-build.sh --release, both boxes' targets in ONE cargo
#      run (host build scripts and proc macros once; the two targets' serial LTO phases
#      share the two cores: docs/packaging.md has the measurements);
#   3. `cargo deb --no-build` per architecture (nothing is compiled twice);
#   4. lintian on each .deb (fails on any error or warning; overrides are in
#      packaging/debian/obdgw.lintian-overrides, each with its reason);
#   5. a size line per package.
# Output: target/debian/obdgw_<version>_{amd64,arm64,armhf}.deb (for cross targets cargo-deb
# writes to target/<triple>/debian/; they are copied beside the amd64 one).
# Environment: OBDGW_SKIP_RELEASE_BUILD=1 packages binaries that are already built;
# OBDGW_DEB_PROFILE=NAME packages Cargo profile NAME instead of `release`.
set -euo pipefail
cd "$(dirname "$0")/.."
T=${CARGO_TARGET_DIR:-target}
P=${OBDGW_DEB_PROFILE:-release}
arches=("$@")
[ ${#arches[@]} -gt 0 ] || arches=(amd64 arm64 armhf)

command -v cargo-deb >/dev/null || cargo install cargo-deb --locked --version 3.8.0
command -v lintian >/dev/null || { echo "build-debs.sh: lintian missing (apt-get install lintian)" >&2; exit 1; }

echo "=== man pages and completions"
cargo run --locked --quiet --example gen-docs -- "$T/gen-docs"
if [ "$T" != target ]; then
    # Cargo.toml's assets name target/gen-docs.
    mkdir -p target && rm -rf target/gen-docs && cp -a "$T/gen-docs" target/gen-docs
fi

triple_of() {
    case $1 in
        amd64) echo "" ;;
        arm64) echo aarch64-unknown-linux-gnu ;;
        armhf) echo armv7-unknown-linux-gnueabihf ;;
        *) echo "build-debs.sh: unknown architecture $1 (amd64, arm64, armhf)" >&2; return 2 ;;
    esac
}
native=0 cross=()
for arch in "${arches[@]}"; do
    triple_of "$arch" >/dev/null || exit 2
    case $arch in amd64) native=1 ;; arm64) cross+=(aarch64) ;; armhf) cross+=(armv7) ;; esac
done

# The binaries, each built once: amd64 natively, the boxes' targets in one cargo run.
if [ "${OBDGW_SKIP_RELEASE_BUILD:-0}" != 1 ]; then
    if [ "$native" = 1 ]; then
        echo "=== amd64: binary (profile $P)"
        t0=$(date +%s)
        cargo build --locked --profile "$P" --bin obdgw
        echo "=== amd64: binary built in $(( $(date +%s) - t0 )) s"
    fi
    if [ ${#cross[@]} -gt 0 ]; then
        echo "=== ${cross[*]}: binaries (profile $P)"
        t0=$(date +%s)
        packaging/cross-build.sh --profile "$P" "${cross[@]}"
        echo "=== ${cross[*]}: binaries built in $(( $(date +%s) - t0 )) s"
    fi
fi

mkdir -p "$T/debian"
rc=0
for arch in "${arches[@]}"; do
    triple=$(triple_of "$arch")
    echo "=== $arch: cargo deb --no-build"
    # cargo-deb maps the asset target/release/obdgw to target/[<triple>/]<profile>/obdgw.
    if [ -z "$triple" ]; then
        out=$(cargo deb --locked --no-build --no-strip --profile "$P")
    else
        out=$(cargo deb --locked --no-build --no-strip --profile "$P" --target "$triple")
    fi
    deb=$(echo "$out" | tail -1)
    [ -f "$deb" ] || { echo "build-debs.sh: cargo deb wrote no package ($out)" >&2; exit 1; }
    [ "$(dirname "$(realpath "$deb")")" = "$(realpath "$T/debian")" ] || cp "$deb" "$T/debian/"
    deb=$T/debian/$(basename "$deb")
    [ "$(dpkg-deb -f "$deb" Architecture)" = "$arch" ] || { echo "build-debs.sh: $deb is not $arch" >&2; exit 1; }
    echo "=== $arch: lintian"
    # --fail-on warning: errors and warnings fail; pedantic/info tags are shown, not fatal.
    if ! lintian --fail-on error,warning --info "$deb"; then
        echo "build-debs.sh: lintian rejects $deb" >&2; rc=1
    fi
    printf 'package %s: %s bytes (.deb), installed size %s KiB\n' "$(basename "$deb")" \
        "$(stat -c %s "$deb")" "$(dpkg-deb -f "$deb" Installed-Size)"
done
exit $rc
