//! Whole tables over NFNETLINK: whether one exists, and deleting one, without an `nft` process.

use super::nfnetlink::{
    family_number, nft_message, Batch, Message, Nfnl, NLM_F_ACK, NLM_F_REQUEST,
};
use super::types::NfFamily;
use super::FirewallError;

const NFT_MSG_GETTABLE: u16 = 1;
const NFT_MSG_DELTABLE: u16 = 2;
const NFTA_TABLE_NAME: u16 = 1;

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
