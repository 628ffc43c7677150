//! The handles of one chain's rules, read over an NFNETLINK socket (a dump of that chain only):
//! what a writer that inserts and deletes rules by handle needs after a batch. `nft --echo`
//! would tell the same, but it lists the whole table first (50 ms at tether-netpol's 1,205
//! sets, against 6 ms for the write itself).

use super::nfnetlink::numbers::*;
use super::nfnetlink::{
    attributes, family_number, nft_message, Message, Nfnl, NLM_F_DUMP, NLM_F_REQUEST,
};
use super::types::NfFamily;
use super::FirewallError;

const NFT_MSG_GETRULE: u16 = 7;

/// The handles of `chain`'s rules in the kernel's order (the order packets meet them); `None`
/// when the table or chain does not exist.
pub fn handles(
    family: NfFamily,
    table: &str,
    chain: &str,
) -> Result<Option<Vec<u64>>, FirewallError> {
    let mut request = Message::new(
        nft_message(NFT_MSG_GETRULE),
        NLM_F_REQUEST | NLM_F_DUMP,
        1,
        family_number(family),
        0,
    );
    request.string(NFTA_RULE_TABLE, table);
    request.string(NFTA_RULE_CHAIN, chain);
    let Some(payloads) = Nfnl::dump_existing(request.finish(), "listing a chain's rules", || {
        format!("chain {chain} of table {table}")
    })?
    else {
        return Ok(None);
    };
    Ok(Some(
        payloads
            .iter()
            .filter_map(|payload| {
                attributes(payload)
                    .into_iter()
                    .find(|(kind, _)| *kind == NFTA_RULE_HANDLE)
                    .and_then(|(_, value)| <[u8; 8]>::try_from(value).ok())
                    .map(u64::from_be_bytes)
            })
            .collect(),
    ))
}
