# Multi-stage build. cargo-chef compiles the dependencies in a layer keyed on the manifests and
# Cargo.lock alone, so a source change recompiles only the workspace's own crates; then the
# workspace (service, seeder, migration CLI, fake external API) is built with the same command
# CI runs, and only the binaries ship, on a slim Debian. The release build has no failpoints
# (they are a cargo feature only the tests turn on; CI checks the binary for them).
FROM rust:1.95-bookworm AS chef
RUN cargo install cargo-chef --version 0.1.77 --locked
WORKDIR /app

FROM chef AS planner
COPY . .
RUN cargo chef prepare --recipe-path recipe.json

FROM chef AS build
COPY --from=planner /app/recipe.json recipe.json
RUN cargo chef cook --release --locked --workspace --bins --recipe-path recipe.json
COPY . .
# The commit, for `order-sync --version` and order_sync_build_info (the context has no .git):
#   docker compose build --build-arg GIT_SHA=$(git rev-parse --short=12 HEAD)
ARG GIT_SHA=unknown
ENV GIT_SHA=${GIT_SHA}
RUN cargo build --release --locked --workspace --bins

FROM debian:bookworm-slim
# ca-certificates: the trusted roots for an https EXTERNAL_API_URL (a private CA: SSL_CERT_FILE).
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/*
# The service needs no privilege: it listens on an unprivileged port and writes no file (logs go
# to stdout). A fixed numeric id, so an orchestrator can check it is not root (runAsNonRoot).
RUN groupadd --system --gid 10001 order-sync \
 && useradd --system --uid 10001 --gid order-sync --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin order-sync
COPY --from=build /app/target/release/order-sync /app/target/release/seeder /app/target/release/migration \
     /app/target/release/fake-external-api /usr/local/bin/
ENV HOST=0.0.0.0 PORT=8080
EXPOSE 8080
USER 10001:10001
# The image has no curl: the binary asks its own /health/ready (`order-sync healthcheck`; 503
# while PostgreSQL, Redis or, on a worker, the shard leases are not usable).
HEALTHCHECK --interval=10s --timeout=6s --start-period=30s --retries=3 \
  CMD ["order-sync", "healthcheck"]
CMD ["order-sync"]
