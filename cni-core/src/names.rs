//! Stable name hashes: names derived from identifiers (host veth names, VTEP MACs, nftables
//! identifiers) must come out the same in every process and every release, so that DEL, GC and a
//! restarted daemon find what an earlier process made. FNV-1a: tiny, fast, and fixed forever.

const OFFSET_64: u64 = 0xcbf2_9ce4_8422_2325;
const PRIME_64: u64 = 0x0100_0000_01b3;
const OFFSET_32: u64 = 0x811c_9dc5;
const PRIME_32: u64 = 0x0100_0193;

fn fnv1a(offset: u64, prime: u64, mask: u64, bytes: impl IntoIterator<Item = u8>) -> u64 {
    bytes.into_iter().fold(offset, |hash, byte| {
        ((hash ^ u64::from(byte)).wrapping_mul(prime)) & mask
    })
}

/// 64-bit FNV-1a of `bytes`.
pub fn hash64(bytes: impl IntoIterator<Item = u8>) -> u64 {
    fnv1a(OFFSET_64, PRIME_64, u64::MAX, bytes)
}

/// 32-bit FNV-1a of `bytes`, for short suffixes.
pub fn hash32(bytes: impl IntoIterator<Item = u8>) -> u32 {
    fnv1a(OFFSET_32, PRIME_32, u64::from(u32::MAX), bytes) as u32
}

/// `text` reduced to `[A-Za-z0-9_]` plus a hash of the exact text, so that names differing only
/// in punctuation stay apart: what nftables identifiers allow.
pub fn identifier(text: &str) -> String {
    let clean: String = text
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    format!("{clean}_{:08x}", hash32(text.bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_answers() {
        // Published FNV-1a test vectors.
        assert_eq!(hash64(*b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(hash64(*b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(hash32(*b""), 0x811c_9dc5);
        assert_eq!(hash32(*b"a"), 0xe40c_292c);
        assert_eq!(hash32(*b"foobar"), 0xbf9c_f968);
    }

    #[test]
    fn identifiers_keep_punctuation_apart() {
        assert_ne!(identifier("a-b"), identifier("a.b"));
        assert!(identifier("pods.v1").starts_with("pods_v1_"));
    }
}
