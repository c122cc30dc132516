# syntax=docker/dockerfile:1
#
# kekeeper operator image: a static musl binary on distroless/static, running as 65532.
#
#   docker build -t ghcr.io/kekeeper/kekeeper:0.1.0 .
#   docker buildx build --platform linux/amd64,linux/arm64 -t ... .   (each platform builds
#   natively under BuildKit/QEMU: the musl target follows the build container's architecture)

ARG RUST_VERSION=1.95

FROM docker.io/library/rust:${RUST_VERSION}-bookworm AS builder
# musl-tools: musl-gcc for aws-lc-sys (the crypto library under the AWS SDK and the envelope);
# cmake/clang are not needed by aws-lc-sys >= 0.2x's default cc builder, but cmake is kept as
# its fallback.
RUN apt-get update \
 && apt-get install -y --no-install-recommends musl-tools cmake \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
RUN rustup target add "$(uname -m)-unknown-linux-musl"
COPY . .
# Cache mounts keep the registry and target dir between builds; the binary is copied out of
# the cached target dir. --locked: build exactly Cargo.lock.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    set -eux; \
    target="$(uname -m)-unknown-linux-musl"; \
    cargo build --release --locked --target "$target" --bin kekeeper; \
    install -D -m 0755 "target/$target/release/kekeeper" /out/kekeeper; \
    strip /out/kekeeper || true

FROM gcr.io/distroless/static-debian12:nonroot
LABEL org.opencontainers.image.title="kekeeper" \
      org.opencontainers.image.description="Kubernetes operator for call-recording KEK pairs under your AWS KMS key" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=builder /out/kekeeper /kekeeper
# distroless nonroot: uid/gid 65532; the chart's securityContext runs as the same user.
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["/kekeeper"]
CMD ["run"]
