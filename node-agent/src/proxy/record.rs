//! How the proxies count their connections in Istio's TCP metrics: one call
//! where a connection is established, one where it ends, one where it is
//! refused during set-up (see [`crate::metrics::tcp`] for what each counts).

use super::{Finished, PodContext};
use crate::{
    flow::{Flow, ProxyError},
    metrics::tcp::{OpenSeries, ResponseFlags},
};

// === impl PodContext ===

impl PodContext {
    /// `flow` is established: upstream connected, or HBONE stream opened.
    /// Its series stay while the returned handle lives: the caller keeps it
    /// for as long as the connection is open.
    pub fn count_opened(&self, flow: &Flow) -> OpenSeries {
        self.metrics.tcp.opened(flow, &self.workloads.current())
    }

    /// `finished` ended: closed with its bytes, or, refused during set-up,
    /// opened and closed at once.
    pub fn count_finished(&self, finished: &Finished) {
        let workloads = self.workloads.current();
        if finished.established {
            self.metrics.tcp.closed(
                &finished.flow,
                &workloads,
                finished.response_flags,
                finished.sent,
                finished.received,
            );
        } else {
            self.metrics
                .tcp
                .refused(&finished.flow, &workloads, finished.response_flags);
        }
    }

    /// `flow` failed during set-up with `error`: opened and closed at once.
    pub fn count_failed(&self, flow: &Flow, error: &ProxyError) {
        self.count_refused(flow, ResponseFlags::of_error(error));
    }

    /// `flow` was refused during set-up with `flags`: opened and closed at once.
    pub fn count_refused(&self, flow: &Flow, flags: ResponseFlags) {
        self.metrics
            .tcp
            .refused(flow, &self.workloads.current(), flags);
    }
}
