# Multi-stage build: compile the workspace (service, seeder, migration CLI) with the same command
# CI runs, then ship only the binaries on a slim Debian.
FROM rust:1.95-bookworm AS build
WORKDIR /app
COPY . .
RUN cargo build --release --locked --workspace --bins

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /app/target/release/order-sync /app/target/release/seeder /app/target/release/migration \
     /app/target/release/fake-external-api /usr/local/bin/
ENV HOST=0.0.0.0 PORT=8080
EXPOSE 8080
CMD ["order-sync"]
