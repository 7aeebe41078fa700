# syntax=docker/dockerfile:1
# The one Skein image: every role (operator, control plane, proxy, init, ...) is a subcommand of
# the same `skein` binary; `skein proxy` runs the lean `skein-proxy` beside it (the data plane's
# crate alone, no Kubernetes client: less memory in every meshed pod).
#
#   docker build -t ghcr.io/skein-mesh/skein:0.1.0 .
#
# No container engine runs in the development environment or CI; tests/image.rs rebuilds the
# build stage's view of the source (exactly what its COPY lines copy, less .dockerignore) and
# checks the crate there, so a missing input fails the tests.

# ---- build: a static binary ----
# rust:alpine targets musl natively (x86_64- or aarch64-unknown-linux-musl, following the build
# platform), and musl binaries are statically linked by default, so the result runs on any base
# image. musl-dev: headers and crt files for ring's C and assembly parts. protoc needs no
# package: src/core/build.rs uses the one protoc-bin-vendored ships, statically linked, so it runs on musl
# (set PROTOC to use another).
FROM rust:1.95-alpine AS build
RUN apk add --no-cache musl-dev
WORKDIR /src
# Everything the build reads: the workspace's manifest and lockfile, the proto/ files
# src/core/build.rs compiles, the sources (with the member crates' manifests), and benches/
# (Cargo.toml names its targets, so the manifest does not load without them).
COPY Cargo.toml Cargo.lock ./
COPY proto proto
COPY benches benches
COPY src src
# `skein dev up` checks the machine for the tools this list names (compiled in).
COPY tests/cluster/host-tools.txt tests/cluster/host-tools.txt
# Cache mounts keep the registry and the target dir between builds; the binary is copied out of
# the target cache mount, which later stages cannot see.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin skein --bin skein-proxy \
 && cp target/release/skein target/release/skein-proxy / \
 && strip /skein /skein-proxy

# ---- runtime ----
# Not distroless-static: `skein init` shells out to iptables-restore/ip6tables-restore, and to
# the -nft and -legacy variants of them and of *-save to use whichever backend the node already
# uses (mixing them splits the ruleset). Debian's one `iptables` package ships all of these, for
# IPv4 and IPv6, with the plain names pointing at nft; slim keeps the rest of the image small.
# ca-certificates: for HTTPS endpoints signed by public CAs (a Zipkin collector, a federated
# cluster's apiserver).
FROM debian:trixie-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates iptables \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /skein /skein-proxy /usr/local/bin/
# Non-root by default (the operator, the control plane and the proxy need no privileges); the
# injected skein-init container asks for root with NET_ADMIN and NET_RAW explicitly.
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/skein"]
