//! Reading one crate: follows its `mod` declarations from the crate root the
//! way rustc finds module files, parses each file with syn and turns every
//! path that names another top-level module into an [`Edge`].

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use proc_macro2::{Spacing, TokenStream, TokenTree};
use syn::punctuated::Punctuated;
use syn::visit::{self, Visit};

use crate::lint::LintError;
use crate::lint::lines::{Locator, WrittenPath};

/// The graph node of the crate root's own items (`lib.rs`, `main.rs`).
pub const ROOT: &str = "(crate root)";

/// How deep re-exports at the crate root are followed (`use a as b; use b as c`).
const MAX_REEXPORT_DEPTH: usize = 8;

/// Where source files come from: the file system, or a map in the tests.
pub trait Sources {
    /// The file's text.
    fn read(&self, path: &Path) -> std::io::Result<String>;
    /// Whether the file exists.
    fn exists(&self, path: &Path) -> bool;
}

/// The real file system.
pub struct FileSystem;

/// One reference from a top-level module to another.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Edge {
    /// The module that holds the path.
    pub from: String,
    /// The module the path names.
    pub to: String,
    /// The file with the path.
    pub file: PathBuf,
    /// The path's line.
    pub line: usize,
}

/// A product source file of the crate and its length.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceFile {
    /// The file.
    pub path: PathBuf,
    /// Its number of lines.
    pub lines: usize,
}

/// What one crate's sources hold.
#[derive(Debug, Default)]
pub struct CrateScan {
    /// Every edge between distinct top-level modules, in file order.
    pub edges: Vec<Edge>,
    /// Every product file reached from the crate root.
    pub files: Vec<SourceFile>,
    /// The crate's top-level modules.
    pub modules: Vec<String>,
}

/// A path as written, before it is resolved against the crate's modules.
#[derive(Debug)]
struct Reference {
    /// The full module path of the code that holds it (inline modules included).
    module: Vec<String>,
    /// The path's segments.
    segments: Vec<String>,
    /// How it is written, to find its line.
    written: WrittenPath,
    file: PathBuf,
}

/// A module file still to read.
struct FileJob {
    path: PathBuf,
    module: Vec<String>,
    /// The folder of this module's own child module files.
    child_dir: PathBuf,
}

/// What the crate root makes visible by name: its top-level modules and the
/// names its `use` items bring in (which submodules reach as `crate::name`).
#[derive(Debug, Default)]
struct RootNames {
    modules: BTreeSet<String>,
    uses: BTreeMap<String, Vec<String>>,
}

// === impl FileSystem ===

impl Sources for FileSystem {
    fn read(&self, path: &Path) -> std::io::Result<String> {
        std::fs::read_to_string(path)
    }

    fn exists(&self, path: &Path) -> bool {
        path.is_file()
    }
}

impl Sources for BTreeMap<PathBuf, String> {
    fn read(&self, path: &Path) -> std::io::Result<String> {
        self.get(path)
            .cloned()
            .ok_or_else(|| std::io::Error::from(std::io::ErrorKind::NotFound))
    }

    fn exists(&self, path: &Path) -> bool {
        self.contains_key(path)
    }
}

/// Reads the crate whose root file is `root_file` and lists its edges and files.
pub fn scan_crate(root_file: &Path, sources: &dyn Sources) -> Result<CrateScan, LintError> {
    let mut references = Vec::new();
    let mut root = RootNames::default();
    let mut files = Vec::new();
    let mut locators = BTreeMap::new();
    let mut jobs = vec![FileJob {
        path: root_file.to_path_buf(),
        module: Vec::new(),
        child_dir: root_file.parent().unwrap_or(Path::new("")).to_path_buf(),
    }];
    while let Some(job) = jobs.pop() {
        let text = sources.read(&job.path).map_err(|source| LintError::Read {
            path: job.path.clone(),
            source,
        })?;
        let syntax = syn::parse_file(&text).map_err(|err| LintError::Parse {
            path: job.path.clone(),
            message: err.to_string(),
        })?;
        files.push(SourceFile {
            path: job.path.clone(),
            lines: text.lines().count(),
        });
        locators.insert(job.path.clone(), Locator::new(&text));
        let mut visitor = FileVisitor {
            sources,
            file: &job.path,
            module: job.module.clone(),
            child_dir: job.child_dir.clone(),
            references: &mut references,
            root: &mut root,
            jobs: Vec::new(),
            error: None,
        };
        visitor.visit_file(&syntax);
        if let Some(error) = visitor.error {
            return Err(error);
        }
        jobs.extend(visitor.jobs);
    }
    let edges = references
        .iter()
        .filter_map(|reference| {
            let mut edge = root.edge_of(reference)?;
            if let Some(locator) = locators.get_mut(&reference.file) {
                edge.line = locator.line_of(&reference.written);
            }
            Some(edge)
        })
        .collect();
    Ok(CrateScan {
        edges,
        files,
        modules: root.modules.into_iter().collect(),
    })
}

/// Walks one file's syntax tree, collecting paths and child module files.
struct FileVisitor<'a> {
    sources: &'a dyn Sources,
    file: &'a Path,
    module: Vec<String>,
    child_dir: PathBuf,
    references: &'a mut Vec<Reference>,
    root: &'a mut RootNames,
    jobs: Vec<FileJob>,
    error: Option<LintError>,
}

impl FileVisitor<'_> {
    /// Records a path if it can name another top-level module: it starts at
    /// `crate`, `super` or `self`, or it is written in the crate root itself.
    fn record(&mut self, segments: Vec<String>, written: Option<WrittenPath>) {
        let Some(first) = segments.first() else {
            return;
        };
        let anchored = matches!(first.as_str(), "crate" | "super" | "self");
        if anchored || (self.module.is_empty() && segments.len() >= 2) {
            let written = written.unwrap_or_else(|| WrittenPath {
                prefix: segments.clone(),
                leaf: None,
            });
            self.references.push(Reference {
                module: self.module.clone(),
                segments,
                written,
                file: self.file.to_path_buf(),
            });
        }
    }

    /// A `mod name;` or `mod name { … }` item.
    fn visit_module(&mut self, item: &syn::ItemMod) {
        let name = item.ident.to_string();
        if self.module.is_empty() {
            self.root.modules.insert(name.clone());
        }
        let mut module = self.module.clone();
        module.push(name.clone());
        if let Some((_, items)) = &item.content {
            let outer_module = std::mem::replace(&mut self.module, module);
            let outer_dir = self.child_dir.clone();
            self.child_dir.push(&name);
            for item in items {
                self.visit_item(item);
            }
            self.module = outer_module;
            self.child_dir = outer_dir;
            return;
        }
        let (path, child_dir) = if let Some(path) = path_attribute(&item.attrs) {
            let path = self.file.parent().unwrap_or(Path::new("")).join(path);
            let child_dir = path.parent().unwrap_or(Path::new("")).to_path_buf();
            (path, child_dir)
        } else {
            let file = self.child_dir.join(format!("{name}.rs"));
            let mod_rs = self.child_dir.join(&name).join("mod.rs");
            let path = if self.sources.exists(&file) {
                file
            } else if self.sources.exists(&mod_rs) {
                mod_rs
            } else {
                self.error.get_or_insert(LintError::MissingModule {
                    declared_in: self.file.to_path_buf(),
                    name,
                    candidates: format!("{} and {}", file.display(), mod_rs.display()),
                });
                return;
            };
            (path, self.child_dir.join(&name))
        };
        self.jobs.push(FileJob {
            path,
            module,
            child_dir,
        });
    }
}

impl<'ast> Visit<'ast> for FileVisitor<'_> {
    fn visit_item(&mut self, item: &'ast syn::Item) {
        let attrs = match item {
            syn::Item::Const(item) => &item.attrs,
            syn::Item::Enum(item) => &item.attrs,
            syn::Item::ExternCrate(item) => &item.attrs,
            syn::Item::Fn(item) => &item.attrs,
            syn::Item::ForeignMod(item) => &item.attrs,
            syn::Item::Impl(item) => &item.attrs,
            syn::Item::Macro(item) => &item.attrs,
            syn::Item::Mod(item) => &item.attrs,
            syn::Item::Static(item) => &item.attrs,
            syn::Item::Struct(item) => &item.attrs,
            syn::Item::Trait(item) => &item.attrs,
            syn::Item::TraitAlias(item) => &item.attrs,
            syn::Item::Type(item) => &item.attrs,
            syn::Item::Union(item) => &item.attrs,
            syn::Item::Use(item) => &item.attrs,
            _ => return visit::visit_item(self, item),
        };
        if is_test_only(attrs) {
            return;
        }
        match item {
            syn::Item::Mod(item) => self.visit_module(item),
            syn::Item::Use(item) => {
                if item.leading_colon.is_some() {
                    return;
                }
                let mut leaves = Vec::new();
                flatten_use(&item.tree, &mut Vec::new(), None, &mut leaves);
                for leaf in leaves {
                    if self.module.is_empty()
                        && let Some(name) = &leaf.name
                    {
                        self.root.uses.insert(name.clone(), leaf.segments.clone());
                    }
                    self.record(leaf.segments, Some(leaf.written));
                }
            }
            _ => visit::visit_item(self, item),
        }
    }

    fn visit_impl_item(&mut self, item: &'ast syn::ImplItem) {
        let attrs = match item {
            syn::ImplItem::Const(item) => &item.attrs,
            syn::ImplItem::Fn(item) => &item.attrs,
            syn::ImplItem::Type(item) => &item.attrs,
            syn::ImplItem::Macro(item) => &item.attrs,
            _ => return visit::visit_impl_item(self, item),
        };
        if !is_test_only(attrs) {
            visit::visit_impl_item(self, item);
        }
    }

    fn visit_path(&mut self, path: &'ast syn::Path) {
        if path.leading_colon.is_none() {
            let segments = path
                .segments
                .iter()
                .map(|segment| segment.ident.to_string())
                .collect();
            self.record(segments, None);
        }
        visit::visit_path(self, path);
    }

    fn visit_visibility(&mut self, _: &'ast syn::Visibility) {
        // `pub(crate)`, `pub(super)`, `pub(in crate::a)` say who may use an
        // item; they import nothing.
    }

    fn visit_macro(&mut self, mac: &'ast syn::Macro) {
        let mut found = Vec::new();
        paths_in_tokens(mac.tokens.clone(), &mut found);
        for segments in found {
            self.record(segments, None);
        }
        visit::visit_macro(self, mac);
    }
}

// === impl RootNames ===

impl RootNames {
    /// The edge a reference makes, if it names another top-level module.
    fn edge_of(&self, reference: &Reference) -> Option<Edge> {
        let target = absolute(&reference.module, &reference.segments)?;
        let from = reference.module.first().map_or(ROOT, String::as_str);
        let to = self.node_of(&target, 0);
        (from != to).then(|| Edge {
            from: from.to_owned(),
            to,
            file: reference.file.clone(),
            line: 0,
        })
    }

    /// The top-level module an absolute path lands in; a name the crate root
    /// imports lands where the import points.
    fn node_of(&self, path: &[String], depth: usize) -> String {
        let Some(first) = path.first() else {
            return ROOT.to_owned();
        };
        if self.modules.contains(first) {
            return first.clone();
        }
        if depth < MAX_REEXPORT_DEPTH
            && let Some(imported) = self.uses.get(first)
            && let Some(target) = absolute(&[], imported)
            && target.first() != Some(first)
        {
            return self.node_of(&target, depth + 1);
        }
        ROOT.to_owned()
    }
}

/// A path from the crate root for a path written in `module`; `None` for a
/// path outside the crate (another crate, or `super` above the root).
fn absolute(module: &[String], segments: &[String]) -> Option<Vec<String>> {
    let first = segments.first()?;
    match first.as_str() {
        "crate" => Some(segments[1..].to_vec()),
        "super" | "self" => {
            let mut base = module.to_vec();
            let mut rest = segments;
            while let Some(segment) = rest.first() {
                match segment.as_str() {
                    "super" => {
                        base.pop()?;
                    }
                    "self" => {}
                    _ => break,
                }
                rest = &rest[1..];
            }
            base.extend(rest.iter().cloned());
            Some(base)
        }
        // In the crate root, a relative path starts at the root.
        _ if module.is_empty() => Some(segments.to_vec()),
        _ => None,
    }
}

/// One path of a `use` tree.
struct UseLeaf {
    segments: Vec<String>,
    /// The name it binds (`None` for a glob).
    name: Option<String>,
    written: WrittenPath,
}

/// Flattens `use a::{b, c::d as e, f::*}` into its paths; `grouped_at` is
/// the length of the prefix before the first `{`.
fn flatten_use(
    tree: &syn::UseTree,
    prefix: &mut Vec<String>,
    grouped_at: Option<usize>,
    leaves: &mut Vec<UseLeaf>,
) {
    let written = |segments: &[String], token: String| match grouped_at {
        Some(at) => WrittenPath {
            prefix: prefix[..at].to_vec(),
            leaf: Some(token),
        },
        None => WrittenPath {
            prefix: segments.to_vec(),
            leaf: None,
        },
    };
    match tree {
        syn::UseTree::Path(path) => {
            prefix.push(path.ident.to_string());
            flatten_use(&path.tree, prefix, grouped_at, leaves);
            prefix.pop();
        }
        syn::UseTree::Name(name) => {
            let ident = name.ident.to_string();
            let mut segments = prefix.clone();
            // `use a::b::{self}` names `a::b`.
            let binding = if ident == "self" {
                prefix.last().cloned()
            } else {
                segments.push(ident.clone());
                Some(ident.clone())
            };
            let written = written(&segments, ident);
            leaves.push(UseLeaf {
                segments,
                name: binding,
                written,
            });
        }
        syn::UseTree::Rename(rename) => {
            let ident = rename.ident.to_string();
            let mut segments = prefix.clone();
            if ident != "self" {
                segments.push(ident.clone());
            }
            let written = written(&segments, ident);
            leaves.push(UseLeaf {
                segments,
                name: Some(rename.rename.to_string()),
                written,
            });
        }
        syn::UseTree::Glob(_) => {
            let written = written(prefix, "*".to_owned());
            leaves.push(UseLeaf {
                segments: prefix.clone(),
                name: None,
                written,
            });
        }
        syn::UseTree::Group(group) => {
            let grouped_at = grouped_at.or(Some(prefix.len()));
            for tree in &group.items {
                flatten_use(tree, prefix, grouped_at, leaves);
            }
        }
    }
}

/// Paths (`a::b::c`) in a macro's tokens, which syn does not parse.
fn paths_in_tokens(tokens: TokenStream, found: &mut Vec<Vec<String>>) {
    let tokens: Vec<TokenTree> = tokens.into_iter().collect();
    let is_path_separator = |at: usize| {
        matches!(
            (tokens.get(at), tokens.get(at + 1)),
            (Some(TokenTree::Punct(a)), Some(TokenTree::Punct(b)))
                if a.as_char() == ':' && a.spacing() == Spacing::Joint && b.as_char() == ':'
        )
    };
    let mut at = 0;
    while at < tokens.len() {
        match &tokens[at] {
            TokenTree::Group(group) => {
                paths_in_tokens(group.stream(), found);
                at += 1;
            }
            TokenTree::Ident(ident) if at < 2 || !is_path_separator(at - 2) => {
                let mut segments = vec![ident.to_string()];
                at += 1;
                while is_path_separator(at) {
                    let Some(TokenTree::Ident(next)) = tokens.get(at + 2) else {
                        break;
                    };
                    segments.push(next.to_string());
                    at += 3;
                }
                found.push(segments);
            }
            _ => at += 1,
        }
    }
}

/// The file a `#[path = "…"]` attribute names.
fn path_attribute(attrs: &[syn::Attribute]) -> Option<String> {
    attrs.iter().find_map(|attr| {
        let syn::Meta::NameValue(name_value) = &attr.meta else {
            return None;
        };
        if !name_value.path.is_ident("path") {
            return None;
        }
        match &name_value.value {
            syn::Expr::Lit(syn::ExprLit {
                lit: syn::Lit::Str(path),
                ..
            }) => Some(path.value()),
            _ => None,
        }
    })
}

/// Whether an item exists only in test builds (`#[cfg(test)]`,
/// `#[cfg(all(test, …))]`).
fn is_test_only(attrs: &[syn::Attribute]) -> bool {
    attrs
        .iter()
        .filter(|attr| attr.path().is_ident("cfg"))
        .filter_map(|attr| attr.parse_args::<syn::Meta>().ok())
        .any(|meta| requires_test(&meta))
}

/// Whether a `cfg` predicate can hold only when `test` is set.
fn requires_test(meta: &syn::Meta) -> bool {
    match meta {
        syn::Meta::Path(path) => path.is_ident("test"),
        syn::Meta::List(list) => {
            let Ok(nested) =
                list.parse_args_with(Punctuated::<syn::Meta, syn::Token![,]>::parse_terminated)
            else {
                return false;
            };
            if list.path.is_ident("all") {
                nested.iter().any(requires_test)
            } else if list.path.is_ident("any") {
                !nested.is_empty() && nested.iter().all(requires_test)
            } else {
                false
            }
        }
        syn::Meta::NameValue(_) => false,
    }
}
