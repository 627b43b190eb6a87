# Multi-stage build: compile the workspace (service, seeder, migration CLI) with the same command
# CI runs, then ship only the binaries on a slim Debian.
FROM rust:1.95-bookworm AS build
WORKDIR /app
COPY . .
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
CMD ["order-sync"]
