#!/bin/bash
# package-test.sh [DEB]: the booted-Debian test of the amd64 package (issue 13).
#
# Boots Debian 12 with systemd 252 as PID 1 in qemu (tests/vm/debian/), installs DEB
# (default: the newest target/debian/obdgw_*_amd64.deb) and runs
# tests/vm/debian/package-test.sh inside: install, simulators on vcan0, start with READY,
# status over the control socket (group obdgw yes, others no), structured journal, watchdog
# restart after SIGSTOP, reload, stop, upgrade keeping a modified conffile, remove and purge.
# For the upgrade step, the "previous package" is DEB repacked with a lower version.
#
# Needs root and, once, tests/vm/install-deps.sh; builds the guest (cached in target/)
# with tests/vm/build.sh and tests/vm/debian/build.sh. Exit status: the guest test's (0 all
# steps passed, 1 a step failed), 124/125 for a timeout or a harness failure.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
T=${CARGO_TARGET_DIR:-$ROOT/target}
deb=${1:-$(ls -t "$T"/debian/obdgw_*_amd64.deb 2>/dev/null | grep -v -e '~prev' | head -1 || true)}
[ -n "$deb" ] && [ -f "$deb" ] || { echo "tests/vm/package-test.sh: no amd64 .deb (run packaging/build-debs.sh)" >&2; exit 125; }
echo "package under test: $deb"
"$HERE/build.sh"
"$HERE/debian/build.sh"

W=$T/debvm/debs
rm -rf "$W"; mkdir -p "$W/x"
cp "$deb" "$W/obdgw_CUR_amd64.deb"
# The previous package: the same files under a lower version (0.1.0-1 -> 0.1.0-0~prev).
dpkg-deb -R "$deb" "$W/x"
ver=$(sed -n 's/^Version: //p' "$W/x/DEBIAN/control")
sed -i "s/^Version: .*/Version: ${ver%-*}-0~prev/" "$W/x/DEBIAN/control"
dpkg-deb -b -Zxz "$W/x" "$W/obdgw_PREV_amd64.deb" >/dev/null
rm -rf "$W/x"
exec "$HERE/debian/run.sh" "$HERE/debian/package-test.sh" "$W/obdgw_CUR_amd64.deb" "$W/obdgw_PREV_amd64.deb"
