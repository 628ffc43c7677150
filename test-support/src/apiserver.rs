//! A stand-in for the Kubernetes API server, for testing Tether's controllers where no real API
//! server can run. It speaks the real wire protocol over HTTP/1.1 (so the components' own `kube`
//! clients are what is tested) for the resources Tether uses: Nodes (with their `status`
//! subresource), Namespaces, Pods (with `status`), Services, PersistentVolumes and their claims,
//! VolumeSnapshots and their contents, NetworkPolicies and Events.
//!
//! What it does as the real one does: GET, LIST (paged by `limit` and `continue`, with the
//! list's resourceVersion; see `fn list` for how pages differ), WATCH streams (ADDED, MODIFIED,
//! DELETED, resumable from a resourceVersion, ended by `timeoutSeconds`, BOOKMARK events when
//! asked for), `410 Gone` for a resourceVersion older than the retained history
//! ([`ApiServer::compact`]), JSON merge PATCH and strategic merge PATCH (lists of conditions
//! merged by `type`), a `status` subresource that is the only way to change `status`, POST
//! (with `generateName`), DELETE, label selectors (`=`, `!=`, `in`, `notin`, exists) on
//! LIST and WATCH, and `409 AlreadyExists`. Every write bumps the resourceVersion.
//!
//! What it does not do: authentication and authorization (every request is allowed; tests
//! check RBAC needs by reading [`ApiServer::requests`]), admission, defaulting and validation
//! of objects, field selectors, server-side apply, protobuf, and HTTP/2.
//!
//! It listens inside a network namespace (so that simulated nodes reach it over their underlay)
//! and can be taken "down" to simulate an API outage: connections are then dropped unanswered.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::Netns;

/// A resource the stand-in serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Resource {
    /// `""` for the core group.
    pub group: &'static str,
    pub version: &'static str,
    pub plural: &'static str,
    pub kind: &'static str,
    pub namespaced: bool,
    /// Whether `status` is changed only through the `status` subresource.
    pub status_subresource: bool,
}

pub const NODES: Resource = Resource {
    group: "",
    version: "v1",
    plural: "nodes",
    kind: "Node",
    namespaced: false,
    status_subresource: true,
};
pub const NAMESPACES: Resource = Resource {
    group: "",
    version: "v1",
    plural: "namespaces",
    kind: "Namespace",
    namespaced: false,
    status_subresource: true,
};
pub const PODS: Resource = Resource {
    group: "",
    version: "v1",
    plural: "pods",
    kind: "Pod",
    namespaced: true,
    status_subresource: true,
};
pub const SERVICES: Resource = Resource {
    group: "",
    version: "v1",
    plural: "services",
    kind: "Service",
    namespaced: true,
    status_subresource: true,
};
pub const PERSISTENT_VOLUMES: Resource = Resource {
    group: "",
    version: "v1",
    plural: "persistentvolumes",
    kind: "PersistentVolume",
    namespaced: false,
    status_subresource: true,
};
pub const PERSISTENT_VOLUME_CLAIMS: Resource = Resource {
    group: "",
    version: "v1",
    plural: "persistentvolumeclaims",
    kind: "PersistentVolumeClaim",
    namespaced: true,
    status_subresource: true,
};
pub const VOLUME_SNAPSHOTS: Resource = Resource {
    group: "snapshot.storage.k8s.io",
    version: "v1",
    plural: "volumesnapshots",
    kind: "VolumeSnapshot",
    namespaced: true,
    status_subresource: true,
};
pub const VOLUME_SNAPSHOT_CONTENTS: Resource = Resource {
    group: "snapshot.storage.k8s.io",
    version: "v1",
    plural: "volumesnapshotcontents",
    kind: "VolumeSnapshotContent",
    namespaced: false,
    status_subresource: true,
};
pub const NETWORK_POLICIES: Resource = Resource {
    group: "networking.k8s.io",
    version: "v1",
    plural: "networkpolicies",
    kind: "NetworkPolicy",
    namespaced: true,
    status_subresource: false,
};
pub const EVENTS: Resource = Resource {
    group: "",
    version: "v1",
    plural: "events",
    kind: "Event",
    namespaced: true,
    status_subresource: false,
};
pub const EVENTS_V1: Resource = Resource {
    group: "events.k8s.io",
    version: "v1",
    plural: "events",
    kind: "Event",
    namespaced: true,
    status_subresource: false,
};

const RESOURCES: [Resource; 11] = [
    NODES,
    NAMESPACES,
    PODS,
    SERVICES,
    PERSISTENT_VOLUMES,
    PERSISTENT_VOLUME_CLAIMS,
    VOLUME_SNAPSHOTS,
    VOLUME_SNAPSHOT_CONTENTS,
    NETWORK_POLICIES,
    EVENTS,
    EVENTS_V1,
];

impl Resource {
    fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.to_string()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    fn key(&self) -> (&'static str, &'static str) {
        (self.group, self.plural)
    }
}

/// (group, plural, namespace, name)
type Key = (&'static str, &'static str, String, String);

#[derive(Default)]
struct State {
    objects: BTreeMap<Key, Value>,
    revision: u64,
    /// Every change: (resourceVersion, group, plural, event type, object).
    history: Vec<(u64, &'static str, &'static str, &'static str, Value)>,
    /// The oldest resourceVersion a watch may resume from.
    compacted: u64,
    requests: Vec<String>,
    uid: u64,
}

struct Shared {
    state: Mutex<State>,
    changed: Condvar,
    down: AtomicBool,
    stopped: AtomicBool,
}

pub struct ApiServer {
    shared: Arc<Shared>,
    accept: Option<JoinHandle<()>>,
    pub url: String,
}

/// The name the overlay tests have always used.
pub type NodeApiServer = ApiServer;

impl ApiServer {
    /// Listens on `addr` (`ip:port`) inside `ns`.
    pub fn start_in(ns: &Netns, addr: &str) -> ApiServer {
        Self::start(Some(ns), addr)
    }

    /// Listens on `addr` in the test's own namespace (loopback).
    pub fn start_here(addr: &str) -> ApiServer {
        Self::start(None, addr)
    }

    fn start(ns: Option<&Netns>, addr: &str) -> ApiServer {
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            changed: Condvar::new(),
            down: AtomicBool::new(false),
            stopped: AtomicBool::new(false),
        });
        let netns = ns.map(|ns| std::fs::File::open(ns.path()).unwrap());
        let addr_owned = addr.to_string();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let accept_shared = shared.clone();
        let accept = std::thread::spawn(move || {
            // Network namespaces are per thread: this one moves, binds, and serves from there.
            if let Some(netns) = netns {
                let rc = unsafe { libc::setns(netns.as_raw_fd(), libc::CLONE_NEWNET) };
                assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
            }
            let listener = TcpListener::bind(&addr_owned).unwrap();
            listener.set_nonblocking(true).unwrap();
            ready_tx.send(listener.local_addr().unwrap()).unwrap();
            while !accept_shared.stopped.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((conn, _)) => {
                        let _ = conn.set_nonblocking(false);
                        let shared = accept_shared.clone();
                        std::thread::spawn(move || serve(conn, &shared));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        let bound = ready_rx.recv_timeout(Duration::from_secs(5)).unwrap();
        ApiServer {
            shared,
            accept: Some(accept),
            url: format!("http://{bound}"),
        }
    }

    /// A kubeconfig file pointing at this server.
    pub fn write_kubeconfig(&self, path: &std::path::Path) {
        let config = json!({
            "apiVersion": "v1", "kind": "Config", "current-context": "test",
            "clusters": [{"name": "test", "cluster": {"server": self.url}}],
            "users": [{"name": "test", "user": {"token": "test-token"}}],
            "contexts": [{"name": "test", "context": {"cluster": "test", "user": "test"}}],
        });
        std::fs::write(path, serde_json::to_vec_pretty(&config).unwrap()).unwrap();
    }

    // ---- generic access, as another client would write ----

    /// Creates (or replaces) an object; returns it as stored.
    pub fn put(&self, resource: Resource, object: Value) -> Value {
        let mut state = self.shared.state.lock().unwrap();
        let key = key_of(resource, &object);
        let kind = if state.objects.contains_key(&key) {
            "MODIFIED"
        } else {
            "ADDED"
        };
        let stored = write(&mut state, resource, key, kind, |_| Some(object)).unwrap();
        drop(state);
        self.shared.changed.notify_all();
        stored
    }

    /// Merge-patches an object (status included) as another client would.
    pub fn patch(&self, resource: Resource, namespace: &str, name: &str, patch: &Value) {
        let mut state = self.shared.state.lock().unwrap();
        let key = (
            resource.group,
            resource.plural,
            namespace.to_string(),
            name.to_string(),
        );
        write(&mut state, resource, key, "MODIFIED", |old| {
            let mut object = old.cloned().expect("patching a missing object");
            merge(&mut object, patch, false);
            Some(object)
        });
        drop(state);
        self.shared.changed.notify_all();
    }

    pub fn delete(&self, resource: Resource, namespace: &str, name: &str) {
        let mut state = self.shared.state.lock().unwrap();
        let key = (
            resource.group,
            resource.plural,
            namespace.to_string(),
            name.to_string(),
        );
        write(&mut state, resource, key, "DELETED", |_| None);
        drop(state);
        self.shared.changed.notify_all();
    }

    pub fn get(&self, resource: Resource, namespace: &str, name: &str) -> Option<Value> {
        let key = (
            resource.group,
            resource.plural,
            namespace.to_string(),
            name.to_string(),
        );
        self.shared.state.lock().unwrap().objects.get(&key).cloned()
    }

    /// Every object of `resource`.
    pub fn list(&self, resource: Resource) -> Vec<Value> {
        let state = self.shared.state.lock().unwrap();
        state
            .objects
            .iter()
            .filter(|((g, p, _, _), _)| (*g, *p) == resource.key())
            .map(|(_, v)| v.clone())
            .collect()
    }

    /// Forgets the history: a watch or list from any resourceVersion before now gets
    /// `410 Gone`, as after an etcd compaction.
    pub fn compact(&self) {
        let mut state = self.shared.state.lock().unwrap();
        state.compacted = state.revision;
        state.history.clear();
        drop(state);
        self.shared.changed.notify_all();
    }

    // ---- Nodes, as kubelet and the controller manager make them ----

    /// Registers a Node (as a kubelet would) with the pod CIDR a controller manager assigned.
    pub fn add_node(&self, name: &str, pod_cidr: Option<&str>) {
        self.add_node_with_cidrs(name, pod_cidr.as_slice());
    }

    /// Registers a Node with several pod CIDRs (dual-stack: IPv4 first, as Kubernetes does).
    pub fn add_node_with_cidrs(&self, name: &str, pod_cidrs: &[&str]) {
        let mut spec = json!({});
        if let Some(first) = pod_cidrs.first() {
            spec = json!({"podCIDR": first, "podCIDRs": pod_cidrs});
        }
        self.put(
            NODES,
            json!({
                "apiVersion": "v1", "kind": "Node",
                "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}},
                "spec": spec,
                "status": {"conditions": [{"type": "Ready", "status": "True"}]},
            }),
        );
    }

    /// Merge-patches a Node as another client would (e.g. an operator editing annotations).
    pub fn patch_node(&self, name: &str, patch: &Value) {
        self.patch(NODES, "", name, patch);
    }

    pub fn delete_node(&self, name: &str) {
        self.delete(NODES, "", name);
    }

    pub fn node(&self, name: &str) -> Option<Value> {
        self.get(NODES, "", name)
    }

    /// Request lines received so far (`METHOD path?query`).
    pub fn requests(&self) -> Vec<String> {
        self.shared.state.lock().unwrap().requests.clone()
    }

    /// Simulates an outage (`true`) or its end. Open watches are cut.
    pub fn set_down(&self, down: bool) {
        self.shared.down.store(down, Ordering::SeqCst);
        self.shared.changed.notify_all();
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        self.shared.stopped.store(true, Ordering::SeqCst);
        self.shared.changed.notify_all();
        if let Some(t) = self.accept.take() {
            let _ = t.join();
        }
    }
}

fn key_of(resource: Resource, object: &Value) -> Key {
    let namespace = if resource.namespaced {
        object["metadata"]["namespace"]
            .as_str()
            .unwrap_or("default")
            .to_string()
    } else {
        String::new()
    };
    let name = object["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    (resource.group, resource.plural, namespace, name)
}

/// Stores what `f` makes of the current object (None deletes it) and records the event.
fn write(
    state: &mut State,
    resource: Resource,
    key: Key,
    kind: &'static str,
    f: impl FnOnce(Option<&Value>) -> Option<Value>,
) -> Option<Value> {
    state.revision += 1;
    let revision = state.revision;
    match f(state.objects.get(&key)) {
        Some(mut object) => {
            let fresh = !state.objects.contains_key(&key);
            object["apiVersion"] = resource.api_version().into();
            object["kind"] = resource.kind.into();
            let meta = &mut object["metadata"];
            meta["resourceVersion"] = revision.to_string().into();
            meta["name"] = key.3.clone().into();
            if resource.namespaced {
                meta["namespace"] = key.2.clone().into();
            }
            if fresh || meta.get("uid").is_none() {
                state.uid += 1;
                meta["uid"] = format!("uid-{}-{}", key.3, state.uid).into();
                meta["creationTimestamp"] = "2026-01-01T00:00:00Z".into();
            }
            let kind = if fresh { "ADDED" } else { kind };
            state.objects.insert(key.clone(), object.clone());
            state
                .history
                .push((revision, key.0, key.1, kind, object.clone()));
            Some(object)
        }
        None => {
            let mut gone = state.objects.remove(&key)?;
            gone["metadata"]["resourceVersion"] = revision.to_string().into();
            state
                .history
                .push((revision, key.0, key.1, "DELETED", gone));
            None
        }
    }
}

/// JSON merge patch (RFC 7386); with `strategic`, lists of objects with a `type` (conditions)
/// are merged by it, as Kubernetes' strategic merge patch does for them.
fn merge(target: &mut Value, patch: &Value, strategic: bool) {
    let Value::Object(patch) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = json!({});
    }
    let Value::Object(map) = target else {
        return;
    };
    for (key, value) in patch {
        match value {
            Value::Null => {
                map.remove(key);
            }
            Value::Array(items) if strategic && items.iter().all(|i| i.get("type").is_some()) => {
                let list = map.entry(key.clone()).or_insert(json!([]));
                if !list.is_array() {
                    *list = json!([]);
                }
                let list = list.as_array_mut().unwrap();
                for item in items {
                    match list.iter_mut().find(|e| e["type"] == item["type"]) {
                        Some(existing) => merge(existing, item, true),
                        None => list.push(item.clone()),
                    }
                }
            }
            _ => merge(
                map.entry(key.clone()).or_insert(Value::Null),
                value,
                strategic,
            ),
        }
    }
}

struct Request {
    method: String,
    path: String,
    query: BTreeMap<String, String>,
    /// The query string as sent (the node proxy passes it on).
    raw_query: String,
    content_type: String,
    body: Vec<u8>,
}

fn read_request(reader: &mut BufReader<&TcpStream>) -> Option<Request> {
    let mut line = String::new();
    if reader.read_line(&mut line).ok()? == 0 {
        return None;
    }
    let mut parts = line.split_whitespace();
    let method = parts.next()?.to_string();
    let target = parts.next()?.to_string();
    let mut length = 0usize;
    let mut content_type = String::new();
    loop {
        let mut header = String::new();
        reader.read_line(&mut header).ok()?;
        let header = header.trim_end();
        if header.is_empty() {
            break;
        }
        if let Some((k, v)) = header.split_once(':') {
            if k.eq_ignore_ascii_case("content-length") {
                length = v.trim().parse().ok()?;
            } else if k.eq_ignore_ascii_case("content-type") {
                content_type = v.trim().to_string();
            }
        }
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body).ok()?;
    let (path, query_text) = target.split_once('?').unwrap_or((&target, ""));
    let query = query_text
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), percent_decode(v)))
        .collect();
    Some(Request {
        method,
        path: path.to_string(),
        raw_query: query_text.to_string(),
        query,
        content_type,
        body,
    })
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(b)) => {
                out.push(b);
                i += 3;
            }
            (b'+', _) => {
                out.push(b' ');
                i += 1;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn respond(mut conn: &TcpStream, code: u16, body: &Value) {
    let body = serde_json::to_vec(body).unwrap();
    let reason = match code {
        200 => "OK",
        201 => "Created",
        400 => "Bad Request",
        404 => "Not Found",
        409 => "Conflict",
        410 => "Gone",
        _ => "Error",
    };
    let head = format!(
        "HTTP/1.1 {code} {reason}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    let _ = conn.write_all(head.as_bytes());
    let _ = conn.write_all(&body);
}

/// `/api/v1/nodes/<node>[:<port>]/proxy/<path>`: the API server's proxy to a port of a node
/// (without a port: the kubelet's, from the Node's `status.daemonEndpoints`).
fn node_proxy_of(path: &str) -> Option<(&str, Option<u16>, &str)> {
    let rest = path.strip_prefix("/api/v1/nodes/")?;
    let (node_port, rest) = rest.split_once("/proxy")?;
    let rest = rest.trim_start_matches('/');
    match node_port.split_once(':') {
        Some((node, port)) => Some((node, Some(port.parse().ok()?), rest)),
        None => Some((node_port, None, rest)),
    }
}

/// The node proxy, as the real API server does it: a GET (with the query string) to the node's
/// InternalIP on `port`,
/// answered with what the node answered (503 when it cannot be reached).
fn proxy_to_node(mut conn: &TcpStream, shared: &Shared, node: &str, port: Option<u16>, path: &str) {
    let key = (NODES.group, NODES.plural, String::new(), node.to_string());
    let object = shared.state.lock().unwrap().objects.get(&key).cloned();
    let Some(object) = object else {
        respond(
            conn,
            404,
            &status(404, "NotFound", format!("nodes \"{node}\" not found")),
        );
        return;
    };
    let address = object["status"]["addresses"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|a| a["type"] == "InternalIP")
        .and_then(|a| a["address"].as_str())
        .unwrap_or_default()
        .to_string();
    let port = port.unwrap_or_else(|| {
        object["status"]["daemonEndpoints"]["kubeletEndpoint"]["Port"]
            .as_u64()
            .and_then(|p| u16::try_from(p).ok())
            .unwrap_or(10250)
    });
    let answer = (|| -> std::io::Result<Vec<u8>> {
        let ip: std::net::IpAddr = address
            .parse()
            .map_err(|_| std::io::Error::other("the Node has no InternalIP"))?;
        let mut upstream = TcpStream::connect_timeout(
            &std::net::SocketAddr::new(ip, port),
            std::time::Duration::from_secs(2),
        )?;
        upstream.set_read_timeout(Some(std::time::Duration::from_secs(5)))?;
        upstream.write_all(
            format!("GET /{path} HTTP/1.0\r\nHost: {ip}\r\nConnection: close\r\n\r\n").as_bytes(),
        )?;
        let mut raw = Vec::new();
        std::io::Read::read_to_end(&mut upstream, &mut raw)?;
        Ok(raw)
    })();
    match answer {
        // The node's own status and body, with headers of this connection.
        Ok(raw) => {
            let split = raw
                .windows(4)
                .position(|w| w == b"\r\n\r\n")
                .map_or(raw.len(), |at| at + 4);
            let head = String::from_utf8_lossy(&raw[..split]);
            let code = head
                .split_whitespace()
                .nth(1)
                .and_then(|c| c.parse::<u16>().ok())
                .unwrap_or(502);
            let body = &raw[split..];
            let head = format!(
                "HTTP/1.1 {code} Proxied\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n",
                body.len()
            );
            let _ = conn.write_all(head.as_bytes());
            let _ = conn.write_all(body);
        }
        Err(e) => respond(
            conn,
            503,
            &status(
                503,
                "ServiceUnavailable",
                format!("error trying to reach service: {node}:{port}: {e}"),
            ),
        ),
    }
}

fn status(code: u16, reason: &str, message: String) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
           "message": message, "reason": reason, "code": code})
}

/// What a request path names.
struct Target {
    resource: Resource,
    /// `None` for all namespaces (or a cluster-scoped resource).
    namespace: Option<String>,
    name: Option<String>,
    status: bool,
}

fn target_of(path: &str) -> Option<Target> {
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (group, version, rest) = match parts.as_slice() {
        ["api", version, rest @ ..] => ("", *version, rest),
        ["apis", group, version, rest @ ..] => (*group, *version, rest),
        _ => return None,
    };
    let find = |plural: &str| {
        RESOURCES
            .iter()
            .find(|r| r.group == group && r.version == version && r.plural == plural)
            .copied()
    };
    // namespaces/<ns>/<plural>/... names a namespaced resource; namespaces[/<name>] the
    // Namespace resource itself.
    let (namespace, rest) = match rest {
        ["namespaces", ns, plural, more @ ..] if find(plural).is_some_and(|r| r.namespaced) => {
            (Some(ns.to_string()), [&[*plural][..], more].concat())
        }
        other => (None, other.to_vec()),
    };
    let resource = find(rest.first()?)?;
    let name = rest.get(1).map(|s| s.to_string());
    let status = rest.get(2) == Some(&"status");
    if rest.len() > 3 || (rest.len() == 3 && !status) {
        return None;
    }
    Some(Target {
        resource,
        namespace,
        name,
        status,
    })
}

/// A label selector: `k=v`, `k==v`, `k!=v`, `k in (a,b)`, `k notin (a,b)`, `k`, `!k`.
fn selects(selector: &str, labels: &Value) -> bool {
    let mut terms = Vec::new();
    let mut depth = 0;
    let mut start = 0;
    for (i, c) in selector.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                terms.push(&selector[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    terms.push(&selector[start..]);
    terms
        .into_iter()
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .all(|term| {
            let label = |k: &str| labels.get(k.trim()).and_then(Value::as_str);
            let set = |list: &str| -> Vec<String> {
                list.trim()
                    .trim_start_matches('(')
                    .trim_end_matches(')')
                    .split(',')
                    .map(|s| s.trim().to_string())
                    .collect()
            };
            if let Some((k, v)) = term.split_once("!=") {
                label(k) != Some(v.trim())
            } else if let Some((k, v)) = term.split_once("==").or_else(|| term.split_once('=')) {
                label(k) == Some(v.trim())
            } else if let Some((k, list)) = term.split_once(" notin ") {
                label(k).is_none_or(|v| !set(list).iter().any(|s| s == v))
            } else if let Some((k, list)) = term.split_once(" in ") {
                label(k).is_some_and(|v| set(list).iter().any(|s| s == v))
            } else if let Some(k) = term.strip_prefix('!') {
                label(k).is_none()
            } else {
                label(term).is_some()
            }
        })
}

fn matches(target: &Target, query: &BTreeMap<String, String>, key: &Key, object: &Value) -> bool {
    (key.0, key.1) == target.resource.key()
        && target.namespace.as_ref().is_none_or(|ns| *ns == key.2)
        && query
            .get("labelSelector")
            .is_none_or(|s| selects(s, &object["metadata"]["labels"]))
}

fn serve(conn: TcpStream, shared: &Shared) {
    let mut reader = BufReader::new(&conn);
    // Keep-alive: answer requests on this connection until the client closes it.
    while let Some(request) = read_request(&mut reader) {
        let query: Vec<String> = request
            .query
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        shared.state.lock().unwrap().requests.push(format!(
            "{} {}?{}",
            request.method,
            request.path,
            query.join("&")
        ));
        if shared.down.load(Ordering::SeqCst) || shared.stopped.load(Ordering::SeqCst) {
            return; // The connection closes unanswered.
        }
        if let Some((node, port, rest)) = node_proxy_of(&request.path) {
            let rest = match request.raw_query.as_str() {
                "" => rest.to_string(),
                query => format!("{rest}?{query}"),
            };
            proxy_to_node(&conn, shared, node, port, &rest);
            continue;
        }
        let Some(target) = target_of(&request.path) else {
            respond(
                &conn,
                404,
                &status(
                    404,
                    "NotFound",
                    format!("{} is not served here", request.path),
                ),
            );
            continue;
        };
        let watching = request
            .query
            .get("watch")
            .is_some_and(|w| w == "true" || w == "1");
        match (request.method.as_str(), target.name.clone()) {
            ("GET", None) if watching => {
                watch(&conn, shared, &request, &target);
                return;
            }
            ("GET", None) => list(&conn, shared, &request, &target),
            ("GET", Some(name)) => {
                let key = (
                    target.resource.group,
                    target.resource.plural,
                    target.namespace.clone().unwrap_or_default(),
                    name.clone(),
                );
                match shared.state.lock().unwrap().objects.get(&key).cloned() {
                    Some(object) => respond(&conn, 200, &object),
                    None => not_found(&conn, &target, &name),
                }
            }
            ("PATCH", Some(name)) => patch(&conn, shared, &request, &target, &name),
            ("POST", None) => create(&conn, shared, &request, &target),
            ("DELETE", Some(name)) => {
                let key = (
                    target.resource.group,
                    target.resource.plural,
                    target.namespace.clone().unwrap_or_default(),
                    name.clone(),
                );
                let mut state = shared.state.lock().unwrap();
                match state.objects.get(&key).cloned() {
                    Some(object) => {
                        write(&mut state, target.resource, key, "DELETED", |_| None);
                        drop(state);
                        shared.changed.notify_all();
                        respond(&conn, 200, &object);
                    }
                    None => {
                        drop(state);
                        not_found(&conn, &target, &name);
                    }
                }
            }
            _ => respond(
                &conn,
                405,
                &status(
                    405,
                    "MethodNotAllowed",
                    format!("{} {}", request.method, request.path),
                ),
            ),
        }
    }
}

fn not_found(conn: &TcpStream, target: &Target, name: &str) {
    respond(
        conn,
        404,
        &status(
            404,
            "NotFound",
            format!("{} \"{name}\" not found", target.resource.plural),
        ),
    );
}

fn list(conn: &TcpStream, shared: &Shared, request: &Request, target: &Target) {
    let state = shared.state.lock().unwrap();
    if let Some(rv) = request
        .query
        .get("resourceVersion")
        .and_then(|v| v.parse::<u64>().ok())
        .filter(|rv| *rv > 0 && *rv < state.compacted)
        .filter(|_| {
            request
                .query
                .get("resourceVersionMatch")
                .is_some_and(|m| m == "Exact")
        })
    {
        drop(state);
        respond(
            conn,
            410,
            &status(410, "Expired", format!("too old resource version: {rv}")),
        );
        return;
    }
    // Pages of `limit` items in key order, continued by an opaque token that carries the first
    // page's resourceVersion (as the real server answers a paginated list from etcd). Unlike
    // the real server, later pages show the objects as they are now rather than as of that
    // resourceVersion; a watch from it replays whatever changed, so a client's view converges
    // the same way. A token older than the retained history is `410 Gone`, as there.
    let limit = request
        .query
        .get("limit")
        .and_then(|v| v.parse::<usize>().ok())
        .filter(|l| *l > 0);
    let (list_rv, after) = match request.query.get("continue").filter(|c| !c.is_empty()) {
        Some(token) => match parse_continue(token) {
            Some((rv, _)) if rv < state.compacted => {
                drop(state);
                respond(
                    conn,
                    410,
                    &status(410, "Expired", "the continue token has expired".into()),
                );
                return;
            }
            Some((rv, after)) => (rv, Some(after)),
            None => {
                drop(state);
                respond(
                    conn,
                    400,
                    &status(400, "BadRequest", "malformed continue token".into()),
                );
                return;
            }
        },
        None => (state.revision, None),
    };
    let mut matching = state
        .objects
        .iter()
        .filter(|(k, v)| matches(target, &request.query, k, v))
        .filter(|((_, _, ns, name), _)| {
            after
                .as_ref()
                .is_none_or(|a| (ns.as_str(), name.as_str()) > (a.0.as_str(), a.1.as_str()))
        });
    let items: Vec<&Value> = match limit {
        Some(l) => matching.by_ref().take(l).map(|(_, v)| v).collect(),
        None => matching.by_ref().map(|(_, v)| v).collect(),
    };
    let remaining = matching.count();
    let mut metadata = json!({"resourceVersion": list_rv.to_string()});
    if remaining > 0 {
        if let Some(last) = items.last() {
            let ns = last["metadata"]["namespace"].as_str().unwrap_or("");
            let name = last["metadata"]["name"].as_str().unwrap_or("");
            metadata["continue"] = continue_token(list_rv, ns, name).into();
            metadata["remainingItemCount"] = remaining.into();
        }
    }
    let body = json!({
        "kind": format!("{}List", target.resource.kind),
        "apiVersion": target.resource.api_version(),
        "metadata": metadata,
        "items": items,
    });
    drop(state);
    respond(conn, 200, &body);
}

/// `<rv>-<hex of namespace NUL name>`: only characters that need no escaping in a query.
fn continue_token(rv: u64, namespace: &str, name: &str) -> String {
    let key: String = format!("{namespace}\0{name}")
        .bytes()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("{rv}-{key}")
}

fn parse_continue(token: &str) -> Option<(u64, (String, String))> {
    let (rv, hex) = token.split_once('-')?;
    let bytes: Vec<u8> = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
        .collect::<Option<_>>()?;
    let text = String::from_utf8(bytes).ok()?;
    let (ns, name) = text.split_once('\0')?;
    Some((rv.parse().ok()?, (ns.to_string(), name.to_string())))
}

fn create(conn: &TcpStream, shared: &Shared, request: &Request, target: &Target) {
    let Ok(mut object) = serde_json::from_slice::<Value>(&request.body) else {
        respond(
            conn,
            400,
            &status(400, "BadRequest", "body is not JSON".into()),
        );
        return;
    };
    let mut state = shared.state.lock().unwrap();
    if object["metadata"]["name"]
        .as_str()
        .is_none_or(str::is_empty)
    {
        let prefix = object["metadata"]["generateName"]
            .as_str()
            .unwrap_or("obj-");
        object["metadata"]["name"] = format!("{prefix}{:05x}", state.revision + 1).into();
    }
    if target.resource.namespaced {
        object["metadata"]["namespace"] =
            target.namespace.clone().unwrap_or("default".into()).into();
    }
    let key = key_of(target.resource, &object);
    if state.objects.contains_key(&key) {
        drop(state);
        respond(
            conn,
            409,
            &status(
                409,
                "AlreadyExists",
                format!("{} \"{}\" already exists", target.resource.plural, key.3),
            ),
        );
        return;
    }
    let stored = write(&mut state, target.resource, key, "ADDED", |_| Some(object));
    drop(state);
    shared.changed.notify_all();
    respond(conn, 201, &stored.unwrap_or(Value::Null));
}

fn patch(conn: &TcpStream, shared: &Shared, request: &Request, target: &Target, name: &str) {
    let Ok(mut patch) = serde_json::from_slice::<Value>(&request.body) else {
        respond(
            conn,
            400,
            &status(400, "BadRequest", "patch is not JSON".into()),
        );
        return;
    };
    let strategic = request
        .content_type
        .starts_with("application/strategic-merge-patch");
    if !strategic && !request.content_type.starts_with("application/merge-patch") {
        respond(
            conn,
            415,
            &status(
                415,
                "UnsupportedMediaType",
                format!("patch type {:?}", request.content_type),
            ),
        );
        return;
    }
    // With a status subresource, the main resource ignores status and /status changes only it.
    if target.resource.status_subresource {
        if let Some(map) = patch.as_object_mut() {
            if target.status {
                map.retain(|k, _| k == "status" || k == "metadata");
            } else {
                map.remove("status");
            }
        }
    }
    let key = (
        target.resource.group,
        target.resource.plural,
        target.namespace.clone().unwrap_or_default(),
        name.to_string(),
    );
    let mut state = shared.state.lock().unwrap();
    if !state.objects.contains_key(&key) {
        drop(state);
        not_found(conn, target, name);
        return;
    }
    let object = write(&mut state, target.resource, key, "MODIFIED", |old| {
        let mut object = old.cloned()?;
        merge(&mut object, &patch, strategic);
        Some(object)
    });
    drop(state);
    shared.changed.notify_all();
    respond(conn, 200, &object.unwrap_or(Value::Null));
}

fn chunk(conn: &mut &TcpStream, event: &Value) -> bool {
    let mut line = serde_json::to_vec(event).unwrap();
    line.push(b'\n');
    let chunk = [
        format!("{:x}\r\n", line.len()).into_bytes(),
        line,
        b"\r\n".to_vec(),
    ]
    .concat();
    conn.write_all(&chunk).is_ok()
}

/// Streams watch events after the requested resourceVersion, one JSON object per chunk.
fn watch(conn: &TcpStream, shared: &Shared, request: &Request, target: &Target) {
    let mut conn = conn;
    let mut after: u64 = request
        .query
        .get("resourceVersion")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let timeout = request
        .query
        .get("timeoutSeconds")
        .and_then(|v| v.parse().ok())
        .unwrap_or(300u64);
    let bookmarks = request
        .query
        .get("allowWatchBookmarks")
        .is_some_and(|b| b == "true");
    let deadline = Instant::now() + Duration::from_secs(timeout);
    let head =
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n";
    if conn.write_all(head.as_bytes()).is_err() {
        return;
    }
    let mut state = shared.state.lock().unwrap();
    if after == 0 {
        // "Any": start from now with the current objects as ADDED (as the real server does).
        let events: Vec<Value> = state
            .objects
            .iter()
            .filter(|(k, v)| matches(target, &request.query, k, v))
            .map(|(_, object)| json!({"type": "ADDED", "object": object}))
            .collect();
        after = state.revision;
        drop(state);
        for event in events {
            if !chunk(&mut conn, &event) {
                return;
            }
        }
        state = shared.state.lock().unwrap();
    } else if after < state.compacted {
        let gone = status(
            410,
            "Expired",
            format!("too old resource version: {after} ({})", state.compacted),
        );
        drop(state);
        if chunk(&mut conn, &json!({"type": "ERROR", "object": gone})) {
            let _ = conn.write_all(b"0\r\n\r\n");
        }
        return;
    }
    let mut last_bookmark = Instant::now();
    loop {
        if shared.stopped.load(Ordering::SeqCst) || shared.down.load(Ordering::SeqCst) {
            return; // Cut without the final chunk, as a dying server would.
        }
        if after < state.compacted {
            return;
        }
        let events: Vec<Value> = state
            .history
            .iter()
            .filter(|(rv, g, p, _, object)| {
                *rv > after
                    && (*g, *p) == target.resource.key()
                    && target
                        .namespace
                        .as_ref()
                        .is_none_or(|ns| object["metadata"]["namespace"] == ns.as_str())
                    && request
                        .query
                        .get("labelSelector")
                        .is_none_or(|s| selects(s, &object["metadata"]["labels"]))
            })
            .map(|(_, _, _, kind, object)| json!({"type": kind, "object": object}))
            .collect();
        after = state.revision;
        drop(state);
        for event in events {
            if !chunk(&mut conn, &event) {
                return;
            }
        }
        if bookmarks && last_bookmark.elapsed() > Duration::from_secs(1) {
            last_bookmark = Instant::now();
            let mark = json!({"type": "BOOKMARK", "object": {
                "kind": target.resource.kind, "apiVersion": target.resource.api_version(),
                "metadata": {"resourceVersion": after.to_string()}
            }});
            if !chunk(&mut conn, &mark) {
                return;
            }
        }
        let now = Instant::now();
        if now >= deadline {
            let _ = conn.write_all(b"0\r\n\r\n");
            return;
        }
        state = shared.state.lock().unwrap();
        let wait = (deadline - now).min(Duration::from_millis(200));
        state = shared.changed.wait_timeout(state, wait).unwrap().0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_patch_sets_replaces_and_removes() {
        let mut doc = json!({"metadata": {"name": "a", "annotations": {"x": "1", "y": "2"}}});
        merge(
            &mut doc,
            &json!({"metadata": {"annotations": {"x": null, "z": "3"}}}),
            false,
        );
        assert_eq!(
            doc,
            json!({"metadata": {"name": "a", "annotations": {"y": "2", "z": "3"}}})
        );
    }

    #[test]
    fn strategic_merge_merges_conditions_by_type() {
        let mut node = json!({"status": {"conditions": [
            {"type": "Ready", "status": "True"},
            {"type": "NetworkUnavailable", "status": "True", "reason": "NoRouteCreated"}
        ]}});
        merge(
            &mut node,
            &json!({"status": {"conditions": [
                {"type": "NetworkUnavailable", "status": "False", "reason": "TetherReady"}
            ]}}),
            true,
        );
        let conditions = node["status"]["conditions"].as_array().unwrap();
        assert_eq!(conditions.len(), 2);
        assert_eq!(conditions[1]["status"], "False");
        assert_eq!(conditions[1]["reason"], "TetherReady");
    }

    #[test]
    fn paths_and_selectors() {
        let t = target_of("/api/v1/namespaces/team-a/pods/web/status").unwrap();
        assert_eq!(
            (
                t.resource.plural,
                t.namespace.as_deref(),
                t.name.as_deref(),
                t.status
            ),
            ("pods", Some("team-a"), Some("web"), true)
        );
        let t = target_of("/apis/networking.k8s.io/v1/networkpolicies").unwrap();
        assert_eq!((t.resource.plural, t.namespace), ("networkpolicies", None));
        let t = target_of("/api/v1/namespaces/team-a").unwrap();
        assert_eq!(
            (t.resource.plural, t.name.as_deref()),
            ("namespaces", Some("team-a"))
        );
        assert!(target_of("/api/v1/secrets").is_none());
        let labels = json!({"app": "web", "tier": "front"});
        assert!(selects("app=web,tier in (front, back)", &labels));
        assert!(selects("app!=db,!missing,tier", &labels));
        assert!(!selects("app notin (web)", &labels));
        assert_eq!(percent_decode("app%3Dweb%2Ctier"), "app=web,tier");
    }
}
