//! Builds the eBPF programs in `mesh-ebpf/programs` and puts the object in
//! `OUT_DIR` for `include_bytes_aligned!`. The eBPF crate needs Debian's
//! rustc, the BPF target's `core` and bpf-linker: `cargo xtask setup`
//! installs them (see docs/building.md).

use std::{
    env,
    path::{Path, PathBuf},
    process::Command,
};

fn main() {
    let manifest_dir =
        PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let workspace = manifest_dir
        .parent()
        .expect("node-agent lives in the workspace");
    let programs = workspace.join("mesh-ebpf/programs");
    for watched in [
        "mesh-ebpf/programs/src",
        "mesh-ebpf/programs/Cargo.toml",
        "mesh-ebpf/common/src",
    ] {
        println!(
            "cargo:rerun-if-changed={}",
            workspace.join(watched).display()
        );
    }
    let target_dir = workspace.join("target/ebpf");
    let status = Command::new("cargo")
        .current_dir(&programs)
        .args([
            "build",
            "--release",
            "--target",
            "bpfel-unknown-none",
            "--manifest-path",
        ])
        .arg(programs.join("Cargo.toml"))
        .arg("--target-dir")
        .arg(&target_dir)
        .env("RUSTC", "/usr/bin/rustc")
        .env("RUSTC_BOOTSTRAP", "1")
        // The host build's flags must not leak in; the eBPF crate's own
        // .cargo/config.toml (read from current_dir) sets its flags.
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("RUSTC_WORKSPACE_WRAPPER")
        .env_remove("RUSTC_WRAPPER")
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_TARGET_DIR")
        .env_remove("CARGO_BUILD_TARGET")
        .status();
    match status {
        Ok(status) if status.success() => {}
        Ok(status) => panic!(
            "building the eBPF programs failed ({status}); run `cargo xtask setup` to install Debian's rustc, \
             the BPF target's core library and bpf-linker"
        ),
        Err(error) => panic!("cannot run cargo to build the eBPF programs: {error}"),
    }
    // Packed relative relocations (DT_RELR, glibc 2.36+, binutils 2.38+):
    // the loader reads every relocation of this position-independent
    // binary at start, and the agent stays resident with them; packed, they
    // take kilobytes instead of most of a MiB.
    if env::var("CARGO_CFG_TARGET_OS").as_deref() == Ok("linux")
        && env::var("CARGO_CFG_TARGET_ENV").as_deref() == Ok("gnu")
    {
        println!("cargo:rustc-link-arg-bins=-Wl,-z,pack-relative-relocs");
    }
    let object = target_dir.join("bpfel-unknown-none/release/ambit-ebpf");
    let out =
        PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR")).join("ambit-ebpf.o");
    copy(&object, &out);
}

fn copy(from: &Path, to: &Path) {
    if let Err(error) = std::fs::copy(from, to) {
        panic!(
            "cannot copy the eBPF object {} to {}: {error}",
            from.display(),
            to.display()
        );
    }
}
