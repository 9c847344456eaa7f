#!/bin/bash
# cargo-test.sh [CARGO ARGS...] [-- TEST ARGS...]: run every tests/socketcan*.rs target in
# ONE boot of the CAN guest, with TEST_OBDGW_REQUIRE_CAN=1 and OBDGW_REQUIRE_CAN=1 (a test
# that finds no AF_CAN must fail; OBDGW_REQUIRE_CAN is not a configuration key), and
# OBDGW_VM_MODULES naming a directory of extra guest kernel modules (see below).
#
# The test binaries are built on the host (`cargo test --no-run --message-format=json`,
# extra CARGO ARGS such as --release are passed on), then run one after another inside the
# guest from the package directory, as cargo runs them. TEST ARGS go to every binary (e.g.
# a name filter, --nocapture). Exit status: 0 when every binary passed, 1 when one failed,
# 124/125 from tests/vm/run.sh (timeout / VM failure), 2 when there is nothing to run.
# Needs the guest built by tests/vm/build.sh. CARGO (default cargo) names the cargo to use.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
cd "$ROOT"

cargo_args=()
test_args=()
while [ $# -gt 0 ]; do
    if [ "$1" = -- ]; then shift; test_args=("$@"); break; fi
    cargo_args+=("$1"); shift
done

targets=()
for f in tests/socketcan*.rs; do
    [ -f "$f" ] || continue
    t=$(basename "$f" .rs)
    targets+=(--test "$t")
done
if [ ${#targets[@]} -eq 0 ]; then
    echo "tests/vm/cargo-test.sh: no tests/socketcan*.rs targets" >&2
    exit 2
fi

# Build; list "DIR<TAB>EXECUTABLE" for each test binary.
list=$("${CARGO:-cargo}" test --no-run --message-format=json "${targets[@]}" "${cargo_args[@]}" |
    python3 -c '
import json, os, sys
for line in sys.stdin:
    try:
        m = json.loads(line)
    except ValueError:
        continue
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m.get("profile", {}).get("test"):
        print(os.path.dirname(m["manifest_path"]) + "\t" + m["executable"])
')
if [ -z "$list" ]; then
    echo "tests/vm/cargo-test.sh: cargo built no test binaries" >&2
    exit 2
fi

# The batch script runs inside the guest; it lives in the target dir, which is shared.
tdir=${CARGO_TARGET_DIR:-$ROOT/target}
mkdir -p "$tdir"

# Kernel modules that tests load themselves (busybox insmod), taken once from the guest
# kernel's package that build.sh keeps: sch_plug, a qdisc that holds frames as a controller
# nobody acknowledges does (tests/socketcan_txdeadline.rs). OBDGW_VM_MODULES names the
# directory in the guest.
canvm=${CANVM_DIR:-$tdir/canvm}
kv=$(cat "$canvm/kernel-version" 2>/dev/null || true)
vm_modules=$canvm/modules/$kv
if [ -n "$kv" ] && [ ! -f "$vm_modules/sch_plug.ko" ]; then
    deb=$(ls "$canvm"/debs/linux-image-"$kv"_*.deb 2>/dev/null | head -1 || true)
    if [ -n "$deb" ]; then
        mkdir -p "$vm_modules"
        dpkg-deb --fsys-tarfile "$deb" |
            tar -x -C "$vm_modules" --strip-components=7 --wildcards './lib/modules/*/kernel/net/sched/sch_plug.ko*' ||
            echo "tests/vm/cargo-test.sh: sch_plug not found in $deb" >&2
        [ ! -f "$vm_modules/sch_plug.ko.xz" ] || xz -df "$vm_modules/sch_plug.ko.xz"
    fi
fi
batch=$(mktemp "$tdir/obdgw-vm-batch.XXXXXX")
trap 'rm -f "$batch"' EXIT
{
    echo 'export TEST_OBDGW_REQUIRE_CAN=1 OBDGW_REQUIRE_CAN=1'
    printf 'export OBDGW_VM_MODULES=%q\n' "$vm_modules"
    echo 'failed=0'
    while IFS=$'\t' read -r dir exe; do
        printf 'echo "     Running %s (in the CAN guest)"\n' "$exe"
        printf 's=$(date +%%s.%%N)\n'
        printf '(cd %q && exec %q' "$dir" "$exe"
        [ ${#test_args[@]} -eq 0 ] || printf ' %q' "${test_args[@]}"
        printf ') || { echo "obdgw-vm: FAILED: %s"; failed=1; }\n' "${exe##*/}"
        printf 'echo "obdgw-vm: %s took $(awk "BEGIN{printf \\"%%.2f\\", $(date +%%s.%%N) - $s}") s"\n' "${exe##*/}"
    done <<< "$list"
    echo 'exit $failed'
} > "$batch"
exec_status=0
"$HERE/run.sh" /bin/bash "$batch" || exec_status=$?
exit "$exec_status"
