//! Remembers recent `message_id`s so that a redelivered or republished event reaches clients once.

use std::collections::{HashSet, VecDeque};
use std::sync::Mutex;

/// A bounded set of recent ids: the oldest is forgotten once `capacity` is reached, so memory stays flat
/// however many events pass.
pub struct Dedupe {
    capacity: usize,
    seen: Mutex<(HashSet<String>, VecDeque<String>)>,
}

impl Dedupe {
    pub fn new(capacity: usize) -> Self {
        Self { capacity: capacity.max(1), seen: Mutex::default() }
    }

    /// True the first time an id is seen (within the remembered window), false for a repeat.
    pub fn first_time(&self, id: &str) -> bool {
        let mut guard = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        let (set, order) = &mut *guard;
        if set.contains(id) {
            return false;
        }
        if order.len() >= self.capacity {
            if let Some(oldest) = order.pop_front() {
                set.remove(&oldest);
            }
        }
        set.insert(id.to_owned());
        order.push_back(id.to_owned());
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeats_are_caught_and_memory_is_bounded() {
        let dedupe = Dedupe::new(2);
        assert!(dedupe.first_time("a"));
        assert!(!dedupe.first_time("a"));
        assert!(dedupe.first_time("b"));
        assert!(dedupe.first_time("c"), "a is forgotten now");
        assert!(dedupe.first_time("a"));
        assert!(!dedupe.first_time("c"));
    }
}
