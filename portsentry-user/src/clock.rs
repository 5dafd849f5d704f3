//! The kernel's clock as the XDP program sees it.
//!
//! The program reads `bpf_ktime_get_coarse_ns` (CLOCK_MONOTONIC_COARSE): on this
//! project's VMs it costs about 9 ns where `bpf_ktime_get_boot_ns` costs about 32 ns,
//! and its resolution (one scheduler tick, 1 to 4 ms) is ample for ban expiry and
//! first/last-seen times. Like CLOCK_MONOTONIC it stops while the machine is suspended,
//! so a ban never ends early; bans outlive reboots through the daemon's state file,
//! which stores wall-clock times.

use std::time::{Duration, SystemTime};

/// CLOCK_MONOTONIC in nanoseconds: the clock the XDP program's timestamps are on.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid clock id and a valid out pointer.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    assert_eq!(rc, 0, "CLOCK_MONOTONIC is always available on Linux");
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// The wall-clock time of a kernel timestamp.
pub fn to_system(ns: u64) -> SystemTime {
    let now_mono = monotonic_ns();
    let now = SystemTime::now();
    if ns <= now_mono {
        now - Duration::from_nanos(now_mono - ns)
    } else {
        now + Duration::from_nanos(ns - now_mono)
    }
}

/// The kernel timestamp of a wall-clock time (saturating at 1, so that a time in the
/// past never turns into 0, which means "permanent" for a ban).
pub fn from_system(t: SystemTime) -> u64 {
    Anchor::now().to_kernel(t)
}

/// The two clocks read once, to convert many times with one reading (a million bans at
/// start-up: two clock reads each cost a tenth of a second).
#[derive(Clone, Copy, Debug)]
pub struct Anchor {
    mono: u64,
    wall: SystemTime,
    /// `wall` in nanoseconds since the epoch (0 before it).
    wall_ns: u128,
}

impl Anchor {
    pub fn now() -> Anchor {
        let wall = SystemTime::now();
        Anchor {
            mono: monotonic_ns(),
            wall,
            wall_ns: wall
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default()
                .as_nanos(),
        }
    }

    /// [`Anchor::to_kernel`] of a time in milliseconds since the epoch, in integers (the
    /// bans on record keep their times so: a million of them written after a reboot).
    pub fn ms_to_kernel(&self, ms: u64) -> u64 {
        let t = u128::from(ms) * 1_000_000;
        let ns = if t >= self.wall_ns {
            self.mono
                .saturating_add(u64::try_from(t - self.wall_ns).unwrap_or(u64::MAX))
        } else {
            self.mono
                .saturating_sub(u64::try_from(self.wall_ns - t).unwrap_or(u64::MAX))
        };
        ns.max(1)
    }

    /// As [`from_system`], against this reading of the clocks.
    pub fn to_kernel(&self, t: SystemTime) -> u64 {
        let ns = match t.duration_since(self.wall) {
            Ok(ahead) => self.mono.saturating_add(ahead.as_nanos() as u64),
            Err(e) => self.mono.saturating_sub(e.duration().as_nanos() as u64),
        };
        ns.max(1)
    }
}
