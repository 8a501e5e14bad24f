use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::graph::ModuleGraph;
use super::modules::{self, Edge, ROOT};
use super::*;

/// Scans a crate made of `(path, source)` files whose root is the first.
fn scan(files: &[(&str, &str)]) -> modules::CrateScan {
    let sources: BTreeMap<PathBuf, String> = files
        .iter()
        .map(|(path, text)| (PathBuf::from(path), (*text).to_owned()))
        .collect();
    modules::scan_crate(Path::new(files[0].0), &sources).expect("the snippet crate scans")
}

/// The distinct `(from, to)` pairs of a scan.
fn pairs(edges: &[Edge]) -> Vec<(String, String)> {
    let mut pairs: Vec<_> = edges
        .iter()
        .map(|edge| (edge.from.clone(), edge.to.clone()))
        .collect();
    pairs.sort();
    pairs.dedup();
    pairs
}

fn pair(from: &str, to: &str) -> (String, String) {
    (from.to_owned(), to.to_owned())
}

#[test]
fn a_cycle_is_found_with_its_lines() {
    let scan = scan(&[
        ("src/lib.rs", "pub mod a;\npub mod b;\n"),
        ("src/a.rs", "use crate::b::B;\npub struct A;\n"),
        (
            "src/b.rs",
            "pub struct B;\n\npub fn f() -> crate::a::A { crate::a::A }\n",
        ),
    ]);
    let components = ModuleGraph::new(&scan.edges).cycles();
    assert_eq!(components.len(), 1);
    let component = &components[0];
    assert_eq!(component.modules, ["a", "b"]);
    assert_eq!(component.cycles, [vec!["a".to_owned(), "b".to_owned()]]);
    let b_to_a = component
        .edges
        .iter()
        .find(|(from, to, _)| from == "b" && to == "a")
        .expect("b → a is an edge");
    assert!(b_to_a.2.iter().all(|location| location.line == 3));
    assert!(component.to_string().contains("src/a.rs:1"), "{component}");
}

#[test]
fn a_dag_passes() {
    let scan = scan(&[
        (
            "src/lib.rs",
            "pub mod model;\npub mod compile;\npub mod serve;\n",
        ),
        ("src/model.rs", "pub struct Model;\n"),
        (
            "src/compile.rs",
            "use crate::model::Model;\npub fn compile() -> Model { Model }\n",
        ),
        (
            "src/serve.rs",
            "use crate::{compile::compile, model};\npub fn serve() -> model::Model { compile() }\n",
        ),
    ]);
    assert_eq!(
        pairs(&scan.edges),
        [
            pair("compile", "model"),
            pair("serve", "compile"),
            pair("serve", "model")
        ]
    );
    let graph = ModuleGraph::new(&scan.edges);
    assert!(graph.cycles().is_empty());
    assert_eq!(
        graph.layers(&scan.modules),
        [
            vec!["model".to_owned()],
            vec!["compile".to_owned()],
            vec!["serve".to_owned()]
        ]
    );
}

#[test]
fn grouped_and_nested_uses_are_edges() {
    let scan = scan(&[
        ("src/lib.rs", "mod a;\nmod b;\nmod c;\nmod d;\n"),
        (
            "src/a.rs",
            "use crate::{b::{self, B}, c::{inner::C as Renamed}};\nuse crate::d::*;\n",
        ),
        ("src/b.rs", "pub struct B;\n"),
        ("src/c.rs", "pub mod inner { pub struct C; }\n"),
        ("src/d.rs", "pub use crate::b::B as D;\n"),
    ]);
    assert_eq!(
        pairs(&scan.edges),
        [
            pair("a", "b"),
            pair("a", "c"),
            pair("a", "d"),
            pair("d", "b")
        ]
    );
}

#[test]
fn inline_paths_and_macro_tokens_are_edges() {
    let scan = scan(&[
        ("src/lib.rs", "mod a;\nmod b;\nmod c;\n"),
        (
            "src/a.rs",
            "fn f() { let _ = crate::b::make(); assert!(crate::c::ok()); }\n",
        ),
        ("src/b.rs", "pub fn make() {}\n"),
        ("src/c.rs", "pub fn ok() -> bool { true }\n"),
    ]);
    assert_eq!(pairs(&scan.edges), [pair("a", "b"), pair("a", "c")]);
}

#[test]
fn super_stays_inside_a_top_level_module_until_it_climbs_out() {
    let scan = scan(&[
        ("src/lib.rs", "mod a;\nmod b;\n"),
        ("src/a.rs", "mod inner;\npub struct A;\n"),
        // `super::A` is `a::A`: the same node. `super::super::b` is `crate::b`.
        ("src/a/inner.rs", "use super::A;\nuse super::super::b::B;\n"),
        (
            "src/b.rs",
            "pub struct B;\nfn f() -> super::a::A { todo!() }\n",
        ),
    ]);
    assert_eq!(pairs(&scan.edges), [pair("a", "b"), pair("b", "a")]);
    let edge = scan
        .edges
        .iter()
        .find(|edge| edge.from == "a")
        .expect("a → b");
    assert_eq!(edge.file, Path::new("src/a/inner.rs"));
    assert_eq!(edge.line, 2);
}

#[test]
fn test_only_code_makes_no_edges() {
    let scan = scan(&[
        ("src/lib.rs", "mod a;\nmod b;\n"),
        (
            "src/a.rs",
            "pub struct A;\n\
             #[cfg(test)]\nmod tests { use crate::b::B; }\n\
             #[cfg(all(test, target_os = \"linux\"))]\nfn helper() -> crate::b::B { todo!() }\n\
             #[cfg(test)]\nmod more_tests;\n",
        ),
        ("src/b.rs", "use crate::a::A;\npub struct B;\n"),
        // Never read: the module is test-only (and the file is missing).
    ]);
    assert_eq!(pairs(&scan.edges), [pair("b", "a")]);
}

#[test]
fn visibility_restrictions_are_not_edges() {
    let scan = scan(&[
        ("src/lib.rs", "mod a;\nmod b;\n"),
        (
            "src/a.rs",
            "pub(crate) fn f() {}\npub(super) struct S;\npub(in crate::a) fn g() {}\n",
        ),
        ("src/b.rs", "pub(crate) fn h() {}\n"),
    ]);
    assert!(scan.edges.is_empty(), "{:?}", scan.edges);
}

#[test]
fn cfg_not_test_is_product_code() {
    let scan = scan(&[
        ("src/lib.rs", "mod a;\nmod b;\n"),
        ("src/a.rs", "#[cfg(not(test))]\nuse crate::b::B;\n"),
        ("src/b.rs", "pub struct B;\n"),
    ]);
    assert_eq!(pairs(&scan.edges), [pair("a", "b")]);
}

#[test]
fn the_crate_root_is_a_node_and_its_reexports_point_to_their_module() {
    let scan = scan(&[
        (
            "src/main.rs",
            "mod cmd;\nmod setup;\nuse crate::cmd::Failed;\n\
             fn main() { setup::run(); }\npub fn workspace_root() {}\n",
        ),
        // `crate::Failed` is cmd's type re-exported by the root.
        ("src/cmd.rs", "pub struct Failed;\n"),
        (
            "src/setup.rs",
            "pub fn run() { let _ = crate::Failed; crate::workspace_root(); }\n",
        ),
    ]);
    assert_eq!(
        pairs(&scan.edges),
        [
            pair(ROOT, "cmd"),
            pair(ROOT, "setup"),
            pair("setup", ROOT),
            pair("setup", "cmd")
        ]
    );
    let components = ModuleGraph::new(&scan.edges).cycles();
    assert_eq!(components.len(), 1);
    assert_eq!(components[0].modules, [ROOT, "setup"]);
}

#[test]
fn module_files_are_found_like_rustc_finds_them() {
    let scan = scan(&[
        (
            "src/bin/tool/main.rs",
            "mod old;\nmod new;\n#[path = \"extra/x.rs\"]\nmod x;\n",
        ),
        ("src/bin/tool/old/mod.rs", "mod child;\n"),
        ("src/bin/tool/old/child.rs", "use crate::new::N;\n"),
        (
            "src/bin/tool/new.rs",
            "mod deep { mod deeper; }\npub struct N;\n",
        ),
        ("src/bin/tool/new/deep/deeper.rs", "use crate::x::X;\n"),
        ("src/bin/tool/extra/x.rs", "pub struct X;\n"),
    ]);
    assert_eq!(pairs(&scan.edges), [pair("new", "x"), pair("old", "new")]);
    assert_eq!(scan.files.len(), 6);
}

#[test]
fn a_missing_module_file_is_an_error_that_names_both_candidates() {
    let sources: BTreeMap<PathBuf, String> =
        BTreeMap::from([(PathBuf::from("src/lib.rs"), "mod gone;\n".to_owned())]);
    let err =
        modules::scan_crate(Path::new("src/lib.rs"), &sources).expect_err("gone.rs does not exist");
    let message = err.to_string();
    assert!(
        message.contains("src/gone.rs") && message.contains("src/gone/mod.rs"),
        "{message}"
    );
}

#[test]
fn test_files_are_not_product_files() {
    let package = Path::new("/w/tests");
    assert!(is_test_file(
        package,
        Path::new("/w/tests/tests/fake_kube.rs")
    ));
    assert!(is_test_file(
        package,
        Path::new("/w/tests/src/route/tests.rs")
    ));
    assert!(!is_test_file(
        package,
        Path::new("/w/tests/src/bin/ambit-demo.rs")
    ));
}

#[test]
fn crates_come_from_cargo_metadata() {
    let metadata = serde_json::json!({
        "packages": [{
            "name": "mesh-kube",
            "manifest_path": "/w/mesh-kube/Cargo.toml",
            "targets": [
                {"name": "mesh_kube", "kind": ["lib"], "src_path": "/w/mesh-kube/src/lib.rs"},
                {"name": "watch", "kind": ["test"], "src_path": "/w/mesh-kube/tests/watch.rs"},
                {"name": "build-script-build", "kind": ["custom-build"], "src_path": "/w/mesh-kube/build.rs"}
            ]
        }]
    });
    let targets = crates::targets_of(&metadata).expect("valid metadata");
    assert_eq!(targets.len(), 1);
    assert_eq!(targets[0].root_file, Path::new("/w/mesh-kube/src/lib.rs"));
    assert_eq!(targets[0].package_dir, Path::new("/w/mesh-kube"));
}

/// The real workspace: every crate, both checks.
#[test]
fn the_workspace_has_no_module_cycles_and_no_oversized_files() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace");
    let findings = check_workspace(root).expect("the workspace's sources parse");
    assert!(findings.is_clean(), "{findings}");
}
