#!/bin/bash
# build.sh: build the booted-Debian guest for tests/vm/debian/run.sh (cached).
#
# The kernel is the CAN guest's (tests/vm/build.sh: Debian's generic amd64 kernel, booted
# as an uncompressed vmlinux under qemu microvm). Here we add:
#   initramfs.cpio  busybox + the virtio/9p modules + tests/vm/debian/init, which mounts
#                   the root file system shared over virtio-9p and switch_roots to systemd;
#   base/           a Debian 12 root file system made by mmdebstrap from this machine's own
#                   apt sources (no mirror name is written here), with systemd 252, the
#                   kernel's CAN modules under /lib/modules (so modules-load.d and modprobe
#                   work as on a real box) and a few guest settings (serial console, no
#                   getty, volatile journal, tmpfs /tmp).
# Output: $DEBVM_DIR, default ${CARGO_TARGET_DIR:-target}/debvm. Nothing is rebuilt when
# the stamp (kernel version, package list, this script, init) is unchanged; DEBVM_REBUILD=1
# forces it. Needs root (mmdebstrap as root, chroot for depmod), mmdebstrap, busybox-static.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../../.." && pwd)
T=${CARGO_TARGET_DIR:-$ROOT/target}
CANVM=${CANVM_DIR:-$T/canvm}
OUT=${DEBVM_DIR:-$T/debvm}
die() { echo "tests/vm/debian/build.sh: $*" >&2; exit 1; }
[ "$(id -u)" = 0 ] || die "must run as root (mmdebstrap, chroot, a root-owned tree)"
command -v mmdebstrap >/dev/null || die "mmdebstrap missing: run tests/vm/install-deps.sh"
[ -x /bin/busybox ] || die "/bin/busybox missing: run tests/vm/install-deps.sh"
[ -f "$CANVM/vmlinux" ] && [ -f "$CANVM/kernel-version" ] || die "no kernel in $CANVM: run tests/vm/build.sh first"
KV=$(cat "$CANVM/kernel-version")
DEB=$(ls "$CANVM/debs/linux-image-${KV}"_*.deb 2>/dev/null | head -1)
[ -n "$DEB" ] || die "the kernel package for $KV is not cached in $CANVM/debs: run tests/vm/build.sh"
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)

# What the guest needs besides the package under test: systemd as PID 1, apt to install
# ./obdgw_*.deb, the package's dependencies and recommends (the guest has no network),
# iproute2 for vcan0, passwd for test users.
INCLUDE=systemd,systemd-sysv,dbus,udev,kmod,iproute2,ca-certificates,can-utils,passwd,procps
stamp="$KV $INCLUDE $(cat "$0" "$HERE/init" | sha256sum | cut -c1-16)"
if [ "${DEBVM_REBUILD:-0}" != 1 ] && [ -f "$OUT/initramfs.cpio" ] && [ -x "$OUT/base/lib/systemd/systemd" ] &&
   [ "$(cat "$OUT/stamp" 2>/dev/null)" = "$stamp" ]; then
    echo "debvm: cached Debian root and initramfs for kernel $KV in $OUT"
    exit 0
fi
rm -f "$OUT/stamp"
t0=$(date +%s)

# The kernel pieces: virtio/9p for the initramfs, CAN for the root file system.
K=$OUT/kernel
rm -rf "$K"; mkdir -p "$K"
dpkg-deb --fsys-tarfile "$DEB" | tar -x -C "$K" --wildcards \
    "./lib/modules/$KV/modules.*" \
    './lib/modules/*/kernel/net/can' './lib/modules/*/kernel/drivers/net/can' \
    './lib/modules/*/kernel/drivers/virtio' './lib/modules/*/kernel/net/9p' \
    './lib/modules/*/kernel/fs/9p' './lib/modules/*/kernel/fs/netfs' './lib/modules/*/kernel/fs/fscache'
M=$K/lib/modules/$KV/kernel

# initramfs
R=$OUT/initramfs
rm -rf "$R"; mkdir -p "$R/bin" "$R/mods" "$R/proc" "$R/sys" "$R/dev" "$R/newroot"
cp /bin/busybox "$R/bin/busybox"
for applet in $(/bin/busybox --list); do [ "$applet" = busybox ] || ln -sf busybox "$R/bin/$applet"; done
install -m 0755 "$HERE/init" "$R/init"
: > "$R/mods/order"
for m in drivers/virtio/virtio_ring drivers/virtio/virtio drivers/virtio/virtio_mmio \
         net/9p/9pnet net/9p/9pnet_virtio fs/netfs/netfs fs/fscache/fscache fs/9p/9p; do
    [ -f "$M/$m.ko" ] || { echo "debvm: $m.ko not in $KV (built in?)" >&2; continue; }
    cp "$M/$m.ko" "$R/mods/"; basename "$m" >> "$R/mods/order"
done
(cd "$R" && find . | /bin/busybox cpio -o -H newc 2>/dev/null) > "$OUT/initramfs.cpio.tmp"
mv "$OUT/initramfs.cpio.tmp" "$OUT/initramfs.cpio"
rm -rf "$R"

# The Debian root, from the machine's own apt sources.
sources=()
for f in /etc/apt/sources.list.d/*.sources /etc/apt/sources.list; do
    [ -s "$f" ] && sources+=("$f")
done
[ ${#sources[@]} -gt 0 ] || die "no apt sources on this machine"
rm -rf "$OUT/base.tmp" "$OUT/base"
mmdebstrap --quiet --variant=apt --include="$INCLUDE" bookworm "$OUT/base.tmp" "${sources[@]}"
B=$OUT/base.tmp
# CAN modules where kmod finds them (systemd-modules-load, modprobe on `ip link add ... vcan`).
mkdir -p "$B/lib/modules/$KV/kernel/net" "$B/lib/modules/$KV/kernel/drivers/net"
cp -a "$K/lib/modules/$KV/"modules.order "$K/lib/modules/$KV/"modules.builtin* "$B/lib/modules/$KV/" 2>/dev/null || true
cp -a "$M/net/can" "$B/lib/modules/$KV/kernel/net/"
cp -a "$M/drivers/net/can" "$B/lib/modules/$KV/kernel/drivers/net/"
chroot "$B" depmod "$KV"
# Guest settings: the serial console belongs to the test; a volatile journal (the root is
# 9p); tmpfs on /tmp as on most installs; no timers waking apt.
ln -sf /dev/null "$B/etc/systemd/system/serial-getty@ttyS0.service"
ln -sf /dev/null "$B/etc/systemd/system/getty@tty1.service"
ln -sf /dev/null "$B/etc/systemd/system/apt-daily.timer"
ln -sf /dev/null "$B/etc/systemd/system/apt-daily-upgrade.timer"
ln -sf /dev/null "$B/etc/systemd/system/proc-sys-fs-binfmt_misc.automount"
mkdir -p "$B/etc/systemd/journald.conf.d"
printf '[Journal]\nStorage=volatile\n' > "$B/etc/systemd/journald.conf.d/debvm.conf"
[ -f "$B/usr/share/systemd/tmp.mount" ] && cp "$B/usr/share/systemd/tmp.mount" "$B/etc/systemd/system/tmp.mount" &&
    mkdir -p "$B/etc/systemd/system/local-fs.target.wants" &&
    ln -sf ../tmp.mount "$B/etc/systemd/system/local-fs.target.wants/tmp.mount"
# dpkg fsyncs every file; over 9p that costs seconds per package and proves nothing here.
echo force-unsafe-io > "$B/etc/dpkg/dpkg.cfg.d/debvm-unsafe-io"
# The guest has no network: without package lists, apt (installing ./obdgw_*.deb, whose
# dependencies are all present) starts in a fraction of the time under TCG.
rm -rf "$B/var/lib/apt/lists/"* "$B/var/cache/apt/"*.bin
echo debvm > "$B/etc/hostname"
: > "$B/etc/machine-id"
rm -f "$B/var/lib/dbus/machine-id"
mv "$B" "$OUT/base"
rm -rf "$K"
echo "$stamp" > "$OUT/stamp"
echo "debvm: built the Debian root ($(du -sh "$OUT/base" | cut -f1)) and initramfs for kernel $KV in $(( $(date +%s) - t0 )) s"
