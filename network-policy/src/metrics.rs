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
        bridged_traffic_is_filtered()
    }

    pub fn endpoints(self: &Arc<Self>) -> Endpoints {
        let ready = self.clone();
        Endpoints {
            registry: Arc::new(Mutex::new(self.registry())),
            // Alive while the process runs: a failing write is retried, not a reason to restart.
            healthz: Box::new(|| Ok(())),
            readyz: Box::new(move || ready.probe()),
        }
    }
}

const BRIDGE_NF: [&str; 2] = [
    "/proc/sys/net/bridge/bridge-nf-call-iptables",
    "/proc/sys/net/bridge/bridge-nf-call-ip6tables",
];

/// Traffic between two pods on one bridge reaches the `inet` table only through br_netfilter;
/// without it, policies would not apply between pods of one node (a `bridge` family table is no
/// substitute: it has no connection tracking without nf_conntrack_bridge, so replies could not
/// be told from new connections).
pub fn bridged_traffic_is_filtered() -> Result<(), String> {
    for path in BRIDGE_NF {
        match cni_core::sysctl::get(path).as_deref() {
            Some("1") => {}
            Some(value) => {
                return Err(format!(
                    "{path} is {value}: traffic between pods of this node bypasses NetworkPolicies; set it to 1"
                ))
            }
            None => {
                return Err(format!(
                    "br_netfilter is not loaded ({path} is missing): traffic between pods of this node bypasses NetworkPolicies; modprobe br_netfilter"
                ))
            }
        }
    }
    Ok(())
}
