use std::{
    future::Future,
    sync::atomic::{AtomicUsize, Ordering},
    time::Duration,
};

use tokio::sync::Semaphore;

use super::*;

mod spread_one;

fn key(host: u8) -> PoolKey {
    PoolKey {
        peer: SpiffeId::new("cluster.local", "shop", "server").unwrap(),
        addr: SocketAddr::from(([10, 0, 0, host], 15008)),
    }
}

/// An HTTP/2 connection over an in-memory pipe, to a server that accepts
/// streams and never answers: all a pool needs of a connection.
async fn in_memory_connection() -> Result<SendRequest<Bytes>, HboneError> {
    let (client_io, server_io) = tokio::io::duplex(64 * 1024);
    tokio::spawn(async move {
        let mut connection = h2::server::handshake(server_io).await.unwrap();
        while let Some(Ok(_stream)) = connection.accept().await {}
    });
    let (send, connection) = h2::client::handshake(client_io).await.unwrap();
    tokio::spawn(connection);
    Ok(send)
}

/// A connector that counts its calls and whose handshakes all end, with
/// `outcome`, when the gate opens.
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
    ) -> impl Future<Output = Result<SendRequest<Bytes>, HboneError>> + Send + 'static {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let this = self.clone();
        async move {
            let _ = this.gate.acquire().await.unwrap();
            if succeed {
                in_memory_connection().await
            } else {
                Err(HboneError::Timeout(addr))
            }
        }
    }

    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }

    fn open(&self) {
        self.gate.add_permits(Semaphore::MAX_PERMITS);
    }
}

/// The pool's connections to `key`: (connecting, open, streams).
fn listed(pool: &HbonePool, key: &PoolKey) -> Option<(usize, usize, u32)> {
    let destinations = pool.destinations.lock().unwrap();
    let pooled = destinations.get(key)?;
    let connecting = pooled
        .iter()
        .filter(|c| matches!(c.state, ConnectionState::Connecting(_)))
        .count();
    let streams = pooled
        .iter()
        .map(|c| c.load.streams.load(Ordering::SeqCst))
        .sum();
    Some((connecting, pooled.len() - connecting, streams))
}

/// `n` requests for `key` at once, each on its own task, once all are
/// assigned.
async fn concurrent_requests(
    pool: &Arc<HbonePool>,
    connector: &Arc<GatedConnector>,
    key: &PoolKey,
    n: usize,
    succeed: bool,
) -> Vec<tokio::task::JoinHandle<Result<(SendRequest<Bytes>, StreamSlot), HboneError>>> {
    let requests = (0..n)
        .map(|_| {
            let (pool, connector, key) = (pool.clone(), connector.clone(), key.clone());
            tokio::spawn(async move {
                pool.connection(&key, || connector.connect(key.addr, succeed))
                    .await
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(50)).await;
    requests
}

#[tokio::test]
async fn a_hanging_handshake_delays_only_its_own_destination() {
    let pool = Arc::new(HbonePool::default());
    let (black_holed, healthy) = (key(1), key(2));
    let hanging = {
        let (pool, key) = (pool.clone(), black_holed.clone());
        tokio::spawn(async move {
            pool.connection(
                &key,
                std::future::pending::<Result<SendRequest<Bytes>, HboneError>>,
            )
            .await
        })
    };
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert_eq!(listed(&pool, &black_holed), Some((1, 0, 1)));

    let connected = tokio::time::timeout(
        Duration::from_secs(1),
        pool.connection(&healthy, in_memory_connection),
    )
    .await
    .expect("a hanging handshake to another destination must not delay this one");
    let (_send, slot) = connected.unwrap();
    assert_eq!(listed(&pool, &healthy), Some((0, 1, 1)));
    drop(slot);
    // The next stream reuses the open connection, still without waiting.
    let reused = tokio::time::timeout(
        Duration::from_secs(1),
        pool.connection(&healthy, || async {
            panic!("the open connection is reused")
        }),
    )
    .await
    .expect("reuse does not wait either");
    assert!(reused.is_ok());
    assert!(!hanging.is_finished(), "the black-holed one still waits");
    hanging.abort();
}

#[tokio::test]
async fn streams_to_one_destination_share_its_handshakes_and_all_get_their_error() {
    let pool = Arc::new(HbonePool::default());
    let connector = GatedConnector::new();
    let key = key(1);
    let requests = concurrent_requests(&pool, &connector, &key, 10, false).await;
    // Busy streams spread over up to SPREAD_CONNECTIONS handshakes, as they
    // do over open connections; the rest wait for those.
    assert_eq!(connector.calls(), SPREAD_CONNECTIONS);
    assert_eq!(listed(&pool, &key), Some((SPREAD_CONNECTIONS, 0, 10)));

    connector.open();
    for request in requests {
        let error = request.await.unwrap().err().expect("the handshake failed");
        assert!(
            matches!(&error, HboneError::Shared(e) if matches!(**e, HboneError::Timeout(_))),
            "{error:?}"
        );
        assert_eq!(
            error.to_string(),
            "the HBONE handshake with 10.0.0.1:15008 timed out"
        );
    }
    assert_eq!(listed(&pool, &key), None, "nothing is left of them");
    assert!(pool.destinations.lock().unwrap().is_empty());

    // The next stream starts afresh.
    let retried = pool
        .connection(&key, || connector.connect(key.addr, false))
        .await;
    assert!(retried.is_err());
    assert_eq!(connector.calls(), SPREAD_CONNECTIONS + 1);
}

#[tokio::test]
async fn streams_that_waited_for_handshakes_get_their_connections() {
    let pool = Arc::new(HbonePool::default());
    let connector = GatedConnector::new();
    let key = key(1);
    let requests = concurrent_requests(&pool, &connector, &key, 10, true).await;
    connector.open();
    let mut streams = Vec::new();
    for request in requests {
        streams.push(request.await.unwrap().expect("connected"));
    }
    assert_eq!(connector.calls(), SPREAD_CONNECTIONS);
    assert_eq!(listed(&pool, &key), Some((0, SPREAD_CONNECTIONS, 10)));
    drop(streams);
    assert_eq!(listed(&pool, &key), Some((0, SPREAD_CONNECTIONS, 0)));
    assert!(
        pool.connection(&key, || connector.connect(key.addr, true))
            .await
            .is_ok()
    );
    assert_eq!(
        connector.calls(),
        SPREAD_CONNECTIONS,
        "an idle one is reused"
    );
}

#[tokio::test]
async fn a_handshake_that_panics_fails_its_streams_and_leaves_nothing() {
    let pool = HbonePool::default();
    let key = key(1);
    let outcome = pool
        .connection(&key, || async {
            panic!("the handshake panicked (on purpose, in a test)")
        })
        .await;
    assert!(matches!(outcome, Err(HboneError::Abandoned(_))));
    assert!(pool.destinations.lock().unwrap().is_empty());
}

#[tokio::test]
async fn a_stream_waiting_for_a_handshake_is_a_small_future() {
    // A regression guard like `copy`'s: the handshakes run on their own
    // task, so what every connection's future holds while it waits is a
    // handle (264 bytes), not a TCP + TLS + HTTP/2 handshake in progress
    // (over 3 KB).
    let pool = HbonePool::default();
    let key = key(1);
    let future = pool.connection(&key, in_memory_connection);
    let size = std::mem::size_of_val(&future);
    assert!(size <= 384, "the pool's connection future is {size} bytes");
}

#[test]
fn busy_streams_spread_over_connections_then_share() {
    assert_eq!(
        pick_connection(&[], SPREAD_CONNECTIONS),
        None,
        "no connection yet"
    );
    assert_eq!(
        pick_connection(&[0], SPREAD_CONNECTIONS),
        Some(0),
        "an idle connection is reused"
    );
    assert_eq!(
        pick_connection(&[1], SPREAD_CONNECTIONS),
        None,
        "a busy one: open a second"
    );
    assert_eq!(
        pick_connection(&[1, 0], SPREAD_CONNECTIONS),
        Some(1),
        "the least busy is chosen"
    );
    assert_eq!(pick_connection(&[1, 1, 1], SPREAD_CONNECTIONS), None);
    let spread = vec![1; SPREAD_CONNECTIONS];
    assert_eq!(
        pick_connection(&spread, SPREAD_CONNECTIONS),
        Some(0),
        "enough connections: streams share"
    );
    let full = vec![MAX_STREAMS_PER_CONNECTION; SPREAD_CONNECTIONS];
    assert_eq!(
        pick_connection(&full, SPREAD_CONNECTIONS),
        None,
        "all full: open another"
    );
}

#[tokio::test]
async fn a_bursts_extra_connection_leaves_when_idle_and_the_last_one_later() {
    let release = IdleRelease {
        extra: Duration::from_millis(200),
        last: Duration::from_millis(1500),
    };
    let pool = Arc::new(HbonePool::with_spread(2).with_idle_release(release));
    let connector = GatedConnector::new();
    connector.open();
    let key = key(7);
    // Two streams at once: the second opens a second connection.
    let mut slots = Vec::new();
    for request in concurrent_requests(&pool, &connector, &key, 2, true).await {
        slots.push(request.await.unwrap().unwrap());
    }
    assert_eq!(listed(&pool, &key), Some((0, 2, 2)));
    // Busy connections stay, however long.
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(listed(&pool, &key), Some((0, 2, 2)));
    // Idle: the extra one goes after `extra`; the last one stays.
    drop(slots);
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(listed(&pool, &key), Some((0, 1, 0)));
    // A stream that comes and goes between two looks keeps it another while.
    let (_, slot) = pool
        .connection(&key, || connector.connect(key.addr, true))
        .await
        .unwrap();
    drop(slot);
    assert_eq!(connector.calls(), 2, "the idle connection was reused");
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(listed(&pool, &key), Some((0, 1, 0)));
    // Then the last one goes after `last`, and the destination with it.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(listed(&pool, &key), None);
}

#[tokio::test]
async fn a_retired_pool_lets_each_connection_go_once_it_carries_nothing() {
    let release = IdleRelease {
        extra: Duration::from_millis(200),
        last: Duration::from_mins(1),
    };
    let pool = Arc::new(HbonePool::with_spread(2).with_idle_release(release));
    let connector = GatedConnector::new();
    connector.open();
    let (busy, idle) = (key(8), key(9));
    let (_, slot) = pool
        .connection(&busy, || connector.connect(busy.addr, true))
        .await
        .unwrap();
    let (_, done) = pool
        .connection(&idle, || connector.connect(idle.addr, true))
        .await
        .unwrap();
    drop(done);
    pool.retire();
    // A tick (50 ms) and a little: the idle one is gone, not a minute on.
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert_eq!(listed(&pool, &idle), None);
    // The busy one stays while it carries its stream, then goes too.
    assert_eq!(listed(&pool, &busy), Some((0, 1, 1)));
    drop(slot);
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert_eq!(listed(&pool, &busy), None);
}

/// A connection whose server sends `GOAWAY` as soon as the handshakes are
/// done (a peer that hands its pods over just after accepting it), returned
/// once the client has read the `GOAWAY`.
async fn going_away_connection() -> Result<SendRequest<Bytes>, HboneError> {
    let (client_io, server_io) = tokio::io::duplex(64 * 1024);
    tokio::spawn(async move {
        let mut connection = h2::server::handshake(server_io).await.unwrap();
        connection.graceful_shutdown();
        while let Some(Ok(_stream)) = connection.accept().await {}
    });
    let (send, connection) = h2::client::handshake(client_io).await.unwrap();
    tokio::spawn(connection);
    let refused = |send: &SendRequest<Bytes>| {
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        match send.clone().poll_ready(&mut cx) {
            std::task::Poll::Ready(Err(error)) => Some(error),
            _ => None,
        }
    };
    for _ in 0..500 {
        if let Some(error) = refused(&send) {
            assert!(refused_unprocessed(&error), "{error}");
            return Ok(send);
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    panic!("the client never read the server's GOAWAY");
}

/// Hands out a going-away connection first, then ones that stay.
#[derive(Default)]
struct HandoffConnector {
    calls: AtomicUsize,
}

impl Connect for HandoffConnector {
    fn connect(
        &self,
        _key: &PoolKey,
    ) -> impl Future<Output = Result<SendRequest<Bytes>, HboneError>> + Send + 'static {
        let first = self.calls.fetch_add(1, Ordering::SeqCst) == 0;
        async move {
            if first {
                going_away_connection().await
            } else {
                in_memory_connection().await
            }
        }
    }
}

#[tokio::test]
async fn a_stream_whose_new_connection_goes_away_at_once_is_sent_on_another() {
    let pool = HbonePool::default();
    let connector = HandoffConnector::default();
    let key = key(10);
    let authority = SocketAddr::from(([10, 0, 0, 10], 7001));
    let stream = pool.open_stream(&connector, &key, authority).await;
    assert!(stream.is_ok(), "{:?}", stream.err());
    assert_eq!(connector.calls.load(Ordering::SeqCst), 2);
    // The stream is on the second connection, the first left the pool.
    assert_eq!(listed(&pool, &key), Some((0, 1, 1)));
}
