//! What `demo`, `bench` and `soak` share: each runs a tool of the tests
//! crate, built in release as users run it, on a test bed that needs root.

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

/// The command that runs `ambit-bench` (`bench`, in `bin_dir`) from the
/// workspace root, finding the other binaries in `bin_dir`, with the
/// agents logging as in production (the tests turn on debug logs) unless
/// `AMBIT_TEST_AGENT_LOG` says otherwise.
pub fn bench_command(root: &Path, bin_dir: &Path, bench: &Path) -> Command {
    let mut command = Command::new(bench);
    command
        .env("AMBIT_BIN_DIR", bin_dir)
        .env(
            "AMBIT_TEST_AGENT_LOG",
            std::env::var("AMBIT_TEST_AGENT_LOG").unwrap_or_else(|_| "info".to_owned()),
        )
        .current_dir(root);
    command
}
