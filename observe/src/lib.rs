//! What Tether's long-running daemons (tether-overlayd, tether-csi, the policy agent) share to be
//! observed: one way to log (text or JSON lines on stderr) and one small HTTP endpoint serving
//! Prometheus metrics and health probes.

pub mod http;
pub mod logging;
pub mod names;

pub use prometheus_client;
