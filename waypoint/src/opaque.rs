//! Streams that are not HTTP: authorized on their L4 attributes (a policy
//! rule that needs HTTP attributes cannot match them; see
//! `mesh_core::policy`), then copied to one of the service's endpoints.

use std::{sync::Arc, time::Instant};

use mesh_proxy::h2io::H2Io;

use crate::{
    Waypoint, authz,
    flow::{StreamInfo, access_log},
};

/// Passes `io` through to an endpoint of the service it was addressed to.
pub async fn forward(waypoint: &Arc<Waypoint>, info: &StreamInfo, io: &mut H2Io, started: Instant) {
    let state = waypoint.state.current();
    let verdict = authz::check(&state, info, None);
    if !authz::allowed(&verdict) {
        tracing::info!(
            src = %info.client,
            peer = %info.peer,
            dst = %info.dialled,
            policy = %verdict.policy,
            reason = %verdict.reason,
            "opaque stream denied"
        );
        return;
    }
    let endpoints = state
        .endpoints(
            &info.served.service,
            info.served.port.port,
            info.dialled.is_ipv4(),
        )
        .unwrap_or_default();
    drop(state);
    let balancer = waypoint.runtime.balancer(
        None,
        &info.served.service,
        info.served.port.port,
        &endpoints,
    );
    let Some(pick) = balancer.pick(Instant::now()) else {
        tracing::warn!(service = %info.served.service, "opaque stream refused: no ready endpoint");
        return;
    };
    let endpoint = *pick.endpoint();
    let mut upstream = match waypoint.upstreams.connect(endpoint).await {
        Ok(upstream) => upstream,
        Err(error) => {
            tracing::warn!(%endpoint, %error, "opaque stream: backend unreachable");
            pick.finish(
                crate::resilience::outlier::Outcome::ConnectFailure,
                Instant::now(),
            );
            return;
        }
    };
    let copied = tokio::io::copy_bidirectional(io, &mut upstream).await;
    pick.finish(crate::resilience::outlier::Outcome::Success, Instant::now());
    let (sent, received) = copied.unwrap_or_default();
    if waypoint.config.access_log {
        access_log(&serde_json::json!({
            "protocol": "tcp",
            "src": info.client.to_string(),
            "source_principal": info.peer.to_string(),
            "service": info.served.service.to_string(),
            "endpoint": endpoint.to_string(),
            "bytes_sent": sent,
            "bytes_received": received,
            "duration_ms": started.elapsed().as_secs_f64() * 1000.0,
        }));
    }
}
