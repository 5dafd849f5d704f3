//! Range bans by length: besides the trie `PS_BAN_NETS`, which holds every range ban, the
//! ranges of a few prefix lengths per family are also in the hash `PS_BAN_NET_HASH`,
//! keyed by their length and network ([`NetKey`]). `PS_BAN_NET_LENS` ([`NetLens`]) lists
//! those lengths, and says for each family whether its ranges are all there. An
//! address then costs one hash lookup per length listed for its family instead of a
//! walk of the trie (a walk reads a node per level, 16 or more levels for 100,000
//! ranges); the trie is looked at only when a range of its family has a length not
//! listed.
//!
//! Lengths are in the 128-bit form of [`crate::maps::BAN_NETS`]' keys (an IPv4 prefix
//! plus 96). The daemon lists a length only once the hash holds every range of it, and
//! sets a family's `hashed_only` bit only while no range that covers an address of the
//! family has a length not listed (an IPv6 range that covers IPv4-mapped addresses
//! counts for IPv4 too): an entry of all zeros, as a new map holds, sends every address
//! to the trie.

use core::mem::size_of;

use bytemuck::{Pod, Zeroable};

use crate::packet::{AddrWords, prefix_words};

/// Lengths listed per family.
pub const NET_LEN_SLOTS: usize = 4;

/// The family index of [`NetLens`]: 0 for an IPv4(-mapped) address, 1 for IPv6.
pub const FAMILY_V4: usize = 0;
pub const FAMILY_V6: usize = 1;

/// `PS_BAN_NET_HASH`'s key: a range's network address (network byte order words, as
/// the program holds addresses) and its length.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Pod, Zeroable)]
pub struct NetKey {
    pub net: AddrWords,
    pub len: u32,
    pub _pad: u32,
}
const _: () = assert!(size_of::<NetKey>() == 24);

impl NetKey {
    /// The key of the range of length `len` (128-bit form) that holds `addr`.
    #[inline(always)]
    pub fn of(addr: &AddrWords, len: u32) -> NetKey {
        NetKey {
            net: prefix_words(addr, len),
            len,
            _pad: 0,
        }
    }
}

/// A length listed in [`NetLens`]: the length, and the mask of its network in the
/// words of an address (so that the program builds a key without a branch).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct NetLen {
    pub mask: AddrWords,
    pub len: u32,
    pub _pad: u32,
}

impl NetLen {
    pub fn new(len: u32) -> NetLen {
        NetLen {
            mask: prefix_words(&[!0, !0], len),
            len,
            _pad: 0,
        }
    }

    /// The key of the range of this length that holds `addr`.
    #[inline(always)]
    pub fn key_of(&self, addr: &AddrWords) -> NetKey {
        NetKey {
            net: [addr[0] & self.mask[0], addr[1] & self.mask[1]],
            len: self.len,
            _pad: 0,
        }
    }
}

/// `PS_BAN_NET_LENS`' one entry.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct NetLens {
    /// Per family ([`FAMILY_V4`], [`FAMILY_V6`]): the lengths whose ranges are in
    /// `PS_BAN_NET_HASH`, longest first, `used` of them.
    pub lens: [[NetLen; NET_LEN_SLOTS]; 2],
    pub used: [u32; 2],
    /// Bit `1 << family`: every range covering an address of the family is in the hash
    /// under a listed length, so the trie need not be looked at.
    pub hashed_only: u32,
    pub _pad: u32,
}
const _: () = assert!(size_of::<NetLens>() == 2 * NET_LEN_SLOTS * 24 + 16);

/// The family of an address as the program holds it: IPv4-mapped or not.
#[inline(always)]
pub const fn family_of(addr: &AddrWords) -> usize {
    // `::ffff:0:0/96`: the first word zero, bytes 8 to 11 of the address 00 00 ff ff.
    if addr[0] == 0 && addr[1] & 0xffff_ffff == 0xffff_0000 {
        FAMILY_V4
    } else {
        FAMILY_V6
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::v4_mapped;

    fn words(a: [u8; 16]) -> AddrWords {
        [
            u64::from_ne_bytes(a[..8].try_into().unwrap()),
            u64::from_ne_bytes(a[8..].try_into().unwrap()),
        ]
    }

    #[test]
    fn a_host_and_its_range_share_the_key_of_the_range() {
        let host = words(v4_mapped([203, 0, 113, 9]));
        let net = words(v4_mapped([203, 0, 113, 0]));
        assert_eq!(NetKey::of(&host, 120), NetKey::of(&net, 120));
        assert_ne!(NetKey::of(&host, 120), NetKey::of(&host, 112));
        assert_eq!(NetKey::of(&host, 112).net, words(v4_mapped([203, 0, 0, 0])));
    }

    #[test]
    fn a_listed_length_makes_the_key_of_its_range() {
        let host = words(v4_mapped([203, 0, 113, 9]));
        for len in [0, 1, 63, 64, 65, 112, 120, 127, 128] {
            assert_eq!(
                NetLen::new(len).key_of(&host),
                NetKey::of(&host, len),
                "/{len}"
            );
        }
    }

    #[test]
    fn families() {
        assert_eq!(family_of(&words(v4_mapped([192, 0, 2, 1]))), FAMILY_V4);
        let mut v6 = [0u8; 16];
        v6[0] = 0x20;
        v6[1] = 0x01;
        assert_eq!(family_of(&words(v6)), FAMILY_V6);
    }
}
