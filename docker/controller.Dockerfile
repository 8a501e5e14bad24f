# The controller image.
#   docker build -f docker/controller.Dockerfile -t ambit-controller .
# Built from the workspace root. The controller has no eBPF in it, so the
# builder is the plain Rust image.

FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p controller \
 && install -D target/release/ambit-controller /out/ambit-controller

# glibc, libgcc and CA certificates, no shell; runs as the unprivileged
# user 65532, as the Deployment asks.
FROM gcr.io/distroless/cc-debian12:nonroot AS runtime
COPY --from=build /out/ambit-controller /usr/local/bin/ambit-controller
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/ambit-controller"]
