# syntax=docker/dockerfile:1
#
# hubcast container image: one binary, `hubcast`, whose subcommand picks the role.
#
#   docker build -t hubcast:0.1.0 .
#   docker build --build-arg CARGO_FEATURES= -t hubcast:0.1.0-slim .   # without OpenTelemetry export
#   docker run --rm -p 8080:8080 hubcast:0.1.0                 # `hubcast serve`, embedded bus
#   docker run --rm -e HUBCAST_BUS__AMQP_URL=amqp://... hubcast:0.1.0 edge
#   docker run --rm -e HUBCAST_BUS__AMQP_URL=amqp://... hubcast:0.1.0 router
#
# The build stage compiles the dependencies in a layer of their own, keyed only on Cargo.toml and
# Cargo.lock, so a change to src/ rebuilds hubcast alone. The runtime stage is distroless (glibc,
# libgcc, CA certificates, no shell, no package manager) and runs as an unprivileged user.

ARG RUST_VERSION=1.95

FROM rust:${RUST_VERSION}-bookworm AS builder
# Cargo features of the build. `otel` compiles in OTLP trace export, which stays off until
# tracing.otlp_endpoint is set; empty builds the smallest binary.
ARG CARGO_FEATURES=otel
WORKDIR /build

# 1. Dependencies only: a placeholder crate with the real manifest and lock file.
COPY Cargo.toml Cargo.lock ./
RUN mkdir src \
    && echo 'fn main() {}' > src/main.rs \
    && touch src/lib.rs \
    && cargo build --release --locked --features "$CARGO_FEATURES" \
    && rm -rf src

# 2. hubcast itself. COPY keeps the files' modification times, which can be older than the placeholder
# build: touch them so cargo always rebuilds the crate. Debug info is stripped (about 75 MB -> 14 MB), the
# symbol table stays, so panics and backtraces still name their functions.
COPY src ./src
RUN touch src/main.rs src/lib.rs \
    && cargo build --release --locked --features "$CARGO_FEATURES" \
    && strip --strip-debug -o /hubcast target/release/hubcast \
    && /hubcast --version

# cc-debian12 matches the builder's Debian 12 (bookworm) glibc; `nonroot` is uid/gid 65532.
FROM gcr.io/distroless/cc-debian12:nonroot
LABEL org.opencontainers.image.title="hubcast" \
      org.opencontainers.image.description="Message-queue-driven fan-out for ASP.NET Core SignalR hubs" \
      org.opencontainers.image.licenses="MIT"
COPY --from=builder /hubcast /usr/local/bin/hubcast
# An empty working directory: hubcast reads ./hubcast.toml (and its parents') when present, so none is
# picked up by accident; mount a file and pass `--config FILE` to use one.
WORKDIR /app
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["hubcast"]
CMD ["serve"]
