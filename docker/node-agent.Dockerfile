# The node agent image: ambit-node-agent and the ambit CLI (for
# `kubectl exec ds/ambit-node-agent -- ambit check`).
#   docker build -f docker/node-agent.Dockerfile -t ambit-node-agent .
# Built from the workspace root. The builder follows docs/building.md:
# Debian's rustc with a prebuilt core for the BPF target builds the eBPF
# programs, bpf-linker links them against Debian's LLVM 22; node-agent's
# build.rs runs that build (what `cargo xtask build-ebpf` runs on its own)
# and embeds the object, so one cargo build makes both binaries.

FROM rust:1.95-bookworm AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends \
      rustc-web libstd-rust-web-dev-bpf llvm-22-dev libpolly-22-dev \
 && rm -rf /var/lib/apt/lists/*
RUN LLVM_PREFIX=/usr/lib/llvm-22 LLVM_SYS_221_PREFIX=/usr/lib/llvm-22 \
    cargo install bpf-linker --version 0.13.0 --no-default-features --features llvm-22
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p node-agent -p ambit-cli \
 && install -D target/release/ambit-node-agent /out/ambit-node-agent \
 && install -D target/release/ambit /out/ambit

# glibc, libgcc and CA certificates, no shell or package manager: the
# binaries link nothing else (rustls, no OpenSSL) and run no other program.
# Root: the DaemonSet grants its capabilities to uid 0 only.
FROM gcr.io/distroless/cc-debian12 AS runtime
COPY --from=build /out/ /usr/local/bin/
ENTRYPOINT ["/usr/local/bin/ambit-node-agent"]
