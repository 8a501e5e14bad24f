//! The crates the lint walks: every library and binary target of every
//! workspace member, as `cargo metadata --no-deps` lists them, so a crate
//! added to the workspace is checked without changing the lint.

use std::fmt;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::lint::LintError;

/// Target kinds whose sources are product code; tests, benches, examples and
/// build scripts are not walked.
const PRODUCT_KINDS: &[&str] = &[
    "lib",
    "rlib",
    "dylib",
    "cdylib",
    "staticlib",
    "proc-macro",
    "bin",
];

/// One crate: a target of a workspace package.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CrateTarget {
    /// The package's name.
    pub package: String,
    /// The target's name.
    pub name: String,
    /// `lib` or `bin` (the first kind cargo lists).
    pub kind: String,
    /// The folder of the package's `Cargo.toml`.
    pub package_dir: PathBuf,
    /// The crate root (`src/lib.rs`, `src/main.rs`, `src/bin/x.rs`, …).
    pub root_file: PathBuf,
}

impl fmt::Display for CrateTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({} `{}`)", self.package, self.kind, self.name)
    }
}

/// Lists the workspace's product targets with `cargo metadata --no-deps`.
pub fn workspace_targets(root: &Path) -> Result<Vec<CrateTarget>, LintError> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let output = Command::new(cargo)
        .args([
            "metadata",
            "--no-deps",
            "--format-version",
            "1",
            "--offline",
        ])
        .current_dir(root)
        .output()
        .map_err(|err| LintError::Metadata(err.to_string()))?;
    if !output.status.success() {
        return Err(LintError::Metadata(
            String::from_utf8_lossy(&output.stderr).trim().to_owned(),
        ));
    }
    let metadata: serde_json::Value = serde_json::from_slice(&output.stdout)
        .map_err(|err| LintError::MetadataFormat(err.to_string()))?;
    targets_of(&metadata)
}

/// The product targets in `cargo metadata`'s JSON.
pub fn targets_of(metadata: &serde_json::Value) -> Result<Vec<CrateTarget>, LintError> {
    let missing = |what: &str| LintError::MetadataFormat(format!("no `{what}`"));
    let packages = metadata["packages"]
        .as_array()
        .ok_or_else(|| missing("packages"))?;
    let mut targets = Vec::new();
    for package in packages {
        let package_name = package["name"].as_str().ok_or_else(|| missing("name"))?;
        let manifest = package["manifest_path"]
            .as_str()
            .ok_or_else(|| missing("manifest_path"))?;
        let package_dir = Path::new(manifest)
            .parent()
            .ok_or_else(|| missing("manifest_path's folder"))?
            .to_path_buf();
        let package_targets = package["targets"]
            .as_array()
            .ok_or_else(|| missing("targets"))?;
        for target in package_targets {
            let kinds: Vec<&str> = target["kind"]
                .as_array()
                .ok_or_else(|| missing("kind"))?
                .iter()
                .filter_map(serde_json::Value::as_str)
                .collect();
            let Some(kind) = kinds.iter().find(|kind| PRODUCT_KINDS.contains(kind)) else {
                continue;
            };
            targets.push(CrateTarget {
                package: package_name.to_owned(),
                name: target["name"]
                    .as_str()
                    .ok_or_else(|| missing("target name"))?
                    .to_owned(),
                kind: (*kind).to_owned(),
                package_dir: package_dir.clone(),
                root_file: PathBuf::from(
                    target["src_path"]
                        .as_str()
                        .ok_or_else(|| missing("src_path"))?,
                ),
            });
        }
    }
    Ok(targets)
}
