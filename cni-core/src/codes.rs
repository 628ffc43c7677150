//! Every CNI error code a Tether plugin reports beyond the spec's (which stop below 100): each
//! plugin owns a decade above 100, so a code says which plugin failed and why. The plugins' error
//! types map to these constants, and docs/cni.md's table is this list ([`table`]), checked by a
//! test so the two cannot drift.

pub const IPAM_RANGE_EXHAUSTED: u32 = 110;
pub const IPAM_ALREADY_ALLOCATED: u32 = 111;
pub const IPAM_ADDRESS_IN_USE: u32 = 112;
pub const IPAM_NOT_IN_RANGE: u32 = 113;
pub const IPAM_CHECK_MISMATCH: u32 = 114;

pub const BRIDGE_INTERFACE_EXISTS: u32 = 120;
pub const BRIDGE_CONFLICT: u32 = 121;
pub const BRIDGE_KERNEL: u32 = 122;
pub const BRIDGE_CHECK_MISMATCH: u32 = 123;
pub const BRIDGE_NFTABLES: u32 = 124;

pub const PORTMAP_NFTABLES: u32 = 140;
pub const PORTMAP_PORT_TAKEN: u32 = 141;
pub const PORTMAP_CHECK_MISMATCH: u32 = 142;
pub const PORTMAP_CONNTRACK: u32 = 143;
pub const PORTMAP_KERNEL: u32 = 144;

pub const BANDWIDTH_KERNEL: u32 = 150;
pub const BANDWIDTH_NO_HOST_VETH: u32 = 151;
pub const BANDWIDTH_CHECK_MISMATCH: u32 = 152;
pub const BANDWIDTH_NOT_OURS: u32 = 153;

/// A plugin, the first code of its decade, and what each of its codes means.
pub type PluginCodes = (&'static str, u32, &'static [(u32, &'static str)]);

pub const PLUGINS: &[PluginCodes] = &[
    (
        "cni-ipam",
        110,
        &[
            (IPAM_RANGE_EXHAUSTED, "range exhausted"),
            (IPAM_ALREADY_ALLOCATED, "already holds a lease"),
            (IPAM_ADDRESS_IN_USE, "address in use"),
            (IPAM_NOT_IN_RANGE, "address not in range"),
            (IPAM_CHECK_MISMATCH, "CHECK mismatch"),
        ],
    ),
    (
        "cni-bridge",
        120,
        &[
            (BRIDGE_INTERFACE_EXISTS, "interface exists"),
            (BRIDGE_CONFLICT, "bridge conflict"),
            (BRIDGE_KERNEL, "kernel refused"),
            (BRIDGE_CHECK_MISMATCH, "CHECK mismatch"),
            (BRIDGE_NFTABLES, "nftables"),
        ],
    ),
    ("cni-overlay", 130, &[]),
    (
        "cni-portmap",
        140,
        &[
            (PORTMAP_NFTABLES, "nftables"),
            (PORTMAP_PORT_TAKEN, "hostPort taken"),
            (PORTMAP_CHECK_MISMATCH, "CHECK mismatch"),
            (PORTMAP_CONNTRACK, "conntrack"),
            (PORTMAP_KERNEL, "kernel refused"),
        ],
    ),
    (
        "cni-bandwidth",
        150,
        &[
            (BANDWIDTH_KERNEL, "kernel refused"),
            (BANDWIDTH_NO_HOST_VETH, "no host veth"),
            (BANDWIDTH_CHECK_MISMATCH, "CHECK mismatch"),
            (
                BANDWIDTH_NOT_OURS,
                "a link under the ifb's name is not this attachment's",
            ),
        ],
    ),
];

/// The table of codes in docs/cni.md.
pub fn table() -> String {
    let mut out = String::from("| range | plugin | codes |\n|---|---|---|\n");
    for (plugin, decade, codes) in PLUGINS {
        let listed = if codes.is_empty() {
            "reserved".to_string()
        } else {
            codes
                .iter()
                .map(|(code, meaning)| format!("{code} {meaning}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        out.push_str(&format!(
            "| {decade}-{} | {plugin} | {listed} |\n",
            decade + 9
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_code_is_in_its_plugins_decade_and_listed_once() {
        let mut seen = std::collections::BTreeSet::new();
        for (plugin, decade, codes) in PLUGINS {
            for (code, _) in *codes {
                assert!(
                    (*decade..decade + 10).contains(code),
                    "{code} outside {plugin}'s decade"
                );
                assert!(seen.insert(*code), "{code} listed twice");
            }
        }
    }

    #[test]
    fn the_cni_docs_show_this_table() {
        let docs = include_str!("../../docs/cni.md");
        assert!(
            docs.contains(&table()),
            "docs/cni.md's table of CNI error codes differs from cni_core::codes; it should read:\n{}",
            table()
        );
    }
}
