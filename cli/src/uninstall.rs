//! `ambit uninstall`: take every pod of this node out of the mesh and remove
//! the eBPF state the node agent pinned.
//!
//! The agent never does this on its own: stopping or crashing leaves the
//! state in place so enrolled pods fail closed until the next agent takes
//! over. With an agent running, it is asked (`POST /uninstall` on its admin
//! API) to un-enroll every pod (capture, `sk_lookup`, the in-pod return
//! path and sysctls) and remove its pins, then exit. With no agent, the
//! pins are removed here: that detaches every program and frees every map;
//! the in-pod return-path rule and sysctls stay until their pods go (they
//! only concern packets carrying the mesh's mark).

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use mesh_core::agent_settings::{DEFAULT_BPFFS_DIR, env};
use mesh_ebpf_common::pins::{pinned_layout, remove_pinned_state};
use serde::Serialize;

use crate::admin;
use crate::table::{self, Output};

/// How long the agent may take to release its pods and exit.
const AGENT_UNINSTALL_TIMEOUT: Duration = Duration::from_mins(1);

/// Arguments of `ambit uninstall`.
#[derive(Debug, clap::Args)]
pub struct UninstallArgs {
    /// The agent's bpffs directory (its `--bpffs-dir`).
    #[arg(long, env = env::BPFFS_DIR, default_value = DEFAULT_BPFFS_DIR)]
    pub bpffs_dir: PathBuf,
}

/// Why the uninstall did not finish.
#[derive(Debug, thiserror::Error)]
pub enum UninstallError {
    /// The agent answered, but with an error.
    #[error("the node agent refused to uninstall: {0}")]
    Agent(#[source] admin::AdminError),
    /// The agent accepted but its pins were still there after the timeout.
    #[error(
        "the node agent accepted the uninstall but {dir} still holds pinned state after {secs} s (check the agent's log; run `ambit uninstall` again once it has exited)"
    )]
    AgentTimedOut {
        /// The pin directory.
        dir: PathBuf,
        /// How long it waited.
        secs: u64,
    },
}

/// What the uninstall did.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct UninstallReport {
    /// `agent` (the running agent released its pods) or `pins` (no agent
    /// answered; the pins were removed here) or `nothing` (no state found).
    pub via: &'static str,
    /// The pin directory.
    pub pin_dir: PathBuf,
    /// Links removed here (their programs detached).
    pub links_removed: usize,
    /// Maps removed here.
    pub maps_removed: usize,
}

/// Runs the uninstall.
pub fn run(
    args: &UninstallArgs,
    admin_addr: SocketAddr,
) -> Result<UninstallReport, UninstallError> {
    let dir = &args.bpffs_dir;
    match admin::post_json(admin_addr, "/uninstall") {
        Ok(_) => {
            eprintln!(
                "the node agent at {admin_addr} is releasing every pod and removing its eBPF state…"
            );
            wait_until_gone(dir, AGENT_UNINSTALL_TIMEOUT)?;
            // Whatever the agent could not remove (e.g. it was killed
            // half-way) goes now.
            let removed = remove_pinned_state(dir);
            Ok(UninstallReport {
                via: "agent",
                pin_dir: dir.clone(),
                links_removed: removed.links,
                maps_removed: removed.maps,
            })
        }
        Err(admin::AdminError::Connect { .. }) => {
            if !dir.exists() {
                return Ok(UninstallReport {
                    via: "nothing",
                    pin_dir: dir.clone(),
                    links_removed: 0,
                    maps_removed: 0,
                });
            }
            eprintln!(
                "no node agent answers at {admin_addr}; removing the pinned state under {} directly",
                dir.display()
            );
            let removed = remove_pinned_state(dir);
            Ok(UninstallReport {
                via: "pins",
                pin_dir: dir.clone(),
                links_removed: removed.links,
                maps_removed: removed.maps,
            })
        }
        Err(error) => Err(UninstallError::Agent(error)),
    }
}

/// Waits until the agent has removed `dir` (or only an empty shell is left).
fn wait_until_gone(dir: &Path, timeout: Duration) -> Result<(), UninstallError> {
    let deadline = Instant::now() + timeout;
    while pinned_layout(dir).is_some() {
        if Instant::now() >= deadline {
            return Err(UninstallError::AgentTimedOut {
                dir: dir.to_owned(),
                secs: timeout.as_secs(),
            });
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

// === impl UninstallReport ===

impl UninstallReport {
    /// The report as `output` asks.
    #[must_use]
    pub fn render(&self, output: Output) -> String {
        table::output(self, output, |report| match report.via {
            "agent" => format!(
                "✓ the node agent released every pod and removed its eBPF state under {}\n",
                report.pin_dir.display()
            ),
            "pins" => format!(
                "✓ removed the pinned eBPF state under {}: {} link(s) detached, {} map(s) removed\n  (no agent was running: the pods' return-path rules stay until the pods go)\n",
                report.pin_dir.display(),
                report.links_removed,
                report.maps_removed
            ),
            _ => format!(
                "nothing to uninstall: {} does not exist\n",
                report.pin_dir.display()
            ),
        })
    }
}
