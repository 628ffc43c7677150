//! Shared pieces of the benchmark drivers: running a CNI plugin as a runtime would, timing it,
//! and printing comparison tables.

pub mod csi;

use std::io::Write;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// One plugin call: its wall time from spawn to exit, and what it printed.
pub struct Call {
    pub elapsed: Duration,
    pub ok: bool,
    pub stdout: Value,
}

/// Runs `plugin` with the CNI environment and `conf` on stdin, timing spawn to exit.
pub fn call(
    plugin: &Path,
    command: &str,
    id: &str,
    netns: &str,
    cni_path: &str,
    conf: &[u8],
) -> Call {
    call_in(None, plugin, command, id, netns, cni_path, conf)
}

/// Like [`call`], with the plugin process started inside the network namespace `node` (a
/// simulated node), entered in the child before exec so no wrapper process is timed.
pub fn call_in(
    node: Option<&std::fs::File>,
    plugin: &Path,
    command: &str,
    id: &str,
    netns: &str,
    cni_path: &str,
    conf: &[u8],
) -> Call {
    let mut cmd = Command::new(plugin);
    if let Some(ns) = node {
        let fd = ns.as_raw_fd();
        // SAFETY: only setns runs between fork and exec, which is async-signal-safe; the fd stays
        // open for the lifetime of `node`, which outlives the spawn.
        unsafe {
            cmd.pre_exec(move || {
                nix::sched::setns(
                    BorrowedFd::borrow_raw(fd),
                    nix::sched::CloneFlags::CLONE_NEWNET,
                )
                .map_err(std::io::Error::from)
            });
        }
    }
    cmd.env_clear()
        .env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", id)
        .env("CNI_IFNAME", "eth0")
        .env("CNI_NETNS", netns)
        .env("CNI_PATH", cni_path)
        // As a runtime does: plugins that run tools (the reference portmap's iptables) find them.
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    let start = Instant::now();
    let output = cmd.spawn().and_then(|mut child| {
        if let Some(mut stdin) = child.stdin.take() {
            stdin.write_all(conf)?;
        }
        child.wait_with_output()
    });
    let elapsed = start.elapsed();
    match output {
        Ok(out) => Call {
            elapsed,
            ok: out.status.success(),
            stdout: serde_json::from_slice(&out.stdout).unwrap_or(Value::Null),
        },
        Err(e) => Call {
            elapsed,
            ok: false,
            stdout: Value::String(e.to_string()),
        },
    }
}

/// Latency summary of many calls.
#[derive(Clone, Copy)]
pub struct Stats {
    pub p50: Duration,
    pub p99: Duration,
}

pub fn stats(samples: &mut [Duration]) -> Stats {
    samples.sort();
    let pick = |q: f64| {
        if samples.is_empty() {
            return Duration::ZERO;
        }
        let idx = ((samples.len() as f64 - 1.0) * q).round() as usize;
        samples[idx]
    };
    Stats {
        p50: pick(0.50),
        p99: pick(0.99),
    }
}

pub fn ms(d: Duration) -> String {
    format!("{:.2}", d.as_secs_f64() * 1000.0)
}

/// `ours / reference`, printed as a ratio (lower is better for latency).
pub fn ratio(ours: Duration, reference: Duration) -> String {
    if reference.is_zero() {
        return "-".into();
    }
    format!("{:.2}x", ours.as_secs_f64() / reference.as_secs_f64())
}

/// A network namespace made for a benchmark, deleted on drop.
pub struct BenchNs {
    pub name: String,
}

impl BenchNs {
    pub fn new(name: String) -> BenchNs {
        let _ = Command::new("ip").args(["netns", "del", &name]).output();
        let ok = Command::new("ip")
            .args(["netns", "add", &name])
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "cannot create netns {name}");
        BenchNs { name }
    }

    pub fn path(&self) -> String {
        format!("/var/run/netns/{}", self.name)
    }

    pub fn open(&self) -> std::fs::File {
        std::fs::File::open(self.path()).unwrap_or_else(|e| panic!("opening {}: {e}", self.path()))
    }

    /// Runs a command inside the namespace and returns its stdout.
    pub fn exec(&self, args: &[&str]) -> String {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.name])
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("ip netns exec {}: {e}", self.name));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for BenchNs {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

/// Prints the latency comparison table: per operation, both implementations' p50 and p99 and the
/// ratios `ours / reference`. Rows are `(operation, ours, reference)`.
pub fn print_latency_table(reference: &str, ours: &str, rows: &[(String, Stats, Stats)]) {
    let header = [
        "operation".to_string(),
        format!("{reference} p50 ms"),
        format!("{ours} p50 ms"),
        "p50 ratio".to_string(),
        format!("{reference} p99 ms"),
        format!("{ours} p99 ms"),
        "p99 ratio".to_string(),
    ];
    let rows: Vec<Vec<String>> = rows
        .iter()
        .map(|(what, o, r)| {
            vec![
                what.clone(),
                ms(r.p50),
                ms(o.p50),
                ratio(o.p50, r.p50),
                ms(r.p99),
                ms(o.p99),
                ratio(o.p99, r.p99),
            ]
        })
        .collect();
    print_table(
        &header.iter().map(String::as_str).collect::<Vec<_>>(),
        &rows,
    );
}

/// Prints a Markdown table row by row.
pub fn print_table(header: &[&str], rows: &[Vec<String>]) {
    println!("| {} |", header.join(" | "));
    println!(
        "|{}|",
        header.iter().map(|_| "---").collect::<Vec<_>>().join("|")
    );
    for row in rows {
        println!("| {} |", row.join(" | "));
    }
}

/// A `/proc/PID/status` field in KiB (`VmRSS:`, `VmHWM:`); 0 when unreadable.
pub fn status_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix(field)?
                .trim()
                .strip_suffix("kB")?
                .trim()
                .parse()
                .ok()
        })
        .unwrap_or(0)
}

/// A bridge plugin and its IPAM plugin, in one directory.
pub struct Implementation {
    pub label: &'static str,
    pub bridge: &'static str,
    pub ipam: &'static str,
    pub dir: std::path::PathBuf,
}

impl Implementation {
    /// cni-bridge + cni-ipam in `dir`.
    pub fn tether(dir: &str) -> Implementation {
        Implementation {
            label: "tether",
            bridge: "cni-bridge",
            ipam: "cni-ipam",
            dir: dir.into(),
        }
    }

    /// The reference bridge + host-local in `dir`.
    pub fn reference(dir: &str) -> Implementation {
        Implementation {
            label: "reference",
            bridge: "bridge",
            ipam: "host-local",
            dir: dir.into(),
        }
    }
}
