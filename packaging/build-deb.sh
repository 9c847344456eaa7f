#!/usr/bin/env bash
# Build the Debian package: packaging/build-deb.sh [--target aarch64-unknown-linux-gnu]
# Installs cargo-deb when missing. The .deb lands in target/debian/ (or $CARGO_TARGET_DIR).
set -euo pipefail
cd "$(dirname "$0")/.."
command -v cargo-deb >/dev/null || cargo install cargo-deb --locked --version 3.8.0
exec cargo deb --locked "$@"
