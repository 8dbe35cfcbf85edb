#!/usr/bin/env bash
# The whole test suite: formatting, lints, unit, property, integration and
# end-to-end tests (real PostgreSQL, Patroni and etcd), then the manifests
# (kustomize, Kubernetes schemas, promtool) and the release binary as the
# image runs it. Each step installs what it needs when it is missing, so it
# works on a fresh machine: here the Debian packages of
# scripts/packages/tests.txt; check-manifests.sh and check-image.sh install
# their own (see their heads).
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/install-system-deps.sh tests
cargo fmt --all -- --check
cargo clippy --locked --all-targets -- -D warnings
if cargo nextest --version >/dev/null 2>&1; then
    cargo nextest run --locked --profile ci "$@"
else
    cargo test --locked "$@"
fi
scripts/check-manifests.sh
scripts/check-image.sh
