//! tether-csi's controller at scale: many volumes on one share. Subcommands (bench/csi-scale.sh
//! runs them around controller restarts):
//!
//! - `fill SOCKET SERVER SHARE COUNT VERS [CSV]`: CreateVolume COUNT volumes with 16 clients;
//!   latency per tenth of the fill (and a CSV of every call for plotting).
//! - `list SOCKET`: ListVolumes of everything, 500 per page; GetCapacity.
//! - `burst SOCKET SERVER SHARE VERS`: 100 clients creating at once (csi-provisioner's default
//!   `--worker-threads`), then deleting.
//! - `drain SOCKET COUNT [CSV]`: DeleteVolume every volume `fill` made, 16 clients.

use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tether_bench::csi::{connect, request};
use tether_bench::{ms, print_table, stats};
use tether_csi_proto::v1::{self as csi, controller_client::ControllerClient};
use tokio::sync::Mutex;
use tonic::transport::Channel;

const CLIENTS: usize = 16;

fn volume_id(server: &str, share: &str, vers: &str, i: usize) -> String {
    let v = if vers == "3" { '3' } else { '4' };
    format!("vd{v}#{server}#{share}#scale-{i:06}")
}

/// Runs `op(i)` for i in 0..count with `clients` workers; returns (index, latency) per call.
async fn run_all<F, Fut>(
    count: usize,
    clients: usize,
    socket: &str,
    op: F,
) -> Vec<(usize, Duration)>
where
    F: Fn(ControllerClient<Channel>, usize) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let next = Arc::new(Mutex::new(0usize));
    let op = Arc::new(op);
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let (next, op) = (next.clone(), op.clone());
        let client = connect(socket).await;
        tasks.push(tokio::spawn(async move {
            let mut samples = Vec::new();
            loop {
                let i = {
                    let mut n = next.lock().await;
                    if *n >= count {
                        break;
                    }
                    *n += 1;
                    *n - 1
                };
                let started = Instant::now();
                op(client.clone(), i).await;
                samples.push((i, started.elapsed()));
            }
            samples
        }));
    }
    let mut all = Vec::new();
    for task in tasks {
        all.extend(task.await.expect("worker"));
    }
    all.sort_by_key(|(i, _)| *i);
    all
}

/// p50/p99 per tenth of the run, in call order.
fn by_tenth(what: &str, samples: &[(usize, Duration)]) {
    let tenth = samples.len().div_ceil(10).max(1);
    let rows: Vec<Vec<String>> = samples
        .chunks(tenth)
        .enumerate()
        .map(|(k, chunk)| {
            let mut d: Vec<Duration> = chunk.iter().map(|(_, d)| *d).collect();
            let s = stats(&mut d);
            vec![
                format!("{}-{}", k * tenth + 1, k * tenth + chunk.len()),
                ms(s.p50),
                ms(s.p99),
            ]
        })
        .collect();
    println!("\n{what}");
    print_table(&["volumes on the share", "p50 ms", "p99 ms"], &rows);
}

fn write_csv(path: Option<&String>, what: &str, samples: &[(usize, Duration)]) {
    let Some(path) = path else { return };
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .expect("CSV file");
    for (i, d) in samples {
        let _ = writeln!(file, "{what},{i},{:.3}", d.as_secs_f64() * 1000.0);
    }
}

async fn fill(args: &[String]) {
    let (socket, server, share) = (args[0].clone(), args[1].clone(), args[2].clone());
    let count: usize = args[3].parse().expect("COUNT");
    let vers = args[4].clone();
    let started = Instant::now();
    let samples = run_all(count, CLIENTS, &socket, move |mut c, i| {
        let r = request(&server, &share, &vers, format!("scale-{i:06}"));
        async move {
            c.create_volume(r).await.expect("CreateVolume");
        }
    })
    .await;
    let wall = started.elapsed();
    by_tenth(
        &format!(
            "CreateVolume, {CLIENTS} clients: {count} volumes in {:.1} s ({:.0}/s)",
            wall.as_secs_f64(),
            count as f64 / wall.as_secs_f64()
        ),
        &samples,
    );
    write_csv(args.get(5), "create", &samples);
}

async fn list(args: &[String]) {
    let mut c = connect(&args[0]).await;
    let started = Instant::now();
    let (mut pages, mut volumes, mut token) = (0, 0, String::new());
    let mut first = Duration::ZERO;
    loop {
        let page = c
            .list_volumes(csi::ListVolumesRequest {
                max_entries: 500,
                starting_token: token,
            })
            .await
            .expect("ListVolumes")
            .into_inner();
        if pages == 0 {
            first = started.elapsed();
        }
        pages += 1;
        volumes += page.entries.len();
        if page.next_token.is_empty() {
            break;
        }
        token = page.next_token;
    }
    let all = started.elapsed();
    let mut capacity = Vec::new();
    for _ in 0..20 {
        let t = Instant::now();
        c.get_capacity(csi::GetCapacityRequest::default())
            .await
            .expect("GetCapacity");
        capacity.push(t.elapsed());
    }
    let cap = stats(&mut capacity);
    println!();
    print_table(
        &["call", "result", "ms"],
        &[
            vec![
                "ListVolumes, first page of 500".into(),
                format!("{volumes} volumes in {pages} pages"),
                ms(first),
            ],
            vec![
                "ListVolumes, every page".into(),
                format!("{:.0} volumes/s", volumes as f64 / all.as_secs_f64()),
                ms(all),
            ],
            vec![
                "GetCapacity p50 / p99".into(),
                "-".into(),
                format!("{} / {}", ms(cap.p50), ms(cap.p99)),
            ],
        ],
    );
}

async fn burst(args: &[String]) {
    let (socket, server, share, vers) = (
        args[0].clone(),
        args[1].clone(),
        args[2].clone(),
        args[3].clone(),
    );
    let clients = 100;
    let (s2, sh2, v2) = (server.clone(), share.clone(), vers.clone());
    let started = Instant::now();
    let mut creates = run_all(clients, clients, &socket, move |mut c, i| {
        let r = request(&s2, &sh2, &v2, format!("burst-{i:03}"));
        async move {
            c.create_volume(r).await.expect("CreateVolume in a burst");
        }
    })
    .await;
    let create_wall = started.elapsed();
    let started = Instant::now();
    let mut deletes = run_all(clients, clients, &socket, move |mut c, i| {
        let v = if vers == "3" { '3' } else { '4' };
        let id = format!("vd{v}#{server}#{share}#burst-{i:03}");
        async move {
            c.delete_volume(csi::DeleteVolumeRequest {
                volume_id: id,
                ..Default::default()
            })
            .await
            .expect("DeleteVolume in a burst");
        }
    })
    .await;
    let delete_wall = started.elapsed();
    let mut c: Vec<Duration> = creates.drain(..).map(|(_, d)| d).collect();
    let mut d: Vec<Duration> = deletes.drain(..).map(|(_, d)| d).collect();
    let (c, d) = (stats(&mut c), stats(&mut d));
    println!();
    print_table(
        &["100 clients at once", "p50 ms", "p99 ms", "all done in ms"],
        &[
            vec!["CreateVolume".into(), ms(c.p50), ms(c.p99), ms(create_wall)],
            vec!["DeleteVolume".into(), ms(d.p50), ms(d.p99), ms(delete_wall)],
        ],
    );
}

async fn drain(args: &[String]) {
    let (socket, server, share) = (args[0].clone(), args[1].clone(), args[2].clone());
    let count: usize = args[3].parse().expect("COUNT");
    let vers = args[4].clone();
    let started = Instant::now();
    let samples = run_all(count, CLIENTS, &socket, move |mut c, i| {
        let id = volume_id(&server, &share, &vers, i);
        async move {
            c.delete_volume(csi::DeleteVolumeRequest {
                volume_id: id,
                ..Default::default()
            })
            .await
            .expect("DeleteVolume");
        }
    })
    .await;
    // Volumes left on the share, in call order: the first deletes see a full share.
    let samples: Vec<(usize, Duration)> = samples
        .into_iter()
        .map(|(i, d)| (count - i, d))
        .rev()
        .collect();
    let wall = started.elapsed();
    by_tenth(
        &format!(
            "DeleteVolume, {CLIENTS} clients: {count} volumes in {:.1} s ({:.0}/s)",
            wall.as_secs_f64(),
            count as f64 / wall.as_secs_f64()
        ),
        &samples,
    );
    write_csv(args.get(5), "delete", &samples);
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let usage = "usage: csi-scale fill SOCKET SERVER SHARE COUNT VERS [CSV] | list SOCKET | \
                 burst SOCKET SERVER SHARE VERS | drain SOCKET SERVER SHARE COUNT VERS [CSV]";
    let Some((command, rest)) = args.split_first() else {
        eprintln!("{usage}");
        std::process::exit(2);
    };
    let enough = |n: usize| {
        if rest.len() < n {
            eprintln!("{usage}");
            std::process::exit(2);
        }
    };
    match command.as_str() {
        "fill" => {
            enough(5);
            fill(rest).await
        }
        "list" => {
            enough(1);
            list(rest).await
        }
        "burst" => {
            enough(4);
            burst(rest).await
        }
        "drain" => {
            enough(5);
            drain(rest).await
        }
        _ => {
            eprintln!("{usage}");
            std::process::exit(2);
        }
    }
}
