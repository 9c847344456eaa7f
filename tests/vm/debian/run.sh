#!/bin/bash
# run.sh SCRIPT [FILE...]: boot the Debian 12 guest (systemd 252 as PID 1) and run SCRIPT
# in it as root, from a unit wanted by multi-user.target; exit with SCRIPT's status.
#
# Each run starts from a fresh copy of the cached root (tests/vm/debian/build.sh) in
# $DEBVM_DIR/run/root; SCRIPT and the FILEs are copied to /root/vmtest/ in it. The root is
# shared read-write over virtio-9p and mounted by the initramfs, which switch_roots to
# /lib/systemd/systemd. The script's output goes to the serial console, i.e. to our stdout;
# the guest powers off when it ends. After the run, the guest's files stay in
# $DEBVM_DIR/run/root for a post-mortem (e.g. root/vmtest/journal.txt).
#
# Exit status: the script's; 124 when DEBVM_TIMEOUT (default 1800 s) expires; 125 when the
# VM or the harness fails. Environment: DEBVM_DIR, DEBVM_MEM (default 1G), DEBVM_SMP (2),
# DEBVM_VERBOSE=1 (kernel and systemd boot messages), CANVM_ACCEL (kvm|tcg, as run.sh).
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../../.." && pwd)
T=${CARGO_TARGET_DIR:-$ROOT/target}
CANVM=${CANVM_DIR:-$T/canvm}
D=${DEBVM_DIR:-$T/debvm}
vmfail() { echo "tests/vm/debian/run.sh: $*" >&2; exit 125; }
[ $# -ge 1 ] || { echo "usage: $0 SCRIPT [FILE...]" >&2; exit 2; }
[ "$(id -u)" = 0 ] || vmfail "must run as root (the shared root keeps real owners)"
[ -x "$D/base/lib/systemd/systemd" ] && [ -f "$D/initramfs.cpio" ] || vmfail "no guest in $D: run tests/vm/debian/build.sh"
[ -f "$CANVM/vmlinux" ] || vmfail "no kernel in $CANVM: run tests/vm/build.sh"
command -v qemu-system-x86_64 >/dev/null || vmfail "qemu-system-x86_64 missing: run tests/vm/install-deps.sh"

RUN=$D/run
G=$RUN/root
rm -rf "$RUN"; mkdir -p "$RUN"
cp -a "$D/base" "$G"
mkdir -p "$G/root/vmtest"
install -m 0755 "$1" "$G/root/vmtest/test.sh"
shift
for f in "$@"; do cp -a "$f" "$G/root/vmtest/"; done
cat > "$G/etc/systemd/system/obdgw-vmtest.service" <<'UNIT'
[Unit]
Description=obdgw booted-Debian test
After=basic.target systemd-modules-load.service systemd-user-sessions.service

[Service]
Type=oneshot
Environment=LC_ALL=C.UTF-8 PATH=/usr/sbin:/usr/bin:/sbin:/bin DEBIAN_FRONTEND=noninteractive
WorkingDirectory=/root/vmtest
ExecStart=/bin/sh -c '/bin/bash /root/vmtest/test.sh; echo $? > /root/vmtest/status'
StandardOutput=tty
StandardError=inherit
TTYPath=/dev/ttyS0
TimeoutStartSec=0
ExecStopPost=/bin/systemctl --no-block poweroff

[Install]
WantedBy=multi-user.target
UNIT
mkdir -p "$G/etc/systemd/system/multi-user.target.wants"
ln -sf ../obdgw-vmtest.service "$G/etc/systemd/system/multi-user.target.wants/obdgw-vmtest.service"

accel=${CANVM_ACCEL:-}
if [ -z "$accel" ]; then
    # kvm_pvm (nested PVM) emulates a stock kernel far slower than TCG: see tests/vm/run.sh.
    if [ -r /dev/kvm ] && [ -w /dev/kvm ] && [ ! -d /sys/module/kvm_pvm ]; then accel=kvm; else accel=tcg; fi
fi
case $accel in
    kvm) accel_args=(-accel kvm -cpu host) ;;
    tcg) accel_args=(-accel tcg,thread=multi -cpu max) ;;
    *) vmfail "CANVM_ACCEL=$accel: expected kvm or tcg" ;;
esac
# microvm under TCG cannot calibrate the TSC by itself (see tests/vm/run.sh).
khz=$(awk -F: '/^cpu MHz/{printf "%d", $2 * 1000; exit}' /proc/cpuinfo)
if [ "${DEBVM_VERBOSE:-0}" = 1 ]; then quiet="loglevel=6"; else quiet="quiet loglevel=1 systemd.show_status=error"; fi
append="console=ttyS0 $quiet tsc_early_khz=$khz tsc=reliable no_timer_check panic=-1 oops=panic"
append+=" mitigations=off cryptomgr.notests rdinit=/init"
bios=()
[ -f /usr/share/qemu/qboot.rom ] && bios=(-bios /usr/share/qemu/qboot.rom)

pidfile=$RUN/qemu.pid
cleanup() {
    if [ -s "$pidfile" ]; then
        p=$(cat "$pidfile")
        if grep -qa -- "$RUN" "/proc/$p/cmdline" 2>/dev/null; then kill "$p" 2>/dev/null || true; fi
    fi
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

t0=$(date +%s)
{
    set +e
    timeout -k 5 "${DEBVM_TIMEOUT:-1800}" qemu-system-x86_64 \
        -M microvm,isa-serial=on,rtc=on,pit=on,pic=on "${bios[@]}" "${accel_args[@]}" \
        -m "${DEBVM_MEM:-1G}" -smp "${DEBVM_SMP:-2}" \
        -nodefaults -no-user-config -nographic -no-reboot -monitor none -serial stdio \
        -pidfile "$pidfile" -kernel "$CANVM/vmlinux" -initrd "$D/initramfs.cpio" -append "$append" \
        -fsdev "local,id=fsroot,path=$G,security_model=passthrough,multidevs=remap" \
        -device virtio-9p-device,fsdev=fsroot,mount_tag=debroot < /dev/null
    echo $? > "$RUN/qemu.status"
} 2>&1 | sed -u -e 's/\r$//' -e 's/\x1b\[[0-9;?]*[A-Za-z]//g' -e '/reboot: Power down$/d' &
wait $! || true
echo "debvm: the guest ran for $(( $(date +%s) - t0 )) s" >&2
qs=$(cat "$RUN/qemu.status" 2>/dev/null || echo none)
if [ "$qs" = 124 ] || [ "$qs" = 137 ]; then
    echo "tests/vm/debian/run.sh: timed out after ${DEBVM_TIMEOUT:-1800} s; the VM was killed" >&2
    exit 124
fi
[ -s "$G/root/vmtest/status" ] || vmfail "the guest ended without a test status (QEMU status $qs); rerun with DEBVM_VERBOSE=1"
exit "$(cat "$G/root/vmtest/status")"
