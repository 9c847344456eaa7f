#!/bin/bash
# build.sh: build the CAN guest (kernel + initramfs) for tests/vm/run.sh.
#
# Takes the kernel Debian's `linux-image-amd64` metapackage currently depends on (generic
# flavour: the cloud flavour has no CAN), unpacks the uncompressed ELF vmlinux for a PVH
# direct boot (no in-guest XZ decompression, which costs seconds under TCG), the CAN,
# virtio and 9p modules, and packs them with busybox and tests/vm/init into an initramfs.
#
# Output (cached): $CANVM_DIR, default ${CARGO_TARGET_DIR:-target}/canvm
#   vmlinux  initramfs.cpio  kernel-version
# Nothing is rebuilt when kernel-version names the same kernel and init is unchanged.
#
# Environment: CANVM_DIR, CANVM_KPKG (a linux-image-VERSION-amd64 package to use instead of
# the metapackage's), CANVM_REBUILD=1 (ignore the cache).
# Needs: apt lists, dpkg-deb, tar, python3 (lzma), /bin/busybox (busybox-static).
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
T=${CARGO_TARGET_DIR:-$ROOT/target}
OUT=${CANVM_DIR:-$T/canvm}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)

die() { echo "tests/vm/build.sh: $*" >&2; exit 1; }
[ -x /bin/busybox ] || die "/bin/busybox missing; run tests/vm/install-deps.sh (busybox-static)"
command -v python3 >/dev/null || die "python3 missing (needed to unpack vmlinux)"

resolve() {
    apt-cache depends linux-image-amd64 2>/dev/null |
        awk '/Depends: linux-image-[0-9]/{print $2; exit}'
}
KPKG=${CANVM_KPKG:-$(resolve)}
if [ -z "$KPKG" ]; then
    apt-get update -qq >/dev/null 2>&1 || true
    KPKG=$(resolve)
fi
[ -n "$KPKG" ] || die "cannot resolve linux-image-amd64 to a kernel package (apt-get update?)"
KV=${KPKG#linux-image-}
case $KV in *cloud*) die "$KPKG is the cloud flavour, which has no CAN modules; use linux-image-*-amd64";; esac

stamp="$KV $(sha256sum "$HERE/init" | cut -c1-16)"
if [ "${CANVM_REBUILD:-0}" != 1 ] && [ -f "$OUT/vmlinux" ] && [ -f "$OUT/initramfs.cpio" ] &&
   [ "$(cat "$OUT/stamp" 2>/dev/null)" = "$stamp" ]; then
    echo "canvm: cached guest for kernel $KV in $OUT"
    exit 0
fi

mkdir -p "$OUT/debs"
cd "$OUT/debs"
if ! ls "${KPKG}"_*.deb >/dev/null 2>&1; then
    rm -f linux-image-*.deb
    apt-get download "$KPKG" >/dev/null 2>&1 || { apt-get update -qq >/dev/null 2>&1; apt-get download "$KPKG"; } ||
        die "apt-get download $KPKG failed"
fi
DEB=$(ls "${KPKG}"_*.deb | head -1)

rm -rf "$OUT/kernel" "$OUT/root"
mkdir -p "$OUT/kernel"
# Only the image and the module trees the guest loads (the package unpacks to ~450 MB).
dpkg-deb --fsys-tarfile "$DEB" | tar -x -C "$OUT/kernel" --wildcards \
    './boot/vmlinuz-*' \
    './lib/modules/*/kernel/net/can' './lib/modules/*/kernel/drivers/net/can' \
    './lib/modules/*/kernel/drivers/virtio' './lib/modules/*/kernel/net/9p' \
    './lib/modules/*/kernel/fs/9p' './lib/modules/*/kernel/fs/netfs' './lib/modules/*/kernel/fs/fscache'

# The bzImage carries the kernel as an XZ stream; unpack it to the ELF QEMU boots via PVH.
python3 - "$OUT/kernel/boot/vmlinuz-$KV" "$OUT/vmlinux.tmp" <<'PY'
import lzma, sys
data = open(sys.argv[1], "rb").read()
at = data.find(b"\xfd7zXZ\x00")
if at < 0:
    sys.exit("build.sh: no XZ stream in the bzImage; this kernel is not XZ-compressed")
elf = lzma.LZMADecompressor(format=lzma.FORMAT_XZ).decompress(data[at:])
if elf[:4] != b"\x7fELF":
    sys.exit("build.sh: the bzImage payload is not an ELF image")
open(sys.argv[2], "wb").write(elf)
PY
mv "$OUT/vmlinux.tmp" "$OUT/vmlinux"

M=$OUT/kernel/lib/modules/$KV/kernel
R=$OUT/root
mkdir -p "$R/bin" "$R/mods" "$R/proc" "$R/sys" "$R/dev" "$R/tmp" "$R/host"
cp /bin/busybox "$R/bin/busybox"
for applet in $(/bin/busybox --list); do
    [ "$applet" = busybox ] || ln -sf busybox "$R/bin/$applet"
done
install -m 0755 "$HERE/init" "$R/init"

# Dependency order (there is no modules.dep in the initramfs): can-dev before vcan,
# can before its protocols, virtio before 9p transport, netfs and fscache before 9p.
order="
drivers/virtio/virtio_ring drivers/virtio/virtio drivers/virtio/virtio_mmio
drivers/virtio/virtio_pci_modern_dev drivers/virtio/virtio_pci_legacy_dev drivers/virtio/virtio_pci
net/9p/9pnet net/9p/9pnet_virtio fs/netfs/netfs fs/fscache/fscache fs/9p/9p
drivers/net/can/dev/can-dev drivers/net/can/vcan drivers/net/can/vxcan
net/can/can net/can/can-raw net/can/can-bcm net/can/can-gw net/can/can-isotp
net/can/j1939/can-j1939
"
: > "$R/mods/order"
for m in $order; do
    name=$(basename "$m")
    if [ -f "$M/$m.ko" ]; then
        cp "$M/$m.ko" "$R/mods/$name.ko"
    elif [ -f "$M/$m.ko.xz" ]; then
        xz -dc "$M/$m.ko.xz" > "$R/mods/$name.ko"
    elif [ -f "$M/$m.ko.zst" ] && command -v zstd >/dev/null; then
        zstd -qdc "$M/$m.ko.zst" > "$R/mods/$name.ko"
    else
        # Built into this kernel (or absent): init reports a missing protocol when used.
        echo "canvm: module $m not found in $KPKG (built in?)" >&2
        continue
    fi
    echo "$name" >> "$R/mods/order"
done

# An uncompressed newc archive unpacks fastest in the guest.
(cd "$R" && find . | /bin/busybox cpio -o -H newc 2>/dev/null) > "$OUT/initramfs.cpio"
rm -rf "$OUT/kernel" "$R"
echo "$KV" > "$OUT/kernel-version"
echo "$stamp" > "$OUT/stamp"
echo "canvm: built guest for kernel $KV in $OUT ($(du -h "$OUT/initramfs.cpio" | cut -f1) initramfs)"
