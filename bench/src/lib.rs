//! Shared pieces of the benchmark drivers: running a CNI plugin as a runtime would, timing it,
//! and printing comparison tables.

use std::io::Write;
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
    let start = Instant::now();
    let child = Command::new(plugin)
        .env_clear()
        .env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", id)
        .env("CNI_IFNAME", "eth0")
        .env("CNI_NETNS", netns)
        .env("CNI_PATH", cni_path)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn();
    let output = child.and_then(|mut child| {
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
