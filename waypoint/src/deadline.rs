//! Response bodies under the route's timeouts. Gateway API's
//! `timeouts.request` covers the whole request-response transaction and
//! `timeouts.backendRequest` an attempt until the full response has been
//! received, so a body still streaming when its deadline passes is cut:
//! the client's HTTP/2 stream is reset, or its HTTP/1.1 connection closed
//! (the status line has already gone out, so a 504 can no longer be sent).

use std::{
    pin::Pin,
    task::{Context, Poll},
    time::Duration,
};

use bytes::Bytes;
use http_body_util::BodyExt as _;
use hyper::body::{Body as _, Frame, SizeHint};
use prometheus_client::metrics::counter::Counter;
use tokio::time::{Instant, Sleep};

use crate::flow::{Body, BodyError};

/// The body ended because its deadline passed.
#[derive(Debug, thiserror::Error)]
#[error("the response body was cut after the route's timeout ({0:?})")]
pub struct BodyTimeout(pub Duration);

/// `body`, cut with [`BodyTimeout`] (and counted in `cut`) if it has not
/// ended by `deadline`; `timeout` is what the deadline came from.
#[must_use]
pub fn limit(body: Body, deadline: Instant, timeout: Duration, cut: Counter) -> Body {
    if body.is_end_stream() {
        return body;
    }
    Limited {
        body,
        sleep: Box::pin(tokio::time::sleep_until(deadline)),
        timeout,
        cut,
    }
    .boxed()
}

struct Limited {
    body: Body,
    sleep: Pin<Box<Sleep>>,
    timeout: Duration,
    cut: Counter,
}

impl hyper::body::Body for Limited {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        if let Poll::Ready(frame) = Pin::new(&mut self.body).poll_frame(cx) {
            return Poll::Ready(frame);
        }
        if self.sleep.as_mut().poll(cx).is_ready() {
            tracing::debug!(timeout = ?self.timeout, "response body cut at the route's timeout");
            self.cut.inc();
            return Poll::Ready(Some(Err(BodyTimeout(self.timeout).into())));
        }
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use bytes::Bytes;
    use futures_util::StreamExt as _;
    use http_body_util::{BodyExt as _, Full, StreamBody};
    use hyper::body::Frame;

    use prometheus_client::metrics::counter::Counter;

    use super::{BodyTimeout, limit};
    use crate::flow::{Body, BodyError};

    fn stalled_after_one_chunk() -> Body {
        let first = Ok::<_, BodyError>(Frame::data(Bytes::from("first")));
        let frames = futures_util::stream::iter([first]).chain(futures_util::stream::pending());
        http_body_util::BodyExt::boxed(StreamBody::new(frames))
    }

    #[tokio::test]
    async fn a_stalled_body_is_cut_at_its_deadline_and_a_finished_one_passes() {
        let timeout = Duration::from_millis(50);
        let deadline = tokio::time::Instant::now() + timeout;
        let cut = Counter::default();
        let mut body = limit(stalled_after_one_chunk(), deadline, timeout, cut.clone());
        let first = body.frame().await.expect("a frame").expect("data");
        assert_eq!(first.into_data().ok(), Some(Bytes::from("first")));
        let error = body.frame().await.expect("an end").expect_err("cut");
        assert!(error.is::<BodyTimeout>(), "{error}");
        let late = tokio::time::Instant::now().duration_since(deadline);
        assert!(
            late < Duration::from_millis(500),
            "cut {late:?} after the deadline"
        );

        let whole: Body = Full::new(Bytes::from("all"))
            .map_err(|never| match never {})
            .boxed();
        let collected = limit(whole, deadline, timeout, cut.clone())
            .collect()
            .await
            .expect("whole");
        assert_eq!(collected.to_bytes(), Bytes::from("all"));
        assert_eq!(cut.get(), 1, "a whole body is not counted");
    }
}
