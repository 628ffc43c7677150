//! Test helpers. Everything a test creates here is named `tt-<tag>-<pid>` and removed when its
//! guard drops, also when the test fails or panics.

#![allow(clippy::unwrap_used)] // Test helpers fail loudly by design.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use serde_json::Value;

pub mod apiserver;
pub mod chain;
pub mod ganesha;
pub mod helpers;
pub mod kube_proxy;
pub mod nfs_agent;
pub mod policy_world;
pub mod probe;
pub mod reference;
pub mod responder;
pub mod storage;
pub mod tls;

/// Whether kernel tests can run (they need root). Tests call [`require_root`] instead of skipping
/// silently, so a non-root run fails loudly rather than passing without testing anything.
pub fn require_root() {
    let uid = current_uid();
    assert_eq!(
        uid, 0,
        "kernel tests must run as root (as root: scripts/test.sh)"
    );
}

fn current_uid() -> u32 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|u| u.parse().ok())
        .unwrap()
}

/// Runs `program` with `args`, panicking with its output if it fails.
pub fn run_ok(program: &str, args: &[&str]) {
    let out = Command::new(program).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{program} {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs a command, panicking with its output if it fails.
pub fn sh(program: &str, args: &[&str]) -> String {
    let out = Command::new(program).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{program} {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Runs a command and returns its output whatever happens.
pub fn try_sh(program: &str, args: &[&str]) -> Output {
    Command::new(program).args(args).output().unwrap()
}

/// A named network namespace, deleted on drop.
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new(tag: &str) -> Netns {
        let name = unique(tag);
        sh("ip", &["netns", "add", &name]);
        let ns = Netns { name };
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    pub fn path(&self) -> PathBuf {
        Path::new("/var/run/netns").join(&self.name)
    }

    /// Runs a command inside the namespace, panicking on failure.
    pub fn exec(&self, args: &[&str]) -> String {
        let mut full = vec!["netns", "exec", &self.name];
        full.extend_from_slice(args);
        sh("ip", &full)
    }

    pub fn try_exec(&self, args: &[&str]) -> Output {
        let mut full = vec!["netns", "exec", &self.name];
        full.extend_from_slice(args);
        try_sh("ip", &full)
    }

    /// `ip <args>` inside the namespace.
    pub fn ip(&self, args: &[&str]) -> String {
        let mut full = vec!["-n", &self.name];
        full.extend_from_slice(args);
        sh("ip", &full)
    }

    /// `ip -j <args>` inside the namespace, parsed.
    pub fn ip_json(&self, args: &[&str]) -> Value {
        let mut full = vec!["-j", "-n", &self.name];
        full.extend_from_slice(args);
        serde_json::from_str(&sh("ip", &full)).unwrap_or(Value::Array(vec![]))
    }

    /// Whether a link of that name exists in the namespace.
    pub fn has_link(&self, name: &str) -> bool {
        try_sh("ip", &["-n", &self.name, "link", "show", name])
            .status
            .success()
    }

    /// Pings `target` from inside the namespace: true when it answers.
    pub fn ping(&self, target: &str) -> bool {
        self.try_exec(&["ping", "-c", "1", "-W", "2", target])
            .status
            .success()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = try_sh("ip", &["netns", "del", &self.name]);
    }
}

impl Netns {
    /// Cables this namespace to `peer` with a veth pair, `ours` here holding `our_addr` and
    /// `theirs` there holding `their_addr` (CIDR), both up, without duplicate address detection
    /// to wait for on the fresh links. The pair goes with either namespace.
    pub fn cable(&self, ours: &str, our_addr: &str, peer: &Netns, theirs: &str, their_addr: &str) {
        self.ip(&[
            "link", "add", ours, "type", "veth", "peer", "name", theirs, "netns", &peer.name,
        ]);
        for (ns, link, addr) in [(self, ours, our_addr), (peer, theirs, their_addr)] {
            let _ = ns.try_exec(&[
                "sysctl",
                "-qw",
                &format!("net.ipv6.conf.{link}.accept_dad=0"),
            ]);
            ns.ip(&["addr", "add", addr, "dev", link]);
            ns.ip(&["link", "set", link, "up"]);
        }
    }
}

/// Runs `command` inside a QEMU guest with Debian's kernel (`tests/vm/run.sh`, `timeout` in
/// seconds) that must run exactly one inner test and pass it; its output. A renamed or filtered
/// inner test would otherwise run nothing and still exit 0.
pub fn run_one_test_in_vm(timeout: u32, command: &[&std::ffi::OsStr]) -> String {
    let run = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/vm/run.sh");
    let out = Command::new("bash")
        .arg(run)
        .args(["--timeout", &timeout.to_string(), "--"])
        .args(command)
        .output()
        .unwrap();
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "the test inside the VM failed: {}\n{report}",
        out.status
    );
    assert!(
        report.contains("test result: ok. 1 passed"),
        "the test did not run inside the VM:\n{report}"
    );
    report
}

/// The addresses (without prefix length) of a CNI result's `ips`, in order.
pub fn result_addresses(result: &Value) -> Vec<String> {
    result["ips"]
        .as_array()
        .map(|ips| {
            ips.iter()
                .filter_map(|ip| ip["address"].as_str())
                .map(|a| a.split('/').next().unwrap_or(a).to_string())
                .collect()
        })
        .unwrap_or_default()
}

/// A CNI result's first address of one family.
pub fn result_address(result: &Value, v6: bool) -> Option<String> {
    result_addresses(result)
        .into_iter()
        .find(|a| a.contains(':') == v6)
}

/// The conflist deploy/ installs (ConfigMap `tether-cni`, generated from this file).
pub fn deployed_conflist() -> String {
    std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../deploy/components/node-config/10-tether.conflist"),
    )
    .unwrap()
}

/// A host link (bridge, veth...) deleted on drop.
pub struct HostLink {
    pub name: String,
}

impl Drop for HostLink {
    fn drop(&mut self) {
        let _ = try_sh("ip", &["link", "del", &self.name]);
    }
}

/// A binary of another workspace package, built next to this test's binaries if missing.
pub fn workspace_binary(next_to: &Path, name: &str) -> PathBuf {
    let dir = next_to.parent().unwrap();
    let path = dir.join(name);
    if !path.exists() {
        let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
            .args(["build", "-q", "-p", name])
            .status()
            .unwrap();
        assert!(status.success(), "building {name} failed");
    }
    assert!(path.exists(), "{} is missing", path.display());
    path
}

/// `tt-<tag>-<pid>`, shortened to fit where interface names must (15 bytes).
pub fn unique(tag: &str) -> String {
    format!("tt-{tag}-{}", std::process::id())
}

/// A short unique interface name (at most 15 bytes) for a test.
pub fn ifname(tag: &str) -> String {
    let name = format!("t{tag}{}", std::process::id() % 100_000);
    assert!(name.len() <= 15, "{name} is too long for an interface name");
    name
}

/// What a plugin printed and how it exited.
#[derive(Debug)]
pub struct PluginOut {
    pub code: i32,
    pub json: Value,
    pub stdout: String,
    pub stderr: String,
}

impl PluginOut {
    pub fn ok(self) -> Value {
        assert_eq!(
            self.code, 0,
            "expected success: {} {}",
            self.stdout, self.stderr
        );
        self.json
    }

    pub fn err(self, code: u64) -> Value {
        assert_ne!(
            self.code, 0,
            "expected error {code}, got success: {}",
            self.stdout
        );
        assert_eq!(
            self.json["code"], code,
            "wrong error: {} {}",
            self.stdout, self.stderr
        );
        self.json
    }
}

/// Executes a CNI plugin as a runtime does.
pub fn run_plugin(binary: &Path, env: &[(&str, &str)], stdin: &Value) -> PluginOut {
    run_plugin_in(None, binary, env, stdin)
}

/// Executes a CNI plugin inside a namespace (a simulated node) as a runtime there would.
pub fn run_plugin_in(
    node: Option<&Netns>,
    binary: &Path,
    env: &[(&str, &str)],
    stdin: &Value,
) -> PluginOut {
    plugin_output(spawn_plugin_in(node, binary, env, stdin))
}

/// Starts a CNI plugin like [`run_plugin_in`] (its configuration written, its output piped) and
/// returns at once: the process is the plugin itself (`ip netns exec` execs it), for a test to
/// signal. [`plugin_output`] collects it.
pub fn spawn_plugin_in(
    node: Option<&Netns>,
    binary: &Path,
    env: &[(&str, &str)],
    stdin: &Value,
) -> std::process::Child {
    let mut cmd = match node {
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", &ns.name]).arg(binary);
            c
        }
        None => Command::new(binary),
    };
    cmd.env_clear();
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // A plugin may exit before reading its configuration (a bad environment): the closed pipe
    // is no failure of the test, as runtimes ignore it too.
    match child
        .stdin
        .take()
        .unwrap()
        .write_all(&serde_json::to_vec(stdin).unwrap())
    {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {}
        other => other.unwrap(),
    }
    child
}

/// Waits for a plugin started by [`spawn_plugin_in`]: its exit code (-1 when killed by a
/// signal), its parsed stdout (Null when empty or, for a killed plugin, unreadable).
pub fn plugin_output(child: std::process::Child) -> PluginOut {
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8(out.stdout).unwrap();
    let json = if stdout.trim().is_empty() {
        Value::Null
    } else if out.status.code().is_none() {
        serde_json::from_str(&stdout).unwrap_or(Value::Null)
    } else {
        serde_json::from_str(&stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {stdout:?}"))
    };
    PluginOut {
        code: out.status.code().unwrap_or(-1),
        json,
        stdout,
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}
