//! Which decisions hold each ban from the Local API: several decisions may name one network
//! (two machines reported it, a list and an operator), and a deletion lifts the ban only
//! when the last of them goes.

use std::collections::HashMap;

use ipnet::IpNet;

#[derive(Debug, Default)]
pub struct Held {
    by_net: HashMap<IpNet, Vec<i64>>,
    by_id: HashMap<i64, IpNet>,
}

impl Held {
    /// Decision `id` holds `net`.
    pub fn add(&mut self, id: i64, net: IpNet) {
        if let Some(old) = self.by_id.insert(id, net)
            && old != net
        {
            self.drop_id(id, old);
        }
        let ids = self.by_net.entry(net).or_default();
        if !ids.contains(&id) {
            ids.push(id);
        }
    }

    fn drop_id(&mut self, id: i64, net: IpNet) -> bool {
        if let Some(ids) = self.by_net.get_mut(&net) {
            ids.retain(|i| *i != id);
            if ids.is_empty() {
                self.by_net.remove(&net);
                return true;
            }
        }
        false
    }

    /// Decision `id` was deleted: the network it held when no other decision holds it now.
    pub fn remove(&mut self, id: i64) -> Option<IpNet> {
        let net = self.by_id.remove(&id)?;
        self.drop_id(id, net).then_some(net)
    }

    /// Forgets `net` and its decisions (its ban ended here).
    pub fn forget(&mut self, net: &IpNet) {
        if let Some(ids) = self.by_net.remove(net) {
            for id in ids {
                self.by_id.remove(&id);
            }
        }
    }

    /// Whether decision `id` holds a network.
    pub fn has_id(&self, id: i64) -> bool {
        self.by_id.contains_key(&id)
    }

    /// The decisions that hold `net`.
    pub fn ids_of(&self, net: &IpNet) -> &[i64] {
        self.by_net.get(net).map_or(&[], Vec::as_slice)
    }

    pub fn holds(&self, net: &IpNet) -> bool {
        self.by_net.contains_key(net)
    }

    pub fn len(&self) -> usize {
        self.by_net.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_net.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_decision_lifts() {
        let net: IpNet = "192.0.2.9/32".parse().unwrap();
        let mut h = Held::default();
        h.add(1, net);
        h.add(2, net);
        assert_eq!(h.remove(1), None, "decision 2 still holds it");
        assert!(h.holds(&net));
        assert_eq!(h.remove(7), None, "unknown");
        assert_eq!(h.remove(2), Some(net));
        assert!(h.is_empty());
        h.add(3, net);
        h.forget(&net);
        assert_eq!(h.remove(3), None);
    }
}
