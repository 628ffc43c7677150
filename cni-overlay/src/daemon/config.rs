//! tether-overlayd's command line; every flag can also come from an environment variable.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use clap::{ArgAction, Parser, ValueEnum};
use ipnetwork::IpNetwork;

use super::error::DaemonError;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DatastoreKind {
    /// Subnets from the Nodes' podCIDRs, VTEPs as Node annotations.
    Kubernetes,
    /// Subnets leased from an etcd cluster of its own.
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
    /// Where nodes find each other's subnets and VTEPs.
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
    /// etcd client URLs, comma-separated (etcd datastore).
    #[arg(long, env = "TETHER_ETCD_ENDPOINTS", value_delimiter = ',')]
    pub etcd_endpoints: Vec<String>,
    /// Key prefix of the overlay's records in etcd.
    #[arg(long, env = "TETHER_ETCD_PREFIX", default_value = "/tether/overlay")]
    pub etcd_prefix: String,
    /// Prefix length of each node's IPv4 subnet (etcd datastore).
    #[arg(long, env = "TETHER_SUBNET_SIZE", default_value_t = 24)]
    pub subnet_size: u8,
    /// Prefix length of each node's IPv6 subnet on dual-stack clusters (etcd datastore).
    #[arg(long, env = "TETHER_SUBNET_SIZE_V6", default_value_t = 64)]
    pub subnet_size_v6: u8,
    /// Underlay interface (default: the one holding the Node's InternalIP with the Kubernetes
    /// datastore, else the one holding the default route).
    #[arg(long, env = "TETHER_IFACE")]
    pub iface: Option<String>,
    /// The VTEP address (default: the Node's InternalIP with the Kubernetes datastore, else the
    /// underlay interface's first IPv4 address, else its first global IPv6 address). An IPv6
    /// address makes VXLAN run over IPv6.
    #[arg(long, env = "TETHER_UNDERLAY_ADDRESS")]
    pub underlay_address: Option<IpAddr>,
    /// VXLAN network identifier (the same on every node).
    #[arg(long, env = "TETHER_VNI", default_value_t = 1)]
    pub vni: u32,
    /// VXLAN UDP port (the same on every node; open it between nodes beyond a router).
    #[arg(long, env = "TETHER_PORT", default_value_t = 8472)]
    pub port: u16,
    /// Route to nodes the underlay reaches without a router (the same L2 segment) directly over
    /// it, without encapsulation; nodes beyond a router keep VXLAN. Decided per peer from the
    /// underlay interface's networks. On by default; `--direct-routing=false` sends everything
    /// over VXLAN.
    #[arg(
        long,
        env = "TETHER_DIRECT_ROUTING",
        action = ArgAction::Set,
        default_value_t = true,
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "true"
    )]
    pub direct_routing: bool,
    /// The MTU of pod interfaces: `auto` (the underlay's MTU when direct routing is on, so
    /// pods on the same L2 talk at full size; the VXLAN device's otherwise), `vxlan` (the VXLAN
    /// device's MTU for every pod: no packet is ever too big for a tunnel, at the cost of
    /// smaller packets between direct peers), or a number. With a pod MTU above the VXLAN
    /// device's, TCP connections through the tunnel have their MSS clamped to its MTU and
    /// other packets too big for it are answered with ICMP "fragmentation needed" (DF) or
    /// fragmented (no DF).
    #[arg(long, env = "TETHER_POD_MTU", default_value = "auto", value_parser = PodMtu::parse)]
    pub pod_mtu: PodMtu,
    /// Where the facts file for cni-overlay (overlay.json) is written.
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
    /// Write this conflist into `--cni-conf-dir` once the node can serve pods (first
    /// reconciliation done); `--leave` removes it again.
    #[arg(long, env = "TETHER_CNI_CONFLIST")]
    pub cni_conflist: Option<PathBuf>,
    /// The runtime's CNI configuration directory, as mounted (kubeadm /etc/cni/net.d).
    #[arg(long, env = "TETHER_CNI_CONF_DIR", default_value = "/etc/cni/net.d")]
    pub cni_conf_dir: PathBuf,
    /// Move every other network configuration in `--cni-conf-dir` aside (back on `--leave`).
    #[arg(long, env = "TETHER_CNI_EXCLUSIVE", action = ArgAction::SetTrue)]
    pub cni_exclusive: bool,
    /// Do not report a missing br_netfilter (`bridge-nf-call-iptables`) in readiness: for
    /// clusters whose service proxy does not need it.
    #[arg(long, env = "TETHER_NO_BR_NETFILTER_CHECK", action = ArgAction::SetTrue)]
    pub no_br_netfilter_check: bool,
    /// Log lines as `text` or `json` (one object per line, for log collectors).
    #[arg(long, env = "TETHER_LOG_FORMAT", default_value = "text")]
    pub log_format: tether_observe::logging::LogFormat,
    /// Remove this node from the overlay (registration, VXLAN device, facts file) and exit.
    #[arg(long, action = ArgAction::SetTrue)]
    pub leave: bool,
    /// With --leave: also remove what the CNI chain left on the node (the bridge, Tether's
    /// nftables tables, the lease and state directories, named by --cni-conflist), for a node
    /// switching to another CNI. Drain the node first.
    #[arg(long, action = ArgAction::SetTrue, requires = "leave")]
    pub purge: bool,
}

/// The cluster's pod address space: an IPv4 CIDR and, on dual-stack clusters, an IPv6 one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClusterCidrs {
    pub v4: IpNetwork,
    pub v6: Option<IpNetwork>,
}

impl ClusterCidrs {
    pub fn all(&self) -> Vec<IpNetwork> {
        std::iter::once(self.v4).chain(self.v6).collect()
    }
}

impl Args {
    /// The conflist to install when ready, if one was named.
    pub fn conflist(&self) -> Option<crate::cniconf::Conflist> {
        self.cni_conflist
            .as_ref()
            .map(|source| crate::cniconf::Conflist {
                source: source.clone(),
                conf_dir: self.cni_conf_dir.clone(),
                exclusive: self.cni_exclusive,
            })
    }

    pub fn validate(&self) -> Result<ClusterCidrs, DaemonError> {
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
        let v4: Vec<IpNetwork> = self
            .cluster_cidr
            .iter()
            .filter(|c| c.is_ipv4())
            .copied()
            .collect();
        let v6: Vec<IpNetwork> = self
            .cluster_cidr
            .iter()
            .filter(|c| c.is_ipv6())
            .copied()
            .collect();
        let [v4] = v4[..] else {
            return bad(format!(
                "--cluster-cidr needs exactly one IPv4 CIDR (and at most one IPv6 CIDR for dual-stack), got {:?}",
                self.cluster_cidr
            ));
        };
        if v6.len() > 1 {
            return bad("--cluster-cidr takes at most one IPv6 CIDR".into());
        }
        let v6 = v6.first().copied();
        for cidr in std::iter::once(v4).chain(v6) {
            if cidr.ip() != cidr.network() {
                return bad(format!("--cluster-cidr {cidr} has host bits set"));
            }
        }
        if self.datastore == DatastoreKind::Etcd {
            if self.subnet_size <= v4.prefix() || self.subnet_size > 30 {
                return bad(format!(
                    "--subnet-size /{} must be longer than the cluster CIDR /{} and at most /30",
                    self.subnet_size,
                    v4.prefix()
                ));
            }
            if let Some(v6) = v6 {
                if self.subnet_size_v6 <= v6.prefix() || self.subnet_size_v6 > 126 {
                    return bad(format!(
                        "--subnet-size-v6 /{} must be longer than the IPv6 cluster CIDR /{} and at most /126",
                        self.subnet_size_v6,
                        v6.prefix()
                    ));
                }
                // Node i gets the i-th subnet of each family: IPv6 must have as many.
                if self.subnet_size_v6 - v6.prefix() < self.subnet_size - v4.prefix() {
                    return bad(format!(
                        "the IPv6 cluster CIDR {v6} holds fewer /{} subnets than {v4} holds /{}",
                        self.subnet_size_v6, self.subnet_size
                    ));
                }
            }
        }
        if self.datastore == DatastoreKind::Etcd && self.etcd_endpoints.is_empty() {
            return bad("--datastore etcd needs --etcd-endpoints".into());
        }
        if self.lease_ttl < 2 {
            return bad("--lease-ttl must be at least 2 seconds".into());
        }
        Ok(ClusterCidrs { v4, v6 })
    }

    pub fn vxlan_name(&self) -> String {
        format!("tether.{}", self.vni)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_configuration_reference_is_what_the_arguments_say() {
        test_support::reference::check(&<Args as clap::CommandFactory>::command());
    }
}

/// How the pod MTU is chosen (`--pod-mtu`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PodMtu {
    Auto,
    Vxlan,
    Fixed(u32),
}

impl PodMtu {
    pub fn parse(text: &str) -> Result<PodMtu, String> {
        match text {
            "auto" => Ok(PodMtu::Auto),
            "vxlan" => Ok(PodMtu::Vxlan),
            n => match n.parse::<u32>() {
                Ok(mtu) if (1280..=65535).contains(&mtu) => Ok(PodMtu::Fixed(mtu)),
                _ => Err(format!(
                    "{n:?} is not auto, vxlan or an MTU between 1280 and 65535"
                )),
            },
        }
    }

    /// The pod MTU on a node whose underlay has `underlay` and whose VXLAN device `vxlan`.
    pub fn resolve(self, direct_routing: bool, underlay: u32, vxlan: u32) -> u32 {
        match self {
            PodMtu::Auto if direct_routing => underlay,
            PodMtu::Auto | PodMtu::Vxlan => vxlan,
            PodMtu::Fixed(mtu) => mtu,
        }
    }
}
