//! MAX_BANS_PER_SEC: each new scan ban takes one of this second's bans, in one place
//! ([`Admission::admit`]); a scanner over the budget waits and is banned in the next
//! seconds, the most persistent first ([`Admission::take_waiting`]).

use std::{collections::HashMap, net::IpAddr};

use super::event::ProbeEvent;
use crate::kinds::ModeToken;

/// At most this many scanners wait (one entry per address).
pub(super) const MAX_WAITING: usize = 4096;

/// The answer of [`Admission::admit`].
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Admit {
    /// Ban now.
    Now,
    /// This second's bans are all taken: the scanner waits. `first` is true for the
    /// first refusal of the second (the one to log); `new` when the scanner is put on the
    /// waiting list now (its later events refuse it again: counted once).
    Wait { first: bool, new: bool },
}

/// The ban budget and the scanners waiting for it.
#[derive(Default)]
pub(super) struct Admission {
    budget: BanBudget,
    waiting: Waiting,
}

impl Admission {
    /// Takes one ban from second `now_secs`'s budget of `limit` (0: unlimited) for `ev`,
    /// of which the program's own bans took `kernel` already, or puts the scanner on the
    /// waiting list.
    pub fn admit(
        &mut self,
        limit: u32,
        now_secs: u64,
        kernel: u32,
        ev: ProbeEvent,
        mode: ModeToken,
    ) -> Admit {
        if self.budget.take(limit, now_secs, kernel) {
            return Admit::Now;
        }
        let new = self.waiting.offer(ev, mode);
        Admit::Wait {
            first: self.budget.refused == 1,
            new,
        }
    }

    /// The daemon's bans in second `now_secs` (the program's budget counts them too).
    pub fn used_in(&self, now_secs: u64) -> u32 {
        if self.budget.window == now_secs {
            self.budget.used
        } else {
            0
        }
    }

    /// Removes and returns the `n` most persistent waiting scanners.
    pub fn take_waiting(&mut self, n: usize) -> Vec<(ProbeEvent, ModeToken)> {
        self.waiting.take_best(n)
    }
}

/// Scanners waiting for the ban budget: at most [`MAX_WAITING`], one entry per address,
/// the most persistent (most hits) first. A spoofed flood's one-probe sources cannot
/// push a real scanner out.
#[derive(Default)]
struct Waiting {
    by_ip: HashMap<IpAddr, (ProbeEvent, ModeToken)>,
}

impl Waiting {
    /// Puts the scanner on the list (or its newer event in place of its older); true
    /// when it was not waiting and is now (not when it was already, nor when the list is
    /// full of more persistent ones).
    fn offer(&mut self, ev: ProbeEvent, mode: ModeToken) -> bool {
        if let Some(e) = self.by_ip.get_mut(&ev.ip) {
            if ev.hits > e.0.hits {
                *e = (ev, mode);
            }
            return false;
        }
        if self.by_ip.len() >= MAX_WAITING {
            // Every entry has at least one hit: a one-hit source cannot win a place.
            if ev.hits <= 1 {
                return false;
            }
            let (ip, hits) = self
                .by_ip
                .iter()
                .map(|(ip, e)| (*ip, e.0.hits))
                .min_by_key(|(_, h)| *h)
                .expect("full");
            if ev.hits <= hits {
                return false;
            }
            self.by_ip.remove(&ip);
        }
        self.by_ip.insert(ev.ip, (ev, mode));
        true
    }

    /// Removes and returns the `n` most persistent.
    fn take_best(&mut self, n: usize) -> Vec<(ProbeEvent, ModeToken)> {
        let mut all: Vec<_> = self.by_ip.drain().map(|(_, v)| v).collect();
        all.sort_by_key(|(ev, _)| std::cmp::Reverse(ev.hits));
        let rest = all.split_off(n.min(all.len()));
        for r in rest {
            self.by_ip.insert(r.0.ip, r);
        }
        all
    }
}

/// A one-second window of MAX_BANS_PER_SEC.
#[derive(Default)]
struct BanBudget {
    window: u64,
    used: u32,
    refused: u32,
}

impl BanBudget {
    /// Starts a new window when the second changed.
    fn roll(&mut self, now_secs: u64) {
        if now_secs != self.window {
            self.window = now_secs;
            self.used = 0;
            self.refused = 0;
        }
    }

    /// True when one more ban fits in this second (`limit` 0: unlimited), next to the
    /// `others` bans the program made in it.
    fn take(&mut self, limit: u32, now_secs: u64, others: u32) -> bool {
        self.roll(now_secs);
        if limit != 0 && self.used.saturating_add(others) >= limit {
            self.refused += 1;
            return false;
        }
        self.used += 1;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(last: u8, hits: u32) -> ProbeEvent {
        ProbeEvent {
            ip: IpAddr::from([192, 0, 2, last]),
            source: IpAddr::from([192, 0, 2, last]).into(),
            port: 22,
            scan_type: portsentry_common::ScanType::TcpSyn,
            tcp_flags: 2,
            hits,
            distinct_ports: 1,
            successes: 0,
            ts_ns: 0,
            first_ns: 0,
            ifindex: 0,
            verified: false,
            kernel_banned: false,
        }
    }

    #[test]
    fn waiting_keeps_the_most_persistent() {
        let mut w = Waiting::default();
        for i in 0..MAX_WAITING {
            let mut e = ev(0, 1);
            e.ip = IpAddr::from((i as u32 + 0x0a00_0000).to_be_bytes());
            e.source = e.ip.into();
            w.offer(e, ModeToken::Atcp);
        }
        assert!(!w.offer(ev(7, 1), ModeToken::Atcp), "no place: not waiting");
        assert!(
            !w.by_ip.contains_key(&IpAddr::from([192, 0, 2, 7])),
            "full of equals"
        );
        assert!(w.offer(ev(8, 5), ModeToken::Atcp));
        assert!(
            w.by_ip.contains_key(&IpAddr::from([192, 0, 2, 8])),
            "a persistent one wins"
        );
        assert_eq!(w.by_ip.len(), MAX_WAITING);
        assert!(!w.offer(ev(8, 9), ModeToken::Atcp), "waiting already");
        let best = w.take_best(2);
        assert_eq!(best[0].0.hits, 9);
        assert_eq!(best[1].0.hits, 1);
        assert_eq!(w.by_ip.len(), MAX_WAITING - 2);
    }

    #[test]
    fn ban_budget_per_second() {
        let mut b = BanBudget::default();
        assert!(b.take(2, 10, 0) && b.take(2, 10, 0));
        assert!(!b.take(2, 10, 0) && !b.take(2, 10, 0));
        assert_eq!(b.refused, 2);
        assert!(b.take(2, 11, 0), "a new second, a new budget");
        assert_eq!(b.refused, 0);
        for _ in 0..1000 {
            assert!(b.take(0, 12, 0), "0 = unlimited");
        }
    }

    #[test]
    fn admission_takes_the_budget_once_and_queues_the_rest() {
        let mut a = Admission::default();
        assert_eq!(a.admit(1, 5, 0, ev(1, 3), ModeToken::Atcp), Admit::Now);
        assert_eq!(
            a.admit(1, 5, 0, ev(2, 4), ModeToken::Atcp),
            Admit::Wait {
                first: true,
                new: true
            }
        );
        assert_eq!(
            a.admit(1, 5, 0, ev(3, 1), ModeToken::Audp),
            Admit::Wait {
                first: false,
                new: true
            }
        );
        // A waiting scanner's next event: refused again, not a new scanner refused.
        assert_eq!(
            a.admit(1, 5, 0, ev(2, 2), ModeToken::Atcp),
            Admit::Wait {
                first: false,
                new: false
            }
        );
        let waiting = a.take_waiting(1);
        assert_eq!((waiting[0].0.hits, waiting[0].1), (4, ModeToken::Atcp));
        assert_eq!(a.take_waiting(10).len(), 1);
        assert_eq!(a.admit(1, 6, 0, ev(2, 4), ModeToken::Atcp), Admit::Now);
        assert_eq!(a.used_in(6), 1);
        // The program's bans in the same second share the budget.
        assert_eq!(
            a.admit(2, 7, 2, ev(3, 2), ModeToken::Atcp),
            Admit::Wait {
                first: true,
                new: true
            }
        );
        assert_eq!(a.admit(3, 8, 2, ev(3, 2), ModeToken::Atcp), Admit::Now);
        assert_eq!(a.admit(0, 9, 99, ev(3, 2), ModeToken::Atcp), Admit::Now);
    }
}
