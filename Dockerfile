# syntax=docker/dockerfile:1
# weft's image for a real registry: the control plane `weft` and the proxy `weft-proxy` (the
# entrypoint; also `weft-proxy init`, the init container, which runs iptables). Same paths and
# user as the test cluster's localhost/weft/weft:dev, which tests/cluster/images builds without
# Docker: both binaries in /usr/local/bin, Debian bookworm's iptables (nft by default, legacy
# too), and the non-root user weft, uid and gid 2102. The init container needs root and
# NET_ADMIN/NET_RAW from its securityContext; the proxy runs as 2102.
#
#   docker build -t REGISTRY/weft:TAG .

FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
# The caches keep the crates and the build between runs; the binaries leave the cached target/
# in the same step.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p weft -p weft-proxy \
    && cp target/release/weft target/release/weft-proxy /usr/local/bin/

FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends iptables \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 2102 weft \
    && useradd --system --uid 2102 --gid 2102 --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin weft
COPY --from=build /usr/local/bin/weft /usr/local/bin/weft-proxy /usr/local/bin/
USER 2102:2102
ENTRYPOINT ["/usr/local/bin/weft-proxy"]
