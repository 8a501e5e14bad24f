//! The agent's pinned state on bpffs, as the agent and the CLI both read
//! it (userspace only):
//!
//! ```text
//! <bpffs_dir>/maps/<MAP>                 every map (see map_names)
//! <bpffs_dir>/links/<program>            the cgroup attachments, one link each
//! <bpffs_dir>/links/sk_lookup_<cookie>   one sk_lookup attachment per enrolled pod netns
//! <bpffs_dir>/layout-<N>                 empty; the maps' layout version (PIN_LAYOUT_VERSION)
//! ```

use std::path::Path;

/// What [`remove_pinned_state`] removed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RemovedPins {
    /// Link pins: each one's attachment is detached as its pin goes (no
    /// process holds it once the agent is gone).
    pub links: usize,
    /// Map pins.
    pub maps: usize,
}

/// Removes everything pinned under `pin_dir` and the directory itself:
/// with no agent holding them, the programs are detached and the maps
/// freed. Problems are logged and the rest is still removed.
pub fn remove_pinned_state(pin_dir: &Path) -> RemovedPins {
    let mut removed = RemovedPins::default();
    for sub in ["links", "maps"] {
        if let Ok(entries) = std::fs::read_dir(pin_dir.join(sub)) {
            for entry in entries.flatten() {
                match std::fs::remove_file(entry.path()) {
                    Ok(()) if sub == "links" => removed.links += 1,
                    Ok(()) => removed.maps += 1,
                    Err(error) => {
                        tracing::warn!(path = %entry.path().display(), %error, "cannot remove pin");
                    }
                }
            }
        }
        let _ = std::fs::remove_dir(pin_dir.join(sub));
    }
    if let Ok(entries) = std::fs::read_dir(pin_dir) {
        for entry in entries.flatten() {
            if entry
                .file_name()
                .to_str()
                .is_some_and(|n| n.starts_with("layout-"))
            {
                let _ = std::fs::remove_dir(entry.path());
            }
        }
    }
    let _ = std::fs::remove_dir(pin_dir);
    removed
}

/// The name of the empty directory that records the layout version of the
/// maps pinned beside it (bpffs holds only directories and BPF objects).
#[must_use]
pub fn layout_marker(version: u32) -> String {
    format!("layout-{version}")
}

/// The layout version of the state pinned under `pin_dir`: `None` when no
/// map is pinned there, 1 for state pinned before versions were recorded.
#[must_use]
pub fn pinned_layout(pin_dir: &Path) -> Option<u32> {
    let has_maps =
        std::fs::read_dir(pin_dir.join("maps")).is_ok_and(|mut entries| entries.next().is_some());
    if !has_maps {
        return None;
    }
    let recorded = std::fs::read_dir(pin_dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            entry
                .file_name()
                .to_str()?
                .strip_prefix("layout-")?
                .parse()
                .ok()
        })
        .max();
    Some(recorded.unwrap_or(1))
}
