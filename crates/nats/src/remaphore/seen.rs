//! The seen-message window: a message accepted once is dropped when it
//! comes again while its time is still inside `allow_skew` (after that the
//! skew check refuses it anyway). The original has no such window: any
//! message could be replayed for as long as its time was in the window.
//!
//! Keyed by the message hash, which is unambiguous because only the
//! canonical encoding is accepted ([`super::wire`]). Bounded: at most
//! [`MAX_ENTRIES`]; past that the entry that would expire first is
//! forgotten early (a flood from an authorised peer costs memory, never
//! unbounded).

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashSet};

pub const MAX_ENTRIES: usize = 200_000;

#[derive(Debug, Default)]
pub struct Seen {
    set: HashSet<[u8; 32]>,
    by_expiry: BinaryHeap<Reverse<(i64, [u8; 32])>>,
    cap: usize,
}

impl Seen {
    pub fn new() -> Seen {
        Seen::with_capacity(MAX_ENTRIES)
    }

    pub fn with_capacity(cap: usize) -> Seen {
        Seen {
            cap: cap.max(1),
            ..Seen::default()
        }
    }

    /// Record `hash`, to be remembered until `expires` (Unix nanoseconds);
    /// false when it was already recorded (a replay).
    pub fn insert(&mut self, hash: [u8; 32], expires: i64, now: i64) -> bool {
        while let Some(Reverse((t, h))) = self.by_expiry.peek().copied() {
            if t >= now && self.set.len() < self.cap {
                break;
            }
            self.by_expiry.pop();
            self.set.remove(&h);
        }
        if !self.set.insert(hash) {
            return false;
        }
        self.by_expiry.push(Reverse((expires, hash)));
        true
    }

    pub fn len(&self) -> usize {
        self.set.len()
    }

    pub fn is_empty(&self) -> bool {
        self.set.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_replay_inside_the_window_is_refused_and_entries_expire() {
        let mut s = Seen::new();
        assert!(s.insert([1; 32], 100, 0));
        assert!(!s.insert([1; 32], 100, 50));
        assert!(s.insert([2; 32], 300, 50));
        // Past its expiry the first is forgotten (the skew check refuses it).
        assert!(s.insert([3; 32], 400, 200));
        assert_eq!(s.len(), 2);
    }

    #[test]
    fn the_window_is_bounded() {
        let mut s = Seen::with_capacity(10);
        for i in 0..1000u32 {
            let mut h = [0u8; 32];
            h[..4].copy_from_slice(&i.to_le_bytes());
            assert!(s.insert(h, 1_000_000 + i as i64, 0));
            assert!(s.len() <= 10);
        }
    }
}
