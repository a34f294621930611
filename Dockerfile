# syntax=docker/dockerfile:1
#
# splicer in a container: a small runtime image that runs as an unprivileged user.
#
#   docker build --build-arg SPLICER_COMMIT="$(git rev-parse --short HEAD)" -t splicer:0.1.0 .
#   docker run -d --name splicer -p 443:443 -p 127.0.0.1:9090:9090 --stop-timeout 60 \
#       -v /etc/splicer:/etc/splicer:ro splicer:0.1.0
#
# The config is read from /etc/splicer/splicer.toml: mount the directory that holds it (and its
# ca_file and token_file, which relative paths in it are resolved against). The image ships no
# config of its own; examples are under /usr/share/splicer/examples.
#
# Base images are pinned by tag: the Rust toolchain to the exact release the project is built and
# tested with, Debian to its stable release, 13 "trixie" (stable since August 2025; 12
# "bookworm" is oldstable, with security updates until mid-2026 and LTS after that). Pin them by
# digest as well (`FROM rust:1.95.0-slim-trixie@sha256:...`) where the registry can be reached;
# the digests could not be looked up where this file was written. Both stages must be the same
# Debian release, since the binary links against the build stage's glibc.

# ---- build ------------------------------------------------------------------------------------
FROM rust:1.95.0-slim-trixie AS build
WORKDIR /src
# Only what cargo reads (.dockerignore sends nothing else): the manifest and lock file, the
# build script, the sources, and benches/ because Cargo.toml declares a bench target there.
# The context has no .git: the commit splicer_build_info reports comes from this build argument
# (build.rs reads it; "unknown" when not given).
ARG SPLICER_COMMIT=unknown
COPY Cargo.toml Cargo.lock build.rs ./
COPY src ./src
COPY benches ./benches
# The same command CI runs, so the image holds the binary the test suite was run against
# (tests/deploy_files.rs checks that this line stays exactly this). --locked: the versions in
# Cargo.lock, or fail.
RUN cargo build --release --locked
# The release profile keeps line tables (debug = 1) for profiling; the image does not need them.
# Symbols stay, so a panic's backtrace still names its functions. (A RUN of its own, so that the
# build line above stays exactly CI's command.)
# hadolint ignore=DL3059
RUN strip --strip-debug target/release/splicer

# ---- runtime ----------------------------------------------------------------------------------
FROM debian:trixie-slim
# ca-certificates: the system roots that health checks with tls_verify = true and no ca_file
# verify against. Nothing else (the health check below uses bash, which the base image has).
# Versions are not pinned:
# Debian's security updates replace them, and pinned versions would stop the image building.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/*
# A fixed numeric user, so that Kubernetes' runAsNonRoot can verify it and mounted files can be
# made readable to it (chown 10001 or chgrp 10001).
RUN groupadd --system --gid 10001 splicer \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin splicer \
    && mkdir -p /etc/splicer
COPY --from=build /src/target/release/splicer /usr/local/bin/splicer
COPY config/ /usr/share/splicer/examples/
USER 10001:10001

# 443: the listener of the example configs. 9090: the admin API (/health, /ready, /status,
# /metrics). In Docker's default bridge network an unprivileged process may bind 443 (Docker
# sets net.ipv4.ip_unprivileged_port_start=0 there); with --network host it may not: use a port
# above 1024 or the systemd unit instead.
EXPOSE 443 9090

# Healthy means ready: GET /ready on the admin API answers 200 (listeners accept, every pool has
# a backend up or fails open); 503 (no usable backend, or shutting down) or no answer is
# unhealthy. It needs an [admin] table on port 9090; SPLICER_ADMIN (http://host:port) moves it
# elsewhere, for this check and for `docker exec splicer splicer status`. `status --ready` asks
# only /ready and exits 0 or 1, never 2 (which Docker reserves); the image has no curl. Plain
# `splicer status` would also fail while one backend is down, which is no reason to take the
# balancer out of service or restart it (docs/operations.md, "As a container health check").
ENV SPLICER_ADMIN=http://127.0.0.1:9090
HEALTHCHECK --interval=10s --timeout=5s --start-period=15s --retries=3 \
    CMD ["splicer", "status", "--ready"]

# SIGTERM turns /ready 503 at once, keeps accepting for runtime.shutdown_delay (0s by default),
# then stops accepting and drains for runtime.drain_timeout (30s by default). Docker sends
# SIGKILL after 10s unless told otherwise: run with a --stop-timeout (or `docker stop -t`) above
# shutdown_delay + drain_timeout, e.g. 60.
STOPSIGNAL SIGTERM
ENTRYPOINT ["splicer"]
CMD ["run", "-c", "/etc/splicer/splicer.toml"]
