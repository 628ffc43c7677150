//! `tcp option maxseg size set rt mtu`: a TCP segment's MSS option set to the MSS of its route
//! (the overlay clamps TCP into its tunnel with it; the kernel only ever lowers the option).

use nftables::expr::{Expression, NamedExpression, RTKey, TcpOption, RT};
use nftables::stmt::Mangle;

use super::{be32, expr, Encoded, Need, RuleState, Unsupported, NFT_REG_1};

const TCP: u8 = 6;
const NFT_RT_TCPMSS: u32 = 3;
const NFT_BYTEORDER_HTON: u32 = 1;
const NFT_EXTHDR_OP_TCPOPT: u32 = 1;
/// The MSS option's kind, and where its two-byte value sits in it.
const TCPOPT_MAXSEG: u8 = 2;
const MAXSEG_SIZE_OFFSET: u32 = 2;
const MAXSEG_SIZE_LEN: u32 = 2;

/// Whether the statement writes a TCP option (else it is another mangle).
pub(super) fn is_tcp_option(mangle: &Mangle<'_>) -> bool {
    matches!(mangle.key, Expression::Named(NamedExpression::TcpOption(_)))
}

/// The route's MSS, to network order, written into the MSS option: after `meta l4proto tcp`
/// unless the rule matched it already.
pub(super) fn set_mss_from_route(
    m: &mut super::Message,
    rule: &mut RuleState,
    mangle: &Mangle<'_>,
) -> Encoded {
    let is_mss = matches!(&mangle.key,
        Expression::Named(NamedExpression::TcpOption(TcpOption { name, field: Some(field) }))
            if name == "maxseg" && field == "size");
    let from_route = matches!(
        &mangle.value,
        Expression::Named(NamedExpression::RT(RT {
            key: RTKey::MTU,
            family: None
        }))
    );
    if !(is_mss && from_route) {
        return Err(Unsupported(
            "a TCP option set other than tcp option maxseg size set rt mtu",
        ));
    }
    rule.require(m, Need::L4proto(TCP));
    expr(m, "rt", |m| {
        be32(m, 1, NFT_REG_1);
        be32(m, 2, NFT_RT_TCPMSS);
    });
    expr(m, "byteorder", |m| {
        be32(m, 1, NFT_REG_1);
        be32(m, 2, NFT_REG_1);
        be32(m, 3, NFT_BYTEORDER_HTON);
        be32(m, 4, MAXSEG_SIZE_LEN);
        be32(m, 5, MAXSEG_SIZE_LEN);
    });
    expr(m, "exthdr", |m| {
        m.attr(2, &[TCPOPT_MAXSEG]);
        be32(m, 3, MAXSEG_SIZE_OFFSET);
        be32(m, 4, MAXSEG_SIZE_LEN);
        be32(m, 6, NFT_EXTHDR_OP_TCPOPT);
        be32(m, 7, NFT_REG_1);
    });
    Ok(())
}
