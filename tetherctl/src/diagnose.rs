//! `tetherctl diagnose POD [POD2]`: why one pod cannot reach another. Each pod's address and
//! attachment on its node, the kernel's route (and VXLAN entries) from each node to the other
//! pod, the MTU along the way, what the NetworkPolicies say for the port, and the Services and
//! hostPorts that lead to the second pod; then every problem found, in words to act on.

use std::collections::BTreeMap;
use std::net::IpAddr;

use k8s_openapi::api::core::v1::{Node, Pod, Service};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde::Serialize;
use serde_json::Value;
use tether_netpol::model::{self, Direction, Judgement, PodInfo, Protocol};

use crate::cluster::{Cluster, Reply};
use crate::error::CtlError;
use crate::status::{self, OVERLAY_PORT, UNDERLAY_ANNOTATION};

/// A pod as `namespace/name`, or `name` in the default namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodRef {
    pub namespace: String,
    pub name: String,
}

impl PodRef {
    pub fn parse(text: &str, namespace: &str) -> PodRef {
        match text.split_once('/') {
            Some((ns, name)) => PodRef {
                namespace: ns.to_string(),
                name: name.to_string(),
            },
            None => PodRef {
                namespace: namespace.to_string(),
                name: text.to_string(),
            },
        }
    }
}

impl std::fmt::Display for PodRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PodView {
    pub pod: String,
    pub node: String,
    pub ips: Vec<IpAddr>,
    pub phase: String,
    pub host_network: bool,
}

/// What one node's kernel does with packets to one address.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Hop {
    pub node: String,
    pub to: IpAddr,
    /// What the hop is for: "attachment of <pod>", "to <pod>", "replies to <pod>".
    pub purpose: String,
    /// The kernel's answer (`/debug/path` of tether-overlayd), or why there is none.
    pub kernel: Result<Value, String>,
    pub summary: String,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PolicyView {
    pub protocol: String,
    pub port: u16,
    pub egress: String,
    pub ingress: String,
    pub allowed: bool,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Diagnosis {
    pub pods: Vec<PodView>,
    pub path: Vec<Hop>,
    /// Policies that isolate each pod: (pod, direction, policies).
    pub isolation: Vec<(String, String, Vec<String>)>,
    pub policy: Vec<PolicyView>,
    /// Services and hostPorts that lead to the second pod.
    pub ways_in: Vec<String>,
    pub problems: Vec<String>,
}

/// What the caller asked about.
pub struct Question {
    pub from: PodRef,
    pub to: Option<PodRef>,
    /// (protocol, port); none: the receiving pod's declared ports.
    pub port: Option<(Protocol, u16)>,
}

pub async fn diagnose(cluster: &Cluster, question: &Question) -> Result<Diagnosis, CtlError> {
    let from = cluster
        .pod(&question.from.namespace, &question.from.name)
        .await?;
    let to = match &question.to {
        Some(r) => Some(cluster.pod(&r.namespace, &r.name).await?),
        None => None,
    };
    let nodes = cluster.nodes().await?;
    let mut d = Diagnosis {
        pods: Vec::new(),
        path: Vec::new(),
        isolation: Vec::new(),
        policy: Vec::new(),
        ways_in: Vec::new(),
        problems: Vec::new(),
    };
    let pods: Vec<&Pod> = std::iter::once(&from).chain(to.as_ref()).collect();
    for pod in &pods {
        let view = view_of(pod);
        d.problems.extend(pod_problems(&view));
        d.pods.push(view);
    }
    // The nodes involved: their own problems (the overlay or policy agent not ready, ...).
    let mut seen = Vec::new();
    for view in &d.pods {
        if view.node.is_empty() || seen.contains(&view.node) {
            continue;
        }
        seen.push(view.node.clone());
        if let Some(node) = nodes
            .iter()
            .find(|n| n.metadata.name.as_deref() == Some(&view.node))
        {
            let node_status = status::node_status(cluster, node, &[]).await;
            d.problems.extend(status::problems_of(&node_status));
        }
    }
    for view in d.pods.clone() {
        attachment(cluster, &view, &mut d).await;
    }
    if let [a, b] = &d.pods[..] {
        let (a, b) = (a.clone(), b.clone());
        path_between(cluster, &nodes, &a, &b, "to", &mut d).await;
        path_between(cluster, &nodes, &b, &a, "replies to", &mut d).await;
    }
    policies(cluster, &pods, question.port, &mut d).await?;
    if let Some(to) = &to {
        d.ways_in = ways_in(cluster, to, &nodes).await?;
    }
    Ok(d)
}

fn view_of(pod: &Pod) -> PodView {
    let spec = pod.spec.clone().unwrap_or_default();
    let status = pod.status.clone().unwrap_or_default();
    PodView {
        pod: format!(
            "{}/{}",
            pod.metadata.namespace.as_deref().unwrap_or("default"),
            pod.metadata.name.as_deref().unwrap_or_default()
        ),
        node: spec.node_name.unwrap_or_default(),
        ips: status
            .pod_ips
            .into_iter()
            .flatten()
            .filter_map(|ip| ip.ip.parse().ok())
            .collect(),
        phase: status.phase.unwrap_or_else(|| "Unknown".into()),
        host_network: spec.host_network.unwrap_or(false),
    }
}

fn pod_problems(view: &PodView) -> Vec<String> {
    let mut out = Vec::new();
    if view.node.is_empty() {
        out.push(format!("{} is not scheduled to a node yet", view.pod));
    } else if view.ips.is_empty() {
        out.push(format!(
            "{} has no address yet (phase {}): see `kubectl describe pod` for the CNI ADD's error",
            view.pod, view.phase
        ));
    }
    if view.phase != "Running" && !view.ips.is_empty() {
        out.push(format!("{} is {}, not Running", view.pod, view.phase));
    }
    out
}

async fn ask_path(cluster: &Cluster, node: &str, to: IpAddr) -> Result<Value, String> {
    match cluster
        .node_endpoint(node, OVERLAY_PORT, &format!("debug/path?to={to}"))
        .await
    {
        Reply::Answered { code: 200, body } => {
            serde_json::from_str(&body).map_err(|e| format!("tether-overlayd's answer: {e}"))
        }
        Reply::Answered { code, body } => {
            Err(format!("tether-overlayd on {node} answered {code}: {body}"))
        }
        Reply::Unreachable(why) => Err(format!("tether-overlayd on {node} does not answer: {why}")),
    }
}

/// The route the kernel chose, as `ip route` would show it.
fn best_match(kernel: &Value) -> String {
    if kernel["via"] == "none" {
        return "no route at all".into();
    }
    let gateway = kernel["route"]["gateway"]
        .as_str()
        .map(|g| format!(" via {g}"))
        .unwrap_or_default();
    format!(
        "{}{gateway} dev {}",
        kernel["route"]["dst"].as_str().unwrap_or("?"),
        kernel["link"]["name"].as_str().unwrap_or("?")
    )
}

fn link_mtu(kernel: &Value) -> Option<u64> {
    kernel["link"]["mtu"].as_u64()
}

/// The pod's own attachment on its node: a routed veth (or a bridge port) that is up.
async fn attachment(cluster: &Cluster, view: &PodView, d: &mut Diagnosis) {
    if view.host_network || view.node.is_empty() {
        return;
    }
    for ip in &view.ips {
        let kernel = ask_path(cluster, &view.node, *ip).await;
        let summary = match &kernel {
            Err(why) => why.clone(),
            Ok(k) => {
                let link = k["link"]["name"].as_str().unwrap_or("?");
                let mtu = link_mtu(k).unwrap_or(0);
                match k["via"].as_str().unwrap_or("none") {
                    "pod" => {
                        if k["link"]["up"] != true {
                            d.problems.push(format!(
                                "{}: {}'s host veth {link} is down",
                                view.node, view.pod
                            ));
                        }
                        if k["neighbour"].is_null() {
                            d.problems.push(format!(
                                "{}: no static neighbour entry for {ip} on {link}: the pod's attachment is incomplete; recreate the pod",
                                view.node
                            ));
                        }
                        format!("routed pod: host veth {link}, MTU {mtu}")
                    }
                    "bridge" if k["link"]["ports"].as_u64().unwrap_or(0) > 0 => format!(
                        "on bridge {link} (a bridge port: an earlier release's, or \"routed\": false), MTU {mtu}"
                    ),
                    _ => {
                        let best = best_match(k);
                        d.problems.push(format!(
                            "{}: no route to its own pod {} ({ip}; the kernel's best match is {best}): the pod's attachment is gone; recreate the pod",
                            view.node, view.pod
                        ));
                        format!("NO ATTACHMENT (best match: {best})")
                    }
                }
            }
        };
        d.path.push(Hop {
            node: view.node.clone(),
            to: *ip,
            purpose: format!("attachment of {}", view.pod),
            kernel,
            summary,
        });
    }
}

fn underlay_of(nodes: &[Node], name: &str) -> Option<IpAddr> {
    nodes
        .iter()
        .find(|n| n.metadata.name.as_deref() == Some(name))?
        .metadata
        .annotations
        .as_ref()?
        .get(UNDERLAY_ANNOTATION)?
        .parse()
        .ok()
}

/// The route from `a`'s node to `b`'s addresses (same family), and whether it leads to b's node.
async fn path_between(
    cluster: &Cluster,
    nodes: &[Node],
    a: &PodView,
    b: &PodView,
    purpose: &str,
    d: &mut Diagnosis,
) {
    if a.node.is_empty() || b.node.is_empty() || a.node == b.node {
        return;
    }
    let pod_mtu = pod_mtu(d, a);
    for ip in &b.ips {
        let kernel = ask_path(cluster, &a.node, *ip).await;
        let peer_underlay = underlay_of(nodes, &b.node);
        let summary = match &kernel {
            Err(why) => why.clone(),
            Ok(k) => {
                let via = k["via"].as_str().unwrap_or("none");
                let link = k["link"]["name"].as_str().unwrap_or("?");
                let path_mtu = link_mtu(k);
                let gateway: Option<IpAddr> =
                    k["route"]["gateway"].as_str().and_then(|g| g.parse().ok());
                let best = best_match(k);
                let text = match via {
                    "gateway" if gateway.is_some() && gateway == peer_underlay => format!(
                        "direct route via {} ({link}, MTU {})",
                        gateway.map(|g| g.to_string()).unwrap_or_default(),
                        path_mtu.unwrap_or(0)
                    ),
                    "vxlan" => {
                        let fdb_dst: Option<IpAddr> =
                            k["fdb"]["dst"].as_str().and_then(|g| g.parse().ok());
                        if k["neighbour"].is_null() || k["fdb"].is_null() {
                            d.problems.push(format!(
                                "{}: the VXLAN route to {ip} lacks its {} entry: the peer's entries were refused or removed (see `tetherctl status {}`)",
                                a.node,
                                if k["neighbour"].is_null() { "neighbour" } else { "FDB" },
                                a.node
                            ));
                        } else if fdb_dst != peer_underlay {
                            d.problems.push(format!(
                                "{}: VXLAN frames for {ip} go to {} but {} publishes underlay address {}",
                                a.node,
                                fdb_dst.map(|g| g.to_string()).unwrap_or_default(),
                                b.node,
                                peer_underlay.map(|u| u.to_string()).unwrap_or_else(|| "none".into())
                            ));
                        }
                        format!(
                            "VXLAN via {link} to {} (MTU {})",
                            fdb_dst.map(|g| g.to_string()).unwrap_or_else(|| "?".into()),
                            path_mtu.unwrap_or(0)
                        )
                    }
                    _ => {
                        d.problems.push(format!(
                            "{}: no overlay route to {ip} ({}; the kernel's best match is {best}, not {}'s underlay address {}): see `tetherctl status {}` for a refused peer or a missing podCIDR",
                            a.node,
                            b.pod,
                            b.node,
                            peer_underlay.map(|u| u.to_string()).unwrap_or_else(|| "(none published)".into()),
                            a.node
                        ));
                        format!("NO OVERLAY ROUTE (best match: {best})")
                    }
                };
                // Through the tunnel a pod MTU above the device's is by design (TCP is clamped
                // to it, larger packets get ICMP "fragmentation needed"); on a direct route
                // nothing lowers it.
                if let (Some(pod), Some(path), false) = (pod_mtu, path_mtu, via == "vxlan") {
                    if pod > path {
                        d.problems.push(format!(
                            "{}: {}'s MTU is {pod} but the path to {} carries at most {path} (link {link}): larger packets are lost; set the underlay MTU to the path's, restart tether-overlayd and recreate the pods",
                            a.node, a.pod, b.node
                        ));
                    }
                }
                text
            }
        };
        d.path.push(Hop {
            node: a.node.clone(),
            to: *ip,
            purpose: format!("{purpose} {}", b.pod),
            kernel,
            summary,
        });
    }
}

/// The pod's MTU as its attachment shows it (the host veth's, which cni-bridge sets alike).
fn pod_mtu(d: &Diagnosis, view: &PodView) -> Option<u64> {
    d.path
        .iter()
        .filter(|h| h.purpose == format!("attachment of {}", view.pod))
        .find_map(|h| h.kernel.as_ref().ok().and_then(link_mtu))
}

async fn policies(
    cluster: &Cluster,
    pods: &[&Pod],
    port: Option<(Protocol, u16)>,
    d: &mut Diagnosis,
) -> Result<(), CtlError> {
    let mut world = model::Cluster::default();
    for pod in cluster.all_pods().await? {
        if let Some(info) = PodInfo::from_pod(&pod) {
            world
                .pods
                .insert((info.namespace.clone(), info.name.clone()), info);
        }
    }
    for ns in cluster.namespaces().await? {
        let name = ns.metadata.name.clone().unwrap_or_default();
        world
            .namespaces
            .insert(name, ns.metadata.labels.clone().unwrap_or_default());
    }
    for policy in cluster.network_policies().await? {
        let key = (
            policy.metadata.namespace.clone().unwrap_or_default(),
            policy.metadata.name.clone().unwrap_or_default(),
        );
        world.policies.insert(key, policy.into());
    }
    let infos: Vec<PodInfo> = pods.iter().filter_map(|p| PodInfo::from_pod(p)).collect();
    for info in &infos {
        for direction in [Direction::Ingress, Direction::Egress] {
            let by = world.isolating(info, direction);
            if !by.is_empty() {
                d.isolation.push((
                    format!("{}/{}", info.namespace, info.name),
                    format!("{direction:?}").to_lowercase(),
                    by,
                ));
            }
        }
    }
    let [src, dst] = &infos[..] else {
        return Ok(());
    };
    let (Some(src_ip), Some(dst_ip)) = (src.ips.first(), dst.ips.first()) else {
        return Ok(());
    };
    // The same family at both ends.
    let dst_ip = dst
        .ips
        .iter()
        .find(|ip| ip.is_ipv4() == src_ip.is_ipv4())
        .unwrap_or(dst_ip);
    let ports: Vec<(Protocol, u16)> = match port {
        Some(p) => vec![p],
        None => dst.ports.iter().map(|p| (p.protocol, p.port)).collect(),
    };
    let src_plan = world.plan(&src.node);
    let dst_plan = world.plan(&dst.node);
    for (protocol, number) in ports {
        let egress = model::judge(
            &src_plan,
            Direction::Egress,
            *src_ip,
            *dst_ip,
            protocol,
            number,
        );
        let ingress = model::judge(
            &dst_plan,
            Direction::Ingress,
            *src_ip,
            *dst_ip,
            protocol,
            number,
        );
        let words = |j: &Judgement, pod: &PodInfo, direction: Direction| match j {
            Judgement::NotIsolated => "not isolated: allowed".to_string(),
            Judgement::Allowed(rules) => format!("allowed by {}", rules.join(", ")),
            Judgement::Denied => format!(
                "DENIED: isolated by {} and no rule allows it",
                world.isolating(pod, direction).join(", ")
            ),
        };
        let proto = protocol.nft();
        if !egress.passes() {
            d.problems.push(format!(
                "NetworkPolicy: egress of {}/{} to {dst_ip} on {proto}/{number} is denied: isolated by {}, and no egress rule allows {}/{} on that port",
                src.namespace, src.name,
                world.isolating(src, Direction::Egress).join(", "),
                dst.namespace, dst.name
            ));
        }
        if !ingress.passes() {
            d.problems.push(format!(
                "NetworkPolicy: ingress of {}/{} from {src_ip} on {proto}/{number} is denied: isolated by {}, and no ingress rule allows {}/{} on that port",
                dst.namespace, dst.name,
                world.isolating(dst, Direction::Ingress).join(", "),
                src.namespace, src.name
            ));
        }
        d.policy.push(PolicyView {
            protocol: proto.to_string(),
            port: number,
            egress: words(&egress, src, Direction::Egress),
            ingress: words(&ingress, dst, Direction::Ingress),
            allowed: egress.passes() && ingress.passes(),
        });
    }
    Ok(())
}

/// Services whose selector picks `pod`, and the pod's hostPorts.
async fn ways_in(cluster: &Cluster, pod: &Pod, nodes: &[Node]) -> Result<Vec<String>, CtlError> {
    let namespace = pod.metadata.namespace.as_deref().unwrap_or("default");
    let labels = pod.metadata.labels.clone().unwrap_or_default();
    let spec = pod.spec.clone().unwrap_or_default();
    let named: BTreeMap<String, i32> = spec
        .containers
        .iter()
        .flat_map(|c| c.ports.iter().flatten())
        .filter_map(|p| Some((p.name.clone()?, p.container_port)))
        .collect();
    let mut out = Vec::new();
    for service in cluster.services(namespace).await? {
        if !selects(&service, &labels) {
            continue;
        }
        let name = service.metadata.name.clone().unwrap_or_default();
        let spec = service.spec.clone().unwrap_or_default();
        let address = spec.cluster_ip.clone().unwrap_or_else(|| "None".into());
        for port in spec.ports.iter().flatten() {
            let target = match &port.target_port {
                Some(IntOrString::Int(n)) => n.to_string(),
                Some(IntOrString::String(n)) => match named.get(n) {
                    Some(number) => format!("{number} ({n})"),
                    None => format!("{n} (NO container port of that name)"),
                },
                None => port.port.to_string(),
            };
            out.push(format!(
                "Service {namespace}/{name} {address}:{}/{} -> {target}",
                port.port,
                port.protocol.as_deref().unwrap_or("TCP")
            ));
        }
    }
    let node = spec.node_name.clone().unwrap_or_default();
    let node_ip = nodes
        .iter()
        .find(|n| n.metadata.name.as_deref() == Some(&node))
        .and_then(status::internal_ip)
        .unwrap_or_else(|| node.clone());
    for port in spec
        .containers
        .iter()
        .flat_map(|c| c.ports.iter().flatten())
    {
        if let Some(host_port) = port.host_port {
            let address = port.host_ip.clone().unwrap_or_else(|| node_ip.clone());
            out.push(format!(
                "hostPort {address}:{host_port}/{} -> {}",
                port.protocol.as_deref().unwrap_or("TCP"),
                port.container_port
            ));
        }
    }
    Ok(out)
}

fn selects(service: &Service, labels: &BTreeMap<String, String>) -> bool {
    service
        .spec
        .as_ref()
        .and_then(|s| s.selector.as_ref())
        .is_some_and(|selector| {
            !selector.is_empty() && selector.iter().all(|(k, v)| labels.get(k) == Some(v))
        })
}

/// The diagnosis as text, as `tetherctl diagnose` prints it.
pub fn render(d: &Diagnosis) -> String {
    let mut out = String::from("PODS\n");
    for p in &d.pods {
        let ips: Vec<String> = p.ips.iter().map(IpAddr::to_string).collect();
        out.push_str(&format!(
            "  {}  node {}  {}  {}{}\n",
            p.pod,
            if p.node.is_empty() { "-" } else { &p.node },
            if ips.is_empty() {
                "-".into()
            } else {
                ips.join(",")
            },
            p.phase,
            if p.host_network {
                "  (host network)"
            } else {
                ""
            }
        ));
    }
    out.push_str("\nPATH (each node's kernel, now)\n");
    for h in &d.path {
        out.push_str(&format!(
            "  {}: {} ({}): {}\n",
            h.node, h.purpose, h.to, h.summary
        ));
    }
    if !d.isolation.is_empty() {
        out.push_str("\nNETWORK POLICIES\n");
        for (pod, direction, by) in &d.isolation {
            out.push_str(&format!(
                "  {pod}: {direction} isolated by {}\n",
                by.join(", ")
            ));
        }
    }
    for p in &d.policy {
        out.push_str(&format!(
            "  {}/{}: egress {}; ingress {}\n",
            p.protocol, p.port, p.egress, p.ingress
        ));
    }
    if !d.ways_in.is_empty() {
        out.push_str("\nWAYS IN\n");
        for w in &d.ways_in {
            out.push_str(&format!("  {w}\n"));
        }
    }
    if d.problems.is_empty() {
        out.push_str("\nno problems found\n");
    } else {
        out.push_str(&format!("\n{} problem(s):\n", d.problems.len()));
        for p in &d.problems {
            out.push_str(&format!("  - {p}\n"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pod_is_namespace_slash_name_or_a_name_in_the_given_namespace() {
        assert_eq!(
            PodRef::parse("web/a", "default"),
            PodRef {
                namespace: "web".into(),
                name: "a".into()
            }
        );
        assert_eq!(PodRef::parse("a", "team").to_string(), "team/a");
    }
}
