//! Whole tables over NFNETLINK: whether one exists, and deleting one, without an `nft` process.

use super::nfnetlink::numbers::*;
use super::nfnetlink::{
    family_number, nft_message, Batch, Message, Nfnl, NLM_F_ACK, NLM_F_REQUEST,
};
use super::types::NfFamily;
use super::FirewallError;

const NFT_MSG_GETTABLE: u16 = 1;

fn refused(action: &'static str, name: &str, errno: i32) -> FirewallError {
    FirewallError::Nft {
        action,
        detail: format!("table {name}: {}", std::io::Error::from_raw_os_error(errno)),
    }
}

/// Whether table `family name` exists.
pub fn exists(family: NfFamily, name: &str) -> Result<bool, FirewallError> {
    let mut m = Message::new(
        nft_message(NFT_MSG_GETTABLE),
        NLM_F_REQUEST | NLM_F_ACK,
        1,
        family_number(family),
        0,
    );
    m.string(NFTA_TABLE_NAME, name);
    match Nfnl::open()?.request(m.finish())? {
        Ok(()) => Ok(true),
        Err(errno) if errno == libc::ENOENT => Ok(false),
        Err(errno) => Err(refused("looking up a table", name, errno)),
    }
}

/// Deletes table `family name` with everything in it; `false` when there was none.
pub fn delete(family: NfFamily, name: &str) -> Result<bool, FirewallError> {
    let mut batch = Batch::new();
    let mut m = Message::new(
        nft_message(NFT_MSG_DELTABLE),
        NLM_F_REQUEST | NLM_F_ACK,
        batch.next_seq(),
        family_number(family),
        0,
    );
    m.string(NFTA_TABLE_NAME, name);
    batch.push(m.finish());
    let (bytes, answered) = batch.finish();
    match Nfnl::open()?.transact(&bytes, &answered)? {
        None => Ok(true),
        Some((_, errno)) if errno == libc::ENOENT => Ok(false),
        Some((_, errno)) => Err(refused("deleting a table", name, errno)),
    }
}

const NFT_MSG_GETCHAIN: u16 = 4;
const NFT_MSG_GETSET: u16 = 10;

/// The names in a table: its chains, and its named sets and maps (anonymous sets left out).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Names {
    pub chains: Vec<String>,
    /// Each set's name, and whether it is a map.
    pub sets: Vec<(String, bool)>,
}

/// The chains and named sets of table `family name`, by netlink dumps (no `nft` process, no
/// rules or elements read); `None` when the table does not exist.
pub fn names(family: NfFamily, name: &str) -> Result<Option<Names>, FirewallError> {
    use super::nfnetlink::{attributes, string, NLM_F_DUMP};
    // Both dumps name the table of each object: only this table's are kept.
    let dump = |kind: u16, table_attr: u16, action: &'static str| {
        let mut m = Message::new(
            nft_message(kind),
            NLM_F_REQUEST | NLM_F_DUMP,
            1,
            family_number(family),
            0,
        );
        m.string(table_attr, name);
        Nfnl::dump_existing(m.finish(), action, || format!("table {name}"))
    };
    let Some(sets) = dump(NFT_MSG_GETSET, NFTA_SET_TABLE, "listing a table's sets")? else {
        return Ok(None);
    };
    let Some(chains) = dump(
        NFT_MSG_GETCHAIN,
        NFTA_CHAIN_TABLE,
        "listing a table's chains",
    )?
    else {
        return Ok(None);
    };
    let mut out = Names::default();
    for payload in &chains {
        let attrs = attributes(payload);
        let of_table = attrs
            .iter()
            .any(|(k, v)| *k == NFTA_CHAIN_TABLE && string(v) == name);
        if let (true, Some((_, chain))) =
            (of_table, attrs.iter().find(|(k, _)| *k == NFTA_CHAIN_NAME))
        {
            out.chains.push(string(chain));
        }
    }
    for payload in &sets {
        let attrs = attributes(payload);
        let of_table = attrs
            .iter()
            .any(|(k, v)| *k == NFTA_SET_TABLE && string(v) == name);
        let flags = attrs
            .iter()
            .find(|(k, _)| *k == NFTA_SET_FLAGS)
            .and_then(|(_, v)| <[u8; 4]>::try_from(*v).ok())
            .map_or(0, u32::from_be_bytes);
        if let (true, 0, Some((_, set))) = (
            of_table,
            flags & NFT_SET_ANONYMOUS,
            attrs.iter().find(|(k, _)| *k == NFTA_SET_NAME),
        ) {
            out.sets.push((string(set), flags & NFT_SET_MAP != 0));
        }
    }
    Ok(Some(out))
}
