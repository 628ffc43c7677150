//! Machinery shared by the Tether CNI plugins: spec types and versions, error codes, the entry
//! point, delegation and crash-safe files. No plugin logic lives here.

pub mod args;
pub mod codes;
pub mod config;
pub mod conntrack;
pub mod delegate;
pub mod error;
pub mod firewall;
pub mod fsutil;
pub mod logging;
pub mod names;
pub mod netlink;
pub mod netns;
pub mod plugin;
pub mod request;
pub mod result;
pub mod same_node;
pub mod sysctl;
pub mod teardown;
pub mod version;

pub use config::{Attachment, NetConf};
pub use error::{CniError, Code, ErrorObject};
pub use plugin::{run, Plugin};
pub use request::{Command, Request};
pub use result::{CniResult, Dns, Interface, IpConfig, Route};
pub use version::Version;
