//! The Threshold Random Walk (SCAN_DETECTION="trw"; Jung, Paxson, Berger and
//! Balakrishnan, "Fast Portscan Detection Using Sequential Hypothesis Testing", IEEE S&P
//! 2004), in the fixed point both sides compute it in.
//!
//! Each first contact of a source with a destination port fails (a closed watched port:
//! a counted probe) or succeeds (a SYN that reached a listener). The walk is the
//! logarithm of the source's likelihood ratio: a failure adds ln((1−θ1)/(1−θ0)), a
//! success subtracts ln(θ0/θ1); at ln(β/α) or above the source is a scanner. The daemon
//! computes these once from the configuration, scaled by [`SCALE`], and writes them into
//! `Settings::trw`; the program and the daemon's `Rules::judge` then make the same integer
//! test ([`Walk::is_scanner`]).

use core::mem::size_of;

use bytemuck::{Pod, Zeroable};

/// log2 of the fixed-point scale of [`Walk`]'s steps and bounds.
pub const SCALE_BITS: u32 = 16;
/// The fixed-point scale: a step of `x` (natural log) is held as `round(x * SCALE)`.
pub const SCALE: f64 = (1u32 << SCALE_BITS) as f64;

/// The walk's steps and bounds, natural logarithms times [`SCALE`], rounded. Host byte
/// order. All zero (the settings of a release without it) never decides.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct Walk {
    /// Added per failure: ln((1−θ1)/(1−θ0)) > 0.
    pub fail: i32,
    /// Subtracted per success: ln(θ0/θ1) > 0.
    pub success: i32,
    /// The scanner bound: ln(β/α) > 0.
    pub upper: i32,
    /// The benign bound: ln((1−β)/(1−α)) < 0; successes never take the walk under it.
    pub lower: i32,
}
const _: () = assert!(size_of::<Walk>() == 16);

impl Walk {
    /// The walk after `failures` failed and `successes` successful first contacts.
    #[inline(always)]
    pub const fn position(&self, failures: u32, successes: u32) -> i64 {
        failures as i64 * self.fail as i64 - successes as i64 * self.success as i64
    }

    /// The source is a scanner: the walk reached the upper bound (η1 = β/α). Never for
    /// a walk of all zeroes.
    #[inline(always)]
    pub const fn is_scanner(&self, failures: u32, successes: u32) -> bool {
        self.upper > 0 && self.position(failures, successes) >= self.upper as i64
    }

    /// One more success is counted: it would not take the walk under the lower bound
    /// (η0). A source judged benign stays at the bound: more failures make it a scanner
    /// again, earlier successes never exempt it for good.
    #[inline(always)]
    pub const fn takes_success(&self, failures: u32, successes: u32) -> bool {
        self.position(failures, successes + 1) >= self.lower as i64
    }

    /// Failed first contacts in a row (from no success) that make a scanner.
    pub const fn failures_to_decide(&self) -> u32 {
        if self.fail <= 0 || self.upper <= 0 {
            return 0;
        }
        (self.upper as u32).div_ceil(self.fail as u32)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The paper's parameters, as the daemon computes them (ln 4, ln 4, ln 99, -ln 99).
    const PAPER: Walk = Walk {
        fail: 90_852,
        success: 90_852,
        upper: 301_146,
        lower: -301_146,
    };

    #[test]
    fn four_failures_decide() {
        assert!(!PAPER.is_scanner(3, 0));
        assert!(PAPER.is_scanner(4, 0));
        assert_eq!(PAPER.failures_to_decide(), 4);
        // A success cancels a failure.
        assert!(!PAPER.is_scanner(4, 1));
        assert!(PAPER.is_scanner(5, 1));
    }

    #[test]
    fn successes_stop_at_the_benign_bound() {
        // One failure: ln 4 - 4 ln 4 = -3 ln 4 > -ln 99, but -4 ln 4 < -ln 99.
        assert!(PAPER.takes_success(1, 3));
        assert!(!PAPER.takes_success(1, 4));
        // From the bound, four more failures are not enough; seven are.
        assert!(!PAPER.is_scanner(1 + 4, 4));
        assert!(PAPER.is_scanner(1 + 7, 4));
    }

    #[test]
    fn an_all_zero_walk_never_decides() {
        assert!(!Walk::default().is_scanner(256, 0));
        assert_eq!(Walk::default().failures_to_decide(), 0);
    }
}
