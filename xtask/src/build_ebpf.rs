//! `cargo xtask build-ebpf`: builds the eBPF programs with Debian's rustc for
//! `bpfel-unknown-none` (see docs/building.md).

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Result, bail};

use crate::cmd;
use crate::setup::DEBIAN_RUSTC;

/// The eBPF target triple.
const TARGET: &str = "bpfel-unknown-none";

/// The name of the eBPF crate's binary, which is the object file.
const OBJECT_NAME: &str = "ambit-ebpf";

/// Environment that would leak the host build's settings into the eBPF build.
const HOST_BUILD_ENV: &[&str] = &[
    "RUSTC_WORKSPACE_WRAPPER",
    "RUSTC_WRAPPER",
    "RUSTFLAGS",
    "CARGO_ENCODED_RUSTFLAGS",
    "CARGO_TARGET_DIR",
];

/// Which cargo profile to build.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Profile {
    /// `dev`, output under `debug/`.
    Debug,
    /// `release`, output under `release/`.
    Release,
}

// === impl Profile ===

impl Profile {
    /// `Debug` when `--debug` was given, else `Release`.
    pub fn from_debug_flag(debug: bool) -> Self {
        if debug { Self::Debug } else { Self::Release }
    }

    /// The directory cargo writes this profile's output to.
    fn dir_name(self) -> &'static str {
        match self {
            Self::Debug => "debug",
            Self::Release => "release",
        }
    }
}

/// Builds the eBPF object and returns its path.
pub fn run(root: &Path, profile: Profile) -> Result<PathBuf> {
    let programs = root.join("mesh-ebpf/programs");
    // A target dir of its own: Debian's rustc and the rustup one would
    // otherwise rebuild each other's artifacts on every switch.
    let target_dir = root.join("target/ebpf");
    if !programs.join("Cargo.toml").is_file() {
        bail!("{} has no Cargo.toml", programs.display());
    }

    let mut build = Command::new("cargo");
    build.arg("build");
    if profile == Profile::Release {
        build.arg("--release");
    }
    build
        .args(["--target", TARGET])
        .arg("--target-dir")
        .arg(&target_dir)
        .arg("--manifest-path")
        .arg(programs.join("Cargo.toml"))
        // Picks up the programs' own .cargo/config.toml, if any.
        .current_dir(&programs)
        .env("RUSTC", DEBIAN_RUSTC)
        // Lets Debian's stable rustc accept aya-ebpf's #![feature]s.
        .env("RUSTC_BOOTSTRAP", "1");
    for var in HOST_BUILD_ENV {
        build.env_remove(var);
    }
    cmd::run(&mut build)?;

    let object = target_dir
        .join(TARGET)
        .join(profile.dir_name())
        .join(OBJECT_NAME);
    if !object.is_file() {
        bail!(
            "the build succeeded but {} is missing; is the eBPF binary still named {OBJECT_NAME}?",
            object.display()
        );
    }
    Ok(object)
}
