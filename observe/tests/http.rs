#![allow(clippy::unwrap_used)] // Tests fail loudly by design.

//! The endpoint as a probe or a scraper sees it, over real TCP.

use std::io::{Read, Write};
use std::sync::{Arc, Mutex};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::registry::Registry;
use tether_observe::http::{bind, serve, Endpoints, Query};

fn get(addr: std::net::SocketAddr, request: &str) -> String {
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream.write_all(request.as_bytes()).unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    answer
}

#[test]
fn metrics_and_probes_over_http_1_0_and_1_1() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let counter: Counter = Counter::default();
    counter.inc();
    let mut registry = Registry::default();
    registry.register("tether_test_things", "Things", counter);
    let endpoints = Arc::new(Endpoints {
        registry: Arc::new(Mutex::new(registry)),
        healthz: Box::new(|| Ok(())),
        readyz: Box::new(|| Err("2 kernel entries refused".into())),
        queries: vec![Query {
            path: "/debug/echo",
            answer: Box::new(|query| match query {
                "" => Err("ask something".into()),
                q => Ok(format!("{{\"asked\":\"{q}\"}}")),
            }),
        }],
    });
    let listener = runtime
        .block_on(bind("127.0.0.1:0".parse().unwrap()))
        .unwrap();
    let addr = listener.local_addr().unwrap();
    runtime.spawn(serve(listener, endpoints));

    let health = get(addr, "GET /healthz HTTP/1.0\r\n\r\n");
    assert!(health.starts_with("HTTP/1.0 200"), "{health}");
    let ready = get(
        addr,
        "GET /readyz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    assert!(ready.starts_with("HTTP/1.1 503"), "{ready}");
    assert!(ready.ends_with("2 kernel entries refused\n"), "{ready}");
    let metrics = get(addr, "GET /metrics HTTP/1.0\r\n\r\n");
    assert!(metrics.contains("tether_test_things_total 1"), "{metrics}");
    assert!(metrics.contains("# EOF"), "{metrics}");
    let missing = get(
        addr,
        "GET /nope HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    assert!(missing.starts_with("HTTP/1.1 404"), "{missing}");
    let query = get(addr, "GET /debug/echo?to=10.0.0.1 HTTP/1.0\r\n\r\n");
    assert!(query.starts_with("HTTP/1.0 200"), "{query}");
    assert!(query.contains("application/json"), "{query}");
    assert!(query.ends_with("{\"asked\":\"to=10.0.0.1\"}"), "{query}");
    let unanswerable = get(addr, "GET /debug/echo HTTP/1.0\r\n\r\n");
    assert!(unanswerable.starts_with("HTTP/1.0 400"), "{unanswerable}");
    assert!(unanswerable.ends_with("ask something\n"), "{unanswerable}");
}
