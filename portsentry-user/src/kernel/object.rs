//! The XDP object embedded at build time (see build.rs).

use std::hash::Hasher as _;

use anyhow::{Result, bail};

static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/portsentry.bpf.o"));

/// The object's bytes; an error when this binary was built without it.
pub fn bytes() -> Result<&'static [u8]> {
    if OBJECT.is_empty() {
        bail!(
            "this portsentry binary was built without its XDP program; build it with \
             `cargo xtask build` (which builds the eBPF toolchain if needed)"
        );
    }
    Ok(OBJECT)
}

/// An id of the object's bytes (64-bit FNV-1a, the same in every release): two starts
/// with the same id run the same program on the same maps.
pub fn build_id(bytes: &[u8]) -> u64 {
    let mut h = fnv::FnvHasher::default();
    h.write(bytes);
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::build_id;

    #[test]
    fn the_build_id_is_fnv1a_of_the_bytes() {
        // FNV-1a 64 test vectors: an id must not change between releases of the hasher.
        assert_eq!(build_id(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(build_id(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_ne!(build_id(b"ab"), build_id(b"ba"));
    }
}
