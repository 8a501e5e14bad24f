# The waypoint image: ambit-waypoint, the per-namespace L7 proxy that
# `ambit waypoint apply` deploys (manifests/waypoint/template.yaml).
#   docker build -f docker/waypoint.Dockerfile -t ambit-waypoint .
# Built from the workspace root. The waypoint reads the cluster through
# mesh-kube and has no eBPF in it (it does not build node-agent), so the
# builder is the plain Rust image.

FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p waypoint \
 && install -D target/release/ambit-waypoint /out/ambit-waypoint

# glibc, libgcc and CA certificates, no shell; runs as the unprivileged
# user 65532, as the template asks. It needs no capabilities: it listens
# on unprivileged ports and opens ordinary sockets.
FROM gcr.io/distroless/cc-debian12:nonroot AS runtime
COPY --from=build /out/ambit-waypoint /usr/local/bin/ambit-waypoint
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/ambit-waypoint"]
