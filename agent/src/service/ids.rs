//! Allocation of small integer ids (backend ids, service ids) that are reused
//! once released, so ids never leak however long the agent runs.

use std::collections::BTreeMap;

/// Hands out the lowest free id in `[first, last]`. Free ids are kept as
/// ranges, so reserving an id far away (a user-chosen service id) costs
/// nothing.
#[derive(Debug, Clone)]
pub struct IdAllocator {
    first: u32,
    last: u32,
    /// start → end (inclusive) of every free range; disjoint, non-adjacent.
    free: BTreeMap<u32, u32>,
    in_use: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    #[error("all ids from {first} to {last} are in use")]
    Exhausted { first: u32, last: u32 },
    #[error("id {0} is outside {1}..={2}")]
    OutOfRange(u32, u32, u32),
    #[error("id {0} is already in use")]
    InUse(u32),
}

impl IdAllocator {
    pub fn new(first: u32, last: u32) -> Self {
        let mut free = BTreeMap::new();
        if first <= last {
            free.insert(first, last);
        }
        Self { first, last, free, in_use: 0 }
    }

    pub fn allocate(&mut self) -> Result<u32, IdError> {
        let (start, end) = self.free.pop_first().ok_or(IdError::Exhausted { first: self.first, last: self.last })?;
        if start < end {
            self.free.insert(start + 1, end);
        }
        self.in_use += 1;
        Ok(start)
    }

    /// Marks a specific id used (a user-chosen service id, or one recovered
    /// from the maps at start-up).
    pub fn reserve(&mut self, id: u32) -> Result<(), IdError> {
        if id < self.first || id > self.last {
            return Err(IdError::OutOfRange(id, self.first, self.last));
        }
        let (start, end) = self.free_range_of(id).ok_or(IdError::InUse(id))?;
        self.free.remove(&start);
        if start < id {
            self.free.insert(start, id - 1);
        }
        if id < end {
            self.free.insert(id + 1, end);
        }
        self.in_use += 1;
        Ok(())
    }

    pub fn release(&mut self, id: u32) {
        if !self.is_used(id) {
            return;
        }
        self.in_use -= 1;
        let (mut start, mut end) = (id, id);
        if let Some((&s, &e)) = self.free.range(..id).next_back() {
            if e.checked_add(1) == Some(id) {
                self.free.remove(&s);
                start = s;
            }
        }
        if let Some(next) = id.checked_add(1) {
            if let Some(e) = self.free.remove(&next) {
                end = e;
            }
        }
        self.free.insert(start, end);
    }

    pub fn is_used(&self, id: u32) -> bool {
        id >= self.first && id <= self.last && self.free_range_of(id).is_none()
    }

    pub fn in_use(&self) -> usize {
        self.in_use
    }

    fn free_range_of(&self, id: u32) -> Option<(u32, u32)> {
        self.free.range(..=id).next_back().filter(|(_, &end)| id <= end).map(|(&s, &e)| (s, e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reuses_released_ids_lowest_first() {
        let mut ids = IdAllocator::new(1, 10);
        let a: Vec<u32> = (0..4).map(|_| ids.allocate().unwrap()).collect();
        assert_eq!(a, vec![1, 2, 3, 4]);
        ids.release(2);
        ids.release(3);
        assert_eq!(ids.allocate().unwrap(), 2);
        assert_eq!(ids.in_use(), 3);
        ids.release(4);
        ids.release(2);
        ids.release(1);
        assert_eq!(ids.in_use(), 0);
        assert_eq!(ids.allocate().unwrap(), 1, "released ids come back lowest first");
        let mut far = IdAllocator::new(1, u32::MAX - 1);
        far.reserve(4_000_000_000).unwrap();
        assert_eq!(far.allocate().unwrap(), 1);
        far.release(4_000_000_000);
        assert!(!far.is_used(4_000_000_000));
    }

    #[test]
    fn reserve_skips_and_keeps_holes_free() {
        let mut ids = IdAllocator::new(1, 100);
        ids.reserve(5).unwrap();
        assert_eq!(ids.reserve(5), Err(IdError::InUse(5)));
        assert_eq!((1..=4).map(|_| ids.allocate().unwrap()).collect::<Vec<_>>(), vec![1, 2, 3, 4]);
        assert_eq!(ids.allocate().unwrap(), 6);
        ids.reserve(3).unwrap_err();
        ids.release(3);
        ids.reserve(3).unwrap();
        assert_eq!(ids.reserve(0), Err(IdError::OutOfRange(0, 1, 100)));
    }

    #[test]
    fn exhaustion_is_an_error_and_release_recovers() {
        let mut ids = IdAllocator::new(1, 3);
        for _ in 0..3 {
            ids.allocate().unwrap();
        }
        assert_eq!(ids.allocate(), Err(IdError::Exhausted { first: 1, last: 3 }));
        ids.release(2);
        assert_eq!(ids.allocate().unwrap(), 2);
    }

    #[test]
    fn no_leak_over_many_cycles() {
        let mut ids = IdAllocator::new(1, 1000);
        let mut held = Vec::new();
        for round in 0..200u32 {
            for _ in 0..5 {
                held.push(ids.allocate().unwrap());
            }
            for _ in 0..(if round % 2 == 0 { 3 } else { 7.min(held.len()) }) {
                let id = held.remove((round as usize * 7) % held.len());
                ids.release(id);
            }
        }
        assert_eq!(ids.in_use(), held.len());
        assert!(held.iter().all(|&id| id <= held.len() as u32 + 10), "ids stay dense");
    }
}
