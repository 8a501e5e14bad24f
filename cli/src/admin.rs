//! A minimal client of the node agent's admin API (HTTP/1.1, JSON).

use std::{net::SocketAddr, ops::ControlFlow, time::Duration};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper_util::rt::TokioIo;

/// Why the admin API could not be read.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// No connection.
    #[error(
        "cannot reach the node agent at {addr}: {source} (is the agent running? run ambit in its network namespace or set --admin)"
    )]
    Connect {
        /// The address.
        addr: SocketAddr,
        /// The error.
        source: std::io::Error,
    },
    /// The HTTP exchange failed.
    #[error("the admin API at {addr} failed: {source}")]
    Http {
        /// The address.
        addr: SocketAddr,
        /// The error.
        source: hyper::Error,
    },
    /// The agent answered with an error status.
    #[error("the admin API answered {status}: {body}")]
    Status {
        /// HTTP status.
        status: hyper::StatusCode,
        /// Body text.
        body: String,
    },
    /// The body was not JSON.
    #[error("the admin API sent invalid JSON: {0}")]
    Json(#[from] serde_json::Error),
    /// The request could not be formed (a path with invalid characters).
    #[error("cannot form the request: {0}")]
    Request(String),
    /// No runtime.
    #[error("cannot start a runtime: {0}")]
    Runtime(std::io::Error),
}

/// `GET path` and parse the body as JSON.
pub fn get_json(addr: SocketAddr, path: &str) -> Result<serde_json::Value, AdminError> {
    let body = exchange(addr, hyper::Method::GET, path, Bytes::new())?;
    Ok(serde_json::from_slice(&body)?)
}

/// `GET path` as text.
pub fn get_text(addr: SocketAddr, path: &str) -> Result<String, AdminError> {
    let body = exchange(addr, hyper::Method::GET, path, Bytes::new())?;
    Ok(String::from_utf8_lossy(&body).into_owned())
}

/// `PUT path` with `body` as text, and parse the answer as JSON.
pub fn put_text(addr: SocketAddr, path: &str, body: &str) -> Result<serde_json::Value, AdminError> {
    let answer = exchange(
        addr,
        hyper::Method::PUT,
        path,
        Bytes::copy_from_slice(body.as_bytes()),
    )?;
    Ok(serde_json::from_slice(&answer)?)
}

/// `POST path` with no body, and parse the answer as JSON.
pub fn post_json(addr: SocketAddr, path: &str) -> Result<serde_json::Value, AdminError> {
    let answer = exchange(addr, hyper::Method::POST, path, Bytes::new())?;
    Ok(serde_json::from_slice(&answer)?)
}

/// `GET path` of a stream of JSON lines, handing each line to `on_line`
/// until it says stop, the stream ends, or `limit` has passed.
pub fn follow_lines(
    addr: SocketAddr,
    path: &str,
    limit: Option<Duration>,
    mut on_line: impl FnMut(&str) -> ControlFlow<()>,
) -> Result<(), AdminError> {
    runtime()?.block_on(async {
        let response = send(addr, hyper::Method::GET, path, Bytes::new()).await?;
        let status = response.status();
        let mut body = response.into_body();
        if !status.is_success() {
            let text = body
                .collect()
                .await
                .map_err(|source| AdminError::Http { addr, source })?
                .to_bytes();
            return Err(AdminError::Status {
                status,
                body: String::from_utf8_lossy(&text).trim().to_owned(),
            });
        }
        let deadline = limit.map(|limit| tokio::time::Instant::now() + limit);
        let mut pending = Vec::new();
        loop {
            let frame = match deadline {
                Some(deadline) => match tokio::time::timeout_at(deadline, body.frame()).await {
                    Ok(frame) => frame,
                    Err(_) => return Ok(()),
                },
                None => body.frame().await,
            };
            let Some(frame) = frame else {
                return Ok(());
            };
            let frame = frame.map_err(|source| AdminError::Http { addr, source })?;
            let Ok(data) = frame.into_data() else {
                continue;
            };
            pending.extend_from_slice(&data);
            while let Some(end) = pending.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = pending.drain(..=end).collect();
                let line = String::from_utf8_lossy(&line);
                if on_line(line.trim_end()).is_break() {
                    return Ok(());
                }
            }
        }
    })
}

fn runtime() -> Result<tokio::runtime::Runtime, AdminError> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(AdminError::Runtime)
}

/// One request, the whole answer's body; an error status is an error.
fn exchange(
    addr: SocketAddr,
    method: hyper::Method,
    path: &str,
    body: Bytes,
) -> Result<Bytes, AdminError> {
    runtime()?.block_on(async {
        let response = send(addr, method, path, body).await?;
        let status = response.status();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|source| AdminError::Http { addr, source })?
            .to_bytes();
        if !status.is_success() {
            return Err(AdminError::Status {
                status,
                body: String::from_utf8_lossy(&body).trim().to_owned(),
            });
        }
        Ok(body)
    })
}

async fn send(
    addr: SocketAddr,
    method: hyper::Method,
    path: &str,
    body: Bytes,
) -> Result<hyper::Response<hyper::body::Incoming>, AdminError> {
    let stream = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|source| AdminError::Connect { addr, source })?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|source| AdminError::Http { addr, source })?;
    tokio::spawn(connection);
    let request = hyper::Request::builder()
        .method(method)
        .uri(path)
        .header(hyper::header::HOST, addr.to_string())
        .body(Full::new(body))
        .map_err(|error| AdminError::Request(error.to_string()))?;
    sender
        .send_request(request)
        .await
        .map_err(|source| AdminError::Http { addr, source })
}
