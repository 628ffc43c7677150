#![allow(clippy::unwrap_used)] // Tests fail loudly by design.

//! Kill everywhere: the deployed chain (cni-overlay -> cni-bridge -> cni-ipam, cni-portmap,
//! cni-bandwidth) run as a runtime runs it, over rounds of random ADD, DEL and CHECK, with
//! SIGKILL sent at random moments to any process of a plugin call, delegates included. The runtime
//! model is containerd's: a failed ADD is followed by a DEL of the whole list, a failed DEL is
//! retried until it succeeds, and GC runs with the valid list after each round. After every round
//! nothing may be left of a pod that is gone (lease, veth, ifb, portmap element, UDP conntrack
//! entry of its hostPort), no address may be held twice, and every live pod's CHECK must pass.
//!
//! `TETHER_CHAOS_ROUNDS` (default 16) x 40 operations; the numbers are printed.

mod harness;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use harness::bin_dir;
use serde_json::{json, Value};
use test_support::chain::{Attachment, Conflist};
use test_support::{deployed_conflist, plugin_output, require_root, Netns, PluginOut};

const OPS_PER_ROUND: usize = 40;
const MAX_LIVE: usize = 8;
const KILL_PERCENT: u64 = 35;
/// Kills land within this long after a plugin starts (a debug-build chain call takes ~10-60 ms).
const KILL_WINDOW_US: u64 = 40_000;

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 33
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

struct Pod {
    id: String,
    netns: Netns,
    host_port: u16,
    /// The cached result of a complete ADD; None while the pod is being torn down.
    result: Option<Value>,
}

#[derive(Default)]
struct Counts {
    calls: usize,
    kills: usize,
    killed_delegates: usize,
    adds: usize,
    adds_failed: usize,
    dels: usize,
    del_retries: usize,
    checks: usize,
    gcs: usize,
}

struct Node {
    ns: Netns,
    root: tempfile::TempDir,
    list: Value,
}

impl Node {
    fn new() -> Node {
        require_root();
        let ns = Netns::new("chaos");
        let root = tempfile::tempdir().unwrap();
        let run = root.path().join("run");
        std::fs::create_dir_all(&run).unwrap();
        std::fs::write(
            run.join("overlay.json"),
            json!({"nodeName": "chaos", "subnets": ["10.97.0.0/24", "fd00:97::/64"],
                   "clusterCidrs": ["10.97.0.0/16", "fd00:97::/56"],
                   "mtu": 1450, "vxlanDevice": "tether.1"})
            .to_string(),
        )
        .unwrap();
        let mut list: Value = serde_json::from_str(&deployed_conflist()).unwrap();
        list["cniVersion"] = json!("1.1.0");
        list["plugins"][0]["runDir"] = json!(run);
        list["plugins"][0]["stateDir"] = json!(root.path().join("state"));
        list["plugins"][0]["ipam"] = json!({"dataDir": root.path().join("leases")});
        Node { ns, root, list }
    }

    fn conflist(&self) -> Conflist<'_> {
        Conflist {
            list: self.list.clone(),
            bin_dirs: vec![bin_dir()],
            node: Some(&self.ns),
        }
    }

    /// Leases by address: the container holding each.
    fn leases(&self) -> BTreeMap<String, String> {
        let dir = self.root.path().join("leases/tether");
        std::fs::read_dir(&dir)
            .map(|d| {
                d.flatten()
                    .filter_map(|e| {
                        let name = e.file_name().to_string_lossy().into_owned();
                        name.parse::<std::net::IpAddr>().ok()?;
                        let owner = std::fs::read_to_string(e.path()).ok()?;
                        Some((name, owner.lines().next().unwrap_or("").to_string()))
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    fn links(&self, kind: &str) -> BTreeSet<String> {
        self.ns
            .ip_json(&["link", "show", "type", kind])
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|l| l["ifname"].as_str().map(str::to_string))
            .collect()
    }

    fn text(&self, args: &[&str]) -> String {
        String::from_utf8_lossy(&self.ns.try_exec(args).stdout).into_owned()
    }
}

/// Every descendant of `pid` (children first found through /proc).
fn descendants(pid: u32) -> Vec<u32> {
    let mut found = Vec::new();
    let mut queue = vec![pid];
    while let Some(p) = queue.pop() {
        let children =
            std::fs::read_to_string(format!("/proc/{p}/task/{p}/children")).unwrap_or_default();
        for c in children.split_whitespace().filter_map(|c| c.parse().ok()) {
            found.push(c);
            queue.push(c);
        }
    }
    found
}

/// How a plugin call ended.
enum Ended {
    Succeeded(PluginOut),
    /// A kill landed in it and it failed: what the runtime sees as a failed call.
    Killed,
    /// It failed by itself: a defect.
    Failed(PluginOut),
}

/// Waits for a plugin call, killing one of its processes (it or a delegate) at a random moment
/// when `kill`.
fn finish(child: std::process::Child, kill: bool, rng: &mut Rng, n: &mut Counts) -> Ended {
    n.calls += 1;
    let pid = child.id();
    let mut killed = false;
    if kill {
        std::thread::sleep(Duration::from_micros(rng.below(KILL_WINDOW_US)));
        let mut victims = vec![pid];
        victims.extend(descendants(pid));
        let victim = victims[rng.below(victims.len() as u64) as usize];
        if sigkill(victim) {
            killed = true;
            n.kills += 1;
            if victim != pid {
                n.killed_delegates += 1;
            }
        }
    }
    let out = plugin_output(child);
    match (out.code, killed) {
        (0, _) => Ended::Succeeded(out),
        (_, true) => Ended::Killed,
        _ => Ended::Failed(out),
    }
}

/// SIGKILL by pid; whether the process was still there.
fn sigkill(pid: u32) -> bool {
    std::process::Command::new("kill")
        .args(["-9", &pid.to_string()])
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn attachment<'a>(pod: &'a Pod, path: &'a str) -> Attachment<'a> {
    Attachment {
        id: &pod.id,
        netns: path,
        ifname: "eth0",
        runtime: json!({
            "portMappings": [
                {"hostPort": pod.host_port, "containerPort": 80, "protocol": "tcp"},
                {"hostPort": pod.host_port, "containerPort": 53, "protocol": "udp"}
            ],
            "bandwidth": {"egressRate": 100_000_000u64, "egressBurst": 1_000_000u64,
                          "ingressRate": 100_000_000u64, "ingressBurst": 1_000_000u64}
        }),
    }
}

/// DEL through the list, reverse order, every plugin run; whether all succeeded.
fn del(list: &Conflist<'_>, pod: &Pod, kill: bool, rng: &mut Rng, n: &mut Counts) -> bool {
    let path = pod.netns.path().display().to_string();
    let att = attachment(pod, &path);
    let mut ok = true;
    for index in (0..list.plugin_count()).rev() {
        let child = list.spawn_one("DEL", index, &att, pod.result.as_ref());
        let chosen = kill && rng.below(100) < KILL_PERCENT;
        match finish(child, chosen, rng, n) {
            Ended::Succeeded(_) => {}
            Ended::Killed => ok = false,
            Ended::Failed(out) => panic!("DEL of {} failed unkilled: {}", pod.id, out.stdout),
        }
    }
    ok
}

/// ADD through the list; the result, or None after a failure (then the runtime DELs).
fn add(list: &Conflist<'_>, pod: &Pod, rng: &mut Rng, n: &mut Counts) -> Option<Value> {
    let path = pod.netns.path().display().to_string();
    let att = attachment(pod, &path);
    let mut prev: Option<Value> = None;
    for index in 0..list.plugin_count() {
        let child = list.spawn_one("ADD", index, &att, prev.as_ref());
        let chosen = rng.below(100) < KILL_PERCENT;
        match finish(child, chosen, rng, n) {
            Ended::Succeeded(out) => prev = Some(out.json),
            Ended::Killed => return None,
            Ended::Failed(out) => panic!("ADD of {} failed unkilled: {}", pod.id, out.stdout),
        }
    }
    prev
}

#[test]
fn killed_anywhere_the_chain_leaves_nothing_of_gone_pods_and_no_address_twice() {
    let node = Node::new();
    let list = node.conflist();
    let rounds: usize = std::env::var("TETHER_CHAOS_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(16);
    let mut rng = Rng(u64::from(std::process::id()) | 1);
    let mut n = Counts::default();
    let mut live: Vec<Pod> = Vec::new();
    let mut dying: Vec<Pod> = Vec::new();
    let mut gone_ports: BTreeSet<u16> = BTreeSet::new();
    let mut next = 0usize;
    let started = Instant::now();
    for round in 0..rounds {
        for _ in 0..OPS_PER_ROUND {
            // A DEL the runtime still owes goes first, as kubelet retries it.
            if let Some(pod) = dying.pop() {
                n.del_retries += 1;
                if del(&list, &pod, true, &mut rng, &mut n) {
                    gone_ports.insert(pod.host_port);
                } else {
                    dying.push(pod);
                }
                continue;
            }
            match rng.below(10) {
                0..=4 if live.len() < MAX_LIVE => {
                    next += 1;
                    let mut pod = Pod {
                        id: format!("chaos{next}"),
                        netns: Netns::new(&format!("ch{next}")),
                        host_port: 20000 + (next % 10000) as u16,
                        result: None,
                    };
                    n.adds += 1;
                    match add(&list, &pod, &mut rng, &mut n) {
                        Some(result) => {
                            pod.result = Some(result);
                            gone_ports.remove(&pod.host_port);
                            // A UDP flow to its hostPort: DEL must flush its conntrack entry.
                            let _ = node.ns.try_exec(&[
                                "bash",
                                "-c",
                                &format!("echo x > /dev/udp/127.0.0.1/{}", pod.host_port),
                            ]);
                            live.push(pod);
                        }
                        None => {
                            n.adds_failed += 1;
                            if del(&list, &pod, true, &mut rng, &mut n) {
                                gone_ports.insert(pod.host_port);
                            } else {
                                dying.push(pod);
                            }
                        }
                    }
                }
                0..=7 if !live.is_empty() => {
                    let mut pod = live.swap_remove(rng.below(live.len() as u64) as usize);
                    n.dels += 1;
                    if del(&list, &pod, true, &mut rng, &mut n) {
                        gone_ports.insert(pod.host_port);
                    } else {
                        pod.result.take();
                        dying.push(pod);
                    }
                }
                _ if !live.is_empty() => {
                    let pod = &live[rng.below(live.len() as u64) as usize];
                    n.checks += 1;
                    let path = pod.netns.path().display().to_string();
                    if let Err(e) =
                        list.check(&attachment(pod, &path), pod.result.as_ref().unwrap())
                    {
                        panic!(
                            "round {round}: CHECK of live pod {} failed: {}",
                            pod.id, e.stdout
                        );
                    }
                }
                _ => {}
            }
        }
        // The round ends: owed DELs go through (unkilled), GC runs with the valid list (a kill
        // in GC is retried, as the runtime's next GC would).
        for pod in dying.drain(..) {
            n.del_retries += 1;
            assert!(
                del(&list, &pod, false, &mut rng, &mut n),
                "unkilled DEL failed"
            );
            gone_ports.insert(pod.host_port);
        }
        let valid: Vec<(&str, &str)> = live.iter().map(|p| (p.id.as_str(), "eth0")).collect();
        for index in 0..list.plugin_count() {
            n.gcs += 1;
            let kill = rng.below(100) < KILL_PERCENT;
            match finish(list.spawn_gc(index, &valid), kill, &mut rng, &mut n) {
                Ended::Succeeded(_) => {}
                Ended::Killed => {
                    let out = plugin_output(list.spawn_gc(index, &valid));
                    assert_eq!(out.code, 0, "round {round}: GC failed: {}", out.stdout);
                }
                Ended::Failed(out) => panic!("round {round}: GC failed: {}", out.stdout),
            }
        }
        check_round(&node, &list, &live, &gone_ports, round);
    }
    for pod in live.drain(..) {
        assert!(del(&list, &pod, false, &mut rng, &mut Counts::default()));
    }
    check_round(&node, &list, &[], &BTreeSet::new(), rounds);
    println!(
        "kill everywhere: {rounds} rounds, {} operations in {:.0?}: {} plugin calls, {} SIGKILLs ({} of them to a delegate), {} ADDs ({} killed), {} DELs, {} DEL retries, {} CHECKs, {} GC calls; after every round: no lease, veth, ifb, portmap element or UDP conntrack entry of a gone pod, no address twice, every live pod's CHECK passing",
        rounds * OPS_PER_ROUND,
        started.elapsed(),
        n.calls,
        n.kills,
        n.killed_delegates,
        n.adds,
        n.adds_failed,
        n.dels,
        n.del_retries,
        n.checks,
        n.gcs
    );
}

fn check_round(
    node: &Node,
    list: &Conflist<'_>,
    live: &[Pod],
    gone_ports: &BTreeSet<u16>,
    round: usize,
) {
    let context = || {
        format!(
            "round {round}\nlinks:\n{}\nnft:\n{}",
            node.text(&["ip", "-o", "link"]),
            node.text(&["nft", "list", "ruleset"])
        )
    };
    // Leases: exactly the live pods' addresses, each held by its pod.
    let mut wanted = BTreeMap::new();
    for pod in live {
        for address in test_support::result_addresses(pod.result.as_ref().unwrap()) {
            let before = wanted.insert(address.clone(), pod.id.clone());
            assert!(
                before.is_none(),
                "{address} held twice: {before:?} and {}\n{}",
                pod.id,
                context()
            );
            assert!(
                node.text(&["ip", "netns", "exec", &pod.netns.name, "ip", "-o", "addr"])
                    .contains(&format!(" {address}/")),
                "{} does not hold {address}",
                pod.id
            );
        }
    }
    assert_eq!(node.leases(), wanted, "leases\n{}", context());
    // Links: one host veth and one ifb per live pod, nothing else.
    let veths: BTreeSet<String> = live
        .iter()
        .map(|p| {
            p.result.as_ref().unwrap()["interfaces"][1]["name"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(node.links("veth"), veths, "veths\n{}", context());
    assert_eq!(node.links("ifb").len(), live.len(), "ifbs\n{}", context());
    // Portmap: elements of live pods only; no UDP flow to a gone pod's hostPort.
    let portmap = node.text(&["nft", "list", "table", "inet", "tether-hostports"]);
    let owners: BTreeSet<&str> = portmap
        .split("comment \"")
        .skip(1)
        .filter_map(|s| s.split('"').next())
        .filter(|c| c.starts_with("tether/"))
        .collect();
    let live_owners: BTreeSet<String> = live
        .iter()
        .map(|p| format!("tether/{}/eth0", p.id))
        .collect();
    assert_eq!(
        owners
            .iter()
            .map(|s| s.to_string())
            .collect::<BTreeSet<_>>(),
        live_owners,
        "portmap owners\n{}",
        context()
    );
    let conntrack = node.text(&["cat", "/proc/net/nf_conntrack"]);
    for port in gone_ports {
        assert!(
            !conntrack.contains(&format!("dport={port} ")),
            "a UDP entry of gone hostPort {port} is left:\n{conntrack}"
        );
    }
    // Every live pod's CHECK passes.
    for pod in live {
        let path = pod.netns.path().display().to_string();
        if let Err(e) = list.check(&attachment(pod, &path), pod.result.as_ref().unwrap()) {
            panic!(
                "round {round}: CHECK of {} failed: {}\n{}",
                pod.id,
                e.stdout,
                context()
            );
        }
    }
}
