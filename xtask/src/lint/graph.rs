//! The graph of one crate's top-level modules: its strongly connected
//! components (modules that reach each other), the elementary cycles inside
//! each, and the source locations of every edge that closes them.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};

use crate::lint::modules::Edge;

/// More elementary cycles than this in one component are summarised: the
/// edge list below them already shows where to cut.
const MAX_CYCLES_SHOWN: usize = 20;

/// Where one edge is written.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Location {
    /// The file.
    pub file: PathBuf,
    /// The line.
    pub line: usize,
}

/// Modules that import each other, directly or through others.
#[derive(Debug)]
pub struct Component {
    /// The modules, sorted.
    pub modules: Vec<String>,
    /// Elementary cycles (`a → b → a` as `[a, b]`), at most [`MAX_CYCLES_SHOWN`].
    pub cycles: Vec<Vec<String>>,
    /// How many elementary cycles there are (counting stops past the shown ones).
    pub cycle_count: usize,
    /// Every edge between two modules of the component, with its locations.
    pub edges: Vec<(String, String, Vec<Location>)>,
}

/// Top-level modules and the edges between them.
#[derive(Debug, Default)]
pub struct ModuleGraph {
    edges: BTreeMap<String, BTreeMap<String, BTreeSet<Location>>>,
}

// === impl ModuleGraph ===

impl ModuleGraph {
    /// Builds the graph of `edges`.
    pub fn new(edges: &[Edge]) -> Self {
        let mut graph = Self::default();
        for edge in edges {
            graph
                .edges
                .entry(edge.from.clone())
                .or_default()
                .entry(edge.to.clone())
                .or_default()
                .insert(Location {
                    file: edge.file.clone(),
                    line: edge.line,
                });
        }
        graph
    }

    /// The modules `from` names directly.
    fn successors<'a>(&'a self, from: &str) -> impl Iterator<Item = &'a String> + 'a {
        self.edges.get(from).into_iter().flat_map(BTreeMap::keys)
    }

    /// Every module reachable from `start` (itself excluded unless on a cycle).
    fn reachable(&self, start: &str) -> BTreeSet<String> {
        let mut seen = BTreeSet::new();
        let mut stack: Vec<&String> = self.successors(start).collect();
        while let Some(node) = stack.pop() {
            if seen.insert(node.clone()) {
                stack.extend(self.successors(node));
            }
        }
        seen
    }

    /// `modules` in dependency order, bottom first: each layer uses only
    /// modules of the layers before it. Modules on a cycle, and those that
    /// use them, come last in one layer.
    pub fn layers(&self, modules: &[String]) -> Vec<Vec<String>> {
        let mut placed: BTreeSet<&String> = BTreeSet::new();
        let mut left: Vec<&String> = modules.iter().collect();
        let mut layers = Vec::new();
        while !left.is_empty() {
            let (ready, waiting): (Vec<&String>, Vec<&String>) = left.iter().partition(|module| {
                self.successors(module)
                    .all(|dependency| placed.contains(dependency) || !modules.contains(dependency))
            });
            if ready.is_empty() {
                layers.push(waiting.into_iter().cloned().collect());
                break;
            }
            placed.extend(ready.iter().copied());
            layers.push(ready.into_iter().cloned().collect());
            left = waiting;
        }
        layers
    }

    /// The components with at least one cycle, in module order.
    pub fn cycles(&self) -> Vec<Component> {
        let nodes: BTreeSet<&String> = self
            .edges
            .iter()
            .flat_map(|(from, to)| std::iter::once(from).chain(to.keys()))
            .collect();
        let reach: BTreeMap<&String, BTreeSet<String>> = nodes
            .iter()
            .map(|&node| (node, self.reachable(node)))
            .collect();
        let mut placed = BTreeSet::new();
        let mut components = Vec::new();
        for &node in &nodes {
            if placed.contains(node) || !reach[node].contains(node) {
                continue;
            }
            let modules: Vec<String> = reach[node]
                .iter()
                .filter(|other| reach[*other].contains(node))
                .cloned()
                .collect();
            placed.extend(modules.iter().cloned());
            components.push(self.component(modules));
        }
        components
    }

    /// The cycles and edges inside one strongly connected set of modules.
    fn component(&self, modules: Vec<String>) -> Component {
        let members: BTreeSet<&String> = modules.iter().collect();
        let edges = modules
            .iter()
            .flat_map(|from| {
                self.edges[from]
                    .iter()
                    .filter(|(to, _)| members.contains(to))
                    .map(move |(to, locations)| {
                        (
                            from.clone(),
                            to.clone(),
                            locations.iter().cloned().collect(),
                        )
                    })
            })
            .collect();
        let mut cycles = Vec::new();
        let mut cycle_count = 0;
        for (index, start) in modules.iter().enumerate() {
            // Each cycle is found once: from its smallest module, through
            // larger ones only.
            let allowed: BTreeSet<&String> = modules[index..].iter().collect();
            self.find_cycles(
                start,
                &allowed,
                &mut vec![start.clone()],
                &mut cycles,
                &mut cycle_count,
            );
        }
        Component {
            modules,
            cycles,
            cycle_count,
            edges,
        }
    }

    /// Depth-first search for paths from the last of `path` back to its first.
    fn find_cycles(
        &self,
        start: &String,
        allowed: &BTreeSet<&String>,
        path: &mut Vec<String>,
        cycles: &mut Vec<Vec<String>>,
        count: &mut usize,
    ) {
        let Some(last) = path.last().cloned() else {
            return;
        };
        for next in self.successors(&last) {
            if *count > MAX_CYCLES_SHOWN {
                return;
            }
            if next == start {
                *count += 1;
                if cycles.len() < MAX_CYCLES_SHOWN {
                    cycles.push(path.clone());
                }
            } else if allowed.contains(next) && !path.contains(next) {
                path.push(next.clone());
                self.find_cycles(start, allowed, path, cycles, count);
                path.pop();
            }
        }
    }
}

// === impl Component ===

impl Component {
    /// The same component with file names relative to `root`.
    pub fn relative_to(mut self, root: &Path) -> Self {
        for (_, _, locations) in &mut self.edges {
            for location in locations {
                if let Ok(relative) = location.file.strip_prefix(root) {
                    location.file = relative.to_path_buf();
                }
            }
        }
        self
    }
}

impl fmt::Display for Component {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for cycle in &self.cycles {
            let first = cycle.first().map_or("", String::as_str);
            writeln!(f, "    cycle: {} → {first}", cycle.join(" → "))?;
        }
        if self.cycle_count > self.cycles.len() {
            writeln!(f, "    … and more cycles through the same modules")?;
        }
        for (from, to, locations) in &self.edges {
            writeln!(f, "    {from} → {to}:")?;
            for location in locations {
                writeln!(f, "        {}:{}", location.file.display(), location.line)?;
            }
        }
        Ok(())
    }
}
