//! tether-netpol's metrics (prometheus-client) and its probes: alive once the first table is
//! written and while writes succeed; ready when the table matches the last view of the cluster.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use tether_observe::http::{latency_buckets, Endpoints};

#[derive(Debug)]
pub struct Metrics {
    pub rules: Gauge,
    pub sets: Gauge,
    pub elements: Gauge,
    pub policies: Gauge,
    pub writes: Counter,
    pub write_errors: Counter,
    pub problems: Gauge,
    /// From the first change of a burst to the table holding it.
    pub sync_duration: Histogram,
    state: Mutex<Option<Result<(), String>>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            rules: Gauge::default(),
            sets: Gauge::default(),
            elements: Gauge::default(),
            policies: Gauge::default(),
            writes: Counter::default(),
            write_errors: Counter::default(),
            problems: Gauge::default(),
            sync_duration: Histogram::new(latency_buckets()),
            state: Mutex::new(None),
        }
    }
}

impl Metrics {
    fn registry(&self) -> Registry {
        let mut r = Registry::default();
        r.register(
            "tether_netpol_rules",
            "nftables rules in the policy table",
            self.rules.clone(),
        );
        r.register(
            "tether_netpol_sets",
            "nftables sets in the policy table",
            self.sets.clone(),
        );
        r.register(
            "tether_netpol_set_elements",
            "Elements of those sets",
            self.elements.clone(),
        );
        r.register(
            "tether_netpol_policies",
            "NetworkPolicies known",
            self.policies.clone(),
        );
        r.register("tether_netpol_writes", "Table writes", self.writes.clone());
        r.register(
            "tether_netpol_write_errors",
            "Table writes that failed",
            self.write_errors.clone(),
        );
        r.register(
            "tether_netpol_policy_problems",
            "Parts of policies that cannot be enforced",
            self.problems.clone(),
        );
        r.register(
            "tether_netpol_sync_duration_seconds",
            "From a change reaching the agent to the table holding it",
            self.sync_duration.clone(),
        );
        r
    }

    pub fn written(&self, result: Result<(), String>, took: Duration) {
        self.writes.inc();
        if result.is_err() {
            self.write_errors.inc();
        } else {
            self.sync_duration.observe(took.as_secs_f64());
        }
        if let Ok(mut state) = self.state.lock() {
            *state = Some(result);
        }
    }

    fn probe(&self) -> Result<(), String> {
        match self
            .state
            .lock()
            .map_err(|_| "state poisoned".to_string())?
            .clone()
        {
            Some(result) => result?,
            None => return Err("no table written yet (waiting for the first lists)".into()),
        }
        Ok(())
    }

    /// The HTTP endpoints; ready also needs every pod of `bridge` policed.
    pub fn endpoints(self: &Arc<Self>, bridge: String) -> Endpoints {
        let ready = self.clone();
        Endpoints {
            registry: Arc::new(Mutex::new(self.registry())),
            // Alive while the process runs: a failing write is retried, not a reason to restart.
            healthz: Box::new(|| Ok(())),
            readyz: Box::new(move || ready.probe().and_then(|()| same_node_policed(&bridge))),
            queries: Vec::new(),
        }
    }
}

/// Ok when traffic between every two pods of `bridge` reaches the policy table.
pub fn same_node_policed(bridge: &str) -> Result<(), String> {
    cni_core::same_node::reaches_ip_hooks(bridge).map_err(|bypass| {
        format!("{bypass}: traffic between those pods bypasses NetworkPolicies; recreate them as routed pods (cni-bridge's routed, cni-overlay's default), or set bridge-nf-call-iptables to 1")
    })
}

/// The sample names tether-netpol exposes (for the checks of alerts and dashboards).
pub fn exposed_names() -> Vec<String> {
    tether_observe::names::exposed_names(&Metrics::default().registry())
}
