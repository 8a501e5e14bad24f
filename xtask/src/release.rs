//! What `demo` and `bench` share: both run a tool of the tests crate,
//! built in release as users run it, on a test bed that needs root.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Result, bail};

use crate::{cmd, setup};

/// Checks root (`task` needs it because `why`), runs setup and the release
/// build, and returns the release directory and the path of `tool` in it.
pub fn prepare(root: &Path, task: &str, why: &str, tool: &str) -> Result<(PathBuf, PathBuf)> {
    cmd::require_root(task, why)?;
    setup::run()?;
    // Release: debug builds would measure (and demonstrate) the compiler.
    // Quiet: the `$ cargo build ...` line says what is happening (minutes
    // on a fresh machine), and warnings and errors still show.
    cmd::run(
        Command::new("cargo")
            .args(["build", "--release", "--workspace", "--bins", "--quiet"])
            .current_dir(root),
    )?;
    let bin_dir = root.join("target/release");
    let path = bin_dir.join(tool);
    if !path.is_file() {
        bail!(
            "{} is missing after the build; it comes from the tests crate",
            path.display()
        );
    }
    Ok((bin_dir, path))
}
