//! The agents' memory with many idle meshed connections open: `pod-tool
//! hold` in the client pod opens them through both agents, the bench reads
//! both agents' `VmRSS` while they are idle, and `hold` checks afterwards
//! that every one of them survived.

use std::net::SocketAddr;

use ambit_tests::Pod;

use super::{MeshPath, agent_rss};
use crate::cluster::RR_1B_PORT;
use crate::error::BenchError;
use crate::measure::{IDLE_READ_AFTER, Runner, wait_for};

/// Both agents' resident memory while the idle connections were open, MiB.
pub(super) struct HeldRss {
    pub(super) client_agent: f64,
    pub(super) server_agent: f64,
}

/// Opens the idle connections from `client` to the 1-byte server in
/// `server`, reads both agents' memory while they are open, and checks that
/// they all survived the hold. Returns the memory and a progress summary.
pub(super) fn hold(
    runner: &Runner<'_>,
    client: &Pod,
    server: &Pod,
    mesh: &MeshPath<'_>,
) -> Result<(HeldRss, String), BenchError> {
    let to = SocketAddr::from((server.ipv4, RR_1B_PORT));
    let held = runner.hold(client, to)?;
    let settle = IDLE_READ_AFTER.saturating_sub(held.held_at.elapsed());
    // Sleeps, noticing Ctrl-C.
    wait_for(settle, || Ok(None::<()>))?;
    let rss = HeldRss {
        client_agent: agent_rss(mesh.client_agent)?,
        server_agent: agent_rss(mesh.server_agent)?,
    };
    if !held.still_held() {
        return Err(BenchError::failed(
            "pod-tool hold let its connections go before the agents' memory was read",
        ));
    }
    let setup_ms = held.setup_ms;
    let released = held.release()?;
    let summary = format!(
        "opened in {setup_ms} ms; agent RSS {:.1} MiB on n1, {:.1} MiB on n2; all {} still open after the hold",
        rss.client_agent, rss.server_agent, released.still_open
    );
    Ok((rss, summary))
}
