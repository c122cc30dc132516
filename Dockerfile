# syntax=docker/dockerfile:1
#
# kekeeper operator image: the release binary on distroless (cc, nonroot), running as 65532.
#
#   docker build -t ghcr.io/kekeeper/kekeeper:"$(scripts/versions.py print)" .
#   docker buildx build --platform linux/amd64,linux/arm64 -t ... .
#
# Why glibc + distroless/cc rather than a static musl binary on distroless/static: the crypto
# (aws-lc-rs / aws-lc-sys, used by the AWS SDK, rustls and the recording envelope) compiles C
# code, and its musl builds have a history of toolchain breakage (e.g. aws/aws-lc-rs#894,
# missing linux/random.h with musl-gcc). distroless/cc adds only glibc and libgcc to the static
# image. Builder and runtime are both Debian 12 (bookworm), so the glibc versions match.
# Each platform builds natively (BuildKit/QEMU for foreign platforms); no cross toolchain.
#
# Without Docker, scripts/build-image.sh builds the same layout with buildah (from scratch: the
# release binary at /kekeeper, the glibc/libgcc it links at their Debian 12 paths, the CA bundle
# at /etc/ssl/certs/ca-certificates.crt, nonroot 65532 in /etc/passwd, ENTRYPOINT ["/kekeeper"],
# CMD ["run"], USER 65532:65532, port 8080) as an OCI archive; scripts/image-test.sh runs that
# image as the chart's Deployment does. Keep the two in step.

ARG RUST_VERSION=1.95

FROM docker.io/library/rust:${RUST_VERSION}-bookworm AS builder
WORKDIR /src
COPY . .
# Cache mounts keep the registry and the target dir between builds; the binary is copied out
# of the cached target dir. --locked: exactly Cargo.lock.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    set -eux; \
    cargo build --release --locked --bin kekeeper; \
    install -D -m 0755 target/release/kekeeper /out/kekeeper; \
    strip /out/kekeeper

FROM gcr.io/distroless/cc-debian12:nonroot
LABEL org.opencontainers.image.title="kekeeper" \
      org.opencontainers.image.description="Kubernetes operator for call-recording KEK pairs under your AWS KMS key" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=builder /out/kekeeper /kekeeper
# distroless nonroot is uid/gid 65532; the Helm chart's securityContext uses the same ids.
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["/kekeeper"]
CMD ["run"]
