//! A pool with a spread of one, as the waypoint's workers use it: one
//! connection per destination, shared by every stream until it is full.
//! (These were the waypoint's own connection-table tests.)

use std::sync::{Arc, atomic::Ordering};

use tokio::sync::Semaphore;

use super::{super::*, GatedConnector, in_memory_connection, key, listed};

/// `n` requests for `key(1)` at once, each on its own task, once all wait.
async fn concurrent_requests(
    pool: &Arc<HbonePool>,
    connector: &Arc<GatedConnector>,
    n: usize,
    succeed: bool,
) -> Vec<tokio::task::JoinHandle<Result<SendRequest<Bytes>, HboneError>>> {
    let requests = (0..n)
        .map(|_| {
            let (pool, connector) = (pool.clone(), connector.clone());
            tokio::spawn(async move {
                let key = key(1);
                pool.connection(&key, || connector.connect(key.addr, succeed))
                    .await
                    .map(|(send, _slot)| send)
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(50)).await;
    requests
}

#[tokio::test]
async fn a_hanging_handshake_delays_only_its_own_endpoint() {
    let pool = Arc::new(HbonePool::with_spread(1));
    let hanging = {
        let pool = pool.clone();
        tokio::spawn(async move {
            pool.connection(
                &key(1),
                std::future::pending::<Result<SendRequest<Bytes>, HboneError>>,
            )
            .await
            .map(|(send, _slot)| send)
        })
    };
    tokio::time::sleep(Duration::from_millis(20)).await;
    let connected = tokio::time::timeout(
        Duration::from_secs(1),
        pool.connection(&key(2), in_memory_connection),
    )
    .await
    .expect("a hanging handshake to another endpoint must not delay this one");
    assert!(connected.is_ok());
    let reused = tokio::time::timeout(
        Duration::from_secs(1),
        pool.connection(&key(2), || async { panic!("the open one is reused") }),
    )
    .await
    .expect("reuse does not wait either");
    assert!(reused.is_ok());
    assert!(!hanging.is_finished(), "the black-holed one still waits");
    hanging.abort();
}

#[tokio::test]
async fn requests_for_one_endpoint_share_its_handshake_and_all_get_its_error() {
    let pool = Arc::new(HbonePool::with_spread(1));
    let connector = GatedConnector::new();
    let requests = concurrent_requests(&pool, &connector, 10, false).await;
    assert_eq!(connector.calls.load(Ordering::SeqCst), 1, "one handshake");
    connector.gate.add_permits(Semaphore::MAX_PERMITS);
    for request in requests {
        let error = request.await.unwrap().expect_err("the handshake failed");
        assert!(
            matches!(&error, HboneError::Shared(e) if matches!(**e, HboneError::Timeout(_))),
            "{error:?}"
        );
        assert_eq!(
            error.to_string(),
            "the HBONE handshake with 10.0.0.1:15008 timed out"
        );
    }
    assert!(
        pool.destinations.lock().unwrap().is_empty(),
        "nothing is left of it"
    );
    // The next request starts afresh.
    let retried = pool
        .connection(&key(1), || connector.connect(key(1).addr, false))
        .await;
    assert!(retried.is_err());
    assert_eq!(connector.calls.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn requests_that_waited_for_a_handshake_share_its_connection() {
    let pool = Arc::new(HbonePool::with_spread(1));
    let connector = GatedConnector::new();
    let requests = concurrent_requests(&pool, &connector, 10, true).await;
    connector.gate.add_permits(Semaphore::MAX_PERMITS);
    for request in requests {
        assert!(request.await.unwrap().is_ok());
    }
    assert_eq!(
        listed(&pool, &key(1)),
        Some((0, 1, 0)),
        "one open connection"
    );
    assert!(
        pool.connection(&key(1), || connector.connect(key(1).addr, true))
            .await
            .is_ok()
    );
    assert_eq!(connector.calls.load(Ordering::SeqCst), 1, "reused");
}
