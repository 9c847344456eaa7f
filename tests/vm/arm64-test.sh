#!/bin/bash
# arm64-test.sh [DEB]: install the arm64 package in an arm64 Debian 12 root under qemu-user
# and run `obdgw --version` and `obdgw config check` there.
# arm64-test.sh --prepare: only set up binfmt_misc and build (or keep) the cached root; CI
# runs this in the background while the cross build compiles.
#
# The root (mmdebstrap --architectures=arm64 from this machine's apt sources, with systemd
# as on a Raspberry Pi OS, for systemd-sysusers and deb-systemd-helper) is cached in
# ${CARGO_TARGET_DIR:-target}/arm64root/base; each run works on a fresh copy. Foreign
# binaries run through binfmt_misc and Debian's qemu-user-static (registered here when
# missing). Needs root. DEB defaults to the newest target/debian/obdgw_*_arm64.deb.
# Exit status: 0 passed, 1 a check failed, 125 the harness could not be set up.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
T=${CARGO_TARGET_DIR:-$ROOT/target}
D=$T/arm64root
die() { echo "tests/vm/arm64-test.sh: $*" >&2; exit 125; }
[ "$(id -u)" = 0 ] || die "must run as root (mmdebstrap, chroot)"
export DEBIAN_FRONTEND=noninteractive LC_ALL=C.UTF-8

# binfmt_misc + qemu-user-static ("F": the interpreter is opened at registration, so it
# works inside the chroot).
# arch-test: mmdebstrap's check that the foreign architecture runs.
if [ ! -x /usr/bin/qemu-aarch64-static ] || ! command -v arch-test >/dev/null; then
    apt-get install -y -qq --no-install-recommends qemu-user-static arch-test >/dev/null ||
        die "cannot install qemu-user-static and arch-test"
fi
[ -e /proc/sys/fs/binfmt_misc/register ] || mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc ||
    die "binfmt_misc is not available"
if [ ! -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ]; then
    /lib/systemd/systemd-binfmt /usr/lib/binfmt.d/qemu-aarch64.conf || die "cannot register qemu-aarch64 with binfmt_misc"
fi
grep -q '^flags:.*F' /proc/sys/fs/binfmt_misc/qemu-aarch64 || die "qemu-aarch64 binfmt lacks the F flag (qemu-user-binfmt instead of qemu-user-static?)"

INCLUDE=systemd,ca-certificates
stamp="$INCLUDE $(sha256sum < "$0" | cut -c1-16)"
if [ ! -x "$D/base/bin/sh" ] || [ "$(cat "$D/stamp" 2>/dev/null)" != "$stamp" ]; then
    t0=$(date +%s)
    rm -rf "$D"; mkdir -p "$D"
    sources=()
    for f in /etc/apt/sources.list.d/*.sources /etc/apt/sources.list; do [ -s "$f" ] && sources+=("$f"); done
    mmdebstrap --quiet --architectures=arm64 --variant=apt --include="$INCLUDE" bookworm "$D/base.tmp" "${sources[@]}" ||
        die "mmdebstrap of the arm64 root failed"
    mv "$D/base.tmp" "$D/base"
    echo "$stamp" > "$D/stamp"
    echo "arm64root: built in $(( $(date +%s) - t0 )) s ($(du -sh "$D/base" | cut -f1))"
fi

if [ "${1:-}" = --prepare ]; then echo "arm64root: ready in $D/base"; exit 0; fi

deb=${1:-$(ls -t "$T"/debian/obdgw_*_arm64.deb 2>/dev/null | head -1 || true)}
[ -n "$deb" ] && [ -f "$deb" ] || die "no arm64 .deb (run packaging/build-debs.sh arm64)"
echo "package under test: $deb"
R=$D/run
rm -rf "$R"; cp -a "$D/base" "$R"
cp "$deb" "$R/root/obdgw_arm64.deb"
for fs in proc sys dev; do mount --bind "/$fs" "$R/$fs"; done
trap 'for fs in dev sys proc; do umount -l "$R/$fs" 2>/dev/null || true; done' EXIT

failed=0
check() { local what=$1; shift; if "$@"; then echo "ok   $what"; else echo "FAIL $what"; failed=1; fi; }
in_root() { chroot "$R" "$@"; }
check "arm64 root (uname -m under qemu-user: aarch64)" test "$(in_root uname -m)" = aarch64
check "apt install ./obdgw_arm64.deb" in_root apt-get install -y -q /root/obdgw_arm64.deb
check "obdgw is an aarch64 binary" bash -c "file -b '$R/usr/bin/obdgw' 2>/dev/null | grep -q aarch64 || od -An -tx1 -j18 -N2 '$R/usr/bin/obdgw' | grep -q 'b7 00'"
check "obdgw --version" in_root /usr/bin/obdgw --version
check "user obdgw created from sysusers.d" in_root id obdgw
check "config 640 root:obdgw" test "$(in_root stat -c '%a %U:%G' /etc/obdgw/obdgw.toml)" = "640 root:obdgw"
check "obdgw config check, as the service user" in_root runuser -u obdgw -- /usr/bin/obdgw config check --config /etc/obdgw/obdgw.toml
exit $failed
