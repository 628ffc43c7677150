//! Health and Prometheus metrics over plain HTTP.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

#[derive(Debug)]
pub struct Metrics {
    pub entries: AtomicU64,
    pub peers: AtomicU64,
    pub reconciles: AtomicU64,
    pub reconcile_errors: AtomicU64,
    pub last_reconcile_micros: AtomicU64,
    pub datastore_errors: AtomicU64,
    last_success: std::sync::Mutex<Option<Instant>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            entries: AtomicU64::new(0),
            peers: AtomicU64::new(0),
            reconciles: AtomicU64::new(0),
            reconcile_errors: AtomicU64::new(0),
            last_reconcile_micros: AtomicU64::new(0),
            datastore_errors: AtomicU64::new(0),
            last_success: std::sync::Mutex::new(None),
        }
    }
}

impl Metrics {
    pub fn reconciled(&self, took: Duration, entries: usize, peers: usize) {
        self.reconciles.fetch_add(1, Ordering::Relaxed);
        self.last_reconcile_micros
            .store(took.as_micros() as u64, Ordering::Relaxed);
        self.entries.store(entries as u64, Ordering::Relaxed);
        self.peers.store(peers as u64, Ordering::Relaxed);
        if let Ok(mut last) = self.last_success.lock() {
            *last = Some(Instant::now());
        }
    }

    /// Healthy once a reconciliation succeeded within `window`.
    pub fn healthy(&self, window: Duration) -> bool {
        self.last_success
            .lock()
            .ok()
            .and_then(|l| *l)
            .is_some_and(|t| t.elapsed() < window)
    }

    fn render(&self) -> String {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        format!(
            "# HELP tether_overlay_entries Kernel entries (neighbour, FDB, route) programmed for other nodes.\n\
             # TYPE tether_overlay_entries gauge\ntether_overlay_entries {}\n\
             # HELP tether_overlay_peers Other nodes known from the datastore.\n\
             # TYPE tether_overlay_peers gauge\ntether_overlay_peers {}\n\
             # HELP tether_overlay_reconciles_total Reconciliations run.\n\
             # TYPE tether_overlay_reconciles_total counter\ntether_overlay_reconciles_total {}\n\
             # HELP tether_overlay_reconcile_errors_total Reconciliations that failed.\n\
             # TYPE tether_overlay_reconcile_errors_total counter\ntether_overlay_reconcile_errors_total {}\n\
             # HELP tether_overlay_reconcile_duration_seconds Duration of the last reconciliation.\n\
             # TYPE tether_overlay_reconcile_duration_seconds gauge\ntether_overlay_reconcile_duration_seconds {:.6}\n\
             # HELP tether_overlay_datastore_errors_total Failed datastore operations.\n\
             # TYPE tether_overlay_datastore_errors_total counter\ntether_overlay_datastore_errors_total {}\n",
            g(&self.entries),
            g(&self.peers),
            g(&self.reconciles),
            g(&self.reconcile_errors),
            g(&self.last_reconcile_micros) as f64 / 1e6,
            g(&self.datastore_errors),
        )
    }
}

/// Serves `/healthz` (200 once reconciled within `window`, else 503) and `/metrics`.
pub async fn serve(listener: TcpListener, metrics: Arc<Metrics>, window: Duration) {
    loop {
        let Ok((mut conn, _)) = listener.accept().await else {
            continue;
        };
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let mut buf = [0u8; 1024];
            let n = match tokio::time::timeout(Duration::from_secs(5), conn.read(&mut buf)).await {
                Ok(Ok(n)) => n,
                _ => return,
            };
            let request = String::from_utf8_lossy(&buf[..n]);
            let path = request.split_whitespace().nth(1).unwrap_or("/");
            let (status, body) = match path {
                "/metrics" => ("200 OK", metrics.render()),
                "/healthz" | "/readyz" if metrics.healthy(window) => ("200 OK", "ok\n".to_string()),
                "/healthz" | "/readyz" => (
                    "503 Service Unavailable",
                    "not reconciled recently\n".to_string(),
                ),
                _ => ("404 Not Found", "not found\n".to_string()),
            };
            let response = format!(
                "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = conn.write_all(response.as_bytes()).await;
        });
    }
}

pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}
