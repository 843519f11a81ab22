# pod-graceful-drain image: a static binary in an otherwise empty image (no shell), non-root,
# made for a read-only root filesystem. Built by users' CI with Docker or BuildKit:
#   docker build -t pod-graceful-drain .
#
# The testbed (no Docker daemon) builds the same image with testbed/images/build-product, which
# READS this file: the RUST_TARGET and RUSTFLAGS build arguments below, and the final stage's
# USER and ENTRYPOINT. It refuses to build if it cannot find them, so the two cannot drift apart.
FROM rust:1.95-bookworm AS build
ARG RUST_TARGET=x86_64-unknown-linux-gnu
ARG RUSTFLAGS="-C target-feature=+crt-static"
WORKDIR /src
COPY . .
RUN RUSTFLAGS="$RUSTFLAGS" cargo build --release --locked --target "$RUST_TARGET" \
      --bin pod-graceful-drain \
 && cp "target/$RUST_TARGET/release/pod-graceful-drain" /pod-graceful-drain

FROM scratch
COPY --from=build /pod-graceful-drain /pod-graceful-drain
USER 65532:65532
ENTRYPOINT ["/pod-graceful-drain"]
