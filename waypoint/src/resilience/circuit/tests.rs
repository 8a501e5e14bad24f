use super::*;

fn limits(requests: u32, pending: u32, connections: u32) -> Limits {
    Limits {
        max_connections: Some(connections),
        max_pending_requests: Some(pending),
        max_requests: Some(requests),
    }
}

#[tokio::test]
async fn requests_past_the_limits_are_refused_and_slots_come_back() {
    let breaker = Arc::new(CircuitBreaker::new(limits(1, 1, 1)));
    let first = breaker.acquire_request(Duration::ZERO).await.unwrap();
    assert_eq!(breaker.active_requests(), 1);
    // One may wait; it gets the slot when the first ends.
    let waiter = {
        let breaker = breaker.clone();
        tokio::spawn(async move { breaker.acquire_request(Duration::from_secs(5)).await })
    };
    while breaker.pending() == 0 {
        tokio::task::yield_now().await;
    }
    // A third is refused at once: one already waits.
    let refused = breaker.acquire_request(Duration::from_secs(5)).await;
    assert!(matches!(
        refused,
        Err(Overflow::PendingRequests {
            waiting: 1,
            max: 1,
            ..
        })
    ));
    drop(first);
    let second = waiter.await.unwrap().unwrap();
    assert_eq!((breaker.pending(), breaker.active_requests()), (0, 1));
    drop(second);
    assert_eq!(breaker.active_requests(), 0);
}

#[tokio::test]
async fn waiting_too_long_overflows() {
    let breaker = CircuitBreaker::new(limits(1, 5, 1));
    let _held = breaker.acquire_request(Duration::ZERO).await.unwrap();
    let wait = Duration::from_millis(20);
    let refused = breaker.acquire_request(wait).await.unwrap_err();
    assert_eq!(
        refused,
        Overflow::Requests {
            endpoint: None,
            max: 1,
            waited: wait
        }
    );
    assert_eq!((breaker.pending(), breaker.active_requests()), (0, 1));
    // No pending allowed: refused at once, whatever the wait.
    let strict = CircuitBreaker::new(limits(1, 0, 1));
    let _held = strict.acquire_request(Duration::ZERO).await.unwrap();
    let refused = strict.acquire_request(Duration::from_mins(1)).await;
    assert!(matches!(refused, Err(Overflow::PendingRequests { .. })));
}

#[tokio::test]
async fn unlimited_requests_are_counted_and_odd_limits_do_not_panic() {
    let unlimited = CircuitBreaker::new(Limits::default());
    let mut held = Vec::new();
    for _ in 0..100 {
        held.push(unlimited.acquire_request(Duration::ZERO).await.unwrap());
    }
    assert_eq!(unlimited.active_requests(), 100);
    drop(held);
    assert_eq!(unlimited.active_requests(), 0);
    let huge = CircuitBreaker::new(limits(u32::MAX, u32::MAX, u32::MAX));
    assert!(huge.acquire_request(Duration::MAX).await.is_ok());
    let none = CircuitBreaker::new(limits(0, 0, 0));
    assert!(none.acquire_request(Duration::ZERO).await.is_err());
    assert!(none.try_connection().is_err());
}

#[test]
fn connections_are_limited_and_released() {
    let breaker = CircuitBreaker::new(limits(1, 1, 2));
    let a = breaker.try_connection().unwrap();
    let _b = breaker.try_connection().unwrap();
    assert!(matches!(
        breaker.try_connection(),
        Err(Overflow::Connections { max: 2, .. })
    ));
    assert_eq!(breaker.connections(), 2);
    drop(a);
    assert!(breaker.try_connection().is_ok());
    let unlimited = CircuitBreaker::new(Limits::default());
    let held: Vec<_> = (0..100)
        .map(|_| unlimited.try_connection().unwrap())
        .collect();
    assert_eq!(unlimited.connections(), 100);
    drop(held);
    assert_eq!(unlimited.connections(), 0);
}

#[tokio::test]
async fn refusals_name_the_limit_and_the_endpoint() {
    let endpoint: SocketAddr = "10.1.0.4:80".parse().unwrap();
    let breaker = CircuitBreaker::for_endpoint(endpoint, limits(8, 0, 2));
    let _held: Vec<_> =
        futures_util::future::join_all((0..8).map(|_| breaker.acquire_request(Duration::ZERO)))
            .await;
    let refused = breaker.acquire_request(Duration::ZERO).await.unwrap_err();
    assert_eq!(
        refused.to_string(),
        "circuit breaker open: 0 requests already waiting for a slot at 10.1.0.4:80 \
         (max-pending-requests 0)"
    );
    let timed_out = Overflow::Requests {
        endpoint: Some(endpoint),
        max: 8,
        waited: Duration::from_secs(2),
    };
    assert_eq!(
        timed_out.to_string(),
        "circuit breaker open: 8 requests in flight to 10.1.0.4:80 (max-requests 8), \
         none finished within 2s"
    );
    let _connections = (breaker.try_connection(), breaker.try_connection());
    assert_eq!(
        breaker.try_connection().unwrap_err().to_string(),
        "circuit breaker open: 2 connections open to 10.1.0.4:80 (max-connections 2)"
    );
}
