//! `pod-tool http-serve`: an HTTP/1.1 and HTTP/2 (prior knowledge) server
//! that says who answered, for the waypoint's tests. Every response carries
//! `x-backend: <name>` and a JSON body with the request's method, path,
//! authority (HTTP/2's `:authority`) and headers. It can fail a share of requests, answer slowly, and stream:
//!
//! - `--fail-percent P --fail-status S`: P of every 100 requests get S,
//!   spread out (request n fails when `n × 37 mod 100 < P`), so that for P
//!   up to 37 no two requests in a row fail: deterministic, and a retry of
//!   a failed request succeeds.
//! - `--delay-ms D`: waits D ms before answering.
//! - `GET /stream?chunks=N`: N chunks 10 ms apart, then trailers
//!   `grpc-status: 0` and `x-chunks: N` (HTTP/2), like a gRPC server stream.
//! - `POST /echo`: the request body back, with the request's trailers
//!   counted in `x-request-trailers`.

use std::{
    convert::Infallible,
    net::SocketAddr,
    process::ExitCode,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode};
use http_body_util::{BodyExt as _, StreamBody, combinators::BoxBody};
use hyper::body::{Frame, Incoming};
use hyper_util::{
    rt::{TokioExecutor, TokioIo},
    server::conn::auto,
};

use crate::event::Event;

#[derive(clap::Args)]
pub(crate) struct Args {
    /// Address to listen on.
    #[arg(long)]
    listen: SocketAddr,
    /// Name reported in `x-backend`.
    #[arg(long)]
    name: String,
    /// Share of requests (0-100) answered with `--fail-status`.
    #[arg(long, default_value_t = 0)]
    fail_percent: u64,
    /// Status of failed requests.
    #[arg(long, default_value_t = 503)]
    fail_status: u16,
    /// Delay before every answer, in milliseconds.
    #[arg(long, default_value_t = 0)]
    delay_ms: u64,
}

struct Server {
    args: Args,
    requests: AtomicU64,
}

type Body = BoxBody<Bytes, Infallible>;

pub(crate) fn run(args: Args) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            return Event::fail(format!("cannot start the runtime: {error}"));
        }
    };
    runtime.block_on(serve(args))
}

async fn serve(args: Args) -> ExitCode {
    let listener = match tokio::net::TcpListener::bind(args.listen).await {
        Ok(listener) => listener,
        Err(error) => {
            return Event::fail(format!("cannot listen on {}: {error}", args.listen));
        }
    };
    Event::Listening {
        addrs: vec![args.listen.to_string()],
    }
    .emit();
    let server = Arc::new(Server {
        args,
        requests: AtomicU64::new(0),
    });
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let server = server.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request| {
                let server = server.clone();
                async move { Ok::<_, Infallible>(server.answer(request).await) }
            });
            let _ = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(tcp), service)
                .await;
        });
    }
}

impl Server {
    async fn answer(&self, request: Request<Incoming>) -> Response<Body> {
        let sequence = self.requests.fetch_add(1, Ordering::Relaxed);
        if self.args.delay_ms > 0 {
            tokio::time::sleep(Duration::from_millis(self.args.delay_ms)).await;
        }
        let path = request.uri().path().to_owned();
        let mut response = if sequence * 37 % 100 < self.args.fail_percent {
            let status = StatusCode::from_u16(self.args.fail_status)
                .unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
            full(status, format!("{} failed on purpose\n", self.args.name))
        } else if path == "/stream" {
            stream(&request)
        } else if path == "/echo" {
            echo(request).await
        } else {
            let headers: serde_json::Map<String, serde_json::Value> = request
                .headers()
                .iter()
                .map(|(name, value)| {
                    (
                        name.to_string(),
                        serde_json::Value::from(value.to_str().unwrap_or_default()),
                    )
                })
                .collect();
            let body = serde_json::json!({
                "backend": self.args.name,
                "method": request.method().as_str(),
                "path": request.uri().path_and_query().map(ToString::to_string),
                "authority": request.uri().authority().map(ToString::to_string),
                "version": format!("{:?}", request.version()),
                "headers": headers,
            });
            full(StatusCode::OK, format!("{body}\n"))
        };
        if let Ok(name) = HeaderValue::from_str(&self.args.name) {
            response.headers_mut().insert("x-backend", name);
        }
        response
    }
}

fn full(status: StatusCode, body: String) -> Response<Body> {
    let mut response = Response::new(http_body_util::Full::new(Bytes::from(body)).boxed());
    *response.status_mut() = status;
    response
}

/// N chunks 10 ms apart, then trailers.
fn stream(request: &Request<Incoming>) -> Response<Body> {
    let chunks: u32 = request
        .uri()
        .query()
        .and_then(|q| q.strip_prefix("chunks="))
        .and_then(|n| n.parse().ok())
        .unwrap_or(5);
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, Infallible>>(4);
    tokio::spawn(async move {
        for i in 0..chunks {
            let frame = Frame::data(Bytes::from(format!("chunk {i}\n")));
            if tx.send(Ok(frame)).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let mut trailers = HeaderMap::new();
        trailers.insert("grpc-status", HeaderValue::from_static("0"));
        if let Ok(value) = HeaderValue::from_str(&chunks.to_string()) {
            trailers.insert("x-chunks", value);
        }
        let _ = tx.send(Ok(Frame::trailers(trailers))).await;
    });
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|frame| (frame, rx))
    });
    let mut response = Response::new(StreamBody::new(stream).boxed());
    response
        .headers_mut()
        .insert("content-type", HeaderValue::from_static("application/grpc"));
    response
}

/// The request body back; its trailers counted in a header.
async fn echo(request: Request<Incoming>) -> Response<Body> {
    match request.into_body().collect().await {
        Ok(collected) => {
            let trailers = collected.trailers().map_or(0, HeaderMap::len);
            let mut response =
                Response::new(http_body_util::Full::new(collected.to_bytes()).boxed());
            if let Ok(value) = HeaderValue::from_str(&trailers.to_string()) {
                response.headers_mut().insert("x-request-trailers", value);
            }
            response
        }
        Err(error) => full(
            StatusCode::BAD_REQUEST,
            format!("cannot read the body: {error}\n"),
        ),
    }
}
