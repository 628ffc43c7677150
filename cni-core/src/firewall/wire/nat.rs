//! The statements of a NAT table as nft encodes them: `fib daddr type local`, `ct status
//! <flag>`, a masked compare (`meta mark & M == M`), `meta mark set meta mark | M`, `dnat ip to
//! <key> map @addresses : <key> map @ports` and `masquerade` (cni-portmap's table).

use nftables::expr::{BinaryOperation, Expression, Fib, FibFlag, FibResult, MetaKey};
use nftables::expr::{NamedExpression, CT};
use nftables::stmt::{Mangle, NATFamily, Operator, NAT};
use nftables::types::NfFamily;

use super::{
    be32, bitwise, cmp, ct_bits, expr, lookup, meta_load, named_set, Encoded, RuleState,
    Unsupported, Wire, NFT_CMP_EQ, NFT_CMP_NEQ, NFT_META_MARK, NFT_REG_1,
};

const NFT_REG_2: u32 = 2;

const NFT_FIB_RESULT_ADDRTYPE: u32 = 3;
const NFTA_FIB_F_DADDR: u32 = 1 << 1;
/// The route type of an address of this host (`RTN_LOCAL`), in host order as fib loads it.
const RTN_LOCAL: u32 = 2;

const NFT_CT_STATUS: u32 = 2;

const NFTA_META_SREG: u16 = 3;

const NFT_NAT_DNAT: u32 = 1;
const NFPROTO_IPV4: u32 = 2;
const NFPROTO_IPV6: u32 = 10;
/// `NF_NAT_RANGE_MAP_IPS | NF_NAT_RANGE_PROTO_SPECIFIED`: an address and a port given.
const ADDRESS_AND_PORT: u32 = 0x3;

/// `fib daddr type local`: the destination is an address of this host.
pub(super) fn fib(
    m: &mut super::Message,
    fib: &Fib,
    op: Operator,
    right: &Expression<'_>,
) -> Encoded {
    let daddr_only = fib.flags.len() == 1 && fib.flags.contains(&FibFlag::Daddr);
    let local = matches!(right, Expression::String(t) if t == "local");
    if fib.result != FibResult::Type || !daddr_only || op != Operator::EQ || !local {
        return Err(Unsupported("a fib lookup other than daddr type local"));
    }
    expr(m, "fib", |m| {
        be32(m, 1, NFT_REG_1);
        be32(m, 2, NFT_FIB_RESULT_ADDRTYPE);
        be32(m, 3, NFTA_FIB_F_DADDR);
    });
    cmp(m, NFT_REG_1, NFT_CMP_EQ, &RTN_LOCAL.to_ne_bytes());
    Ok(())
}

/// `ct status dnat` (or `snat`): the connection's addresses were translated.
pub(super) fn ct_status(
    m: &mut super::Message,
    ct: &CT<'_>,
    op: Operator,
    right: &Expression<'_>,
) -> Encoded {
    if ct.dir.is_some() || ct.family.is_some() || op != Operator::IN {
        return Err(Unsupported("a ct status other than a flag test"));
    }
    let bit = match right {
        Expression::String(t) if t == "snat" => 0x10,
        Expression::String(t) if t == "dnat" => 0x20,
        _ => return Err(Unsupported("a ct status other than snat or dnat")),
    };
    ct_bits(m, NFT_CT_STATUS, bit, true);
    Ok(())
}

/// `<value> & <mask> == <constant>` (or `!=`) of one loaded value.
pub(super) fn masked(
    m: &mut super::Message,
    rule: &mut RuleState,
    family: NfFamily,
    binary: &BinaryOperation<'_>,
    op: Operator,
    right: &Expression<'_>,
) -> Encoded {
    let BinaryOperation::AND(value, mask) = binary else {
        return Err(Unsupported("a binary operation other than &"));
    };
    let code = match op {
        Operator::EQ => NFT_CMP_EQ,
        Operator::NEQ => NFT_CMP_NEQ,
        _ => {
            return Err(Unsupported(
                "a masked value compared other than by == or !=",
            ))
        }
    };
    let kinds = Wire::load(m, rule, family, value)?;
    let [kind] = kinds[..] else {
        return Err(Unsupported("a masked concatenation"));
    };
    let mask = kind.constant(mask)?;
    let compared = kind.constant(right)?;
    bitwise(m, &mask, &vec![0; mask.len()]);
    cmp(m, NFT_REG_1, code, &compared);
    Ok(())
}

/// `<value> | <number>`: the value and the number.
fn or_of_number<'a, 'b>(expr: &'a Expression<'b>) -> Option<(&'a Expression<'b>, u32)> {
    let Expression::BinaryOperation(binary) = expr else {
        return None;
    };
    let BinaryOperation::OR(parts) = binary.as_ref() else {
        return None;
    };
    match parts.as_slice() {
        [value, Expression::Number(number)] => Some((value, *number)),
        _ => None,
    }
}

/// `meta mark set meta mark | <bits>`.
pub(super) fn set_mark_bits(m: &mut super::Message, mangle: &Mangle<'_>) -> Encoded {
    let is_mark = |e: &Expression<'_>| matches!(e, Expression::Named(NamedExpression::Meta(meta)) if meta.key == MetaKey::Mark);
    let bits = match or_of_number(&mangle.value) {
        Some((from, bits)) if is_mark(&mangle.key) && is_mark(from) => bits,
        _ => {
            return Err(Unsupported(
                "a mangle other than meta mark set meta mark | bits",
            ))
        }
    };
    meta_load(m, NFT_META_MARK, NFT_REG_1);
    bitwise(m, &(!bits).to_ne_bytes(), &bits.to_ne_bytes());
    expr(m, "meta", |m| {
        be32(m, 2, NFT_META_MARK);
        be32(m, NFTA_META_SREG, NFT_REG_1);
    });
    Ok(())
}

/// `dnat ip to <key> map @addresses : <key> map @ports` (`ip6` alike): each key loaded and
/// looked up in its map (the address into the first register, the port into the second), then
/// the translation from both.
pub(super) fn dnat_by_maps(
    m: &mut super::Message,
    rule: &mut RuleState,
    family: NfFamily,
    to: &NAT<'_>,
) -> Encoded {
    fn map_of<'a>(e: &'a Option<Expression<'_>>) -> Encoded<(&'a Expression<'a>, &'a str)> {
        match e {
            Some(Expression::Named(NamedExpression::Map(map))) => named_set(&map.data)
                .map(|name| (&map.key, name))
                .ok_or(Unsupported("a dnat map that is not a named map")),
            _ => Err(Unsupported("a dnat other than by two named maps")),
        }
    }
    if to.flags.is_some() {
        return Err(Unsupported("a dnat with flags"));
    }
    let nat_family = match to.family {
        Some(NATFamily::IP) => NFPROTO_IPV4,
        Some(NATFamily::IP6) => NFPROTO_IPV6,
        None => return Err(Unsupported("a dnat without its family")),
    };
    let (address_key, addresses) = map_of(&to.addr)?;
    let (port_key, ports) = map_of(&to.port)?;
    Wire::load_into(m, rule, family, address_key, NFT_REG_1)?;
    lookup(m, NFT_REG_1, addresses, None, Some(NFT_REG_1), false);
    Wire::load_into(m, rule, family, port_key, NFT_REG_2)?;
    lookup(m, NFT_REG_2, ports, None, Some(NFT_REG_2), false);
    expr(m, "nat", |m| {
        be32(m, 1, NFT_NAT_DNAT);
        be32(m, 2, nat_family);
        be32(m, 3, NFT_REG_1);
        be32(m, 4, NFT_REG_1);
        be32(m, 5, NFT_REG_2);
        be32(m, 6, NFT_REG_2);
        be32(m, 7, ADDRESS_AND_PORT);
    });
    Ok(())
}
