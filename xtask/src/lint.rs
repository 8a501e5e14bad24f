//! `cargo xtask lint`: the structure checks of the house style.
//!
//! - **Module cycles.** Within each crate (every library and binary target of
//!   every workspace member, found with `cargo metadata`), a top-level module
//!   and all its submodules are one node; a `crate::a::…` path in module `b`
//!   (in a `use` item, grouped or nested, an inline path, or a macro's tokens),
//!   a `super::` path that climbs out of `b`, and a path from the crate root to
//!   a module are edges. Every cycle is reported with the file and line of each
//!   edge that makes it.
//! - **File size.** Product files over [`MAX_PRODUCT_LINES`] lines. Files named
//!   `tests.rs`, files under a `tests/` folder of the crate and modules behind
//!   `#[cfg(test)]` are test code and do not count.
//!
//! Test-only code (`#[cfg(test)]` items and modules) makes no edges: tests may
//! reach anywhere to set up what they check, and a cycle through a test does
//! not tangle the product.

mod crates;
mod graph;
mod lines;
mod modules;
#[cfg(test)]
mod tests;

use std::fmt;
use std::path::{Path, PathBuf};

use anyhow::{Result, bail};

use crate::lint::crates::CrateTarget;
use crate::lint::graph::ModuleGraph;

/// The longest a product source file may be.
pub const MAX_PRODUCT_LINES: usize = 600;

/// Why the lint could not look at the workspace.
#[derive(Debug, thiserror::Error)]
pub enum LintError {
    /// `cargo metadata` could not run or failed.
    #[error("cannot list the workspace's crates with `cargo metadata`: {0}")]
    Metadata(String),
    /// `cargo metadata` printed something that is not the JSON it documents.
    #[error("cannot read `cargo metadata`'s output: {0}")]
    MetadataFormat(String),
    /// A source file (a crate root or a `mod` declaration's file) cannot be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// What the file system said.
        source: std::io::Error,
    },
    /// A source file is not valid Rust.
    #[error("cannot parse {path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// syn's message.
        message: String,
    },
    /// A `mod name;` declaration whose file exists in neither place Rust looks.
    #[error("{declared_in}: module `{name}` has no file (looked for {candidates})")]
    MissingModule {
        /// The file with the declaration.
        declared_in: PathBuf,
        /// The module's name.
        name: String,
        /// The paths that were tried.
        candidates: String,
    },
}

/// What the lint found in the whole workspace.
#[derive(Debug, Default)]
pub struct Findings {
    /// One entry per set of modules that import each other, per crate.
    pub cycles: Vec<CrateCycles>,
    /// Product files over [`MAX_PRODUCT_LINES`] lines.
    pub oversized: Vec<OversizedFile>,
}

/// The module cycles of one crate.
#[derive(Debug)]
pub struct CrateCycles {
    /// The crate, as `package (target kind target name)`.
    pub crate_name: String,
    /// Each strongly connected set of top-level modules, with its cycles and edges.
    pub components: Vec<graph::Component>,
}

/// A product file over the size limit.
#[derive(Debug, PartialEq, Eq)]
pub struct OversizedFile {
    /// The file, relative to the workspace root.
    pub path: PathBuf,
    /// Its number of lines.
    pub lines: usize,
}

// === impl Findings ===

impl Findings {
    /// Whether nothing was found.
    pub fn is_clean(&self) -> bool {
        self.cycles.is_empty() && self.oversized.is_empty()
    }
}

impl fmt::Display for Findings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for crate_cycles in &self.cycles {
            for component in &crate_cycles.components {
                writeln!(
                    f,
                    "✗ module cycle in {}: {}",
                    crate_cycles.crate_name,
                    component.modules.join(", ")
                )?;
                write!(f, "{component}")?;
            }
        }
        for file in &self.oversized {
            writeln!(
                f,
                "✗ {} has {} lines (product files stay under {MAX_PRODUCT_LINES}; split it by responsibility)",
                file.path.display(),
                file.lines
            )?;
        }
        if self.is_clean() {
            writeln!(
                f,
                "✓ no module cycles, no product file over {MAX_PRODUCT_LINES} lines"
            )?;
        }
        Ok(())
    }
}

/// `cargo xtask lint`: prints the findings and fails if there are any; with
/// `order`, first each crate's modules in dependency order (for the
/// crate's top-level doc comment).
pub fn run(root: &Path, order: bool) -> Result<()> {
    if order {
        for target in crates::workspace_targets(root)? {
            let scan = modules::scan_crate(&target.root_file, &modules::FileSystem)?;
            let layers = ModuleGraph::new(&scan.edges).layers(&scan.modules);
            let layers: Vec<String> = layers.iter().map(|layer| layer.join(", ")).collect();
            println!("{target}, bottom first: {}", layers.join(" → "));
        }
    }
    let findings = check_workspace(root)?;
    print!("{findings}");
    if !findings.is_clean() {
        bail!(
            "{} crate(s) with module cycles, {} oversized file(s)",
            findings.cycles.len(),
            findings.oversized.len()
        );
    }
    Ok(())
}

/// Checks every library and binary target of every workspace member.
pub fn check_workspace(root: &Path) -> Result<Findings, LintError> {
    let targets = crates::workspace_targets(root)?;
    let mut findings = Findings::default();
    for target in &targets {
        check_target(root, target, &modules::FileSystem, &mut findings)?;
    }
    findings.oversized.sort_by(|a, b| a.path.cmp(&b.path));
    findings.oversized.dedup();
    Ok(findings)
}

/// Checks one crate and adds what it found to `findings`.
fn check_target(
    root: &Path,
    target: &CrateTarget,
    sources: &dyn modules::Sources,
    findings: &mut Findings,
) -> Result<(), LintError> {
    let scan = modules::scan_crate(&target.root_file, sources)?;
    let components = ModuleGraph::new(&scan.edges).cycles();
    if !components.is_empty() {
        findings.cycles.push(CrateCycles {
            crate_name: target.to_string(),
            components: components
                .into_iter()
                .map(|component| component.relative_to(root))
                .collect(),
        });
    }
    for file in scan.files {
        if file.lines > MAX_PRODUCT_LINES && !is_test_file(&target.package_dir, &file.path) {
            findings.oversized.push(OversizedFile {
                path: file
                    .path
                    .strip_prefix(root)
                    .unwrap_or(&file.path)
                    .to_path_buf(),
                lines: file.lines,
            });
        }
    }
    Ok(())
}

/// Whether a file is test code by its place: named `tests.rs`, or under a
/// `tests` folder of its package.
fn is_test_file(package_dir: &Path, path: &Path) -> bool {
    path.file_name().is_some_and(|name| name == "tests.rs")
        || path
            .strip_prefix(package_dir)
            .unwrap_or(path)
            .components()
            .any(|component| component.as_os_str() == "tests")
}
