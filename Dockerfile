# pod-graceful-drain image: a static binary in an otherwise empty image, non-root, read-only root
# filesystem friendly. Built by users' CI with Docker or BuildKit.
#
# The testbed (no Docker daemon) builds the same thing with testbed/images/build-product: the same
# compiler flags (glibc, static-pie via crt-static) and the same final layout (/pod-graceful-drain,
# user 65532, that binary as entrypoint), written as an OCI tarball by testbed/images/mkimage.py.
# Change both together.
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN RUSTFLAGS="-C target-feature=+crt-static" cargo build --release --locked \
      --target x86_64-unknown-linux-gnu --bin pod-graceful-drain \
 && cp target/x86_64-unknown-linux-gnu/release/pod-graceful-drain /pod-graceful-drain

FROM scratch
COPY --from=build /pod-graceful-drain /pod-graceful-drain
USER 65532:65532
ENTRYPOINT ["/pod-graceful-drain"]
