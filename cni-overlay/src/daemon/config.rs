//! tether-overlayd's command line; every flag can also come from an environment variable.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{ArgAction, Parser, ValueEnum};
use ipnetwork::IpNetwork;

use super::DaemonError;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DatastoreKind {
    Kubernetes,
    Etcd,
}

#[derive(Debug, Clone, Parser)]
#[command(
    name = "tether-overlayd",
    version,
    about = "Tether VXLAN overlay node daemon"
)]
pub struct Args {
    /// This node's name (the Kubernetes Node name, or any unique name with etcd).
    #[arg(long, env = "TETHER_NODE_NAME")]
    pub node_name: String,
    /// Pod address space of the whole cluster: CIDR[,CIDR6].
    #[arg(
        long,
        env = "TETHER_CLUSTER_CIDR",
        value_delimiter = ',',
        required = true
    )]
    pub cluster_cidr: Vec<IpNetwork>,
    #[arg(
        long,
        env = "TETHER_DATASTORE",
        value_enum,
        default_value = "kubernetes"
    )]
    pub datastore: DatastoreKind,
    /// Kubeconfig for the kubernetes datastore (in-cluster configuration otherwise).
    #[arg(long, env = "KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,
    #[arg(long, env = "TETHER_ETCD_ENDPOINTS", value_delimiter = ',')]
    pub etcd_endpoints: Vec<String>,
    #[arg(long, env = "TETHER_ETCD_PREFIX", default_value = "/tether/overlay")]
    pub etcd_prefix: String,
    /// Prefix length of each node's subnet.
    #[arg(long, env = "TETHER_SUBNET_SIZE", default_value_t = 24)]
    pub subnet_size: u8,
    /// Underlay interface (default: the one holding the default route).
    #[arg(long, env = "TETHER_IFACE")]
    pub iface: Option<String>,
    #[arg(long, env = "TETHER_VNI", default_value_t = 1)]
    pub vni: u32,
    #[arg(long, env = "TETHER_PORT", default_value_t = 8472)]
    pub port: u16,
    /// Route to nodes on the same L2 segment directly over the underlay instead of VXLAN.
    #[arg(long, env = "TETHER_DIRECT_ROUTING", action = ArgAction::SetTrue)]
    pub direct_routing: bool,
    #[arg(long, env = "TETHER_RUN_DIR", default_value = "/run/tether")]
    pub run_dir: PathBuf,
    /// Serve /healthz and /metrics here.
    #[arg(long, env = "TETHER_METRICS_ADDR")]
    pub metrics_addr: Option<SocketAddr>,
    /// Seconds a node's registration outlives the daemon (etcd lease TTL).
    #[arg(long, env = "TETHER_LEASE_TTL", default_value_t = 60)]
    pub lease_ttl: i64,
    /// Seconds between full reconciliations (changes in the datastore apply at once).
    #[arg(long, env = "TETHER_RESYNC_SECONDS", default_value_t = 10)]
    pub resync_seconds: u64,
    /// Turn TX checksum offload off on the VXLAN device: only for kernels with the old VXLAN
    /// UDP checksum bug; it costs throughput (measured 14.7 -> 2.7 Gbit/s).
    #[arg(long, env = "TETHER_VXLAN_TX_CSUM_OFF", action = ArgAction::SetTrue)]
    pub vxlan_tx_checksum_off: bool,
    /// Remove this node from the overlay (registration, VXLAN device, facts file) and exit.
    #[arg(long, action = ArgAction::SetTrue)]
    pub leave: bool,
}

impl Args {
    /// The IPv4 cluster CIDR (IPv6 pod networks are not supported yet).
    pub fn validate(&self) -> Result<IpNetwork, DaemonError> {
        let bad = |m: String| Err(DaemonError::Config(m));
        if self.vni == 0 || self.vni > 0x00ff_ffff {
            return bad(format!("--vni {} is outside 1-16777215", self.vni));
        }
        if self.port == 0 {
            return bad("--port must not be 0".into());
        }
        if self.node_name.is_empty() {
            return bad("--node-name is empty".into());
        }
        let Some(cidr) = self.cluster_cidr.iter().find(|c| c.is_ipv4()).copied() else {
            return bad(
                "--cluster-cidr needs an IPv4 CIDR (IPv6 pod networks are not supported yet)"
                    .into(),
            );
        };
        if self.cluster_cidr.iter().any(IpNetwork::is_ipv6) {
            return bad("IPv6 cluster CIDRs are not supported yet; give only the IPv4 one".into());
        }
        if cidr.ip() != cidr.network() {
            return bad(format!("--cluster-cidr {cidr} has host bits set"));
        }
        if self.subnet_size <= cidr.prefix() || self.subnet_size > 30 {
            return bad(format!(
                "--subnet-size /{} must be longer than the cluster CIDR /{} and at most /30",
                self.subnet_size,
                cidr.prefix()
            ));
        }
        if self.datastore == DatastoreKind::Etcd && self.etcd_endpoints.is_empty() {
            return bad("--datastore etcd needs --etcd-endpoints".into());
        }
        if self.lease_ttl < 2 {
            return bad("--lease-ttl must be at least 2 seconds".into());
        }
        Ok(cidr)
    }

    pub fn vxlan_name(&self) -> String {
        format!("tether.{}", self.vni)
    }
}
