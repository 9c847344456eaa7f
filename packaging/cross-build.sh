#!/usr/bin/env bash
# Cross-build obdgw for the Raspberry-Pi-class boxes it ships on.
#
#   packaging/cross-build.sh [--check|--release|--profile NAME|--test] [aarch64] [armv7]
#
#   --check         cargo check of the library and binaries (fast)
#   --release       release binaries in $CARGO_TARGET_DIR/<triple>/release/obdgw (the default)
#   --profile NAME  the same with Cargo profile NAME, in <triple>/NAME/obdgw
#
# --check and --release build all the named targets in one cargo run (docs/packaging.md:
# two targets' fat-LTO builds side by side take about the time of one after the other's
# CPU, not twice the wall time).
#   --test          the library's unit tests, run under qemu-user
#
# Installs what it needs: the Rust targets (rustup), Debian's cross gcc (for ring's C code and
# linking) and, for --test, qemu-user. When a download is refused it says so loudly, goes on
# with the other targets and exits 3 at the end: a skipped target is never a success (CI
# fails on it). Exit status: 0 all built, 1 a build failed, 3 a target could not be set up.
set -euo pipefail
cd "$(dirname "$0")/.."

mode=release
profile=release
arches=()
want_profile=0
for a in "$@"; do
    if [ "$want_profile" = 1 ]; then profile=$a; want_profile=0; continue; fi
    case "$a" in
        --check) mode=check ;;
        --release) mode=release; profile=release ;;
        --profile) mode=release; want_profile=1 ;;
        --profile=*) mode=release; profile=${a#--profile=} ;;
        --test) mode=test ;;
        aarch64|armv7) arches+=("$a") ;;
        -h|--help) sed -n '2,/^set /{/^#/p}' "$0"; exit 0 ;;
        *) echo "cross-build.sh: unknown argument '$a' (see --help)" >&2; exit 2 ;;
    esac
done
[ "$want_profile" = 0 ] || { echo "cross-build.sh: --profile needs a name" >&2; exit 2; }
[ ${#arches[@]} -gt 0 ] || arches=(aarch64 armv7)

sudo_() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }
skip() { echo "!!!!! SKIPPING $1: $2 !!!!!"; skipped=1; }

failed=0
skipped=0
ready=()
for arch in "${arches[@]}"; do
    case "$arch" in
        aarch64) triple=aarch64-unknown-linux-gnu; gnu=aarch64-linux-gnu; pkgs="gcc-aarch64-linux-gnu libc6-dev-arm64-cross"; qemu=qemu-aarch64 ;;
        armv7) triple=armv7-unknown-linux-gnueabihf; gnu=arm-linux-gnueabihf; pkgs="gcc-arm-linux-gnueabihf libc6-dev-armhf-cross"; qemu=qemu-arm ;;
    esac
    echo "=== $triple: set up"
    if ! rustup target list --installed | grep -qx "$triple"; then
        if ! rustup target add "$triple"; then skip "$triple" "rustup could not download the target"; continue; fi
    fi
    need=$pkgs
    [ "$mode" = test ] && need="$need qemu-user"
    missing=""
    for p in $need; do dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"; done
    if [ -n "$missing" ]; then
        if ! { sudo_ apt-get update -qq && sudo_ apt-get install -y -qq $missing; }; then
            skip "$triple" "apt could not install$missing"; continue
        fi
    fi
    up=$(echo "$triple" | tr 'a-z-' 'A-Z_')
    export "CARGO_TARGET_${up}_LINKER=${gnu}-gcc"
    export "CC_${triple//-/_}=${gnu}-gcc" "AR_${triple//-/_}=${gnu}-ar"
    export "CARGO_TARGET_${up}_RUNNER=${qemu} -L /usr/${gnu}"
    ready+=("--target" "$triple")
    [ "$mode" != test ] || cargo test --locked --target "$triple" --lib || failed=1
done
# check and release: one cargo run for all the targets, so that the host's build scripts
# and proc macros are built once and cargo keeps both cores busy (while one target's
# final, less parallel, LTO and codegen runs, the other compiles).
if [ "$mode" != test ] && [ ${#ready[@]} -gt 0 ]; then
    echo "=== cargo $mode ${ready[*]}"
    case "$mode" in
        check) cargo check --locked "${ready[@]}" --lib --bins || failed=1 ;;
        release) cargo build --locked --profile "$profile" "${ready[@]}" --bin obdgw || failed=1 ;;
    esac
fi
[ "$failed" = 0 ] || exit 1
[ "$skipped" = 0 ] || exit 3
exit 0
