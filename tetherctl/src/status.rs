//! `tetherctl status`: every node (or one) as the Kubernetes API and Tether's agents see it,
//! and the problems found, each in words an operator can act on.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::{Node, PersistentVolume, Pod};
use serde::Serialize;

use crate::cluster::{Cluster, Reply};
use crate::error::CtlError;
use crate::prom;

/// tether-overlayd's and tether-netpol's HTTP ports (host network, every node).
pub const OVERLAY_PORT: u16 = 9402;
pub const NETPOL_PORT: u16 = 9403;
const NAMESPACE: &str = "tether-system";
const CSI_DRIVER: &str = "nfs.tether.dev";
pub const UNDERLAY_ANNOTATION: &str = "overlay.tether.dev/underlay-ip";

/// How an agent answered its readiness probe.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case", tag = "state", content = "why")]
pub enum Agent {
    Ready,
    NotReady(String),
    Unreachable(String),
}

impl Agent {
    fn word(&self) -> &'static str {
        match self {
            Agent::Ready => "ready",
            Agent::NotReady(_) => "NOT READY",
            Agent::Unreachable(_) => "UNREACHABLE",
        }
    }
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeStatus {
    pub name: String,
    pub ready: bool,
    pub network_available: bool,
    pub pod_cidrs: Vec<String>,
    /// The underlay address tether-overlayd published.
    pub underlay: Option<String>,
    pub overlay: Agent,
    pub peers: Option<u64>,
    pub direct_routes: Option<u64>,
    pub vxlan_routes: Option<u64>,
    pub refused_entries: Option<u64>,
    pub dnat_dropping_ports: Option<u64>,
    /// br_netfilter's bridge-nf-call-iptables (-1: absent).
    pub bridge_nf_call_iptables: Option<i64>,
    /// None when tether-overlayd does not manage the conflist.
    pub conflist_installed: Option<bool>,
    pub network_policy: Agent,
    pub policies: Option<u64>,
    pub policy_rules: Option<u64>,
    /// Whether this node's tether-csi-node pod is ready (None: no CSI node pods at all).
    pub csi_node_ready: Option<bool>,
    /// Tether volumes in use by this node's pods.
    pub volumes: Option<usize>,
    /// Why a container of this node's tether-overlay pod is not running (crash loop, its
    /// last words).
    pub agent_pod: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Status {
    pub healthy: bool,
    pub nodes: Vec<NodeStatus>,
    /// tether-csi controller pods: name and whether ready.
    pub csi_controllers: Vec<(String, bool)>,
    pub problems: Vec<String>,
}

fn pod_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

fn condition(node: &Node, kind: &str) -> Option<String> {
    node.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == kind)
        .map(|c| c.status.clone())
}

/// The Node's InternalIP, as kubelet reports it.
pub fn internal_ip(node: &Node) -> Option<String> {
    node.status
        .as_ref()?
        .addresses
        .as_ref()?
        .iter()
        .find(|a| a.type_ == "InternalIP")
        .map(|a| a.address.clone())
}

/// The message of a Kubernetes `Status` object, when `body` is one.
pub fn api_status_message(body: &str) -> Option<String> {
    let value: serde_json::Value = serde_json::from_str(body).ok()?;
    (value["kind"] == "Status").then(|| value["message"].as_str().unwrap_or(body).to_string())
}

/// An agent's readiness and metrics through the node proxy.
async fn agent(cluster: &Cluster, node: &str, port: u16) -> (Agent, Option<String>) {
    let ready = match cluster.node_endpoint(node, port, "readyz").await {
        Reply::Answered { code: 200, .. } => Agent::Ready,
        // The API server's own answer (a Status object): the agent was not reached at all.
        Reply::Answered { body, .. } if api_status_message(&body).is_some() => {
            Agent::Unreachable(api_status_message(&body).unwrap_or_default())
        }
        Reply::Answered { code, body } if (500..600).contains(&code) && !body.is_empty() => {
            Agent::NotReady(body)
        }
        Reply::Answered { code, body } => {
            Agent::Unreachable(format!("port {port} answered {code}: {body}"))
        }
        Reply::Unreachable(why) => Agent::Unreachable(why),
    };
    let metrics = match cluster.node_endpoint(node, port, "metrics").await {
        Reply::Answered { code: 200, body } => Some(body),
        _ => None,
    };
    (ready, metrics)
}

pub async fn node_status(cluster: &Cluster, node: &Node, csi_nodes: &[Pod]) -> NodeStatus {
    let name = node.metadata.name.clone().unwrap_or_default();
    let (overlay, overlay_metrics) = agent(cluster, &name, OVERLAY_PORT).await;
    let (network_policy, netpol_metrics) = agent(cluster, &name, NETPOL_PORT).await;
    let from = |text: &Option<String>, metric: &str| {
        text.as_deref()
            .and_then(|t| prom::value(t, metric))
            .map(|v| v as u64)
    };
    let spec = node.spec.clone().unwrap_or_default();
    NodeStatus {
        ready: condition(node, "Ready").as_deref() == Some("True"),
        network_available: condition(node, "NetworkUnavailable").as_deref() != Some("True"),
        pod_cidrs: spec
            .pod_cidrs
            .or_else(|| spec.pod_cidr.map(|c| vec![c]))
            .unwrap_or_default(),
        underlay: node
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(UNDERLAY_ANNOTATION).cloned()),
        peers: from(&overlay_metrics, "tether_overlay_peers"),
        direct_routes: from(&overlay_metrics, "tether_overlay_direct_routes"),
        vxlan_routes: from(&overlay_metrics, "tether_overlay_vxlan_routes"),
        refused_entries: from(&overlay_metrics, "tether_overlay_entry_errors"),
        dnat_dropping_ports: from(&overlay_metrics, "tether_overlay_dnat_dropping_ports"),
        bridge_nf_call_iptables: overlay_metrics
            .as_deref()
            .and_then(|t| prom::value(t, "tether_overlay_bridge_nf_call_iptables"))
            .map(|v| v as i64),
        conflist_installed: overlay_metrics
            .as_deref()
            .and_then(|t| prom::value(t, "tether_overlay_conflist_installed"))
            .filter(|v| *v >= 0.0)
            .map(|v| v > 0.0),
        policies: from(&netpol_metrics, "tether_netpol_policies"),
        policy_rules: from(&netpol_metrics, "tether_netpol_rules"),
        csi_node_ready: (!csi_nodes.is_empty()).then(|| {
            csi_nodes.iter().any(|p| {
                p.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(name.as_str())
                    && pod_ready(p)
            })
        }),
        volumes: None,
        agent_pod: Vec::new(),
        overlay,
        network_policy,
        name,
    }
}

/// What is wrong with one node, in words an operator can act on.
pub fn problems_of(n: &NodeStatus) -> Vec<String> {
    let mut out = Vec::new();
    let name = &n.name;
    if !n.ready {
        out.push(format!("{name}: the Node is not Ready"));
    }
    if !n.network_available {
        out.push(format!(
            "{name}: NetworkUnavailable is True: tether-overlayd has not set the node up yet"
        ));
    }
    if n.pod_cidrs.is_empty() {
        out.push(format!(
            "{name}: no podCIDR: the controller manager allocates none (--allocate-node-cidrs) or the cluster CIDR is exhausted"
        ));
    }
    match &n.overlay {
        Agent::Ready => {}
        Agent::NotReady(why) => out.push(format!("{name}: tether-overlayd is not ready: {why}")),
        Agent::Unreachable(why) => {
            out.push(format!("{name}: tether-overlayd does not answer: {why}"))
        }
    }
    if let Some(refused) = n.refused_entries.filter(|r| *r > 0) {
        out.push(format!(
            "{name}: the kernel refused {refused} overlay entries (the peers' Nodes carry Warning Events: TetherOverlayEntryRefused)"
        ));
    }
    if let Some(ports) = n.dnat_dropping_ports.filter(|p| *p > 0) {
        out.push(format!(
            "{name}: {ports} pods on isolated bridge ports (an earlier release's) lose same-node Service and hostPort traffic: recreate them"
        ));
    }
    if n.conflist_installed == Some(false) && n.overlay == Agent::Ready {
        out.push(format!("{name}: the CNI conflist is not installed"));
    }
    match &n.network_policy {
        Agent::Ready => {}
        Agent::NotReady(why) => out.push(format!("{name}: tether-netpol is not ready: {why}")),
        Agent::Unreachable(why) => {
            out.push(format!("{name}: tether-netpol does not answer: {why}"))
        }
    }
    for why in &n.agent_pod {
        out.push(format!("{name}: {why}"));
    }
    if n.csi_node_ready == Some(false) {
        out.push(format!(
            "{name}: its tether-csi-node pod is missing or not ready"
        ));
    }
    out
}

/// The status of every node, or of `only`.
pub async fn collect(cluster: &Cluster, only: Option<&str>) -> Result<Status, CtlError> {
    let mut nodes = cluster.nodes().await?;
    if let Some(name) = only {
        nodes.retain(|n| n.metadata.name.as_deref() == Some(name));
        if nodes.is_empty() {
            return Err(CtlError::NoSuchNode(name.to_string()));
        }
    }
    let csi_nodes = cluster.pods(NAMESPACE, "tether-csi-node").await?;
    let controllers = cluster.pods(NAMESPACE, "tether-csi-controller").await?;
    let agents = cluster.pods(NAMESPACE, "tether-overlay").await?;
    let all_pods = cluster.all_pods().await?;
    let in_use = volumes_per_node(&all_pods, &cluster.persistent_volumes().await?);
    let mut statuses = Vec::new();
    for node in &nodes {
        let mut status = node_status(cluster, node, &csi_nodes).await;
        status.volumes = Some(in_use.get(&status.name).map_or(0, BTreeSet::len));
        status.agent_pod = agents
            .iter()
            .filter(|p| p.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(&status.name))
            .flat_map(containers_not_running)
            .collect();
        statuses.push(status);
    }
    let mut problems: Vec<String> = statuses.iter().flat_map(problems_of).collect();
    let csi_controllers: Vec<(String, bool)> = controllers
        .iter()
        .map(|p| (p.metadata.name.clone().unwrap_or_default(), pod_ready(p)))
        .collect();
    if !csi_controllers.is_empty() && !csi_controllers.iter().any(|(_, ready)| *ready) {
        problems.push(
            "no tether-csi controller is ready: volumes cannot be made, expanded or snapshotted"
                .into(),
        );
    }
    Ok(Status {
        healthy: problems.is_empty(),
        nodes: statuses,
        csi_controllers,
        problems,
    })
}

/// Each node's Tether volumes in use: the PersistentVolumes of tether-csi that its pods' claims
/// are bound to.
fn volumes_per_node(
    pods: &[Pod],
    volumes: &[PersistentVolume],
) -> BTreeMap<String, BTreeSet<String>> {
    let ours: BTreeMap<(String, String), String> = volumes
        .iter()
        .filter_map(|v| {
            let spec = v.spec.as_ref()?;
            (spec.csi.as_ref()?.driver == CSI_DRIVER).then_some(())?;
            let claim = spec.claim_ref.as_ref()?;
            Some((
                (claim.namespace.clone()?, claim.name.clone()?),
                v.metadata.name.clone()?,
            ))
        })
        .collect();
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for pod in pods {
        let Some(spec) = pod.spec.as_ref() else {
            continue;
        };
        let (Some(node), Some(namespace)) = (&spec.node_name, &pod.metadata.namespace) else {
            continue;
        };
        for volume in spec.volumes.iter().flatten() {
            if let Some(claim) = &volume.persistent_volume_claim {
                if let Some(pv) = ours.get(&(namespace.clone(), claim.claim_name.clone())) {
                    out.entry(node.clone()).or_default().insert(pv.clone());
                }
            }
        }
    }
    out
}

/// Why the containers of an agent pod are not running: waiting (a crash loop, an image that
/// cannot be pulled) with the last termination's message.
fn containers_not_running(pod: &Pod) -> Vec<String> {
    let pod_name = pod.metadata.name.clone().unwrap_or_default();
    let statuses = pod
        .status
        .as_ref()
        .and_then(|s| s.container_statuses.clone())
        .unwrap_or_default();
    statuses
        .iter()
        .filter_map(|c| {
            let waiting = c.state.as_ref()?.waiting.as_ref()?;
            let reason = waiting.reason.clone().unwrap_or_else(|| "waiting".into());
            let last = c
                .last_state
                .as_ref()
                .and_then(|s| s.terminated.as_ref())
                .and_then(|t| t.message.clone())
                .map(|m| {
                    format!(
                        ": last exit: {}",
                        m.trim().lines().last().unwrap_or_default()
                    )
                })
                .unwrap_or_default();
            Some(format!(
                "container {} of {pod_name} is {reason} ({} restarts){last}",
                c.name, c.restart_count
            ))
        })
        .collect()
}

fn number<T: ToString>(v: Option<T>) -> String {
    v.map_or_else(|| "-".into(), |v| v.to_string())
}

/// The human table, then the problems.
pub fn render(status: &Status) -> String {
    let header = [
        "NODE", "READY", "OVERLAY", "UNDERLAY", "PEERS", "DIRECT", "VXLAN", "REFUSED", "BR_NF",
        "POLICY", "RULES", "CSI", "VOLUMES",
    ];
    let mut rows: Vec<Vec<String>> = vec![header.iter().map(|h| h.to_string()).collect()];
    for n in &status.nodes {
        rows.push(vec![
            n.name.clone(),
            if n.ready { "yes" } else { "NO" }.into(),
            n.overlay.word().into(),
            n.underlay.clone().unwrap_or_else(|| "-".into()),
            number(n.peers),
            number(n.direct_routes),
            number(n.vxlan_routes),
            number(n.refused_entries),
            match n.bridge_nf_call_iptables {
                Some(-1) => "absent".into(),
                other => number(other),
            },
            n.network_policy.word().into(),
            number(n.policy_rules),
            match n.csi_node_ready {
                Some(true) => "ready".into(),
                Some(false) => "NOT READY".into(),
                None => "-".into(),
            },
            number(n.volumes),
        ]);
    }
    let widths: Vec<usize> = (0..header.len())
        .map(|i| rows.iter().map(|r| r[i].len()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for row in &rows {
        let cells: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    if !status.csi_controllers.is_empty() {
        let ready = status.csi_controllers.iter().filter(|(_, r)| *r).count();
        out.push_str(&format!(
            "\ntether-csi controller: {ready} of {} pods ready\n",
            status.csi_controllers.len()
        ));
    }
    if status.problems.is_empty() {
        out.push_str("\nno problems found\n");
    } else {
        out.push_str(&format!("\n{} problem(s):\n", status.problems.len()));
        for p in &status.problems {
            out.push_str(&format!("  - {p}\n"));
        }
    }
    out
}
