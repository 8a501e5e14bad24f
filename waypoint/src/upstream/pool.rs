//! A worker's HTTP connections to backend endpoints, over the tunnels
//! [`upstream`](super) opens (HBONE streams, or plain TCP
//! outside the mesh).
//!
//! - HTTP/1.1: idle connections per endpoint, one request at a time each.
//!   A connection goes back to the pool when its response's body has been
//!   read to the end; a response dropped before its end closes it. Idle
//!   connections are kept [`IDLE_TIMEOUT`], at most
//!   [`MAX_IDLE_PER_ENDPOINT`] per endpoint; the worker closes expired
//!   ones every [`SWEEP_EVERY`], so they go also when traffic stops (and
//!   with them the HBONE streams that carry them, which would keep an agent
//!   retired by a handoff draining).
//! - HTTP/2: one multiplexed connection per endpoint, replaced when it
//!   closes.
//!
//! Each worker has its own pool and drives its connections on its own
//! thread: a request, its connection and that connection's tunnel share
//! one event loop, and returning a connection costs no task of its own.
//! A request that a pooled connection could not take (it closed while
//! idle) is sent again on a new connection.

use std::{
    collections::HashMap,
    net::SocketAddr,
    pin::Pin,
    sync::{Arc, Mutex, PoisonError, Weak},
    task::{Context, Poll, ready},
    time::{Duration, Instant},
};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::BodyExt;
use hyper::{
    body::{Body as _, Frame, Incoming, SizeHint},
    client::conn::{http1, http2},
};
use hyper_util::rt::{TokioExecutor, TokioIo};
use mesh_proxy::hbone;
use prometheus_client::metrics::counter::Counter;

use super::{Connector, UpstreamError};
use crate::flow::{Body, BodyError};

/// How long an idle HTTP/1.1 connection is kept.
pub const IDLE_TIMEOUT: Duration = Duration::from_mins(1);
/// Idle HTTP/1.1 connections kept per endpoint; more are closed.
pub const MAX_IDLE_PER_ENDPOINT: usize = 64;
/// How often a worker closes the connections idle past [`IDLE_TIMEOUT`]
/// ([`Pool::close_expired`]), so that they go when no request comes.
pub const SWEEP_EVERY: Duration = Duration::from_secs(15);

/// Why a request could not be sent or answered.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// No tunnel to the endpoint.
    #[error(transparent)]
    Connect(#[from] UpstreamError),
    /// The HTTP handshake over the tunnel failed.
    #[error("HTTP handshake with {endpoint} failed: {source}")]
    Handshake {
        /// The endpoint.
        endpoint: SocketAddr,
        /// The error.
        source: hyper::Error,
    },
    /// The request failed on its connection (closed, reset, bad response).
    #[error("request to {endpoint} failed: {source}")]
    Request {
        /// The endpoint.
        endpoint: SocketAddr,
        /// The error.
        source: hyper::Error,
    },
}

/// One worker's connections to backend endpoints.
pub struct Pool {
    connector: Connector,
    shared: Arc<Shared>,
    opened: Counter,
}

/// What returned response bodies reach back to.
#[derive(Default)]
struct Shared {
    idle: Mutex<HashMap<SocketAddr, Vec<Idle>>>,
    http2: Mutex<HashMap<SocketAddr, http2::SendRequest<Body>>>,
}

struct Idle {
    sender: http1::SendRequest<Body>,
    since: Instant,
}

impl Pool {
    /// An empty pool whose connections go through `connector`, counted in
    /// `opened`.
    #[must_use]
    pub fn new(connector: Connector, opened: Counter) -> Self {
        Self {
            connector,
            shared: Arc::new(Shared::default()),
            opened,
        }
    }

    /// Sends `request` to `endpoint` over HTTP/1.1 or HTTP/2 and returns
    /// the response (its body streams from the backend).
    pub async fn send(
        &self,
        endpoint: SocketAddr,
        request: Request<Body>,
        http2: bool,
    ) -> Result<Response<Body>, SendError> {
        if http2 {
            self.send_http2(endpoint, request).await
        } else {
            self.send_http1(endpoint, request).await
        }
    }

    async fn send_http1(
        &self,
        endpoint: SocketAddr,
        request: Request<Body>,
    ) -> Result<Response<Body>, SendError> {
        let request_error = |source| SendError::Request { endpoint, source };
        let mut request = request;
        // Pooled connections first; one that closed while idle gives the
        // request back untouched.
        while let Some(mut sender) = self.shared.checkout(endpoint) {
            if sender.ready().await.is_err() {
                continue;
            }
            match sender.try_send_request(request).await {
                Ok(response) => return Ok(self.returning(endpoint, sender, response)),
                Err(mut failed) => match failed.take_message() {
                    Some(unsent) => request = unsent,
                    None => return Err(request_error(failed.into_error())),
                },
            }
        }
        let tunnel = self.connector.connect(endpoint).await?;
        let (mut sender, connection) = http1::Builder::new()
            .handshake(TokioIo::new(tunnel))
            .await
            .map_err(|source| SendError::Handshake { endpoint, source })?;
        self.drive(endpoint, "HTTP/1.1", connection);
        let response = sender.send_request(request).await.map_err(request_error)?;
        Ok(self.returning(endpoint, sender, response))
    }

    /// The response, with a body that gives `sender` back to the pool
    /// once read to its end.
    fn returning(
        &self,
        endpoint: SocketAddr,
        sender: http1::SendRequest<Body>,
        response: Response<Incoming>,
    ) -> Response<Body> {
        response.map(|body| {
            let mut body = ReturnOnEnd {
                body,
                sender: Some(sender),
                endpoint,
                pool: Arc::downgrade(&self.shared),
            };
            if body.body.is_end_stream() {
                body.give_back();
            }
            body.map_err(BodyError::from).boxed()
        })
    }

    async fn send_http2(
        &self,
        endpoint: SocketAddr,
        request: Request<Body>,
    ) -> Result<Response<Body>, SendError> {
        let request_error = |source| SendError::Request { endpoint, source };
        let pooled = self
            .shared
            .http2
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&endpoint)
            .filter(|sender| !sender.is_closed())
            .cloned();
        let mut sender = if let Some(sender) = pooled {
            sender
        } else {
            let sender = self.connect_http2(endpoint).await?;
            self.shared
                .http2
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .insert(endpoint, sender.clone());
            sender
        };
        sender.ready().await.map_err(request_error)?;
        let response = sender.send_request(request).await.map_err(request_error)?;
        Ok(response.map(|body| body.map_err(BodyError::from).boxed()))
    }

    async fn connect_http2(
        &self,
        endpoint: SocketAddr,
    ) -> Result<http2::SendRequest<Body>, SendError> {
        let tunnel = self.connector.connect(endpoint).await?;
        let (sender, connection) = http2::Builder::new(TokioExecutor::new())
            .initial_stream_window_size(hbone::STREAM_WINDOW)
            .initial_connection_window_size(hbone::CONNECTION_WINDOW)
            .handshake(TokioIo::new(tunnel))
            .await
            .map_err(|source| SendError::Handshake { endpoint, source })?;
        self.drive(endpoint, "HTTP/2", connection);
        Ok(sender)
    }

    /// Closes the HTTP/1.1 connections idle for [`IDLE_TIMEOUT`] or
    /// longer.
    pub fn close_expired(&self) {
        self.shared.close_expired(Instant::now());
    }

    /// Counts a new connection and drives it on this worker's thread until
    /// it ends.
    fn drive(
        &self,
        endpoint: SocketAddr,
        version: &'static str,
        connection: impl Future<Output = Result<(), hyper::Error>> + Send + 'static,
    ) {
        self.opened.inc();
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(%endpoint, %error, version, "connection to a backend ended");
            }
        });
    }
}

impl Shared {
    /// The most recently returned idle connection to `endpoint` that is
    /// not closed, dropping closed and expired ones on the way.
    fn checkout(&self, endpoint: SocketAddr) -> Option<http1::SendRequest<Body>> {
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        let list = idle.get_mut(&endpoint)?;
        while let Some(entry) = list.pop() {
            if !entry.sender.is_closed() && entry.since.elapsed() < IDLE_TIMEOUT {
                return Some(entry.sender);
            }
        }
        idle.remove(&endpoint);
        None
    }

    /// Keeps `sender` for the next request to `endpoint`, and drops
    /// connections idle too long (to every endpoint).
    fn give_back(&self, endpoint: SocketAddr, sender: http1::SendRequest<Body>) {
        if sender.is_closed() {
            return;
        }
        let now = Instant::now();
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        expire(&mut idle, now);
        let list = idle.entry(endpoint).or_default();
        if list.len() < MAX_IDLE_PER_ENDPOINT {
            list.push(Idle { sender, since: now });
        }
    }

    /// Drops the connections idle for [`IDLE_TIMEOUT`] or longer at `now`
    /// (dropping its last sender closes a connection).
    fn close_expired(&self, now: Instant) {
        expire(
            &mut self.idle.lock().unwrap_or_else(PoisonError::into_inner),
            now,
        );
    }
}

/// Drops from `idle` the connections idle for [`IDLE_TIMEOUT`] or longer
/// at `now`, and the endpoints left without any.
fn expire(idle: &mut HashMap<SocketAddr, Vec<Idle>>, now: Instant) {
    idle.retain(|_, list| {
        list.retain(|entry| now.duration_since(entry.since) < IDLE_TIMEOUT);
        !list.is_empty()
    });
}

/// A response body that gives its HTTP/1.1 connection back to the pool
/// when it ends; dropped before its end, it closes the connection.
struct ReturnOnEnd {
    body: Incoming,
    sender: Option<http1::SendRequest<Body>>,
    endpoint: SocketAddr,
    pool: Weak<Shared>,
}

impl ReturnOnEnd {
    fn give_back(&mut self) {
        if let (Some(sender), Some(pool)) = (self.sender.take(), self.pool.upgrade()) {
            pool.give_back(self.endpoint, sender);
        }
    }
}

impl hyper::body::Body for ReturnOnEnd {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let frame = ready!(Pin::new(&mut self.body).poll_frame(cx));
        match &frame {
            None => self.give_back(),
            Some(Ok(_)) if self.body.is_end_stream() => self.give_back(),
            Some(Err(_)) => self.sender = None,
            Some(Ok(_)) => {}
        }
        Poll::Ready(frame)
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
    use super::*;

    #[tokio::test]
    async fn an_idle_connection_is_closed_once_expired_without_another_request() {
        let (client, _backend) = tokio::io::duplex(1024);
        let (sender, connection) = http1::Builder::new()
            .handshake::<_, Body>(TokioIo::new(client))
            .await
            .unwrap();
        let driven = tokio::spawn(connection);
        let shared = Shared::default();
        let endpoint: SocketAddr = "10.10.2.11:8080".parse().unwrap();
        shared.give_back(endpoint, sender);
        let idle = || {
            shared
                .idle
                .lock()
                .unwrap()
                .values()
                .map(Vec::len)
                .sum::<usize>()
        };
        shared.close_expired(Instant::now());
        assert_eq!(idle(), 1, "not expired yet");
        shared.close_expired(Instant::now() + IDLE_TIMEOUT);
        assert_eq!(idle(), 0);
        // Its last sender gone, the connection ends.
        tokio::time::timeout(Duration::from_secs(5), driven)
            .await
            .expect("the connection ends")
            .unwrap()
            .unwrap();
    }
}
