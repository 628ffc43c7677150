//! `/metrics` (OpenMetrics text from a prometheus-client registry), `/healthz` and `/readyz`
//! over HTTP/1.1 with hyper. Probes are functions the daemon supplies: they answer whether it is
//! alive and ready, and why not. A daemon may add read-only JSON queries (`/debug/...`) that
//! `tetherctl` reads through the API server's node proxy.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;

/// A probe's answer: Ok, or the reason it fails (the response body).
pub type ProbeResult = Result<(), String>;

/// What the endpoint serves.
pub struct Endpoints {
    pub registry: Arc<Mutex<Registry>>,
    pub healthz: Box<dyn Fn() -> ProbeResult + Send + Sync>,
    pub readyz: Box<dyn Fn() -> ProbeResult + Send + Sync>,
    pub queries: Vec<Query>,
}

/// Answers a query string with a JSON document, or says why it cannot.
pub type Answer = Box<dyn Fn(&str) -> Result<String, String> + Send + Sync>;

/// A read-only JSON endpoint: `GET <path>?<query string>` answers `answer(query string)`: a JSON
/// document (200), or why the question cannot be answered (400, text).
pub struct Query {
    pub path: &'static str,
    pub answer: Answer,
}

pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

/// Serves until the task is dropped. A connection that sends nothing is closed after 10 s.
pub async fn serve(listener: TcpListener, endpoints: Arc<Endpoints>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let endpoints = endpoints.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let endpoints = endpoints.clone();
                async move { Ok::<_, Infallible>(answer(&endpoints, &req)) }
            });
            let connection = hyper::server::conn::http1::Builder::new()
                .header_read_timeout(Duration::from_secs(10))
                .timer(hyper_util::rt::TokioTimer::new())
                .serve_connection(TokioIo::new(stream), service);
            let _ = connection.await;
        });
    }
}

fn answer(endpoints: &Endpoints, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "GET only\n".into());
    }
    match req.uri().path() {
        "/metrics" => {
            let mut body = String::new();
            let encoded = endpoints
                .registry
                .lock()
                .map_err(|_| std::fmt::Error)
                .and_then(|r| prometheus_client::encoding::text::encode(&mut body, &r));
            match encoded {
                Ok(()) => Response::builder()
                    .header(
                        "Content-Type",
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    )
                    .body(Full::new(Bytes::from(body)))
                    .unwrap_or_default(),
                Err(_) => text(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "encoding failed\n".into(),
                ),
            }
        }
        "/healthz" => probe(&endpoints.healthz),
        "/readyz" => probe(&endpoints.readyz),
        path => match endpoints.queries.iter().find(|q| q.path == path) {
            Some(query) => match (query.answer)(req.uri().query().unwrap_or_default()) {
                Ok(json) => Response::builder()
                    .header("Content-Type", "application/json")
                    .body(Full::new(Bytes::from(json)))
                    .unwrap_or_default(),
                Err(why) => text(StatusCode::BAD_REQUEST, format!("{why}\n")),
            },
            None => text(StatusCode::NOT_FOUND, "not found\n".into()),
        },
    }
}

fn probe(check: &(dyn Fn() -> ProbeResult + Send + Sync)) -> Response<Full<Bytes>> {
    match check() {
        Ok(()) => text(StatusCode::OK, "ok\n".into()),
        Err(why) => text(StatusCode::SERVICE_UNAVAILABLE, format!("{why}\n")),
    }
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header("Content-Type", "text/plain; charset=utf-8")
        .body(Full::new(Bytes::from(body)))
        .unwrap_or_default()
}

/// Latency buckets in seconds from 100 µs to about 50 s, for operations that are usually fast.
pub fn latency_buckets() -> impl Iterator<Item = f64> {
    prometheus_client::metrics::histogram::exponential_buckets(0.0001, 2.0, 20)
}
