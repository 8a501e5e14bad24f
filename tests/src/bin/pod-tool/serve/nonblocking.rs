//! `pod-tool serve --epoll`: the echo server on an event loop, one task per
//! connection, for the kernel splice's contract (see [`crate::epoll`]).

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::process::ExitCode;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::{ACCEPT_BACKOFF, Conn, ECHO_CHUNK};
use crate::epoll;
use crate::event::Event;

/// Serves until killed; `banner` is the line (newline included) each
/// connection gets first.
pub(super) fn run(addrs: &[SocketAddr], banner: Option<String>) -> ExitCode {
    serve_on(addrs, move |stream| echo_connection(stream, banner.clone()))
}

/// [`super::serve_on`] on an event loop: binds and announces the same way,
/// then accepts on every listener and runs `handle` as a task of its own for
/// each connection, until the process is killed.
pub(crate) fn serve_on<F, Handled>(addrs: &[SocketAddr], handle: F) -> ExitCode
where
    F: Fn(TcpStream) -> Handled + Clone + Send + 'static,
    Handled: Future<Output = ()> + Send + 'static,
{
    let listeners = match super::bind_all(addrs) {
        Ok(listeners) => listeners,
        Err(code) => return code,
    };
    epoll::block_on(async move {
        let mut acceptors = tokio::task::JoinSet::new();
        for listener in listeners {
            match epoll::listener(listener) {
                Ok(listener) => {
                    acceptors.spawn(accept_each(listener, handle.clone()));
                }
                Err(error) => return Event::fail(format!("cannot poll a listener: {error}")),
            }
        }
        acceptors.join_all().await;
        ExitCode::FAILURE
    })
}

/// Accepts until the process is killed, each connection handled by a task
/// of its own.
async fn accept_each<F, Handled>(listener: TcpListener, handle: F)
where
    F: Fn(TcpStream) -> Handled,
    Handled: Future<Output = ()> + Send + 'static,
{
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                tokio::spawn(handle(stream));
            }
            Err(error) => {
                super::accept_failed(&error);
                tokio::time::sleep(ACCEPT_BACKOFF).await;
            }
        }
    }
}

async fn echo_connection(mut stream: TcpStream, banner: Option<String>) {
    let mut conn = Conn::new(stream.peer_addr(), stream.local_addr());
    let result = echo(&mut stream, banner.as_deref(), &mut conn).await;
    // Report a connection only once it is closed on our side too.
    drop(stream);
    conn.closed(result);
}

/// [`super::echo`], awaiting readiness instead of blocking.
async fn echo(stream: &mut TcpStream, banner: Option<&str>, conn: &mut Conn) -> io::Result<()> {
    if let Some(banner) = banner {
        stream.write_all(banner.as_bytes()).await?;
        conn.sent(banner.len());
    }
    let mut buf = vec![0; ECHO_CHUNK];
    loop {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        conn.received(n);
        stream.write_all(&buf[..n]).await?;
        conn.sent(n);
    }
    stream.shutdown().await
}
