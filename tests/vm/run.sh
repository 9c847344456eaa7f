#!/bin/bash
# run.sh BINARY [ARGS...]: run one program inside the CAN guest and exit with its status.
#
# The guest is a Debian kernel (built by tests/vm/build.sh) with vcan0 and vcan1 up (CAN FD
# MTU) and the CAN modules loaded (raw, bcm, gw, isotp, j1939, vxcan). It sees the host's /
# read-only over 9p and runs BINARY as root in the current directory, with the whole
# environment of this script plus CANVM_GUEST=1. The current directory and
# $CARGO_TARGET_DIR are shared read-write at their host paths; /tmp, /run and /dev/shm are
# fresh and empty in the guest. The guest's output is streamed to stdout.
#
# Exit status: the program's own; 124 when CANVM_TIMEOUT expires; 125 when the VM or the
# harness fails (no kernel, QEMU error, guest panic, share not mountable).
#
# Environment:
#   CANVM_DIR          guest artifacts (default ${CARGO_TARGET_DIR:-<repo>/target}/canvm)
#   CANVM_TIMEOUT   seconds before the VM is killed (default 600)
#   CANVM_MEM       guest memory (default 512M; 96M is the working minimum)
#   CANVM_SMP       guest CPUs (default 2)
#   CANVM_ACCEL     kvm | tcg (default: kvm when /dev/kvm is usable and not nested PVM)
#   CANVM_NVCAN     number of vcan interfaces (default 2)
#   CANVM_RW        more host directories to share read-write, ':'-separated
#   CANVM_VERBOSE   1: show the kernel's boot messages
#   CANVM_TIMES     1: print boot and run times on stderr
# Also usable as a cargo runner:
#   CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUNNER=tests/vm/run.sh cargo test --test socketcan
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
[ $# -ge 1 ] || { echo "usage: $0 BINARY [ARGS...]" >&2; exit 2; }
D=${CANVM_DIR:-${CARGO_TARGET_DIR:-$ROOT/target}/canvm}
QEMU=qemu-system-x86_64
vmfail() { echo "tests/vm/run.sh: $*" >&2; exit 125; }
[ -f "$D/vmlinux" ] && [ -f "$D/initramfs.cpio" ] ||
    vmfail "no guest in $D; run tests/vm/build.sh first"
command -v "$QEMU" >/dev/null || vmfail "$QEMU not found; run tests/vm/install-deps.sh"
# The guest's init must be this checkout's (build.sh records its hash in the stamp).
[ "$(cut -d' ' -f2 "$D/stamp" 2>/dev/null)" = "$(sha256sum "$HERE/init" | cut -c1-16)" ] ||
    vmfail "the guest in $D was built from another tests/vm/init; run tests/vm/build.sh"

prog=$1; shift
case $prog in
    */*) prog=$(realpath "$prog") ;;
    *) prog=$(command -v "$prog") || vmfail "$1: command not found" ;;
esac

accel=${CANVM_ACCEL:-}
if [ -z "$accel" ]; then
    # A /dev/kvm provided by kvm_pvm (nested PVM) emulates a stock kernel far slower than
    # TCG and then fails on cmpxchg16b/xrstor; only a real KVM is worth using.
    if [ -r /dev/kvm ] && [ -w /dev/kvm ] && [ ! -d /sys/module/kvm_pvm ]; then accel=kvm; else accel=tcg; fi
fi
case $accel in
    kvm) accel_args=(-accel kvm -cpu host) ;;
    tcg) accel_args=(-accel tcg,thread=multi -cpu max) ;;
    *) vmfail "CANVM_ACCEL=$accel: expected kvm or tcg" ;;
esac

JOB=$(mktemp -d "${TMPDIR:-/tmp}/obdgw-vm.XXXXXX")
qemu_pid=
cleanup() {
    if [ -s "$JOB/qemu.pid" ]; then
        p=$(cat "$JOB/qemu.pid")
        # only if it is still our QEMU (the pid may have been reused)
        if grep -qa -- "$JOB" "/proc/$p/cmdline" 2>/dev/null; then kill "$p" 2>/dev/null || true; fi
    fi
    rm -rf "$JOB"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# The job, run by bash inside the guest, chrooted into the host's /.
{
    printf 'cd %q || exit 125\n' "$PWD"
    while IFS= read -r -d '' kv; do
        name=${kv%%=*}
        case $name in
            PWD|OLDPWD|SHLVL|_|TMPDIR|BASH_FUNC_*|*[!A-Za-z0-9_]*) continue ;;
        esac
        printf 'export %s=%q\n' "$name" "${kv#*=}"
    done < /proc/self/environ
    echo 'export CANVM_GUEST=1'
    printf 'exec %q' "$prog"
    [ $# -eq 0 ] || printf ' %q' "$@"
    echo
} > "$JOB/job.sh"

shares=()
n9p=0
share() { # TAG HOSTPATH ro|rw
    local ro=
    [ "$3" = ro ] && ro=,readonly=on
    shares+=(-fsdev "local,id=fs$n9p,path=$2,security_model=none,multidevs=remap$ro"
             -device "virtio-9p-device,fsdev=fs$n9p,mount_tag=$1")
    n9p=$((n9p + 1))
}
share hostroot / ro
share job "$JOB" rw
# Read-write shares at their host paths; a path inside an earlier one is covered by it.
rw=()
IFS=: read -r -a want <<< "$PWD${CARGO_TARGET_DIR:+:$CARGO_TARGET_DIR}${CANVM_RW:+:$CANVM_RW}"
for p in "${want[@]}"; do
    [ -n "$p" ] && [ -d "$p" ] || continue
    p=$(realpath "$p")
    [ "$p" != / ] || continue
    dup=
    for q in "${rw[@]}"; do case $p/ in "$q"/*) dup=1 ;; esac; done
    [ -z "$dup" ] || continue
    rw+=("$p")
    share "rw${#rw[@]}" "$p" rw
    echo "rw${#rw[@]} $p" >> "$JOB/mounts"
done
# The guest's /tmp, /run and /dev/shm are fresh tmpfs: a program living there needs its own
# (read-only) share.
pdir=$(dirname "$prog")
case $pdir/ in
    /tmp/*|/run/*|/dev/shm/*)
        dup=
        for q in "${rw[@]}"; do case $pdir/ in "$q"/*) dup=1 ;; esac; done
        if [ -z "$dup" ]; then share progdir "$pdir" ro; echo "progdir $pdir" >> "$JOB/mounts"; fi ;;
esac

tty=0; [ -t 1 ] && tty=1
# microvm has no PIT speaker port, HPET or ACPI PM timer, and TCG offers no kvmclock: the
# kernel cannot calibrate the TSC by itself and would hang, so give it the host's rate
# (TCG's guest TSC runs at the host's TSC rate).
khz=$(awk -F: '/^cpu MHz/{printf "%d", $2 * 1000; exit}' /proc/cpuinfo)
if [ "${CANVM_VERBOSE:-0}" = 1 ]; then
    loglevel="loglevel=7"; pre='/^CANVM_JOB_START$/d'
else
    # up to the job's start keep only kernel messages (panics) and init's own lines
    loglevel="quiet loglevel=1"; pre='1,/^CANVM_JOB_START$/{/^\[ *[0-9]/b;/^obdgw-vm:/b;d}'
fi
append="console=ttyS0 $loglevel canvm_tty=$tty canvm_nvcan=${CANVM_NVCAN:-2} tsc_early_khz=$khz"
append+=" tsc=reliable no_timer_check panic=-1 oops=panic mitigations=off cryptomgr.notests rdinit=/init"

bios=()
[ -f /usr/share/qemu/qboot.rom ] && bios=(-bios /usr/share/qemu/qboot.rom)   # fast, silent firmware

t0=$(date +%s.%N)
# QEMU runs in the background and this shell waits: bash runs traps (SIGTERM from CI,
# ^C) only between commands, so a foreground pipeline would leave QEMU behind.
{
    set +e
    timeout -k 5 "${CANVM_TIMEOUT:-600}" "$QEMU" \
        -M microvm,isa-serial=on,rtc=on,pit=on,pic=on "${bios[@]}" "${accel_args[@]}" \
        -m "${CANVM_MEM:-512M}" -smp "${CANVM_SMP:-2}" \
        -nodefaults -no-user-config -nographic -no-reboot -monitor none -serial stdio \
        -pidfile "$JOB/qemu.pid" -kernel "$D/vmlinux" -initrd "$D/initramfs.cpio" \
        -append "$append" "${shares[@]}" < /dev/null
    echo $? > "$JOB/qemu.status"
} 2>&1 | sed -u -e 's/\r$//' -e '/reboot: Power down$/d' -e "$pre" &
wait $! || true
t1=$(date +%s.%N)

qs=$(cat "$JOB/qemu.status" 2>/dev/null || echo none)
if [ "$qs" = 124 ] || [ "$qs" = 137 ]; then
    echo "tests/vm/run.sh: timed out after ${CANVM_TIMEOUT:-600} s; the VM was killed" >&2
    exit 124
fi
[ -s "$JOB/status" ] ||
    vmfail "the guest ended without a job status (QEMU status $qs); rerun with CANVM_VERBOSE=1"
st=$(cat "$JOB/status")
if [ "${CANVM_TIMES:-0}" = 1 ]; then
    printf 'obdgw-vm: %.2f s in all; the job started at %s s guest uptime\n' \
        "$(awk "BEGIN{print $t1 - $t0}")" "$(cat "$JOB/job-start" 2>/dev/null)" >&2
fi
exit "$st"
