//! Drives a running tether-csi controller over its unix socket: CreateVolume + DeleteVolume
//! pairs, one client at a time and 16 at once, against a real NFS share.
//!
//! `csi-bench SOCKET SERVER SHARE [pairs] [nfsvers]`

use std::path::PathBuf;
use std::time::{Duration, Instant};

use tether_bench::csi::{connect, request};
use tether_bench::{ms, print_table, stats};
use tether_csi_proto::v1::{self as csi, controller_client::ControllerClient};
use tonic::transport::Channel;

/// One CreateVolume + DeleteVolume; returns (create, delete) latency.
async fn pair(
    client: &mut ControllerClient<Channel>,
    target: &(String, String, String),
    name: String,
) -> (Duration, Duration) {
    let (server, share, vers) = target;
    let started = Instant::now();
    let volume = client
        .create_volume(request(server, share, vers, name))
        .await
        .expect("CreateVolume")
        .into_inner()
        .volume
        .expect("a volume");
    let created = started.elapsed();
    let started = Instant::now();
    client
        .delete_volume(csi::DeleteVolumeRequest {
            volume_id: volume.volume_id,
            ..Default::default()
        })
        .await
        .expect("DeleteVolume");
    (created, started.elapsed())
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 4 {
        eprintln!("usage: csi-bench SOCKET SERVER SHARE [pairs] [nfsvers]");
        std::process::exit(2);
    }
    let socket = PathBuf::from(&args[1]);
    let pairs: usize = args.get(4).and_then(|n| n.parse().ok()).unwrap_or(500);
    let vers = args.get(5).cloned().unwrap_or_else(|| "4.1".into());
    let target = (args[2].clone(), args[3].clone(), vers);

    let mut client = connect(&socket.display().to_string()).await;
    for i in 0..20 {
        pair(&mut client, &target, format!("warmup-{i}")).await;
    }

    let mut rows = Vec::new();
    for clients in [1usize, 16] {
        let started = Instant::now();
        let mut tasks = Vec::new();
        for c in 0..clients {
            let socket = socket.clone();
            let target = target.clone();
            let count = pairs / clients + usize::from(c < pairs % clients);
            tasks.push(tokio::spawn(async move {
                let mut client = connect(&socket.display().to_string()).await;
                let mut samples = Vec::new();
                for i in 0..count {
                    let name = format!("bench-{clients}-{c}-{i}");
                    samples.push(pair(&mut client, &target, name).await);
                }
                samples
            }));
        }
        let mut creates = Vec::new();
        let mut deletes = Vec::new();
        let mut both = Vec::new();
        for task in tasks {
            for (create, delete) in task.await.expect("client task") {
                creates.push(create);
                deletes.push(delete);
                both.push(create + delete);
            }
        }
        let wall = started.elapsed();
        let (c, d, b) = (stats(&mut creates), stats(&mut deletes), stats(&mut both));
        rows.push(vec![
            clients.to_string(),
            ms(c.p50),
            ms(c.p99),
            ms(d.p50),
            ms(d.p99),
            ms(b.p50),
            ms(b.p99),
            format!("{:.0}", both.len() as f64 / wall.as_secs_f64()),
        ]);
    }
    print_table(
        &[
            "clients",
            "Create p50 ms",
            "Create p99 ms",
            "Delete p50 ms",
            "Delete p99 ms",
            "Create+Delete p50 ms",
            "Create+Delete p99 ms",
            "volumes/s (create+delete)",
        ],
        &rows,
    );
}
