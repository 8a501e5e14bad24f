//! The one accept loop: every listener of the agent, the waypoint and the
//! controller accepts through [`accept_until`], which backs off after an
//! error instead of spinning on it.

use std::{future::Future, net::SocketAddr, time::Duration};

use tokio::net::{TcpListener, TcpStream};

/// How long the loop waits after a failed `accept`. The usual failure is
/// `EMFILE` or `ENFILE` (out of file descriptors), which persists until
/// connections close: retrying at once would spin a core on it and flood
/// the log.
pub const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// Accepts connections on `listener` until `stop` completes, handing each
/// to `on_accept` (which spawns what serves it). A failed accept is logged
/// in the current span and retried after [`ACCEPT_BACKOFF`]. Connections
/// already handed over are not touched when the loop stops.
pub async fn accept_until<F>(
    listener: &TcpListener,
    stop: impl Future<Output = ()>,
    mut on_accept: F,
) where
    F: FnMut(TcpStream, SocketAddr),
{
    let mut stop = std::pin::pin!(stop);
    loop {
        let accepted = tokio::select! {
            () = &mut stop => return,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, client)) => on_accept(stream, client),
            Err(error) => {
                tracing::warn!(%error, backoff = ?ACCEPT_BACKOFF, "accept failed; backing off");
                tokio::time::sleep(ACCEPT_BACKOFF).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    };

    use super::*;

    #[tokio::test]
    async fn hands_each_connection_over_until_stopped() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let counter = accepted.clone();
        let serving = tokio::spawn(async move {
            accept_until(
                &listener,
                async {
                    let _ = stopped.await;
                },
                move |_, _| {
                    counter.fetch_add(1, Ordering::SeqCst);
                },
            )
            .await;
        });
        let _a = TcpStream::connect(addr).await.unwrap();
        let _b = TcpStream::connect(addr).await.unwrap();
        while accepted.load(Ordering::SeqCst) < 2 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        stop.send(()).unwrap();
        tokio::time::timeout(Duration::from_secs(5), serving)
            .await
            .expect("the loop stops")
            .unwrap();
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
    }
}
