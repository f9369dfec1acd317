# syntax=docker/dockerfile:1
# One image with both binaries; each Deployment picks its command:
#   docker build -t hookline:dev .
#   docker run --rm hookline:dev hookline-ingest --help
#   docker run --rm hookline:dev hookline-deliverer --help
# Settings come from the compiled-in defaults, then `--config PATH` / HOOKLINE_CONFIG,
# then HOOKLINE__SECTION__KEY environment variables (docs/operations.md).

FROM rust:1-bookworm AS build
WORKDIR /src
# Everything .dockerignore lets through: the whole workspace, since `--locked` needs
# every member's manifest to match Cargo.lock.
COPY . .
# The registry and target caches survive between builds; the binaries are copied out
# of the cached target dir within the same step.
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/usr/local/cargo/git,sharing=locked \
    --mount=type=cache,target=/src/target,sharing=locked \
    cargo build --release --locked -p hookline-ingest -p hookline-deliverer \
    && install -D -m 0755 -t /out target/release/hookline-ingest target/release/hookline-deliverer

# glibc and libgcc (cc), CA certificates and tzdata; no shell, no package manager.
# Built on bookworm, run on Debian 12: the same glibc.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/ /usr/local/bin/
# The image's `nonroot` user (65532), numerically, so Kubernetes' runAsNonRoot can
# verify it without a passwd lookup.
USER 65532:65532
# ingest API, ingest admin, deliverer admin (/healthz, /readyz, /metrics).
EXPOSE 8080 9090 9091
CMD ["hookline-ingest"]
