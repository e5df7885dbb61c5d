#!/usr/bin/env bash
# Builds the .deb and the .rpm into target/packages/:
#   bash packaging/build.sh
# Installs cargo-deb and cargo-generate-rpm when missing (from crates.io).
set -euo pipefail
cd "$(dirname "$0")/.."
command -v cargo-deb >/dev/null 2>&1 || cargo install --locked cargo-deb
command -v cargo-generate-rpm >/dev/null 2>&1 || cargo install --locked cargo-generate-rpm
KEDGE_COMMIT="${KEDGE_COMMIT:-$(git rev-parse --short=12 HEAD 2>/dev/null || echo unknown)}"
export KEDGE_COMMIT
cargo build --release --locked --bin kedge
strip target/release/kedge -o target/release/kedge.stripped && mv target/release/kedge.stripped target/release/kedge
mkdir -p target/packages
cargo deb --no-build --no-strip --output target/packages/
cargo generate-rpm --output target/packages/
ls -l target/packages/
