# pod-graceful-drain image: a static binary in an empty, non-root, read-only-friendly image.
# Built by users' CI with Docker or BuildKit. (The testbed, which has no Docker daemon, assembles
# the same layout with testbed/images/mkimage.py; the product issue keeps the two equivalent.)
FROM rust:1.95-alpine AS build
RUN apk add --no-cache musl-dev
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY tests/support/Cargo.toml tests/support/Cargo.toml
RUN mkdir -p tests/support/src && echo '' > tests/support/src/lib.rs \
 && cargo build --release --locked --bin pod-graceful-drain \
 && strip target/release/pod-graceful-drain

FROM scratch
COPY --from=build /src/target/release/pod-graceful-drain /pod-graceful-drain
USER 65532:65532
ENTRYPOINT ["/pod-graceful-drain"]
