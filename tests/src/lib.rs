//! Helpers for the integration tests: hand-built frames, BPF_PROG_TEST_RUN, network
//! namespaces with veth pairs, and the root/CI gate.

pub mod bench;
pub mod bpf_link;
pub mod client_load;
pub mod crafted;
pub mod crowdsec;
pub mod daemon;
pub mod fixture;
pub mod frames;
pub mod netns;
pub mod old_pins;
pub mod probe_asserts;
pub mod program_scan;
pub mod rotate;
pub mod scenario;
pub mod testrun;
pub mod wire;

/// True when kernel tests can run (we are root). Outside CI a non-root run skips them;
/// with `CI=true` a missing privilege is a failure, never a skip.
pub fn kernel_tests_enabled() -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("kernel tests need root, and CI=true forbids skipping them");
    }
    eprintln!("skipping: kernel tests need root (run `cargo xtask test` as root)");
    false
}

/// Returns early from a test when kernel tests cannot run here.
#[macro_export]
macro_rules! require_kernel {
    () => {
        if !$crate::kernel_tests_enabled() {
            return;
        }
    };
}
