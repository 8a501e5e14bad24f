//! A minimal client of the node agent's admin API (HTTP/1.1, JSON).

use std::net::SocketAddr;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Empty};
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
    /// No runtime.
    #[error("cannot start a runtime: {0}")]
    Runtime(std::io::Error),
}

/// `GET path` and parse the body as JSON.
pub fn get_json(addr: SocketAddr, path: &str) -> Result<serde_json::Value, AdminError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(AdminError::Runtime)?;
    runtime.block_on(async {
        let stream = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|source| AdminError::Connect { addr, source })?;
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|source| AdminError::Http { addr, source })?;
        tokio::spawn(connection);
        let request = hyper::Request::get(path)
            .header(hyper::header::HOST, addr.to_string())
            .body(Empty::<Bytes>::new())
            .expect("a GET with a static path is a valid request");
        let response = sender
            .send_request(request)
            .await
            .map_err(|source| AdminError::Http { addr, source })?;
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
        Ok(serde_json::from_slice(&body)?)
    })
}
