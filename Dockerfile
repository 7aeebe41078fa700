# The one Skein image: every role (operator, control plane, proxy, init, ...) is a subcommand of
# the same `skein` binary.
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src src
RUN cargo build --release --locked && strip target/release/skein

FROM debian:bookworm-slim
# iptables: `skein init` programs the pod's traffic capture with it.
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates iptables \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/skein /usr/local/bin/skein
# Non-root by default; the injected init container asks for root (and NET_ADMIN) explicitly.
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/skein"]
