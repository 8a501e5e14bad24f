//! The agent's pin directory on bpffs, opened read-only:
//!
//! ```text
//! <bpffs_dir>/maps/<MAP>                 every map (mesh_ebpf_common::map_names)
//! <bpffs_dir>/links/<program>            the cgroup attachments, one link each
//! <bpffs_dir>/links/sk_lookup_<cookie>   one sk_lookup attachment per enrolled pod netns
//! ```

use std::{
    io,
    path::{Path, PathBuf},
};

use aya::{
    maps::{MapData, MapInfo},
    programs::links::{FdLink, PinnedLink},
};
use mesh_ebpf_common::map_names;

use super::{BpfError, host};

/// Prefix of the per-netns `sk_lookup` link pins.
pub const SK_LOOKUP_PIN_PREFIX: &str = "sk_lookup_";

/// An agent's pin directory whose `maps/` and `links/` exist.
#[derive(Debug)]
pub struct PinDir {
    root: PathBuf,
}

/// A pinned map, open.
pub struct PinnedMap {
    /// Its name (also its pin's file name).
    pub name: &'static str,
    /// The pin.
    pub path: PathBuf,
    /// What the kernel says about it.
    pub info: MapInfo,
    /// The map itself.
    pub data: MapData,
}

/// What a pinned link attaches.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LinkRole {
    /// A cgroup program; the pin is named after the program.
    Cgroup {
        /// The program's name.
        program: String,
    },
    /// `sk_lookup` on one pod network namespace.
    SkLookup {
        /// The namespace's cookie, from the pin's name.
        netns_cookie: u64,
    },
}

/// A pinned link and what the kernel says about it.
#[derive(Clone, Debug)]
pub struct LinkPin {
    /// The pin.
    pub path: PathBuf,
    /// What it attaches, from its name.
    pub role: LinkRole,
    /// The link's id.
    pub link_id: u32,
    /// The attached program's id.
    pub program_id: u32,
    /// `enum bpf_attach_type`, when the kernel reports it.
    pub attach_type: Option<u32>,
    /// The cgroup id of a cgroup link.
    pub cgroup_id: Option<u64>,
    /// The namespace inode of a netns link.
    pub netns_ino: Option<u64>,
}

// === impl PinDir ===

impl PinDir {
    /// Checks that `root` holds an agent's pins.
    pub fn open(root: &Path) -> Result<Self, BpfError> {
        for dir in [root.to_owned(), root.join("maps"), root.join("links")] {
            match std::fs::metadata(&dir) {
                Ok(meta) if meta.is_dir() => {}
                Err(error) if error.kind() == io::ErrorKind::PermissionDenied => {
                    return Err(BpfError::object("open", &dir, &error));
                }
                _ => {
                    return Err(BpfError::NoPinDir {
                        hint: missing_hint(root, &dir),
                        path: dir,
                    });
                }
            }
        }
        Ok(Self {
            root: root.to_owned(),
        })
    }

    /// Opens one of ambit's maps.
    pub fn open_map(&self, name: &'static str) -> Result<PinnedMap, BpfError> {
        let path = self.root.join("maps").join(name);
        if !path.exists() {
            return Err(BpfError::NoMapPin {
                map: name,
                hint: missing_hint(&self.root, &path),
                path,
            });
        }
        let data = MapData::from_pin(&path).map_err(|e| BpfError::object("open", &path, &e))?;
        let info = data
            .info()
            .map_err(|e| BpfError::object("inspect", &path, &e))?;
        Ok(PinnedMap {
            name,
            path,
            info,
            data,
        })
    }

    /// Opens every one of ambit's maps, in [`map_names::ALL`] order.
    pub fn open_all_maps(&self) -> Result<Vec<PinnedMap>, BpfError> {
        map_names::ALL.iter().map(|n| self.open_map(n)).collect()
    }

    /// Every pinned link, by pin name.
    pub fn links(&self) -> Result<Vec<LinkPin>, BpfError> {
        let dir = self.root.join("links");
        let entries = std::fs::read_dir(&dir).map_err(|source| BpfError::Io {
            path: dir.clone(),
            source,
        })?;
        let mut pins: Vec<(PathBuf, LinkRole)> = entries
            .flatten()
            .filter_map(|entry| {
                let name = entry.file_name().into_string().ok()?;
                let role = match name.strip_prefix(SK_LOOKUP_PIN_PREFIX) {
                    Some(cookie) => LinkRole::SkLookup {
                        netns_cookie: cookie.parse().ok()?,
                    },
                    None => LinkRole::Cgroup { program: name },
                };
                Some((entry.path(), role))
            })
            .collect();
        pins.sort_by(|a, b| a.0.cmp(&b.0));
        // Every link stays open until the fdinfo scan below has seen it.
        let mut open = Vec::with_capacity(pins.len());
        for (path, role) in pins {
            let link = FdLink::from(
                PinnedLink::from_pin(&path).map_err(|e| BpfError::object("open", &path, &e))?,
            );
            let info = link
                .info()
                .map_err(|e| BpfError::object("inspect", &path, &e))?;
            open.push((path, role, info, link));
        }
        let fdinfo = host::open_link_fdinfo();
        Ok(open
            .into_iter()
            .map(|(path, role, info, _link)| {
                let extra = fdinfo.get(&info.id()).cloned().unwrap_or_default();
                LinkPin {
                    path,
                    role,
                    link_id: info.id(),
                    program_id: info.program_id(),
                    attach_type: extra.attach_type,
                    cgroup_id: extra.cgroup_id,
                    netns_ino: extra.netns_ino,
                }
            })
            .collect())
    }
}

/// What to check when `missing` (at or below the pin directory `root`)
/// does not exist.
fn missing_hint(root: &Path, missing: &Path) -> String {
    let mounts = host::mounts();
    let on_bpffs = host::mount_of(&mounts, missing).is_some_and(|m| m.fstype == "bpf");
    if on_bpffs || mounts.is_empty() {
        format!(
            "has a node agent run on this node (its pins outlive it until `ambit uninstall`), and was it started with --bpffs-dir {}? Set --bpffs-dir or AMBIT_BPFFS_DIR to the agent's",
            root.display()
        )
    } else {
        format!(
            "no bpf filesystem is mounted at or above it: is bpffs mounted (`mount -t bpf bpf /sys/fs/bpf`), and was the agent started with --bpffs-dir {}?",
            root.display()
        )
    }
}
