# The waypoint image: ambit-waypoint, the per-namespace L7 proxy that
# `ambit waypoint apply` deploys (manifests/waypoint/template.yaml).
#   docker build -f docker/waypoint.Dockerfile -t ambit-waypoint .
# Built from the workspace root. The waypoint reuses the node agent's
# configuration sources, and node-agent's build.rs builds the eBPF programs,
# so the builder is the node agent's (docs/building.md), though the
# waypoint loads no eBPF.

FROM rust:1.95-bookworm AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends \
      rustc-web libstd-rust-web-dev-bpf llvm-22-dev libpolly-22-dev \
 && rm -rf /var/lib/apt/lists/*
RUN LLVM_PREFIX=/usr/lib/llvm-22 LLVM_SYS_221_PREFIX=/usr/lib/llvm-22 \
    cargo install bpf-linker --version 0.13.0 --no-default-features --features llvm-22
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
