//! docs/architecture.md's crate diagram matches the workspace: every member
//! is drawn, and each arrow is exactly a normal (non-dev) dependency between
//! members as `cargo metadata` reports it.
//!
//! The diagram is the fenced block after the marker line
//! `<!-- crate graph: checked by tests/tests/architecture_doc.rs -->`; each
//! crate has one line `<package> ──▶ <dependency>, <dependency>` (or
//! `──▶ nothing of the workspace`), with an optional `(folder/)` after the
//! package name.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;

const MARKER: &str = "<!-- crate graph: checked by tests/tests/architecture_doc.rs -->";
const ARROW: &str = "──▶";
const NO_DEPENDENCY: &str = "nothing of the workspace";

type Graph = BTreeMap<String, BTreeSet<String>>;

/// The workspace's members and their normal and build dependencies on each
/// other, from `cargo metadata`.
fn workspace_graph(root: &Path) -> Graph {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let output = Command::new(cargo)
        .args([
            "metadata",
            "--format-version",
            "1",
            "--no-deps",
            "--offline",
        ])
        .current_dir(root)
        .output()
        .expect("run cargo metadata");
    assert!(
        output.status.success(),
        "cargo metadata failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let metadata: serde_json::Value =
        serde_json::from_slice(&output.stdout).expect("cargo metadata prints JSON");
    let packages = metadata["packages"].as_array().expect("packages");
    let members: BTreeSet<String> = packages
        .iter()
        .map(|package| package["name"].as_str().expect("name").to_owned())
        .collect();
    packages
        .iter()
        .map(|package| {
            let dependencies = package["dependencies"]
                .as_array()
                .expect("dependencies")
                .iter()
                // `kind` is null for normal dependencies, "dev" or "build" else.
                .filter(|dependency| dependency["kind"].as_str() != Some("dev"))
                .filter_map(|dependency| dependency["name"].as_str())
                .filter(|name| members.contains(*name))
                .map(str::to_owned)
                .collect();
            (
                package["name"].as_str().expect("name").to_owned(),
                dependencies,
            )
        })
        .collect()
}

/// The graph drawn in the document, or why it cannot be read.
fn drawn_graph(document: &str) -> Result<Graph, String> {
    let after_marker = document
        .split_once(MARKER)
        .ok_or_else(|| format!("no line {MARKER}"))?
        .1;
    let block = after_marker
        .split("```")
        .nth(1)
        .ok_or("no fenced block after the marker")?;
    let mut graph = Graph::new();
    for line in block.lines().skip(1).filter(|line| line.contains(ARROW)) {
        let (from, to) = line.split_once(ARROW).expect("the line has an arrow");
        let package = from
            .split_whitespace()
            .next()
            .ok_or_else(|| format!("no package before the arrow: {line}"))?;
        let dependencies = if to.trim() == NO_DEPENDENCY {
            BTreeSet::new()
        } else {
            to.split(',').map(|name| name.trim().to_owned()).collect()
        };
        if graph.insert(package.to_owned(), dependencies).is_some() {
            return Err(format!("{package} is drawn twice"));
        }
    }
    Ok(graph)
}

#[test]
fn the_crate_diagram_matches_cargo_metadata() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the tests crate is in the workspace");
    let document =
        std::fs::read_to_string(root.join("docs/architecture.md")).expect("read the document");
    let drawn =
        drawn_graph(&document).unwrap_or_else(|error| panic!("docs/architecture.md: {error}"));
    let actual = workspace_graph(root);
    assert_eq!(
        drawn, actual,
        "docs/architecture.md's crate graph (left) differs from cargo metadata (right)"
    );
}

#[test]
fn a_drawn_graph_is_read_line_by_line() {
    let document = format!(
        "text\n{MARKER}\n```text\n  a (a/) ──▶ b, c\n  │\n  b ──▶ {NO_DEPENDENCY}\n  c ──▶ b\n```\n"
    );
    let graph = drawn_graph(&document).unwrap();
    assert_eq!(graph["a"], BTreeSet::from(["b".to_owned(), "c".to_owned()]));
    assert!(graph["b"].is_empty());
    assert_eq!(graph.len(), 3);
    let twice = format!("{MARKER}\n```\na ──▶ b\na ──▶ c\n```\n");
    assert!(drawn_graph(&twice).unwrap_err().contains("twice"));
    assert!(drawn_graph("no marker").is_err());
}
