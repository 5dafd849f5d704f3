//! A set of ports as the kernel's watched-port bitmap stores it.

use std::fmt;

/// 65536 bits, one per port; bit `p % 64` of word `p / 64`.
#[derive(Clone, PartialEq, Eq)]
pub struct PortSet {
    words: Box<[u64; 1024]>,
}

impl Default for PortSet {
    fn default() -> Self {
        PortSet {
            words: Box::new([0; 1024]),
        }
    }
}

impl PortSet {
    pub fn new() -> Self {
        Self::default()
    }

    /// Every port in `range`.
    pub fn from_range(range: std::ops::RangeInclusive<u16>) -> Self {
        let mut s = Self::new();
        for p in range {
            s.insert(p);
        }
        s
    }

    pub fn insert(&mut self, port: u16) {
        self.words[usize::from(port >> 6)] |= 1 << (port & 63);
    }

    pub fn remove(&mut self, port: u16) {
        self.words[usize::from(port >> 6)] &= !(1 << (port & 63));
    }

    pub fn contains(&self, port: u16) -> bool {
        self.words[usize::from(port >> 6)] & (1 << (port & 63)) != 0
    }

    pub fn len(&self) -> usize {
        self.words.iter().map(|w| w.count_ones() as usize).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.words.iter().all(|w| *w == 0)
    }

    pub fn iter(&self) -> impl Iterator<Item = u16> + '_ {
        (0..=u16::MAX).filter(|p| self.contains(*p))
    }

    /// The bitmap words, as written to the kernel map.
    pub fn words(&self) -> &[u64; 1024] {
        &self.words
    }

    /// Maximal runs of consecutive ports, for display.
    pub fn ranges(&self) -> Vec<(u16, u16)> {
        let mut out: Vec<(u16, u16)> = Vec::new();
        for p in self.iter() {
            match out.last_mut() {
                Some((_, end)) if u32::from(*end) + 1 == u32::from(p) => *end = p,
                _ => out.push((p, p)),
            }
        }
        out
    }
}

/// `1-5,7,100-200`; `none` when empty.
impl fmt::Display for PortSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ranges = self.ranges();
        if ranges.is_empty() {
            return f.write_str("none");
        }
        for (i, (a, b)) in ranges.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            if a == b {
                write!(f, "{a}")?;
            } else {
                write!(f, "{a}-{b}")?;
            }
        }
        Ok(())
    }
}

impl fmt::Debug for PortSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PortSet({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bits_and_display() {
        let mut s = PortSet::from_range(1..=5);
        s.insert(7);
        s.insert(65535);
        s.insert(0);
        s.remove(3);
        assert!(s.contains(0) && s.contains(65535) && !s.contains(3) && !s.contains(6));
        assert_eq!(s.len(), 7);
        assert_eq!(s.to_string(), "0-2,4-5,7,65535");
        assert_eq!(PortSet::new().to_string(), "none");
        assert_eq!(s.words()[0] & 0xff, 0b1011_0111);
    }
}
