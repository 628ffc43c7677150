#!/usr/bin/env bash
# Runs every check and test of the workspace. Run as root: kernel tests create network namespaces.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -q -- -D warnings
cargo build --workspace -q
python3 scripts/check-docs.py
scripts/render-diagrams.sh --check
python3 deploy/validate.py --bin-dir target/x86_64-unknown-linux-gnu/debug
cargo nextest run --workspace --no-fail-fast "$@"
