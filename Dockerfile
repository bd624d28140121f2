# syntax=docker/dockerfile:1
# orderflow's image: `docker build -t orderflow .`, or `docker compose up`.

# Builder: the Rust toolchain the project is developed with, plus what
# librdkafka's bundled (vendored) build needs: a C/C++ toolchain, make,
# cmake, pkg-config, and zlib headers for compression.
FROM rust:1.95-bookworm AS builder
RUN apt-get update \
    && apt-get install -y --no-install-recommends \
        build-essential cmake pkg-config python3 zlib1g-dev \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
# Cache mounts keep the registry and compiled dependencies between builds;
# the binary is copied out because the target cache is not part of the layer.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin orderflow \
    && cp target/release/orderflow /usr/local/bin/orderflow

# Runtime: the binary alone on Debian slim (same release as the builder, so
# glibc matches). curl is for the health check.
FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates curl zlib1g \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --no-create-home orderflow
COPY --from=builder /usr/local/bin/orderflow /usr/local/bin/orderflow
USER orderflow
# /metrics, /health and /ready; set ORDERFLOW__METRICS__LISTEN=0.0.0.0:9898
# so they are reachable from outside the container.
EXPOSE 9898
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s \
    CMD curl -fsS http://127.0.0.1:9898/health || exit 1
ENTRYPOINT ["orderflow"]
CMD ["run"]
