//! Embeds the XDP object built by `cargo xtask build` (or the file named by
//! PORTSENTRY_EBPF_OBJECT). Without one, an empty object is embedded so that `cargo
//! check`, clippy and the pure unit tests work without the eBPF toolchain; loading then
//! fails with a message that says how to build it.
use std::{env, fs, path::PathBuf};

fn main() {
    println!("cargo:rerun-if-env-changed=PORTSENTRY_EBPF_OBJECT");
    let manifest = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").unwrap());
    let source = env::var_os("PORTSENTRY_EBPF_OBJECT")
        .map(PathBuf::from)
        .unwrap_or_else(|| manifest.join("../target/bpfel-unknown-none/release/portsentry"));
    println!("cargo:rerun-if-changed={}", source.display());
    let out = PathBuf::from(env::var_os("OUT_DIR").unwrap()).join("portsentry.bpf.o");
    match fs::read(&source) {
        Ok(bytes) => fs::write(&out, bytes).unwrap(),
        Err(_) => {
            println!(
                "cargo:warning=no XDP object at {}; embedding an empty one (run `cargo xtask build`)",
                source.display()
            );
            fs::write(&out, []).unwrap();
        }
    }
}
