//! Loading, pinning and attaching ambit's eBPF programs. This module is the
//! only place aya types appear; the rest of the agent talks to [`MeshEbpf`]
//! and the typed map wrappers in [`maps`].
//!
//! Everything is pinned under the configured bpffs directory:
//!
//! ```text
//! <bpffs_dir>/maps/<MAP>                 every map (see mesh_ebpf_common::map_names)
//! <bpffs_dir>/links/<program>            the cgroup attachments, one link each
//! <bpffs_dir>/links/sk_lookup_<cookie>   one sk_lookup attachment per enrolled pod netns
//! <bpffs_dir>/layout-<N>                 empty; the maps' layout version (PIN_LAYOUT_VERSION)
//! ```
//!
//! (`mesh_ebpf_common::pins` reads and removes that state, for the agent
//! and the CLI alike.) Submodules: `attach` loads and attaches programs,
//! `pin_dir` checks the pin directory, `preflight` the kernel, and
//! [`maps`] wraps the maps.
//!
//! A starting agent that finds these pins reuses them: maps keep their
//! contents and attached links are adopted, never attached twice. An agent
//! that exits, or dies, leaves them in place: enrolled pods stay captured
//! and fail closed until the next agent takes over. Only an uninstall
//! (`ambit uninstall`) removes them.

use std::{
    fs::File,
    path::{Path, PathBuf},
    sync::Arc,
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{MapData, RingBuf},
    programs::{
        ProgramError, SkLookup,
        links::{FdLink, PinnedLink},
    },
};
use mesh_ebpf_common::{pins::remove_pinned_state, program_names};

mod attach;
mod cgroup_root;
pub mod maps;
mod pin_dir;
mod preflight;

pub use maps::MeshMaps;
pub use preflight::preflight;

use self::{
    attach::{adopt_link, attach_sk_msg, attach_to_cgroup, load_program, pin_link, program_mut},
    cgroup_root::open_cgroup_root,
    pin_dir::prepare_pin_dir,
};

/// The compiled eBPF object, built from `mesh-ebpf/programs` by `build.rs`.
static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/ambit-ebpf.o"));

/// Errors loading and attaching the eBPF programs.
#[derive(Debug, thiserror::Error)]
pub enum EbpfError {
    /// The pinned state has another layout than this agent's.
    #[error(
        "the eBPF state pinned under {dir} has map layout version {pinned}, and this agent uses version {ours}: it cannot take that state over, so it changed nothing (run an agent of the version that pinned it, or `ambit uninstall` first, which takes every pod out of the mesh)"
    )]
    PinLayout {
        /// The pin directory.
        dir: PathBuf,
        /// The version found there.
        pinned: u32,
        /// This agent's version.
        ours: u32,
    },
    /// The pin directory is not on a bpffs.
    #[error(
        "{dir} is not on a bpf filesystem (mount one with `mount -t bpf bpf {mount}`, or set AMBIT_BPFFS_DIR)"
    )]
    NotBpffs {
        /// The configured directory.
        dir: PathBuf,
        /// Where to mount bpffs.
        mount: PathBuf,
    },
    /// Creating or inspecting the pin directory failed.
    #[error("cannot use bpffs directory {dir}: {source}")]
    PinDir {
        /// The directory.
        dir: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The kernel lacks a program type the mesh needs.
    #[error(
        "this kernel (Linux {kernel_release}) cannot load {program_type} programs, needed for {hook}: {feature}"
    )]
    MissingKernelFeature {
        /// The running kernel's release, as `uname -r` prints it.
        kernel_release: String,
        /// The program type, e.g. `BPF_PROG_TYPE_SK_LOOKUP`.
        program_type: &'static str,
        /// The hook that needs it.
        hook: &'static str,
        /// The kernel feature (version and config option) to check.
        feature: &'static str,
    },
    /// The object could not be parsed or its maps created.
    #[error("cannot load the eBPF object: {0}")]
    Object(#[source] aya::EbpfError),
    /// A program is missing from the object or has the wrong type.
    #[error("the eBPF object has no usable program {name}: {source}")]
    MissingProgram {
        /// Program name.
        name: &'static str,
        /// Why it could not be used.
        source: ProgramError,
    },
    /// A program failed to load (the verifier refused it) or attach.
    #[error("cannot {action} eBPF program {name}: {source}")]
    Program {
        /// What was being done: "load", "attach".
        action: &'static str,
        /// Program name.
        name: &'static str,
        /// The error, with the verifier log when the verifier refused it.
        source: ProgramError,
    },
    /// The cgroup root could not be opened.
    #[error("cannot open cgroup {path}: {error} ({hint})")]
    Cgroup {
        /// The cgroup directory.
        path: PathBuf,
        /// The error.
        error: std::io::Error,
        /// What to check, from what is mounted where it points.
        hint: &'static str,
    },
    /// The cgroup root is not on cgroup v2.
    #[error("{path} is not a cgroup v2 directory: {hint}")]
    NotCgroup2 {
        /// The cgroup directory.
        path: PathBuf,
        /// What it is instead, and what to do.
        hint: &'static str,
    },
    /// A link could not be pinned, adopted or unpinned.
    #[error("cannot {action} pinned link {path}: {source}")]
    Link {
        /// What was being done.
        action: &'static str,
        /// The pin path.
        path: PathBuf,
        /// The error.
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A map is missing from the object or has the wrong type.
    #[error("the eBPF object has no usable map {name}: {source}")]
    Map {
        /// Map name.
        name: &'static str,
        /// Why it could not be used.
        source: aya::maps::MapError,
    },
}

/// The loaded programs, their attachments and their maps.
pub struct MeshEbpf {
    bpf: Ebpf,
    pin_dir: PathBuf,
    cgroup_links: Vec<PinnedLink>,
    reused_cgroup_links: usize,
    maps: Arc<MeshMaps>,
    logger: Option<EbpfLogForwarder>,
    splice: KernelSplice,
    splice_events: Option<RingBuf<MapData>>,
}

/// Whether the kernel took `sk_msg`, so that pods that ask for the kernel
/// path (`ambit.dev/kernel-path=enabled`) get it; if not, why.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "state", content = "reason", rename_all = "lowercase")]
pub enum KernelSplice {
    /// `sk_msg` is attached to the splice sock hash.
    On,
    /// Off: the kernel refused `sk_msg` (the reason).
    Off(String),
}

/// Forwards the eBPF programs' log records (aya-log) into `tracing`. Must be
/// polled: see [`EbpfLogForwarder::run`].
pub struct EbpfLogForwarder(aya_log::EbpfLogger<&'static dyn log::Log>);

/// A pod network namespace's `sk_lookup` attachment, pinned.
pub struct SkLookupAttachment {
    link: PinnedLink,
    path: PathBuf,
    reused: bool,
}

// === impl MeshEbpf ===

impl MeshEbpf {
    /// Loads the programs and maps, reusing pinned maps and attachments under
    /// `pin_dir` when a previous agent left them, then attaches whatever is
    /// not yet attached to `cgroup_root`.
    ///
    /// `sk_msg` is loaded and attached too, for the pods that opt in to the
    /// kernel path; a kernel that refuses it leaves the kernel path off for
    /// every pod (see [`KernelSplice`]) and everything else working.
    pub fn load(pin_dir: &Path, cgroup_root: &Path) -> Result<Self, EbpfError> {
        preflight(
            |t| aya::sys::is_program_supported(t).unwrap_or(false),
            &preflight::kernel_release(),
        )?;
        // Before anything is loaded or pinned: a wrong cgroup changes nothing.
        let cgroup = open_cgroup_root(cgroup_root)?;
        prepare_pin_dir(pin_dir)?;
        let mut bpf = EbpfLoader::new()
            .default_map_pin_directory(pin_dir.join("maps"))
            .load(EBPF_OBJECT)
            .map_err(EbpfError::Object)?;
        let logger = match aya_log::EbpfLogger::init(&mut bpf) {
            Ok(logger) => Some(EbpfLogForwarder(logger)),
            Err(error) => {
                tracing::debug!(%error, "eBPF log forwarding unavailable");
                None
            }
        };
        let mut cgroup_links = Vec::with_capacity(program_names::CGROUP.len());
        let mut reused_cgroup_links = 0;
        for name in program_names::CGROUP {
            let path = pin_dir.join("links").join(name);
            if path.exists() {
                cgroup_links.push(adopt_link(&path)?);
                reused_cgroup_links += 1;
                continue;
            }
            cgroup_links.push(attach_to_cgroup(&mut bpf, name, &cgroup, &path)?);
        }
        load_program(&mut bpf, program_names::SK_LOOKUP)?;
        let maps = MeshMaps::take_from(&mut bpf)?;
        let splice_events = Some(maps::take_splice_events(&mut bpf)?);
        let splice = KernelSplice::from_attach(attach_sk_msg(&mut bpf, &maps));
        if let KernelSplice::Off(reason) = &splice {
            tracing::warn!(%reason, "the kernel path is unavailable: pods that ask for it (ambit.dev/kernel-path=enabled) stay on the user-space path");
        }
        let maps = Arc::new(maps);
        tracing::info!(
            pin_dir = %pin_dir.display(),
            cgroup = %cgroup_root.display(),
            attached = program_names::CGROUP.len() - reused_cgroup_links,
            reused = reused_cgroup_links,
            kernel_splice = splice == KernelSplice::On,
            "eBPF programs ready"
        );
        Ok(Self {
            bpf,
            pin_dir: pin_dir.to_owned(),
            cgroup_links,
            reused_cgroup_links,
            maps,
            logger,
            splice,
            splice_events,
        })
    }

    /// Whether the kernel took `sk_msg`: the kernel path is available to
    /// the pods that ask for it.
    #[must_use]
    pub fn kernel_splice(&self) -> &KernelSplice {
        &self.splice
    }

    /// The ring of spliced-connection events, for the one task that reads
    /// it (once).
    pub fn take_splice_events(&mut self) -> Option<RingBuf<MapData>> {
        self.splice_events.take()
    }

    /// The log forwarder, to be run on a runtime (once).
    pub fn take_log_forwarder(&mut self) -> Option<EbpfLogForwarder> {
        self.logger.take()
    }

    /// The maps, shared with the data path.
    #[must_use]
    pub fn maps(&self) -> &Arc<MeshMaps> {
        &self.maps
    }

    /// How many cgroup attachments were adopted from a previous agent.
    #[must_use]
    pub fn reused_cgroup_links(&self) -> usize {
        self.reused_cgroup_links
    }

    /// The pin directory.
    #[must_use]
    pub fn pin_dir(&self) -> &Path {
        &self.pin_dir
    }

    /// Attaches `sk_lookup` to a pod's network namespace, or adopts the
    /// attachment a previous agent pinned for the same namespace.
    pub fn attach_sk_lookup(
        &mut self,
        netns: &File,
        netns_cookie: u64,
    ) -> Result<SkLookupAttachment, EbpfError> {
        let path = self.sk_lookup_pin(netns_cookie);
        if path.exists() {
            return Ok(SkLookupAttachment {
                link: adopt_link(&path)?,
                path,
                reused: true,
            });
        }
        let name = program_names::SK_LOOKUP;
        let program: &mut SkLookup = program_mut(&mut self.bpf, name)?;
        let id = program.attach(netns).map_err(|source| EbpfError::Program {
            action: "attach",
            name,
            source,
        })?;
        let link = program.take_link(id).map_err(|source| EbpfError::Program {
            action: "attach",
            name,
            source,
        })?;
        let link = FdLink::from(link);
        Ok(SkLookupAttachment {
            link: pin_link(link, &path)?,
            path,
            reused: false,
        })
    }

    /// Pinned `sk_lookup` attachments whose netns cookie is not in `keep`:
    /// left by a previous agent for pods that are gone. They are detached.
    pub fn remove_stale_sk_lookups(&self, keep: &[u64]) -> Vec<u64> {
        let mut removed = Vec::new();
        let Ok(entries) = std::fs::read_dir(self.pin_dir.join("links")) else {
            return removed;
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(cookie) = name
                .to_str()
                .and_then(|n| n.strip_prefix("sk_lookup_"))
                .and_then(|c| c.parse().ok())
            else {
                continue;
            };
            if keep.contains(&cookie) {
                continue;
            }
            match adopt_link(&entry.path()) {
                Ok(link) => {
                    if let Err(error) = (SkLookupAttachment {
                        link,
                        path: entry.path(),
                        reused: true,
                    })
                    .detach()
                    {
                        tracing::warn!(%error, "cannot remove a stale sk_lookup attachment");
                    } else {
                        removed.push(cookie);
                    }
                }
                Err(error) => tracing::warn!(%error, "cannot adopt a stale sk_lookup attachment"),
            }
        }
        removed
    }

    fn sk_lookup_pin(&self, netns_cookie: u64) -> PathBuf {
        self.pin_dir
            .join("links")
            .join(format!("sk_lookup_{netns_cookie}"))
    }

    /// Detaches everything and removes the pins (a normal exit).
    pub fn detach_and_unpin(self) {
        let Self {
            bpf,
            pin_dir,
            cgroup_links,
            maps,
            ..
        } = self;
        for link in cgroup_links {
            if let Err(error) = link.unpin() {
                tracing::warn!(%error, "cannot unpin a cgroup link");
            }
        }
        drop(maps);
        drop(bpf);
        // sk_lookup links of pods still enrolled are removed with their
        // enrollments; whatever is left here belonged to no live pod.
        remove_pinned_state(&pin_dir);
        tracing::info!(pin_dir = %pin_dir.display(), "eBPF programs detached and unpinned");
    }

    /// Leaves every attachment and map pinned for the next agent: enrolled
    /// pods stay captured, and their connections are refused until it
    /// takes over.
    pub fn keep_for_next_agent(self) {
        tracing::info!(pin_dir = %self.pin_dir.display(), "eBPF programs left attached and pinned for the next agent; enrolled pods fail closed until it takes over");
    }
}

// === impl KernelSplice ===

impl KernelSplice {
    /// The state after trying to attach `sk_msg`.
    #[must_use]
    pub fn from_attach(result: Result<(), EbpfError>) -> Self {
        match result {
            Ok(()) => Self::On,
            Err(error) => Self::Off(format!(
                "the kernel refused the sk_msg program: {error} (sk_msg needs CONFIG_NET_SOCK_MSG and Linux 4.17 or later)"
            )),
        }
    }
}

impl std::fmt::Display for KernelSplice {
    /// `on`, or `off: ` and the reason.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::On => f.write_str("on"),
            Self::Off(reason) => write!(f, "off: {reason}"),
        }
    }
}

// === impl EbpfLogForwarder ===

impl EbpfLogForwarder {
    /// Forwards records as they arrive, until the task is dropped.
    pub async fn run(self) {
        let Ok(mut ready) = crate::sys::async_readable(self.0) else {
            tracing::debug!("cannot poll the eBPF log buffer; eBPF logs are off");
            return;
        };
        loop {
            let Ok(mut guard) = ready.readable_mut().await else {
                return;
            };
            guard.get_inner_mut().flush();
            guard.clear_ready();
        }
    }
}

// === impl SkLookupAttachment ===

impl SkLookupAttachment {
    /// Whether this attachment was adopted from a previous agent.
    #[must_use]
    pub fn reused(&self) -> bool {
        self.reused
    }

    /// Detaches `sk_lookup` from the namespace and removes the pin.
    pub fn detach(self) -> Result<(), EbpfError> {
        let link = self.link.unpin().map_err(|source| EbpfError::Link {
            action: "unpin",
            path: self.path.clone(),
            source: Box::new(source),
        })?;
        // Dropping the last descriptor of an unpinned link detaches it.
        drop(link);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refused_sk_msg_leaves_splicing_off_with_the_reason() {
        let refused = EbpfError::MissingProgram {
            name: program_names::SK_MSG,
            source: ProgramError::UnexpectedProgramType,
        };
        let KernelSplice::Off(reason) = KernelSplice::from_attach(Err(refused)) else {
            panic!("splicing must be off");
        };
        assert!(reason.contains("refused the sk_msg program"), "{reason}");
        assert!(reason.contains("ambit_sk_msg"), "{reason}");
        assert_eq!(KernelSplice::from_attach(Ok(())), KernelSplice::On);
    }
}
