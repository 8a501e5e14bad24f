//! Watches: newline-delimited JSON events (`ADDED`, `MODIFIED`, `DELETED`,
//! `BOOKMARK`, `ERROR`) streamed over a chunked HTTP/1.1 response.
//!
//! A watch from resourceVersion `N` replays the kept changes after `N`, then
//! follows new ones. When `N` is older than the kept history the stream holds
//! one `ERROR` event with a `410 Expired` `Status`, as the real server sends,
//! and clients relist. A watch from no version (or `"0"`) starts with a
//! synthetic `ADDED` per existing object; `sendInitialEvents=true` ends those
//! with a bookmark annotated `k8s.io/initial-events-end`. Objects that start
//! or stop matching the selectors are sent as `ADDED` and `DELETED`.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::{Response, StatusCode};
use serde_json::{Value, json};
use tokio::sync::{mpsc, watch};

use super::objects::set_resource_version;
use super::params::{ListParams, Projection};
use super::server::until_true;
use super::status::{self, Body};
use super::store::{Change, ChangeKind, SharedStore};

/// How often a watch with `allowWatchBookmarks=true` gets a bookmark.
pub const BOOKMARK_INTERVAL: Duration = Duration::from_secs(1);

/// Where a watch starts.
enum Start {
    /// After this resourceVersion, replaying kept changes.
    After(u64),
    /// Now, first sending the existing objects if `initial_events`.
    Now {
        initial_events: bool,
        end_bookmark: bool,
    },
}

struct Watch {
    store: Arc<SharedStore>,
    params: ListParams,
    projection: Projection,
    events: mpsc::Sender<Bytes>,
}

/// Answers a watch request: `200` and a stream that ends at `timeoutSeconds`,
/// when the client goes away, or when `closing` turns true.
pub(crate) fn respond(
    store: Arc<SharedStore>,
    params: ListParams,
    projection: Projection,
    closing: watch::Receiver<bool>,
) -> Response<Body> {
    let start = match params.resource_version_number() {
        Err(status) => return status::error_response(&status),
        Ok(Some(version)) if params.send_initial_events != Some(true) => Start::After(version),
        Ok(_) => Start::Now {
            initial_events: params.send_initial_events != Some(false),
            end_bookmark: params.send_initial_events == Some(true),
        },
    };
    let (events, mut receiver) = mpsc::channel::<Bytes>(64);
    let watch = Watch {
        store,
        params,
        projection,
        events,
    };
    tokio::spawn(watch.run(start, closing));
    let stream = futures::stream::poll_fn(move |context| {
        receiver
            .poll_recv(context)
            .map(|line| line.map(|line| Ok::<_, Infallible>(Frame::data(line))))
    });
    let mut response = Response::new(StreamBody::new(stream).boxed());
    *response.status_mut() = StatusCode::OK;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

// === impl Watch ===

impl Watch {
    async fn run(self, start: Start, mut closing: watch::Receiver<bool>) {
        let mut committed = self.store.subscribe();
        let deadline = tokio::time::sleep(self.params.timeout);
        tokio::pin!(deadline);
        let mut bookmarks = tokio::time::interval_at(
            tokio::time::Instant::now() + BOOKMARK_INTERVAL,
            BOOKMARK_INTERVAL,
        );
        let mut position = match start {
            Start::After(version) => version,
            Start::Now {
                initial_events,
                end_bookmark,
            } => {
                let (objects, version) = {
                    let store = self.store.lock();
                    let resource = self.params.filter.resource;
                    let namespace = self.params.filter.namespace.as_deref();
                    (store.list(resource, namespace), store.resource_version())
                };
                let initial = objects
                    .into_iter()
                    .filter(|object| initial_events && self.params.filter.matches(object));
                for object in initial {
                    if !self.send("ADDED", object).await {
                        return;
                    }
                }
                if end_bookmark && !self.send_bookmark(version, true).await {
                    return;
                }
                version
            }
        };
        loop {
            // Whatever is committed from here on is read below.
            committed.borrow_and_update();
            let pending = {
                let store = self.store.lock();
                store
                    .changes_after(self.params.filter.resource, position)
                    .map(|changes| (changes, store.resource_version()))
            };
            let (changes, current) = match pending {
                Ok(pending) => pending,
                Err(error) => {
                    self.send_raw("ERROR", status::for_store_error(&error))
                        .await;
                    return;
                }
            };
            for change in changes {
                if let Some((kind, object)) = self.event_for(change)
                    && !self.send(kind, object).await
                {
                    return;
                }
            }
            position = current;
            tokio::select! {
                result = committed.changed() => if result.is_err() { return },
                _ = bookmarks.tick(), if self.params.bookmarks => {
                    if !self.send_bookmark(position, false).await {
                        return;
                    }
                }
                () = &mut deadline => return,
                () = until_true(&mut closing) => return,
                () = self.events.closed() => return,
            }
        }
    }

    /// What a client with this watch's selectors sees of `change`, if anything.
    fn event_for(&self, change: Change) -> Option<(&'static str, Value)> {
        let filter = &self.params.filter;
        let matches_now = filter.matches(&change.object);
        let matched_before = change
            .previous
            .as_ref()
            .is_some_and(|previous| filter.matches(previous));
        match (change.kind, matched_before, matches_now) {
            (ChangeKind::Added, _, true) | (ChangeKind::Modified, false, true) => {
                Some(("ADDED", change.object))
            }
            (ChangeKind::Modified, true, true) => Some(("MODIFIED", change.object)),
            (ChangeKind::Deleted, _, true) => Some(("DELETED", change.object)),
            // It left the selection: the client sees its last matching state go.
            (ChangeKind::Modified, true, false) => {
                let mut previous = change.previous?;
                set_resource_version(&mut previous, change.resource_version);
                Some(("DELETED", previous))
            }
            _ => None,
        }
    }

    async fn send(&self, kind: &str, object: Value) -> bool {
        self.send_raw(kind, self.projection.object(object)).await
    }

    async fn send_bookmark(&self, resource_version: u64, initial_events_end: bool) -> bool {
        let resource = self.params.filter.resource;
        let mut metadata = json!({ "resourceVersion": resource_version.to_string() });
        if initial_events_end {
            metadata["annotations"] = json!({ "k8s.io/initial-events-end": "true" });
        }
        let bookmark = json!({
            "kind": resource.kind,
            "apiVersion": resource.api_version(),
            "metadata": metadata,
        });
        self.send_raw("BOOKMARK", bookmark).await
    }

    /// Sends one event line; false once the client is gone.
    async fn send_raw(&self, kind: &str, object: Value) -> bool {
        let mut line = json!({ "type": kind, "object": object }).to_string();
        line.push('\n');
        self.events.send(Bytes::from(line)).await.is_ok()
    }
}
