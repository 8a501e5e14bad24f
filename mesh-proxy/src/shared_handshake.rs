//! A connection handshake that several requests wait on.
//!
//! The HBONE pools (the node agent's and the waypoint's) record a
//! [`SharedHandshake`] in their table, under their lock, while it runs on a
//! task of its own: requests for the same peer wait for it instead of
//! starting another, requests for other peers never wait on it, and no lock
//! is held while it waits on the network. Its outcome, the connection or
//! the error, goes to every waiter.

use std::{future::Future, sync::Arc};

use tokio::sync::watch;
use tracing::Instrument as _;

/// How a handshake ended: the connection, or the error every waiter gets.
pub type Outcome<T, E> = Result<T, Arc<E>>;

/// A handshake in progress, or over; every clone waits for the same
/// outcome.
pub struct SharedHandshake<T, E> {
    outcome: watch::Receiver<Option<Outcome<T, E>>>,
}

/// Starts the handshake that a [`SharedHandshake`] waits for. Kept apart
/// so that the caller can record the handshake in its table under its lock
/// and start it once the lock is released.
#[must_use = "waiters wait until the handshake is started"]
pub struct HandshakeStarter<T, E> {
    sender: watch::Sender<Option<Outcome<T, E>>>,
}

/// Ends a handshake's task: the caller's table first, then the waiters.
/// Dropped before [`HandshakeEnd::finish`] (the handshake panicked, or the
/// runtime is shutting down), it still tells the table, with no outcome.
struct HandshakeEnd<T, E, D>
where
    D: FnOnce(Option<&Outcome<T, E>>),
{
    on_end: Option<D>,
    sender: watch::Sender<Option<Outcome<T, E>>>,
}

// === impl SharedHandshake ===

impl<T, E> SharedHandshake<T, E>
where
    T: Clone + Send + Sync + 'static,
    E: Send + Sync + 'static,
{
    /// A handshake that has not started yet, and what starts it.
    pub fn new() -> (Self, HandshakeStarter<T, E>) {
        let (sender, outcome) = watch::channel(None);
        (Self { outcome }, HandshakeStarter { sender })
    }

    /// Whether `other` waits for the same handshake.
    #[must_use]
    pub fn is_same(&self, other: &Self) -> bool {
        self.outcome.same_channel(&other.outcome)
    }

    /// Waits for the outcome; `None` when the handshake's task ended
    /// without one (it panicked, or the runtime is shutting down).
    pub async fn outcome(&self) -> Option<Outcome<T, E>> {
        let mut outcome = self.outcome.clone();
        let ended = outcome.wait_for(Option::is_some).await;
        ended.ok().and_then(|outcome| outcome.clone())
    }
}

impl<T, E> Clone for SharedHandshake<T, E> {
    fn clone(&self) -> Self {
        Self {
            outcome: self.outcome.clone(),
        }
    }
}

// === impl HandshakeStarter ===

impl<T, E> HandshakeStarter<T, E>
where
    T: Clone + Send + Sync + 'static,
    E: Send + Sync + 'static,
{
    /// Runs `handshake` on a task of its own, in the current span. When it
    /// ends, `on_end` gets its outcome before any waiter wakes, so the
    /// caller's table never lists a handshake that is over; `on_end` gets
    /// `None` if the task ends without an outcome. `on_end` runs on the
    /// handshake's task, never inside this call.
    pub fn start<F, D>(self, handshake: F, on_end: D)
    where
        F: Future<Output = Result<T, E>> + Send + 'static,
        D: FnOnce(Option<&Outcome<T, E>>) + Send + 'static,
    {
        let end = HandshakeEnd {
            on_end: Some(on_end),
            sender: self.sender,
        };
        let task = async move {
            let outcome = handshake.await.map_err(Arc::new);
            end.finish(outcome);
        };
        tokio::spawn(task.in_current_span());
    }
}

// === impl HandshakeEnd ===

impl<T, E, D> HandshakeEnd<T, E, D>
where
    D: FnOnce(Option<&Outcome<T, E>>),
{
    fn finish(mut self, outcome: Outcome<T, E>) {
        if let Some(on_end) = self.on_end.take() {
            on_end(Some(&outcome));
        }
        self.sender.send_replace(Some(outcome));
    }
}

impl<T, E, D> Drop for HandshakeEnd<T, E, D>
where
    D: FnOnce(Option<&Outcome<T, E>>),
{
    fn drop(&mut self) {
        // Waiters wake when the sender is dropped, right after this.
        if let Some(on_end) = self.on_end.take() {
            on_end(None);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::{sync::Mutex, time::Duration};

    use super::*;

    type Handshake = SharedHandshake<u32, String>;

    #[tokio::test]
    async fn every_waiter_gets_the_outcome_after_the_table_has_it() {
        let (handshake, starter) = Handshake::new();
        let table = Arc::new(Mutex::new(None));
        let waiters: Vec<_> = (0..5)
            .map(|_| {
                let (handshake, table) = (handshake.clone(), table.clone());
                tokio::spawn(async move {
                    let outcome = handshake.outcome().await;
                    let recorded = table.lock().unwrap().clone();
                    (outcome, recorded)
                })
            })
            .collect();
        let (release, released) = tokio::sync::oneshot::channel::<()>();
        let recording = table.clone();
        starter.start(
            async move {
                let _ = released.await;
                Err::<u32, _>("refused".to_owned())
            },
            move |outcome| *recording.lock().unwrap() = Some(outcome.cloned()),
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(table.lock().unwrap().is_none(), "the handshake is running");
        release.send(()).unwrap();
        for waiter in waiters {
            let (outcome, recorded) = waiter.await.unwrap();
            let error = outcome.expect("an outcome").unwrap_err();
            assert_eq!(*error, "refused");
            let recorded = recorded.expect("the table heard first");
            assert!(Arc::ptr_eq(&recorded.unwrap().unwrap_err(), &error));
        }
        // A late waiter gets the same outcome at once.
        assert!(handshake.outcome().await.unwrap().is_err());
    }

    #[tokio::test]
    async fn a_handshake_task_that_dies_tells_the_table_and_wakes_its_waiters() {
        let (handshake, starter) = Handshake::new();
        let (told, told_rx) = std::sync::mpsc::channel();
        starter.start(
            async {
                tokio::time::sleep(Duration::from_millis(10)).await;
                panic!("the handshake panicked (on purpose, in a test)");
            },
            move |outcome| told.send(outcome.is_none()).unwrap(),
        );
        let outcome = tokio::time::timeout(Duration::from_secs(5), handshake.outcome())
            .await
            .expect("waiters wake");
        assert!(outcome.is_none(), "no outcome");
        assert!(
            told_rx.recv().unwrap(),
            "the table was told, with no outcome"
        );
    }
}
