//! The decisions not enforced here (refused by the ban guard, or failed: a map full):
//! each counted once, and each network's refusal logged once while a decision on it
//! stays refused (deleted and decided again, it is logged again).

use std::collections::HashMap;

use ipnet::IpNet;

#[derive(Debug, Default)]
pub struct Refused {
    by_id: HashMap<i64, IpNet>,
    /// Each network a refused decision names.
    by_net: HashMap<IpNet, Net>,
}

#[derive(Debug, Default)]
struct Net {
    /// How many refused decisions name it.
    decisions: u32,
    /// Its refusal was logged since the first of them.
    logged: bool,
}

impl Refused {
    /// Decision `id` on `net` is refused: true when it was not already.
    pub fn insert(&mut self, id: i64, net: IpNet) -> bool {
        let old = self.by_id.insert(id, net);
        if old == Some(net) {
            return false;
        }
        if let Some(old) = old {
            self.drop_net(old);
        }
        self.by_net.entry(net).or_default().decisions += 1;
        old.is_none()
    }

    /// Decision `id` is no longer refused (deleted, or enforced).
    pub fn remove(&mut self, id: i64) {
        if let Some(net) = self.by_id.remove(&id) {
            self.drop_net(net);
        }
    }

    fn drop_net(&mut self, net: IpNet) {
        if let Some(n) = self.by_net.get_mut(&net) {
            n.decisions -= 1;
            if n.decisions == 0 {
                self.by_net.remove(&net);
            }
        }
    }

    pub fn contains(&self, id: i64) -> bool {
        self.by_id.contains_key(&id)
    }

    /// Marks the refusal of `net` (named by a refused decision) logged: true when it
    /// was not yet, and so is to be logged now.
    pub fn log_once(&mut self, net: IpNet) -> bool {
        self.by_net
            .get_mut(&net)
            .is_some_and(|n| !std::mem::replace(&mut n.logged, true))
    }

    /// Whether decision `id` stands refused on `net` and that refusal was logged (for a
    /// full answer, which names every decision again: one refused before and again is
    /// not logged again).
    pub fn logged_with(&self, id: i64, net: &IpNet) -> bool {
        self.by_id.get(&id) == Some(net) && self.by_net.get(net).is_some_and(|n| n.logged)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    #[test]
    fn a_network_is_logged_once_while_a_decision_on_it_stays_refused() {
        let (n, m) = (net("192.0.2.9/32"), net("198.51.100.0/24"));
        let mut r = Refused::default();
        assert!(r.insert(1, n));
        assert!(!r.insert(1, n), "counted once");
        assert!(r.insert(2, n));
        assert!(r.log_once(n));
        assert!(!r.log_once(n));
        assert!(r.logged_with(1, &n) && r.logged_with(2, &n));
        assert!(!r.logged_with(1, &m) && !r.logged_with(3, &n));
        // One of its two decisions deleted: still logged.
        r.remove(1);
        assert!(!r.contains(1) && r.contains(2));
        assert!(!r.log_once(n));
        // The last: forgotten, and logged again when decided again.
        r.remove(2);
        assert!(r.by_id.is_empty());
        assert!(!r.log_once(n), "no refused decision names it");
        assert!(r.insert(3, n));
        assert!(r.log_once(n));
        // An id that names another network now moves there.
        assert!(!r.insert(3, m));
        assert!(r.log_once(m));
        assert!(!r.logged_with(3, &n));
        assert_eq!(r.by_id.len(), 1);
        r.remove(3);
        assert!(r.by_id.is_empty() && r.by_net.is_empty());
    }
}
