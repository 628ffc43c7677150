//! Tether's VXLAN overlay: the node daemon (`tether-overlayd`) and the CNI plugin (`cni-overlay`).

pub mod chained;
pub mod cniconf;
pub mod daemon;
pub mod facts;
pub mod plugin;
