//! tether-overlayd: one per node. Leases the node's pod subnet from the datastore, publishes its
//! VTEP, writes the node facts for the CNI plugin, and keeps the kernel's VXLAN entries for every
//! other node in step with the datastore: at start-up, on every change, and on a resync timer.

pub mod clamp;
pub mod config;
mod datastore;
pub mod error;
mod etcd;
mod kernel;
pub mod kube;
mod masq;
pub mod metrics;
mod path;
mod purge;
pub mod state;
mod sync;
mod wanted;

use std::sync::Arc;
use std::time::Duration;

use ipnetwork::IpNetwork;

use cni_core::teardown::Failures;

use crate::facts::NodeFacts;
use config::{Args, ClusterCidrs, DatastoreKind};
use datastore::Datastore;
pub use error::DaemonError;
use etcd::EtcdStore;
use kernel::Kernel;
use kube::KubeStore;
use metrics::Metrics;
use state::{NodeSubnets, Vtep};
use sync::{Sync, Work};

const BACKOFF_MAX: Duration = Duration::from_secs(30);

/// Exponential backoff between datastore retries; every failure counts as a datastore error.
struct Backoff {
    delay: Duration,
}

impl Backoff {
    fn new() -> Backoff {
        Backoff {
            delay: Duration::from_millis(200),
        }
    }

    async fn failed(&mut self, metrics: &Metrics, what: &str, error: DaemonError) {
        metrics.datastore_errors.inc();
        tracing::warn!(%error, retry_in = ?self.delay, "{what} failed");
        tokio::time::sleep(self.delay).await;
        self.delay = (self.delay * 2).min(BACKOFF_MAX);
    }
}

/// The underlay: the interface or address configured; else the address the cluster knows the
/// node by (the Node's InternalIP, which kubelet's `--node-ip` may put on another link than the
/// default route's); else the default-route interface. Says which in the log.
async fn choose_underlay<S: Datastore>(
    args: &Args,
    store: &mut S,
    kernel: &mut Kernel,
) -> Result<(), DaemonError> {
    let chosen_by = if args.underlay_address.is_some() {
        "--underlay-address"
    } else if args.iface.is_some() {
        "--iface"
    } else {
        match store.node_ip().await {
            Some(ip) if kernel.adopt_underlay_address(ip)? => "the Node's InternalIP",
            _ => "the default route's interface",
        }
    };
    tracing::info!(underlay = %kernel.underlay.name, address = %kernel.underlay.address, chosen_by, "underlay");
    Ok(())
}

/// Registers until it works. Only a configuration error (say, a podCIDR outside the cluster CIDR)
/// ends the retries.
async fn register<S: Datastore>(
    args: &Args,
    store: &mut S,
    kernel: &Kernel,
    metrics: &Metrics,
    clusters: ClusterCidrs,
    hint: Option<IpNetwork>,
) -> Result<NodeSubnets, DaemonError> {
    let mut backoff = Backoff::new();
    loop {
        let mac = kernel.vtep_mac();
        let vtep = Vtep {
            node: &args.node_name,
            mac: &mac,
            underlay_ip: kernel.underlay.ip(),
        };
        let sizes = (args.subnet_size, args.subnet_size_v6);
        match store.register(&vtep, clusters, sizes, hint).await {
            Ok(subnets) => return Ok(subnets),
            Err(e) if e.is_fatal() => return Err(e),
            Err(e) => {
                backoff.failed(metrics, "registering", e).await;
                if let Err(e) = store.recover().await {
                    tracing::warn!(error = %e, "reconnecting to the datastore failed");
                }
            }
        }
    }
}

/// Runs the daemon until SIGTERM or SIGINT. The signal is honoured at any point, also while the
/// datastore is unreachable and a retry loop is waiting: dropping the work in flight is safe
/// because every file write is atomic, netlink calls are synchronous, and the kernel entries are
/// meant to outlive the daemon.
pub async fn run(args: Args) -> Result<(), DaemonError> {
    use tokio::signal::unix::{signal, SignalKind};
    let handler = |signal| move |source| DaemonError::Signal { signal, source };
    let mut terminate = signal(SignalKind::terminate()).map_err(handler("SIGTERM"))?;
    let mut interrupt = signal(SignalKind::interrupt()).map_err(handler("SIGINT"))?;
    tokio::select! {
        result = serve(args) => result,
        _ = terminate.recv() => {
            tracing::info!("stopping on SIGTERM; kernel entries stay in place");
            Ok(())
        }
        _ = interrupt.recv() => {
            tracing::info!("stopping on SIGINT; kernel entries stay in place");
            Ok(())
        }
    }
}

async fn serve(args: Args) -> Result<(), DaemonError> {
    let clusters = args.validate()?;
    let kernel = Kernel::new(
        args.iface.as_deref(),
        args.underlay_address,
        args.vxlan_name(),
        args.vni,
        args.port,
        &args.node_name,
        args.vxlan_tx_checksum_off,
    )?;
    let metrics = Arc::new(Metrics::default());
    if let Some(addr) = args.metrics_addr {
        let listener = tether_observe::http::bind(addr)
            .await
            .map_err(|source| DaemonError::Metrics { addr, source })?;
        let window = Duration::from_secs(args.resync_seconds * 3 + 5);
        let mut endpoints = metrics.endpoints(window, !args.no_br_netfilter_check);
        endpoints
            .queries
            .push(path::query(kernel.vxlan_name().to_string()));
        tokio::spawn(tether_observe::http::serve(listener, Arc::new(endpoints)));
    }
    tracing::info!(node = %args.node_name, underlay = %kernel.underlay.name, address = %kernel.underlay.address, mtu = kernel.underlay.vxlan_mtu(), "starting");
    match args.datastore {
        DatastoreKind::Etcd => serve_with::<EtcdStore>(args, kernel, metrics, clusters).await,
        DatastoreKind::Kubernetes => serve_with::<KubeStore>(args, kernel, metrics, clusters).await,
    }
}

/// The daemon's life with the datastore `S`: connect, register, then reconcile on every change,
/// resync tick and keep-alive until stopped.
async fn serve_with<S: Datastore>(
    args: Args,
    mut kernel: Kernel,
    metrics: Arc<Metrics>,
    clusters: ClusterCidrs,
) -> Result<(), DaemonError> {
    let mut backoff = Backoff::new();
    let mut store = loop {
        match S::connect(&args).await {
            Ok(store) => break store,
            Err(e) if e.is_fatal() => return Err(e),
            Err(e) => {
                backoff
                    .failed(&metrics, "connecting to the datastore", e)
                    .await
            }
        }
    };
    if args.leave {
        return leave(&args, &mut store, &mut kernel).await;
    }
    choose_underlay(&args, &mut store, &mut kernel).await?;

    let hint = NodeFacts::read(&args.run_dir)
        .ok()
        .and_then(|f| f.subnets.iter().find(|s| s.is_ipv4()).copied());
    let mut subnets = register(&args, &mut store, &kernel, &metrics, clusters, hint).await?;
    tracing::info!(subnet = %subnets.v4, subnet_v6 = ?subnets.v6, vtep_mac = %kernel.vtep_mac(), "registered");

    publish_local(&args, &mut kernel, clusters, subnets)?;
    enable_forwarding()?;

    // -1: this daemon does not manage the conflist (no --cni-conflist).
    metrics
        .conflist_installed
        .set(if args.conflist().is_some() { 0 } else { -1 });
    let mut watch_backoff = Backoff::new();
    let mut resync = tokio::time::interval(Duration::from_secs(args.resync_seconds.max(1)));
    let mut keep_alive =
        tokio::time::interval(Duration::from_secs((args.lease_ttl as u64 / 3).max(1)));
    let mut announced = false;
    let mut sync = Sync::default();
    let mut work = Some(Work::Full);
    loop {
        if let Some(todo) = work.take() {
            let cx = sync::Context {
                args: &args,
                store: &mut store,
                kernel: &mut kernel,
                metrics: &metrics,
                clusters,
                subnets,
            };
            let done = sync.run(todo, cx).await;
            if done.ran {
                if !announced {
                    announced = announce_ready(&args, &mut store).await;
                    if announced && args.conflist().is_some() {
                        metrics.conflist_installed.set(1);
                    }
                }
                store.report_refused(&done.refused).await;
            } else {
                work = Some(Work::Full);
            }
        }
        let next = |work: &mut Option<Work>, more: Work| {
            *work = Some(match work.take() {
                Some(w) => w.and(more),
                None => more,
            });
        };
        tokio::select! {
            _ = resync.tick() => {
                next(&mut work, Work::Full);
                match kernel.refresh_underlay(args.iface.as_deref()) {
                    Ok(true) => {
                        // The VTEP moved: the device is recreated on the next ensure, and peers
                        // learn the new address from the renewed registration.
                        subnets = register(&args, &mut store, &kernel, &metrics, clusters, Some(subnets.v4)).await?;
                        if let Err(e) = publish_local(&args, &mut kernel, clusters, subnets) {
                            tracing::error!(error = %e, "updating the node after an underlay change failed");
                        }
                    }
                    Ok(false) => {}
                    Err(e) => tracing::error!(error = %e, "cannot read the underlay interface"),
                }
            }
            _ = keep_alive.tick() => {
                if let Err(e) = store.keep_alive().await {
                    metrics.datastore_errors.inc();
                    tracing::warn!(error = %e, "registration lost; registering again");
                    let renewed = register(&args, &mut store, &kernel, &metrics, clusters, Some(subnets.v4)).await?;
                    next(&mut work, Work::Full);
                    if renewed != subnets {
                        subnets = renewed;
                        if let Err(e) = publish_local(&args, &mut kernel, clusters, subnets) {
                            tracing::error!(error = %e, "updating the node for its new subnet failed");
                        }
                    }
                }
            }
            changed = store.changed() => {
                match changed {
                    Ok(changed) => {
                        watch_backoff = Backoff::new();
                        next(&mut work, changed.into());
                    }
                    Err(e) => {
                        next(&mut work, Work::All);
                        watch_backoff.failed(&metrics, "watching the datastore", e).await
                    }
                }
            }
        }
    }
}

/// The node-local side of the subnets: VXLAN device and addresses, facts file, masquerade.
fn publish_local(
    args: &Args,
    kernel: &mut Kernel,
    clusters: ClusterCidrs,
    subnets: NodeSubnets,
) -> Result<(), DaemonError> {
    let vxlan = kernel.ensure_vxlan(&subnets.all())?;
    let mtu = args
        .pod_mtu
        .resolve(args.direct_routing, kernel.underlay.mtu, vxlan.mtu);
    NodeFacts {
        node_name: args.node_name.clone(),
        subnets: subnets.all(),
        cluster_cidrs: clusters.all(),
        mtu,
        vxlan_device: kernel.vxlan_name().to_string(),
    }
    .write(&args.run_dir)?;
    masq::apply(subnets, clusters)?;
    clamp::apply(kernel.vxlan_name())
}

/// Once the node can serve pods: the conflist goes in place (until then kubelet keeps the
/// node NotReady) and the datastore hears the network is up. True once both are done.
async fn announce_ready<S: Datastore>(args: &Args, store: &mut S) -> bool {
    if let Some(conflist) = args.conflist() {
        match conflist.install() {
            Ok(changed) => {
                if changed {
                    tracing::info!(dir = %args.cni_conf_dir.display(), "conflist installed");
                }
            }
            Err(e) => {
                tracing::error!(error = %cni_core::error::chain(&e), "cannot install the conflist");
                return false;
            }
        }
    }
    match store.network_ready().await {
        Ok(()) => true,
        Err(e) => {
            tracing::warn!(error = %cni_core::error::chain(&e), "cannot mark the node's network available; retrying");
            false
        }
    }
}

/// Withdraws the node: registration, VXLAN device, masquerade, facts. Every step is tried; the
/// failures are reported together.
async fn leave<S: Datastore>(
    args: &Args,
    store: &mut S,
    kernel: &mut Kernel,
) -> Result<(), DaemonError> {
    let mut failures: Failures<DaemonError> = Failures::new("leaving step");
    if let Some(conflist) = args.conflist() {
        failures.note(conflist.remove());
    }
    failures.note(store.leave(&args.node_name).await);
    failures.note(kernel.remove_vxlan());
    failures.note(masq::remove());
    failures.note(crate::facts::remove(&args.run_dir));
    if args.purge {
        failures.note(purge(args));
        failures.note(remove_run_dir(&args.run_dir));
    }
    failures.finish_with(DaemonError::Several)?;
    tracing::info!(node = %args.node_name, "left the overlay");
    Ok(())
}

/// `--purge`: the chain's leftovers, named by the conflist the node was given.
fn purge(args: &Args) -> Result<(), DaemonError> {
    let source = args.cni_conflist.as_ref().ok_or_else(|| {
        DaemonError::Config(
            "--purge needs --cni-conflist (it names the bridge and directories)".into(),
        )
    })?;
    let text = std::fs::read_to_string(source).map_err(|e| {
        DaemonError::Config(format!("reading the conflist {}: {e}", source.display()))
    })?;
    purge::Leftovers::from_conflist(&text)?.remove()
}

/// The run directory goes too once nothing is left in it (the uninstall mounts its parent, so
/// that nothing recreates it).
fn remove_run_dir(dir: &std::path::Path) -> Result<(), DaemonError> {
    match std::fs::remove_dir(dir) {
        Ok(()) => {
            tracing::info!(dir = %dir.display(), "removed");
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::DirectoryNotEmpty => {
            tracing::warn!(dir = %dir.display(), "left in place: it holds files Tether did not put there");
            Ok(())
        }
        Err(e) => Err(DaemonError::KernelState(format!(
            "removing {}: {e}",
            dir.display()
        ))),
    }
}

fn enable_forwarding() -> Result<(), DaemonError> {
    cni_core::sysctl::enable_forwarding(false)?;
    Ok(())
}
