//! tether-overlayd's metrics (prometheus-client) and what its health and readiness probes say.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use tether_observe::http::{latency_buckets, Endpoints};

#[derive(Debug)]
pub struct Metrics {
    pub entries: Gauge,
    pub peers: Gauge,
    pub reconciles: Counter,
    pub reconcile_errors: Counter,
    pub entry_errors: Gauge,
    pub reconcile_duration: Histogram,
    pub datastore_errors: Counter,
    /// Isolated ports of cni0 while br_netfilter is on (see [`cni_core::same_node`]).
    pub dnat_dropping_ports: Gauge,
    /// When a reconciliation last ran to its end (Unix seconds).
    pub last_reconcile: Gauge,
    /// Routes to peer subnets: plain ones over the underlay, and over VXLAN.
    pub direct_routes: Gauge,
    pub vxlan_routes: Gauge,
    /// `bridge-nf-call-iptables`: 1 or 0, -1 when br_netfilter is absent.
    pub bridge_nf_call_iptables: Gauge,
    /// 1 once the conflist is in place (the node serves pods), 0 before, -1 when this daemon
    /// does not manage it.
    pub conflist_installed: Gauge,
    state: Mutex<Health>,
}

#[derive(Debug, Default)]
struct Health {
    /// When a reconciliation last ran to its end (with or without refused entries).
    last_run: Option<Instant>,
    /// The entries the kernel refused in that run, described.
    refused: Vec<String>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            entries: Gauge::default(),
            peers: Gauge::default(),
            reconciles: Counter::default(),
            reconcile_errors: Counter::default(),
            entry_errors: Gauge::default(),
            reconcile_duration: Histogram::new(latency_buckets()),
            datastore_errors: Counter::default(),
            dnat_dropping_ports: Gauge::default(),
            last_reconcile: Gauge::default(),
            direct_routes: Gauge::default(),
            vxlan_routes: Gauge::default(),
            bridge_nf_call_iptables: Gauge::default(),
            conflist_installed: Gauge::default(),
            state: Mutex::new(Health::default()),
        }
    }
}

impl Metrics {
    pub fn registry(self: &Arc<Self>) -> Registry {
        let mut r = Registry::default();
        r.register(
            "tether_overlay_entries",
            "Kernel entries (neighbour, FDB, route) programmed for other nodes",
            self.entries.clone(),
        );
        r.register(
            "tether_overlay_peers",
            "Other nodes known from the datastore",
            self.peers.clone(),
        );
        r.register(
            "tether_overlay_reconciles",
            "Reconciliations run",
            self.reconciles.clone(),
        );
        r.register(
            "tether_overlay_reconcile_errors",
            "Reconciliations in which an entry could not be applied",
            self.reconcile_errors.clone(),
        );
        r.register(
            "tether_overlay_entry_errors",
            "Kernel entries refused in the last reconciliation",
            self.entry_errors.clone(),
        );
        r.register(
            "tether_overlay_reconcile_duration_seconds",
            "Duration of reconciliations",
            self.reconcile_duration.clone(),
        );
        r.register(
            "tether_overlay_datastore_errors",
            "Failed datastore operations",
            self.datastore_errors.clone(),
        );
        r.register(
            "tether_overlay_last_reconcile_timestamp_seconds",
            "When a reconciliation last ran to its end (Unix time)",
            self.last_reconcile.clone(),
        );
        r.register(
            "tether_overlay_direct_routes",
            "Routes to other nodes' pod subnets over the underlay, without encapsulation",
            self.direct_routes.clone(),
        );
        r.register(
            "tether_overlay_vxlan_routes",
            "Routes to other nodes' pod subnets over VXLAN",
            self.vxlan_routes.clone(),
        );
        r.register(
            "tether_overlay_bridge_nf_call_iptables",
            "br_netfilter's bridge-nf-call-iptables on this node (-1: br_netfilter absent)",
            self.bridge_nf_call_iptables.clone(),
        );
        r.register(
            "tether_overlay_conflist_installed",
            "1 once the node's CNI conflist is in place, 0 before; -1: not managed by this daemon",
            self.conflist_installed.clone(),
        );
        r.register(
            "tether_overlay_dnat_dropping_ports",
            "Isolated cni0 ports (pods of an earlier release) while br_netfilter is on: their Service and hostPort connections to pods of the node are dropped",
            self.dnat_dropping_ports.clone(),
        );
        r
    }

    /// One reconciliation ran: `entries` applied for `peers` other nodes, `refused` failed.
    pub fn reconciled(&self, took: Duration, entries: usize, peers: usize, refused: Vec<String>) {
        self.reconciles.inc();
        self.reconcile_duration.observe(took.as_secs_f64());
        self.entries.set(entries as i64);
        self.peers.set(peers as i64);
        self.entry_errors.set(refused.len() as i64);
        if !refused.is_empty() {
            self.reconcile_errors.inc();
        }
        self.check_isolated_ports();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        self.last_reconcile.set(now);
        if let Ok(mut state) = self.state.lock() {
            state.last_run = Some(Instant::now());
            state.refused = refused;
        }
    }

    /// Counts pods whose same-node DNAT the kernel drops, warning when that changes. Not a
    /// readiness failure: those pods are broken already, and an unready daemon would stall the
    /// rolling update that brings routed pods.
    fn check_isolated_ports(&self) {
        let bridge_nf = cni_core::sysctl::get("/proc/sys/net/bridge/bridge-nf-call-iptables");
        self.bridge_nf_call_iptables
            .set(bridge_nf.map_or(-1, |v| i64::from(v.trim() == "1")));
        let dropped = cni_core::same_node::dnat_survives(crate::plugin::BRIDGE).err();
        let count = dropped.as_ref().map_or(0, |d| d.isolated_ports.names.len()) as i64;
        if self.dnat_dropping_ports.set(count) != count {
            if let Some(why) = dropped {
                tracing::warn!(%why, "pods of an earlier release lose same-node Service traffic");
            }
        }
    }

    /// Alive: a reconciliation ran to its end within `window`.
    pub fn healthy(&self, window: Duration) -> Result<(), String> {
        let state = self
            .state
            .lock()
            .map_err(|_| "state poisoned".to_string())?;
        match state.last_run {
            Some(at) if at.elapsed() < window => Ok(()),
            Some(at) => Err(format!("not reconciled for {:?}", at.elapsed())),
            None => Err("not reconciled yet".into()),
        }
    }

    /// Ready: alive, the kernel holds every entry the datastore asks for, and (with
    /// `br_netfilter`) bridged traffic passes the firewall hooks kube-proxy relies on.
    pub fn ready(&self, window: Duration, br_netfilter: bool) -> Result<(), String> {
        self.healthy(window)?;
        if br_netfilter {
            bridge_netfilter()?;
        }
        let state = self
            .state
            .lock()
            .map_err(|_| "state poisoned".to_string())?;
        match state.refused.as_slice() {
            [] => Ok(()),
            refused => Err(format!(
                "{} kernel entries refused: {}",
                refused.len(),
                refused
                    .iter()
                    .take(5)
                    .cloned()
                    .collect::<Vec<_>>()
                    .join("; ")
            )),
        }
    }

    pub fn endpoints(self: &Arc<Self>, window: Duration, br_netfilter: bool) -> Endpoints {
        let (alive, ready) = (self.clone(), self.clone());
        Endpoints {
            registry: Arc::new(Mutex::new(self.registry())),
            healthz: Box::new(move || alive.healthy(window)),
            readyz: Box::new(move || ready.ready(window, br_netfilter)),
            queries: Vec::new(),
        }
    }
}

/// kube-proxy (iptables, ipvs or nftables mode) sees traffic between two pods of the node only
/// if it passes the IP hooks: routed (cni-bridge's `routed`, the default here) or bridged and
/// handed over by br_netfilter.
fn bridge_netfilter() -> Result<(), String> {
    cni_core::same_node::reaches_ip_hooks(crate::plugin::BRIDGE).map_err(|bypass| {
        format!("{bypass}: Service traffic between those pods bypasses kube-proxy; recreate them as routed pods, set bridge-nf-call-iptables to 1, or run with --no-br-netfilter-check")
    })
}

/// The sample names tether-overlayd exposes (for the checks of alerts and dashboards).
pub fn exposed_names() -> Vec<String> {
    tether_observe::names::exposed_names(&Arc::new(Metrics::default()).registry())
}
