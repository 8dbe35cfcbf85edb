# patroni-dr-watchdog container image.
#
#   docker build -t patroni-dr-watchdog:0.1.0 \
#       --build-arg REVISION="$(git rev-parse HEAD)" \
#       --build-arg SOURCE_URL="<the repository's URL>" .
#   docker run --rm --read-only -e WATCHDOG_GOLD_HOST=... patroni-dr-watchdog:0.1.0 check
#
# Two stages: the official Rust image on Debian 12 (bookworm) builds the
# release binary; the runtime is distroless cc-debian12 (glibc, libgcc_s,
# CA certificates, /etc/passwd with `nonroot`; no shell, no package manager).
# The binary links only libc, libm, libgcc_s and the dynamic loader (TLS is
# rustls: no libssl), all of which that image has; it is built against the
# same Debian 12 glibc (2.36) it runs on. scripts/check-image.sh checks this,
# and runs the binary the way this image runs it (arbitrary non-root UID,
# read-only root, no HOME, a root file system holding only what distroless
# holds), since no container engine is available where it was written.
#
# Runs as any UID: it writes no file, reads settings only from WATCHDOG_*
# variables (and, if configured, a mounted password file / CA file), so it
# needs no writable directory, no group 0 permissions and works with
# `readOnlyRootFilesystem: true` and OpenShift's restricted-v2 SCC.
#
# Pin both base images by digest in production (`FROM image:tag@sha256:…`);
# the digests could not be resolved where this file was written.

ARG RUST_VERSION=1.95.0

# ------------------------------------------------------------------ build ----
FROM rust:${RUST_VERSION}-bookworm AS build
SHELL ["/bin/bash", "-euo", "pipefail", "-c"]
WORKDIR /build
ENV CARGO_TERM_COLOR=never \
    CARGO_INCREMENTAL=0

# Dependencies first, in their own layer: it is rebuilt only when Cargo.toml
# or Cargo.lock change. A stand-in lib and main let cargo build every
# dependency; then this crate's own artefacts are removed so the real
# sources (whose copied mtimes may be older than the stand-ins) are always
# rebuilt below.
COPY Cargo.toml Cargo.lock ./
RUN mkdir src \
    && echo 'fn main() {}' > src/main.rs \
    && : > src/lib.rs \
    && cargo build --release --locked \
    && rm -rf src \
        target/release/patroni-dr-watchdog \
        target/release/patroni-dr-watchdog.d \
        target/release/libpatroni_dr_watchdog.* \
        target/release/deps/patroni_dr_watchdog-* \
        target/release/deps/libpatroni_dr_watchdog-* \
        target/release/.fingerprint/patroni-dr-watchdog-*

COPY src ./src
# The stand-in ignores its arguments and prints nothing: `--version` naming
# the program proves the artefact is the real one.
RUN touch src/main.rs src/lib.rs \
    && cargo build --release --locked \
    && install -D -m 0755 target/release/patroni-dr-watchdog /out/patroni-dr-watchdog \
    && /out/patroni-dr-watchdog --version | grep -q '^patroni-dr-watchdog '

# ---------------------------------------------------------------- runtime ----
FROM gcr.io/distroless/cc-debian12:nonroot

ARG VERSION=0.1.0
ARG REVISION=unknown
ARG SOURCE_URL=""
LABEL org.opencontainers.image.title="patroni-dr-watchdog" \
      org.opencontainers.image.description="Watches a primary PostgreSQL site from its DR site and promotes the DR Patroni standby cluster when the primary is really gone" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.source="${SOURCE_URL}" \
      org.opencontainers.image.licenses="Apache-2.0"

# Owned by root and not writable by the user it runs as.
COPY --from=build --chown=0:0 /out/patroni-dr-watchdog /usr/local/bin/patroni-dr-watchdog

# Nothing is read from or written to the working directory.
WORKDIR /
# distroless `nonroot`, numerically (so runAsNonRoot can verify it); any
# other UID works as well (OpenShift assigns one from the namespace's range).
USER 65532:65532
# HTTP: /livez /readyz /metrics /status (WATCHDOG_LISTEN_ADDR, default 0.0.0.0:9808).
EXPOSE 9808
# No HEALTHCHECK: there is no shell or curl in the image; Kubernetes probes
# GET /livez and /readyz on 9808 instead.
# SIGTERM (the default stop signal) drains and exits 0 within a second.
ENTRYPOINT ["/usr/local/bin/patroni-dr-watchdog"]
CMD ["run"]
