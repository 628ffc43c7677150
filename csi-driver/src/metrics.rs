//! tether-csi's metrics (prometheus-client), served on `--metrics-addr` at `/metrics`: every RPC
//! by method and gRPC code with its latency, the RPCs in flight, every NFS call's latency by
//! operation, the background copies at work, and how snapshots, restores and clones got their
//! data (tether-nfs-agent's clones or copies over NFS).

use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use tether_observe::http::latency_buckets;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RpcLabels {
    pub method: &'static str,
    pub code: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MethodLabel {
    pub method: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HowLabel {
    /// How the data got there: `agent_reflink`, `agent_copy` (tether-nfs-agent) or `nfs_copy`.
    pub how: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct NfsLabel {
    pub operation: &'static str,
}

type Histograms<L> = Family<L, Histogram, fn() -> Histogram>;

fn histogram() -> Histogram {
    Histogram::new(latency_buckets())
}

pub struct Metrics {
    pub rpcs: Family<RpcLabels, Counter>,
    pub rpc_seconds: Histograms<MethodLabel>,
    pub in_flight: Family<MethodLabel, Gauge>,
    pub nfs_seconds: Histograms<NfsLabel>,
    pub copies: Gauge,
    pub fills: Family<HowLabel, Counter>,
    pub agent_clone_seconds: Histograms<HowLabel>,
}

/// The process's metrics (one set, recorded from wherever the work happens).
pub fn metrics() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(Metrics::new)
}

impl Metrics {
    fn new() -> Metrics {
        Metrics {
            rpcs: Family::default(),
            rpc_seconds: Family::new_with_constructor(histogram),
            in_flight: Family::default(),
            nfs_seconds: Family::new_with_constructor(histogram),
            copies: Gauge::default(),
            fills: Family::default(),
            agent_clone_seconds: Family::new_with_constructor(histogram),
        }
    }

    pub fn registry(&self) -> Arc<Mutex<Registry>> {
        let mut r = Registry::default();
        r.register(
            "tether_csi_rpcs",
            "CSI calls answered, by method and gRPC code",
            self.rpcs.clone(),
        );
        r.register(
            "tether_csi_rpc_duration_seconds",
            "Duration of CSI calls, by method",
            self.rpc_seconds.clone(),
        );
        r.register(
            "tether_csi_rpcs_in_flight",
            "CSI calls being worked on, by method",
            self.in_flight.clone(),
        );
        r.register(
            "tether_csi_nfs_call_duration_seconds",
            "Duration of user-space NFS calls to the servers, by operation",
            self.nfs_seconds.clone(),
        );
        r.register(
            "tether_csi_copies",
            "Snapshot and clone copies running or queued",
            self.copies.clone(),
        );
        r.register(
            "tether_csi_fills",
            "Snapshots, restores and clones made, by how the data got there (agent_reflink, agent_copy, nfs_copy)",
            self.fills.clone(),
        );
        r.register(
            "tether_csi_agent_clone_duration_seconds",
            "Duration of tether-nfs-agent clones, by how (agent_reflink, agent_copy)",
            self.agent_clone_seconds.clone(),
        );
        Arc::new(Mutex::new(r))
    }

    /// A clone by tether-nfs-agent (`method`: the agent's METHOD_REFLINK or METHOD_COPY).
    pub fn agent_clone(&self, method: &str, took: Duration) {
        let how = if method == "METHOD_COPY" {
            "agent_copy"
        } else {
            "agent_reflink"
        };
        self.agent_clone_seconds
            .get_or_create(&HowLabel { how })
            .observe(took.as_secs_f64());
        self.fills.get_or_create(&HowLabel { how }).inc();
    }

    /// A copy over NFS (no agent).
    pub fn nfs_fill(&self) {
        self.fills
            .get_or_create(&HowLabel { how: "nfs_copy" })
            .inc();
    }

    pub fn nfs_call(&self, what: &str, took: Duration) {
        self.nfs_seconds
            .get_or_create(&NfsLabel {
                operation: operation(what),
            })
            .observe(took.as_secs_f64());
    }
}

/// A bounded operation name for an NFS call described as "looking up a/b", "creating x", ...
fn operation(what: &str) -> &'static str {
    const NAMES: [(&str, &str); 15] = [
        ("looking up", "lookup"),
        ("creating directory", "mkdir"),
        ("creating symlink", "symlink"),
        ("creating claim", "symlink"),
        ("creating", "create"),
        ("reading link", "readlink"),
        ("reading attributes", "getattr"),
        ("reading", "read"),
        ("writing", "write"),
        ("removing directory", "rmdir"),
        ("removing", "remove"),
        ("renaming", "rename"),
        ("listing", "readdir"),
        ("setting", "setattr"),
        ("linking", "link"),
    ];
    if what == "FSSTAT" {
        return "fsstat";
    }
    if what == "a NULL call" {
        return "null";
    }
    NAMES
        .iter()
        .find(|(prefix, _)| what.starts_with(prefix))
        .map_or("other", |(_, name)| name)
}

/// The sample names tether-csi exposes (for the checks of alerts and dashboards).
pub fn exposed_names() -> Vec<String> {
    // A family shows only once it has a sample: one of each, on metrics of their own.
    let example = Metrics::new();
    let method = MethodLabel { method: "Probe" };
    example
        .rpcs
        .get_or_create(&RpcLabels {
            method: "Probe",
            code: "Ok".into(),
        })
        .inc();
    example.rpc_seconds.get_or_create(&method).observe(0.0);
    example.in_flight.get_or_create(&method).set(0);
    example
        .nfs_seconds
        .get_or_create(&NfsLabel {
            operation: "lookup",
        })
        .observe(0.0);
    let registry = example.registry();
    let names = match registry.lock() {
        Ok(r) => tether_observe::names::exposed_names(&r),
        Err(poisoned) => tether_observe::names::exposed_names(&poisoned.into_inner()),
    };
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nfs_operations_have_few_names() {
        assert_eq!(operation("looking up .tether/volumes"), "lookup");
        assert_eq!(operation("creating directory pvc-1"), "mkdir");
        assert_eq!(operation("creating .tether/volumes/.x.tmp-1-2"), "create");
        assert_eq!(operation("reading attributes of x"), "getattr");
        assert_eq!(operation("FSSTAT"), "fsstat");
        assert_eq!(operation("closing x"), "other");
    }
}
