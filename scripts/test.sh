#!/usr/bin/env bash
# The whole test suite: formatting, lints, unit, property and integration
# tests against real PostgreSQL servers. Installs the system packages the
# tests need first, so it works on a fresh machine.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/install-system-deps.sh
cargo fmt --all -- --check
cargo clippy --locked --all-targets -- -D warnings
if cargo nextest --version >/dev/null 2>&1; then
    cargo nextest run --locked --profile ci "$@"
else
    cargo test --locked "$@"
fi
