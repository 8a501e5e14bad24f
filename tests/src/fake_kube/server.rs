//! The HTTP/1.1 side: accepting connections, routing each request to its
//! verb, and closing down so that watches end cleanly and the port refuses
//! new connections at once.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::header::{ACCEPT, CONTENT_TYPE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;

use super::handlers::{self, Target};
use super::params::{ListParams, Projection};
use super::resources::Route;
use super::status::{self, Body};
use super::store::{ObjectKey, SharedStore};
use super::tokens::TokenRegistry;
use super::{discovery, watch as watches};

/// How long open connections get to finish once the server stops.
const CLOSE_GRACE: Duration = Duration::from_secs(2);

/// What every request handler reads.
pub(crate) struct ServerContext {
    pub(crate) store: Arc<SharedStore>,
    pub(crate) tokens: Arc<TokenRegistry>,
    pub(crate) address: SocketAddr,
}

/// Serves `listener` until `stop` turns true, then drops the listener (so the
/// port refuses connections), ends every watch and closes every connection.
pub(crate) async fn serve(
    listener: TcpListener,
    context: Arc<ServerContext>,
    mut stop: watch::Receiver<bool>,
) {
    let (closing, closing_receiver) = watch::channel(false);
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    connections.spawn(serve_connection(stream, Arc::clone(&context), closing_receiver.clone()));
                }
                // Out of file descriptors and such: wait rather than spin.
                Err(error) => {
                    eprintln!("fake-kube: accept failed: {error}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            () = until_true(&mut stop) => break,
        }
        while connections.try_join_next().is_some() {}
    }
    drop(listener);
    closing.send_replace(true);
    let drained = tokio::time::timeout(CLOSE_GRACE, async {
        while connections.join_next().await.is_some() {}
    });
    if drained.await.is_err() {
        eprintln!("fake-kube: connections still open after {CLOSE_GRACE:?}, dropping them");
    }
}

/// Returns once `switch` is true (or its sender is gone).
pub(crate) async fn until_true(switch: &mut watch::Receiver<bool>) {
    // The guard `wait_for` returns must not live across an await.
    let _ = switch.wait_for(|on| *on).await.map(|_| ());
}

async fn serve_connection(
    stream: TcpStream,
    context: Arc<ServerContext>,
    mut closing: watch::Receiver<bool>,
) {
    let requests_closing = closing.clone();
    let service = service_fn(move |request| {
        let context = Arc::clone(&context);
        let closing = requests_closing.clone();
        async move { Ok::<_, Infallible>(handle(&context, request, closing).await) }
    });
    let connection = http1::Builder::new().serve_connection(TokioIo::new(stream), service);
    tokio::pin!(connection);
    tokio::select! {
        // Errors here are clients going away mid-request: nothing to do.
        _ = connection.as_mut() => {}
        () = until_true(&mut closing) => {
            connection.as_mut().graceful_shutdown();
            let _ = connection.await;
        }
    }
}

/// Answers one request.
async fn handle(
    context: &ServerContext,
    request: Request<Incoming>,
    closing: watch::Receiver<bool>,
) -> Response<Body> {
    let header = |name| {
        request
            .headers()
            .get(name)
            .and_then(|value: &hyper::header::HeaderValue| value.to_str().ok())
            .map(str::to_owned)
    };
    let projection = Projection::from_accept(header(ACCEPT).as_deref());
    let content_type = header(CONTENT_TYPE).unwrap_or_default();
    let method = request.method().clone();
    let route = Route::parse(request.uri().path());
    let query = request.uri().query().unwrap_or_default().to_owned();
    let body = match request.into_body().collect().await {
        Ok(body) => body.to_bytes(),
        Err(error) => {
            let message = format!("cannot read the request body: {error}");
            return status::error_response(&status::failure(400, "BadRequest", &message, None));
        }
    };
    let store = &context.store;
    match (route, method) {
        (Route::Version, Method::GET) => discovery::version(),
        (Route::CoreVersions, Method::GET) => {
            discovery::core_versions(&context.address.to_string())
        }
        (Route::Groups, Method::GET) => discovery::groups(),
        (Route::ResourceList { group, version }, Method::GET) => {
            discovery::resources(group, version)
        }
        (Route::TokenReview, Method::POST) => context.tokens.review(&body),
        (
            Route::Collection {
                resource,
                namespace,
            },
            method @ (Method::GET | Method::DELETE),
        ) => {
            let params = match ListParams::parse(&query, resource, namespace) {
                Ok(params) => params,
                Err(status) => return status::error_response(&status),
            };
            if method == Method::DELETE {
                handlers::respond(
                    handlers::delete_collection(store, &params),
                    Projection::Full,
                )
            } else if params.watch {
                watches::respond(Arc::clone(store), params, projection, closing)
            } else {
                handlers::list(store, &params, projection)
            }
        }
        (
            Route::Collection {
                resource,
                namespace,
            },
            Method::POST,
        ) => handlers::respond(
            handlers::create(store, resource, namespace.as_deref(), &body),
            projection,
        ),
        (
            Route::Object {
                resource,
                namespace,
                name,
                subresource,
            },
            method,
        ) => {
            let status = match subresource.as_deref() {
                None => false,
                Some("status") => true,
                Some(_) => return status::error_response(&status::unknown_path()),
            };
            let target = Target {
                key: ObjectKey {
                    resource: resource.plural,
                    namespace: namespace.unwrap_or_default(),
                    name,
                },
                status,
            };
            let outcome = match method {
                Method::GET => handlers::get(store, &target),
                Method::PUT => handlers::replace(store, &target, &body),
                Method::PATCH => handlers::patch(store, &target, &content_type, &body),
                Method::DELETE if !status => handlers::delete(store, &target),
                other => Err(status::method_not_allowed(other.as_str())),
            };
            handlers::respond(outcome, projection)
        }
        (Route::Unknown, _) => status::error_response(&status::unknown_path()),
        (_, method) => status::error_response(&status::method_not_allowed(method.as_str())),
    }
}
