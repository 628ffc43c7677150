//! A small stand-in for the Kubernetes API server, serving only the Node resource, for testing
//! tether-overlayd's Kubernetes datastore where no real API server can run. It speaks the real
//! wire protocol over HTTP/1.1 (so the daemon's own `kube` client is what is tested): GET of one
//! Node, LIST with a resourceVersion, WATCH streams (ADDED/MODIFIED/DELETED, resumable from a
//! resourceVersion, ended by `timeoutSeconds`), and JSON merge PATCH. Every write bumps the
//! resourceVersion. It records every request so tests can check what the daemon asked for.
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

#[derive(Default)]
struct State {
    nodes: BTreeMap<String, Value>,
    revision: u64,
    /// Every change: (resourceVersion, event type, object).
    history: Vec<(u64, &'static str, Value)>,
    requests: Vec<String>,
}

struct Shared {
    state: Mutex<State>,
    changed: Condvar,
    down: AtomicBool,
    stopped: AtomicBool,
}

pub struct NodeApiServer {
    shared: Arc<Shared>,
    accept: Option<JoinHandle<()>>,
    pub url: String,
}

impl NodeApiServer {
    /// Listens on `addr` (`ip:port`) inside `ns`.
    pub fn start_in(ns: &Netns, addr: &str) -> NodeApiServer {
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            changed: Condvar::new(),
            down: AtomicBool::new(false),
            stopped: AtomicBool::new(false),
        });
        let netns = std::fs::File::open(ns.path()).unwrap();
        let addr_owned = addr.to_string();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let accept_shared = shared.clone();
        let accept = std::thread::spawn(move || {
            // Network namespaces are per thread: this one moves, binds, and serves from there.
            let rc = unsafe { libc::setns(netns.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
            let listener = TcpListener::bind(&addr_owned).unwrap();
            listener.set_nonblocking(true).unwrap();
            ready_tx.send(()).unwrap();
            while !accept_shared.stopped.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((conn, _)) => {
                        let shared = accept_shared.clone();
                        std::thread::spawn(move || serve(conn, &shared));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        ready_rx.recv_timeout(Duration::from_secs(5)).unwrap();
        NodeApiServer {
            shared,
            accept: Some(accept),
            url: format!("http://{addr}"),
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
        let node = json!({
            "apiVersion": "v1", "kind": "Node",
            "metadata": {"name": name, "uid": format!("uid-{name}"), "labels": {"kubernetes.io/hostname": name}},
            "spec": spec,
            "status": {"conditions": [{"type": "Ready", "status": "True"}]},
        });
        self.write(name, "ADDED", |_| Some(node));
    }

    /// Merge-patches a Node as another client would (e.g. an operator editing annotations).
    pub fn patch_node(&self, name: &str, patch: &Value) {
        self.write(name, "MODIFIED", |old| {
            let mut node = old.cloned().expect("patching a missing node");
            merge(&mut node, patch);
            Some(node)
        });
    }

    pub fn delete_node(&self, name: &str) {
        self.write(name, "DELETED", |_| None);
    }

    pub fn node(&self, name: &str) -> Option<Value> {
        self.shared.state.lock().unwrap().nodes.get(name).cloned()
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

    fn write(
        &self,
        name: &str,
        kind: &'static str,
        f: impl FnOnce(Option<&Value>) -> Option<Value>,
    ) {
        let mut state = self.shared.state.lock().unwrap();
        apply_write(&mut state, name, kind, f);
        self.shared.changed.notify_all();
    }
}

impl Drop for NodeApiServer {
    fn drop(&mut self) {
        self.shared.stopped.store(true, Ordering::SeqCst);
        self.shared.changed.notify_all();
        if let Some(t) = self.accept.take() {
            let _ = t.join();
        }
    }
}

fn apply_write(
    state: &mut State,
    name: &str,
    kind: &'static str,
    f: impl FnOnce(Option<&Value>) -> Option<Value>,
) -> Option<Value> {
    state.revision += 1;
    let revision = state.revision;
    match f(state.nodes.get(name)) {
        Some(mut node) => {
            node["metadata"]["resourceVersion"] = revision.to_string().into();
            state.nodes.insert(name.to_string(), node.clone());
            state.history.push((revision, kind, node.clone()));
            Some(node)
        }
        None => {
            let mut gone = state.nodes.remove(name)?;
            gone["metadata"]["resourceVersion"] = revision.to_string().into();
            state.history.push((revision, "DELETED", gone));
            None
        }
    }
}

/// RFC 7386 JSON merge patch.
fn merge(target: &mut Value, patch: &Value) {
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
        if value.is_null() {
            map.remove(key);
        } else {
            merge(map.entry(key.clone()).or_insert(Value::Null), value);
        }
    }
}

struct Request {
    method: String,
    path: String,
    query: BTreeMap<String, String>,
    body: Vec<u8>,
}

fn read_request(conn: &TcpStream) -> Option<Request> {
    let mut reader = BufReader::new(conn);
    let mut line = String::new();
    reader.read_line(&mut line).ok()?;
    let mut parts = line.split_whitespace();
    let method = parts.next()?.to_string();
    let target = parts.next()?.to_string();
    let mut length = 0usize;
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
            }
        }
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body).ok()?;
    let (path, query) = target.split_once('?').unwrap_or((&target, ""));
    let query = query
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    Some(Request {
        method,
        path: path.to_string(),
        query,
        body,
    })
}

fn respond(mut conn: &TcpStream, code: u16, body: &Value) {
    let body = serde_json::to_vec(body).unwrap();
    let reason = match code {
        200 => "OK",
        404 => "Not Found",
        410 => "Gone",
        _ => "Error",
    };
    let head = format!(
        "HTTP/1.1 {code} {reason}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let _ = conn.write_all(head.as_bytes());
    let _ = conn.write_all(&body);
}

fn status(code: u16, reason: &str, message: String) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
           "message": message, "reason": reason, "code": code})
}

fn serve(conn: TcpStream, shared: &Shared) {
    let Some(request) = read_request(&conn) else {
        return;
    };
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
    if shared.down.load(Ordering::SeqCst) {
        return; // The connection closes unanswered.
    }
    let name = request
        .path
        .strip_prefix("/api/v1/nodes/")
        .map(str::to_string);
    match (request.method.as_str(), name) {
        ("GET", None) if request.path == "/api/v1/nodes" => {
            if request
                .query
                .get("watch")
                .is_some_and(|w| w == "true" || w == "1")
            {
                watch(conn, shared, &request);
            } else {
                let state = shared.state.lock().unwrap();
                let list = json!({
                    "kind": "NodeList", "apiVersion": "v1",
                    "metadata": {"resourceVersion": state.revision.to_string()},
                    "items": state.nodes.values().collect::<Vec<_>>(),
                });
                drop(state);
                respond(&conn, 200, &list);
            }
        }
        ("GET", Some(name)) => match shared.state.lock().unwrap().nodes.get(&name).cloned() {
            Some(node) => respond(&conn, 200, &node),
            None => respond(
                &conn,
                404,
                &status(404, "NotFound", format!("nodes \"{name}\" not found")),
            ),
        },
        ("PATCH", Some(name)) => {
            let Ok(patch) = serde_json::from_slice::<Value>(&request.body) else {
                respond(
                    &conn,
                    400,
                    &status(400, "BadRequest", "patch is not JSON".into()),
                );
                return;
            };
            let mut state = shared.state.lock().unwrap();
            if !state.nodes.contains_key(&name) {
                drop(state);
                respond(
                    &conn,
                    404,
                    &status(404, "NotFound", format!("nodes \"{name}\" not found")),
                );
                return;
            }
            let node = apply_write(&mut state, &name, "MODIFIED", |old| {
                let mut node = old.cloned()?;
                merge(&mut node, &patch);
                Some(node)
            });
            drop(state);
            shared.changed.notify_all();
            respond(&conn, 200, &node.unwrap_or(Value::Null));
        }
        _ => respond(
            &conn,
            404,
            &status(
                404,
                "NotFound",
                format!("{} {} is not served here", request.method, request.path),
            ),
        ),
    }
}

/// Streams watch events after the requested resourceVersion, one JSON object per chunk.
fn watch(mut conn: TcpStream, shared: &Shared, request: &Request) {
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
    let deadline = Instant::now() + Duration::from_secs(timeout);
    let head = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n";
    if conn.write_all(head.as_bytes()).is_err() {
        return;
    }
    let mut state = shared.state.lock().unwrap();
    loop {
        if shared.stopped.load(Ordering::SeqCst) || shared.down.load(Ordering::SeqCst) {
            return; // Cut without the final chunk, as a dying server would.
        }
        let events: Vec<Value> = state
            .history
            .iter()
            .filter(|(rv, _, _)| *rv > after)
            .map(|(_, kind, object)| json!({"type": kind, "object": object}))
            .collect();
        after = state.revision;
        drop(state);
        for event in events {
            let mut line = serde_json::to_vec(&event).unwrap();
            line.push(b'\n');
            let chunk = [
                format!("{:x}\r\n", line.len()).into_bytes(),
                line,
                b"\r\n".to_vec(),
            ]
            .concat();
            if conn.write_all(&chunk).is_err() {
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
        );
        assert_eq!(
            doc,
            json!({"metadata": {"name": "a", "annotations": {"y": "2", "z": "3"}}})
        );
    }
}
