use std::{
    sync::atomic::{AtomicUsize, Ordering},
    time::Duration,
};

use tokio::sync::Semaphore;

use super::*;

fn peer() -> SpiffeId {
    SpiffeId::new("cluster.local", "shop", "backend").unwrap()
}

fn addr(host: u8) -> SocketAddr {
    SocketAddr::from(([10, 0, 0, host], 15008))
}

/// An HTTP/2 connection over an in-memory pipe, to a server that accepts
/// streams and never answers: all the table needs of a connection.
async fn in_memory_connection() -> Result<SendRequest<Bytes>, UpstreamError> {
    let (client_io, server_io) = tokio::io::duplex(64 * 1024);
    tokio::spawn(async move {
        let mut connection = h2::server::handshake(server_io).await.unwrap();
        while let Some(Ok(_stream)) = connection.accept().await {}
    });
    let (send, connection) = h2::client::handshake(client_io).await.unwrap();
    tokio::spawn(connection);
    Ok(send)
}

/// Counts its calls; every handshake ends when the gate opens.
struct GatedConnector {
    calls: AtomicUsize,
    gate: Semaphore,
}

impl GatedConnector {
    fn new() -> Arc<Self> {
        Arc::new(Self {
            calls: AtomicUsize::new(0),
            gate: Semaphore::new(0),
        })
    }

    fn connect(
        self: &Arc<Self>,
        addr: SocketAddr,
        succeed: bool,
    ) -> impl Future<Output = Result<SendRequest<Bytes>, UpstreamError>> + Send + 'static {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let this = self.clone();
        async move {
            let _ = this.gate.acquire().await.unwrap();
            if succeed {
                in_memory_connection().await
            } else {
                Err(UpstreamError::Timeout(addr))
            }
        }
    }
}

/// `n` requests for `addr` at once, each on its own task, once all wait.
async fn concurrent_requests(
    connections: &Arc<HboneConnections>,
    connector: &Arc<GatedConnector>,
    n: usize,
    succeed: bool,
) -> Vec<tokio::task::JoinHandle<Result<SendRequest<Bytes>, UpstreamError>>> {
    let requests = (0..n)
        .map(|_| {
            let (connections, connector) = (connections.clone(), connector.clone());
            tokio::spawn(async move {
                connections
                    .get(&peer(), addr(1), || connector.connect(addr(1), succeed))
                    .await
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(50)).await;
    requests
}

#[tokio::test]
async fn a_hanging_handshake_delays_only_its_own_endpoint() {
    let connections = Arc::new(HboneConnections::default());
    let hanging = {
        let connections = connections.clone();
        tokio::spawn(async move {
            connections
                .get(
                    &peer(),
                    addr(1),
                    std::future::pending::<Result<_, UpstreamError>>,
                )
                .await
        })
    };
    tokio::time::sleep(Duration::from_millis(20)).await;
    let connected = tokio::time::timeout(
        Duration::from_secs(1),
        connections.get(&peer(), addr(2), in_memory_connection),
    )
    .await
    .expect("a hanging handshake to another endpoint must not delay this one");
    assert!(connected.is_ok());
    let reused = tokio::time::timeout(
        Duration::from_secs(1),
        connections.get(&peer(), addr(2), || async {
            panic!("the open one is reused")
        }),
    )
    .await
    .expect("reuse does not wait either");
    assert!(reused.is_ok());
    assert!(!hanging.is_finished(), "the black-holed one still waits");
    hanging.abort();
}

#[tokio::test]
async fn requests_for_one_endpoint_share_its_handshake_and_all_get_its_error() {
    let connections = Arc::new(HboneConnections::default());
    let connector = GatedConnector::new();
    let requests = concurrent_requests(&connections, &connector, 10, false).await;
    assert_eq!(connector.calls.load(Ordering::SeqCst), 1, "one handshake");
    connector.gate.add_permits(Semaphore::MAX_PERMITS);
    for request in requests {
        let error = request.await.unwrap().expect_err("the handshake failed");
        assert!(
            matches!(&error, UpstreamError::Shared(e) if matches!(**e, UpstreamError::Timeout(_))),
            "{error:?}"
        );
        assert_eq!(error.to_string(), "connecting to 10.0.0.1:15008 timed out");
    }
    assert!(
        connections.table.lock().unwrap().is_empty(),
        "nothing is left of it"
    );
    // The next request starts afresh.
    let retried = connections
        .get(&peer(), addr(1), || connector.connect(addr(1), false))
        .await;
    assert!(retried.is_err());
    assert_eq!(connector.calls.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn requests_that_waited_for_a_handshake_share_its_connection() {
    let connections = Arc::new(HboneConnections::default());
    let connector = GatedConnector::new();
    let requests = concurrent_requests(&connections, &connector, 10, true).await;
    connector.gate.add_permits(Semaphore::MAX_PERMITS);
    for request in requests {
        assert!(request.await.unwrap().is_ok());
    }
    assert!(matches!(
        connections.table.lock().unwrap().get(&(peer(), addr(1))),
        Some(Connection::Open(_))
    ));
    assert!(
        connections
            .get(&peer(), addr(1), || connector.connect(addr(1), true))
            .await
            .is_ok()
    );
    assert_eq!(connector.calls.load(Ordering::SeqCst), 1, "reused");
}

#[tokio::test]
async fn a_request_waiting_for_a_handshake_is_a_small_future() {
    // The handshakes run on their own task: what a request holds while it
    // waits is a handle (312 bytes), not a TCP + TLS + HTTP/2 handshake in
    // progress (over 3 KB).
    let connections = HboneConnections::default();
    let peer = peer();
    let future = connections.get(&peer, addr(1), in_memory_connection);
    let size = std::mem::size_of_val(&future);
    assert!(size <= 384, "the connection future is {size} bytes");
}
