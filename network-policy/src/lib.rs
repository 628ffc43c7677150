//! Tether's NetworkPolicy agent: watches Pods, Namespaces and NetworkPolicies, works out what
//! the policies mean for the pods of its node ([`model`]), and keeps one nftables table in step
//! ([`nft`]).

pub mod agent;
pub mod delta;
pub mod metrics;
pub mod model;
pub mod nft;
pub mod selector;
