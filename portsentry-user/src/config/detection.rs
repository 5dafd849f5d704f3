//! SCAN_DETECTION and the Threshold Random Walk's parameters (TRW_THETA0, TRW_THETA1,
//! TRW_ALPHA, TRW_BETA): their values, the checks across them, and the walk's
//! fixed-point steps ([`Walk`]) that the program and the daemon's rules test alike.

use std::fmt;

use portsentry_common::trw::{SCALE, Walk};

use super::{Config, ConfigError};

/// How a source becomes a scanner (SCAN_DETECTION).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Detection {
    /// PortSentry's: SCAN_TRIGGER hits.
    #[default]
    Trigger,
    /// The Threshold Random Walk over the source's failed and successful first contacts.
    Trw,
}

pub(super) fn detection(key: &str, value: &str) -> Result<Detection, String> {
    match value.trim() {
        "trigger" => Ok(Detection::Trigger),
        "trw" => Ok(Detection::Trw),
        _ => Err(format!(
            "{key} must be trigger (PortSentry's SCAN_TRIGGER) or trw (the Threshold Random \
             Walk), not \"{value}\""
        )),
    }
}

/// A probability strictly between 0 and 1, held in millionths (so that [`Config`] stays
/// `Eq`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct Probability(u32);

const MILLION: f64 = 1_000_000.0;

impl Probability {
    pub fn get(self) -> f64 {
        f64::from(self.0) / MILLION
    }
}

impl fmt::Display for Probability {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.get())
    }
}

/// A decimal number strictly between 0 and 1, to six places (`0.8`, `0.01`).
pub(super) fn probability(key: &str, value: &str) -> Result<Probability, String> {
    let v = value.trim();
    let n = v
        .parse::<f64>()
        .ok()
        .filter(|_| v.bytes().all(|b| b.is_ascii_digit() || b == b'.'))
        .map(|x| (x * MILLION).round());
    match n {
        Some(m) if (1.0..MILLION).contains(&m) => Ok(Probability(m as u32)),
        _ => Err(format!(
            "{key} must be a probability strictly between 0 and 1 (e.g. 0.8; six decimal \
             places at most count), not \"{value}\""
        )),
    }
}

impl Config {
    /// The walk's fixed-point steps and bounds (computed whatever SCAN_DETECTION says).
    pub fn walk(&self) -> Walk {
        walk(
            self.trw_theta0.get(),
            self.trw_theta1.get(),
            self.trw_alpha.get(),
            self.trw_beta.get(),
        )
    }

    /// The walk the rules and the program use: `None` under SCAN_DETECTION="trigger".
    pub fn detection_walk(&self) -> Option<Walk> {
        (self.scan_detection == Detection::Trw).then(|| self.walk())
    }

    /// The checks across the TRW_* keys (each is in (0,1) on its own).
    pub(super) fn validate_walk(&self) -> Result<(), ConfigError> {
        if self.trw_theta1 >= self.trw_theta0 {
            return Err(self.error_at(
                self.set_last(&["TRW_THETA0", "TRW_THETA1"]),
                format!(
                    "TRW_THETA1 ({}) must be below TRW_THETA0 ({}): θ1 is the chance that a \
                     scanner's first contact succeeds, θ0 a client's; the paper's are 0.2 \
                     and 0.8",
                    self.trw_theta1, self.trw_theta0
                ),
            ));
        }
        if self.trw_alpha >= self.trw_beta {
            return Err(self.error_at(
                self.set_last(&["TRW_ALPHA", "TRW_BETA"]),
                format!(
                    "TRW_ALPHA ({}) must be below TRW_BETA ({}): α is the false-positive \
                     rate aimed at, β the detection rate; the paper's are 0.01 and 0.99",
                    self.trw_alpha, self.trw_beta
                ),
            ));
        }
        Ok(())
    }
}

/// The walk of θ0, θ1, α and β (0 < θ1 < θ0 < 1, 0 < α < β < 1): each step and bound
/// a natural logarithm times [`SCALE`], rounded.
pub fn walk(theta0: f64, theta1: f64, alpha: f64, beta: f64) -> Walk {
    let fixed = |x: f64| {
        (x * SCALE)
            .round()
            .clamp(f64::from(i32::MIN), f64::from(i32::MAX)) as i32
    };
    Walk {
        fail: fixed(((1.0 - theta1) / (1.0 - theta0)).ln()),
        success: fixed((theta0 / theta1).ln()),
        upper: fixed((beta / alpha).ln()),
        lower: fixed(((1.0 - beta) / (1.0 - alpha)).ln()),
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{bad, ok};
    use super::*;

    #[test]
    fn the_papers_parameters_are_the_defaults() {
        let c = Config::default();
        assert_eq!(c.scan_detection, Detection::Trigger);
        assert_eq!(c.detection_walk(), None);
        let w = c.walk();
        assert_eq!(
            w,
            Walk {
                fail: 90_852,
                success: 90_852,
                upper: 301_146,
                lower: -301_146,
            }
        );
        assert_eq!(w.failures_to_decide(), 4);
        assert!(!w.is_scanner(3, 0) && w.is_scanner(4, 0));
    }

    #[test]
    fn other_parameters() {
        let c = ok(
            "SCAN_DETECTION=\"trw\"\nTRW_THETA0=\"0.9\"\nTRW_THETA1=\"0.5\"\n\
                    TRW_ALPHA=\"0.001\"\nTRW_BETA=\"0.999\"\n",
        );
        let w = c.detection_walk().expect("trw mode");
        // ln(0.5/0.1), ln(0.9/0.5), ln(999), ln(1/999), times 2^16.
        assert_eq!(
            w,
            Walk {
                fail: 105_476,
                success: 38_521,
                upper: 452_641,
                lower: -452_641,
            }
        );
        // ln 999 / ln 5 = 4.29: five failures decide.
        assert_eq!(w.failures_to_decide(), 5);
        assert!(!w.is_scanner(4, 0) && w.is_scanner(5, 0));
        // A success is worth less than a failure here: six failures and two successes
        // (6 ln 5 - 2 ln 1.8 = 8.48 > 6.91) decide.
        assert!(w.is_scanner(6, 2));
    }

    #[test]
    fn nonsense_is_refused_at_its_line() {
        bad("SCAN_DETECTION=\"sprt\"\n", 1, "trigger");
        bad("TRW_THETA0=\"1\"\n", 1, "strictly between 0 and 1");
        bad("TRW_THETA0=\"0\"\n", 1, "strictly between 0 and 1");
        bad("TRW_ALPHA=\"-0.1\"\n", 1, "strictly between 0 and 1");
        bad("TRW_ALPHA=\"1e-3\"\n", 1, "strictly between 0 and 1");
        bad("TRW_BETA=\"0.0000001\"\n", 1, "strictly between 0 and 1");
        bad(
            "# x\nTRW_THETA1=\"0.8\"\n",
            2,
            "TRW_THETA1 (0.8) must be below TRW_THETA0 (0.8)",
        );
        bad(
            "TRW_THETA1=\"0.5\"\nTRW_THETA0=\"0.4\"\n",
            2,
            "must be below TRW_THETA0",
        );
        bad(
            "TRW_ALPHA=\"0.99\"\n",
            1,
            "TRW_ALPHA (0.99) must be below TRW_BETA",
        );
        bad("TRW_BETA=\"0.005\"\n", 1, "must be below TRW_BETA (0.005)");
    }
}
