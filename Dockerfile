# syntax=docker/dockerfile:1
# The one Skein image: every role (operator, control plane, proxy, init, ...) is a subcommand of
# the same `skein` binary.
#
#   docker build -t ghcr.io/skein-mesh/skein:0.1.0 .
#
# Untested here (no container engine in the development environment).

# ---- build: a static binary ----
# rust:alpine targets musl natively (x86_64- or aarch64-unknown-linux-musl, following the build
# platform), and musl binaries are statically linked by default, so the result runs on any base
# image. musl-dev: headers and crt files for ring's C and assembly parts.
FROM rust:1.95-alpine AS build
RUN apk add --no-cache musl-dev
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY benches benches
COPY src src
# Cache mounts keep the registry and the target dir between builds; the binary is copied out of
# the target cache mount, which later stages cannot see.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin skein \
 && cp target/release/skein /skein \
 && strip /skein

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
COPY --from=build /skein /usr/local/bin/skein
# Non-root by default (the operator, the control plane and the proxy need no privileges); the
# injected skein-init container asks for root with NET_ADMIN and NET_RAW explicitly.
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/skein"]
