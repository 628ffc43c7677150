//! TCP through the VXLAN device at the tunnel's size: a pod's MTU may be the underlay's (direct
//! peers take full-size packets), so a connection that leaves through the tunnel has the MSS
//! of its SYN and SYN-ACK lowered to the route's MTU. Each node clamps what it sends into the
//! tunnel, so both directions of a connection fit. Only ever lowers an MSS.

use cni_core::firewall::build::{self, base_chain, field, meta, rule, text};
use cni_core::firewall::expr::{
    BinaryOperation, Expression, MetaKey, NamedExpression, RTKey, TcpOption, RT,
};
use cni_core::firewall::schema::{Chain, FlushObject};
use cni_core::firewall::stmt::{Mangle, Statement};
use cni_core::firewall::types::{NfChainPolicy, NfChainType, NfFamily, NfHook};
use cni_core::firewall::Batch;

use super::error::DaemonError;
pub use super::masq::TABLE;

const CHAIN: &str = "forward";
/// `mangle`: before the filter chains see the SYN.
const MANGLE: i32 = -150;

/// `oifname <vxlan> tcp flags & (syn | rst) == syn tcp option maxseg size set rt mtu`, in its
/// own chain of the overlay's table (written again whole: idempotent), over netlink.
pub fn apply(vxlan_device: &str) -> Result<(), DaemonError> {
    Ok(batch(vxlan_device).apply()?)
}

/// The chain and its one rule, as commands.
pub fn batch(vxlan_device: &str) -> Batch {
    let fam = NfFamily::INet;
    let syn_only = build::eq(
        Expression::BinaryOperation(Box::new(BinaryOperation::AND(
            field("tcp", "flags"),
            Expression::List(vec![text("syn"), text("rst")]),
        ))),
        text("syn"),
    );
    let clamp = Statement::Mangle(Mangle {
        key: Expression::Named(NamedExpression::TcpOption(TcpOption {
            name: "maxseg".into(),
            field: Some("size".into()),
        })),
        value: Expression::Named(NamedExpression::RT(RT {
            key: RTKey::MTU,
            family: None,
        })),
    });
    let mut batch = Batch::new();
    batch
        .add(build::table(fam, TABLE))
        .add(base_chain(
            fam,
            TABLE,
            CHAIN,
            NfChainType::Filter,
            NfHook::Forward,
            MANGLE,
            NfChainPolicy::Accept,
        ))
        .flush(FlushObject::Chain(Chain {
            family: fam,
            table: TABLE.into(),
            name: CHAIN.into(),
            ..Chain::default()
        }))
        .add(rule(
            fam,
            TABLE,
            CHAIN,
            vec![
                build::eq(meta(MetaKey::Oifname), text(vxlan_device)),
                syn_only,
                clamp,
            ],
            Some("tether-overlay: TCP MSS to the tunnel's MTU"),
        ));
    batch
}
