//! `ambit bpf`: bpftool-style inspection of the eBPF state a node agent
//! pinned on bpffs.
//!
//! ```text
//! ambit bpf prog list               ambit's programs: id, type, name, attachments, tag, load time, runs, maps
//! ambit bpf prog show <ID|NAME>     one program in detail
//! ambit bpf map list                ambit's maps: id, type, key and value size, capacity, entries in use
//! ambit bpf map dump <NAME>         a map's entries, keys and values decoded
//! ambit bpf cgroup show             the cgroup attachments: cgroup, attach type, program, link
//! ambit bpf netns list              the pod network namespaces: cookie, addresses, inbound listeners, sk_lookup link
//! ```
//!
//! They open the pins under `--bpffs-dir` (default `/sys/fs/bpf/ambit`, or
//! `AMBIT_BPFFS_DIR`, the agent's own setting) directly, never the admin
//! API, so they work while the agent is down or stopped (it never
//! removes its pins when it stops). Programs are found through the pinned links (link →
//! program id) and, for those without a link of their own (`sk_msg`, or
//! `sk_lookup` before any pod is enrolled), through the pinned maps they
//! use. Reading eBPF objects needs root. Map names may be given in any
//! case, with or without the `AMBIT_` prefix; programs by id, ambit's name
//! or the kernel's (cut to 15 bytes).
//!
//! # JSON and YAML fields
//!
//! Stable, `snake_case`; absent values are `null`.
//!
//! - `prog list` (array) and `prog show` (object): `id`, `name`,
//!   `kernel_name`, `type`, `tag`, `loaded_at` (RFC 3339), `run_count`,
//!   `run_time_ns` (both `null` while `kernel.bpf_stats_enabled=0`),
//!   `xlated_bytes`, `jited_bytes`, `verified_insns`, `map_ids`, `maps`
//!   (names), `attachments`: [{`attach_type`, `target`, `cgroup_id`,
//!   `netns_cookie`, `netns_ino`, `link_id`, `pin`}].
//! - `map list` (array): `name`, `id`, `type`, `key_size`, `value_size`,
//!   `max_entries`, `entries` (in use; `null` for the ring buffer), `pin`.
//! - `map dump` (object): `map` (as in `map list`), `entries`: [{`key`,
//!   `value`}], and `note` when entries cannot be shown (the ring buffer).
//!   Keys: `{netns_cookie}` (`AMBIT_ENROLLED`), `{socket_cookie}`
//!   (`AMBIT_ODST_SOCK`), `{netns_cookie, src, dst}` (tuples: `AMBIT_ODST_TUPL`,
//!   `AMBIT_BYPASS`, `AMBIT_SPLICE_SK`, `AMBIT_SPLICED`), `{pod_ip}`
//!   (`AMBIT_INBOUND`), `{index, counter}` (`AMBIT_COUNTERS`),
//!   `{src_ip, dst_ip, dst_port}` (`AMBIT_DIRECT`, port 0: any other port).
//!   Values: `{ipv4, ipv6, flags}`, `{original_dst, netns_cookie}`,
//!   `{total, per_cpu}` (counters: the sum and each CPU's value),
//!   `{value}` (`AMBIT_BYPASS`), `{verdict}` (`allow`/`deny`),
//!   `{sent, received, opened_ns, flags, socket_cookie}` (`AMBIT_SPLICED`),
//!   and `null` for sock hashes, whose values are sockets.
//! - `cgroup show` (array): `cgroup` (path), `cgroup_id`, `attach_type`,
//!   `program`, `program_id`, `link_id`, `pin`.
//! - `netns list` (array): `netns_cookie`, `enrolled`, `ipv4`, `ipv6`,
//!   `flags`, `inbound_listeners`, `sk_lookup_link_id`,
//!   `sk_lookup_program_id`, `netns_ino`, `netns_path`, `pin`.

use std::{
    error::Error,
    io,
    path::{Path, PathBuf},
};

use clap::{Args, Subcommand};
use mesh_core::agent_settings::{DEFAULT_BPFFS_DIR, env};

use crate::table::Output;
use pins::PinDir;

mod attach;
mod decode;
pub(crate) mod host;
mod maps;
mod pins;
mod programs;

use crate::table;

/// Arguments of `ambit bpf`.
#[derive(Debug, Args)]
pub struct BpfArgs {
    /// The agent's pin directory on bpffs (its --bpffs-dir).
    #[arg(long, global = true, env = env::BPFFS_DIR, default_value = DEFAULT_BPFFS_DIR)]
    pub bpffs_dir: PathBuf,
    #[command(subcommand)]
    pub command: BpfCommand,
}

/// `ambit bpf` subcommands.
#[derive(Debug, Subcommand)]
pub enum BpfCommand {
    /// ambit's eBPF programs.
    Prog {
        #[command(subcommand)]
        command: ProgCommand,
    },
    /// ambit's eBPF maps.
    Map {
        #[command(subcommand)]
        command: MapCommand,
    },
    /// ambit's cgroup attachments.
    Cgroup {
        #[command(subcommand)]
        command: CgroupCommand,
    },
    /// The pod network namespaces ambit captures.
    Netns {
        #[command(subcommand)]
        command: NetnsCommand,
    },
}

/// `ambit bpf prog` subcommands.
#[derive(Debug, Subcommand)]
pub enum ProgCommand {
    /// List ambit's programs: id, type, name, attachments, tag, load time,
    /// run count and time (when the kernel counts), map ids.
    List,
    /// Show one program in detail.
    Show {
        /// Program id, ambit's name (`ambit_connect4`) or the kernel's.
        program: String,
    },
}

/// `ambit bpf map` subcommands.
#[derive(Debug, Subcommand)]
pub enum MapCommand {
    /// List ambit's maps: type, key and value size, capacity, entries in use.
    List,
    /// Show a map's entries with keys and values decoded.
    Dump {
        /// Map name, e.g. `AMBIT_ENROLLED` (any case, `AMBIT_` prefix optional).
        name: String,
    },
}

/// `ambit bpf cgroup` subcommands.
#[derive(Debug, Subcommand)]
pub enum CgroupCommand {
    /// Which ambit programs are attached to which cgroup, how, by which link.
    Show,
}

/// `ambit bpf netns` subcommands.
#[derive(Debug, Subcommand)]
pub enum NetnsCommand {
    /// The enrolled pod network namespaces: cookie, addresses, inbound
    /// listeners, `sk_lookup` link.
    List,
}

/// Why an `ambit bpf` command failed.
#[derive(Debug, thiserror::Error)]
pub enum BpfError {
    /// The pin directory, or its `maps/` or `links/`, does not exist.
    #[error("no ambit eBPF pins at {}: {hint}", path.display())]
    NoPinDir {
        /// The directory tried.
        path: PathBuf,
        /// What to check.
        hint: String,
    },
    /// One map is not pinned.
    #[error("map {map} is not pinned at {}: {hint}", path.display())]
    NoMapPin {
        /// The map.
        map: &'static str,
        /// The pin path tried.
        path: PathBuf,
        /// What to check.
        hint: String,
    },
    /// A pinned object could not be opened or read.
    #[error("cannot {action} {}: {detail}", path.display())]
    Object {
        /// What was being done: "open", "inspect", "read".
        action: &'static str,
        /// The pin.
        path: PathBuf,
        /// The error and its causes, with a hint where one helps.
        detail: String,
    },
    /// A question to the kernel failed.
    #[error("cannot {action}: {detail}")]
    Kernel {
        /// What was being asked.
        action: &'static str,
        /// The error and its causes.
        detail: String,
    },
    /// A directory could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Io {
        /// The directory.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
    /// The map name is not one of ambit's.
    #[error("unknown map {name}; ambit's maps are {}", known.join(", "))]
    UnknownMap {
        /// The name given.
        name: String,
        /// ambit's map names.
        known: Vec<&'static str>,
    },
    /// No program has this id or name.
    #[error(
        "no ambit program {query} under {}; its programs are {}",
        dir.display(),
        if known.is_empty() { "none".to_owned() } else { known.join(", ") }
    )]
    UnknownProgram {
        /// The id or name given.
        query: String,
        /// The pin directory.
        dir: PathBuf,
        /// The programs found, as `name (id)`.
        known: Vec<String>,
    },
    /// The name fits several programs (a kernel name cut to 15 bytes).
    #[error("{query} names several programs: {}; give an id or the full name", matches.join(", "))]
    AmbiguousProgram {
        /// The name given.
        query: String,
        /// The programs it fits, as `name (id)`.
        matches: Vec<String>,
    },
}

/// Runs an `ambit bpf` command and returns what to print.
pub fn run(args: &BpfArgs, output: Output) -> Result<String, BpfError> {
    let dir = &args.bpffs_dir;
    Ok(match &args.command {
        BpfCommand::Prog {
            command: ProgCommand::List,
        } => table::output(&programs::list(&PinDir::open(dir)?)?, output, |p| {
            programs::list_table(p)
        }),
        BpfCommand::Prog {
            command: ProgCommand::Show { program },
        } => table::output(
            &programs::show(&PinDir::open(dir)?, program, dir)?,
            output,
            programs::show_table,
        ),
        BpfCommand::Map {
            command: MapCommand::List,
        } => table::output(&maps::list(&PinDir::open(dir)?)?, output, |m| {
            maps::list_table(m)
        }),
        BpfCommand::Map {
            command: MapCommand::Dump { name },
        } => {
            // A bad name is reported before the pins are looked at.
            maps::resolve_name(name)?;
            table::output(
                &maps::dump(&PinDir::open(dir)?, name)?,
                output,
                maps::dump_table,
            )
        }
        BpfCommand::Cgroup {
            command: CgroupCommand::Show,
        } => table::output(&attach::cgroups(&PinDir::open(dir)?)?, output, |c| {
            attach::cgroups_table(c)
        }),
        BpfCommand::Netns {
            command: NetnsCommand::List,
        } => table::output(&attach::netns(&PinDir::open(dir)?)?, output, |n| {
            attach::netns_table(n)
        }),
    })
}

// === impl BpfError ===

impl BpfError {
    fn object(action: &'static str, path: &Path, error: &(dyn Error + 'static)) -> Self {
        Self::Object {
            action,
            path: path.to_owned(),
            detail: describe(error),
        }
    }

    fn kernel(action: &'static str, error: &(dyn Error + 'static)) -> Self {
        Self::Kernel {
            action,
            detail: describe(error),
        }
    }
}

/// An error and its causes on one line (aya's errors keep the OS error in
/// their source), with a hint when the kernel refused for lack of rights.
fn describe(error: &(dyn Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    if io_kind(error).is_some_and(|k| k == io::ErrorKind::PermissionDenied) {
        text.push_str(" (reading eBPF objects needs root, or CAP_BPF and CAP_SYS_ADMIN)");
    }
    text
}

/// Whether the kernel said the object is gone.
fn is_not_found(error: &(dyn Error + 'static)) -> bool {
    io_kind(error) == Some(io::ErrorKind::NotFound)
}

fn io_kind(error: &(dyn Error + 'static)) -> Option<io::ErrorKind> {
    let mut current = Some(error);
    while let Some(e) = current {
        if let Some(io) = e.downcast_ref::<io::Error>() {
            return Some(io.kind());
        }
        current = e.source();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("`BPF_OBJ_GET` failed")]
    struct Wrapper(#[source] io::Error);

    #[test]
    fn errors_keep_their_os_cause_and_hint_at_root() {
        let denied = Wrapper(io::Error::from_raw_os_error(1));
        let text = describe(&denied);
        assert!(text.starts_with("`BPF_OBJ_GET` failed: "), "{text}");
        assert!(text.contains("needs root"), "{text}");
        assert!(!is_not_found(&denied));
        assert!(is_not_found(&Wrapper(io::Error::from_raw_os_error(2))));
    }

    #[test]
    fn a_missing_pin_dir_names_the_path_and_what_to_check() {
        let dir = Path::new("/nonexistent/ambit-bpf-test");
        let error = PinDir::open(dir).unwrap_err().to_string();
        assert!(error.contains("/nonexistent/ambit-bpf-test"), "{error}");
        assert!(error.contains("--bpffs-dir"), "{error}");
    }

    #[test]
    fn a_pin_dir_without_maps_names_the_maps_dir() {
        let dir = tempfile::tempdir().unwrap();
        let error = PinDir::open(dir.path()).unwrap_err().to_string();
        assert!(
            error.contains(&dir.path().join("maps").display().to_string()),
            "{error}"
        );
    }
}
