//! The XDP object embedded at build time (see build.rs).

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
