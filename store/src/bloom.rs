//! "Never seen" without a disk read: a Bloom filter of every key in a
//! partition's store, kept in memory and rebuilt from the store's keys
//! when it is opened.
//!
//! It grows in layers (a scalable Bloom filter): when a layer holds the
//! keys it was sized for, a new one twice its size is added, so the false
//! positive rate stays near [`FALSE_POSITIVE_RATE`] per layer however many
//! orders a sale brings, and memory is about
//! [`BITS_PER_KEY`] bits per key ever added. Keys removed by retention
//! stay in the filter until the next open (a Bloom filter cannot forget):
//! a later key like them costs one disk read, never a wrong answer.
//!
//! Keys are order IDs, chosen by whoever produces orders: they are hashed
//! with SipHash under a key drawn at random per process, so a producer
//! cannot craft IDs that all collide.

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;

/// Bits per key in each layer: with [`HASHES`] probes, about 1 % false
/// positives when a layer is full.
pub const BITS_PER_KEY: usize = 10;
/// Probes per key (optimal for 10 bits per key: 10 · ln 2 ≈ 7).
pub const HASHES: u32 = 7;
/// The rate a full layer gives, for documentation and tests.
pub const FALSE_POSITIVE_RATE: f64 = 0.01;
/// The first layer's size when the store is empty.
const MIN_LAYER_KEYS: usize = 1 << 16;

struct Layer {
    bits: Vec<u64>,
    /// Keys this layer was sized for, and keys added to it.
    capacity: usize,
    len: usize,
}

impl Layer {
    fn new(capacity: usize) -> Self {
        let words = (capacity.max(1) * BITS_PER_KEY).div_ceil(64);
        Layer {
            bits: vec![0; words],
            capacity,
            len: 0,
        }
    }

    fn bit_count(&self) -> u64 {
        self.bits.len() as u64 * 64
    }

    fn insert(&mut self, hash: u64) {
        let bits = self.bit_count();
        for i in 0..u64::from(HASHES) {
            let bit = probe(hash, i, bits);
            self.bits[(bit / 64) as usize] |= 1 << (bit % 64);
        }
        self.len += 1;
    }

    fn contains(&self, hash: u64) -> bool {
        let bits = self.bit_count();
        (0..u64::from(HASHES)).all(|i| {
            let bit = probe(hash, i, bits);
            self.bits[(bit / 64) as usize] & (1 << (bit % 64)) != 0
        })
    }
}

/// Probe `i` of a key among `bits`: double hashing, `h1 + i·h2` (Kirsch
/// and Mitzenmacher), from one 64-bit hash.
fn probe(hash: u64, i: u64, bits: u64) -> u64 {
    let h1 = hash & 0xffff_ffff;
    let h2 = (hash >> 32) | 1;
    h1.wrapping_add(i.wrapping_mul(h2)) % bits
}

/// A scalable Bloom filter of byte-string keys.
pub struct Bloom {
    hasher: RandomState,
    layers: Vec<Layer>,
}

impl Bloom {
    /// A filter sized for `expected` keys at first (it grows past them).
    pub fn new(expected: usize) -> Self {
        Bloom {
            hasher: RandomState::new(),
            layers: vec![Layer::new(expected.max(MIN_LAYER_KEYS))],
        }
    }

    pub fn insert(&mut self, key: &[u8]) {
        let hash = self.hasher.hash_one(key);
        let last = self.layers.last().expect("a filter has a layer");
        if last.len >= last.capacity {
            let capacity = last.capacity.saturating_mul(2);
            self.layers.push(Layer::new(capacity));
        }
        self.layers
            .last_mut()
            .expect("a filter has a layer")
            .insert(hash);
    }

    /// False: the key was never inserted. True: it may have been.
    pub fn may_contain(&self, key: &[u8]) -> bool {
        let hash = self.hasher.hash_one(key);
        self.layers.iter().any(|layer| layer.contains(hash))
    }

    /// Memory the filter's bits take.
    pub fn bytes(&self) -> usize {
        self.layers.iter().map(|l| l.bits.len() * 8).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_inserted_key_is_found_and_few_others_are() {
        let mut bloom = Bloom::new(10_000);
        // Past the first layer, so growth is covered too.
        let keys = 3 * MIN_LAYER_KEYS;
        for i in 0..keys {
            bloom.insert(format!("o-{i}").as_bytes());
        }
        for i in 0..keys {
            assert!(bloom.may_contain(format!("o-{i}").as_bytes()), "o-{i}");
        }
        let probes = 100_000;
        let false_positives = (0..probes)
            .filter(|i| bloom.may_contain(format!("never-{i}").as_bytes()))
            .count();
        // Two layers, each at most about 1 % when full: under 3 % in all.
        let rate = false_positives as f64 / probes as f64;
        assert!(
            rate < 3.0 * FALSE_POSITIVE_RATE,
            "false positive rate {rate}"
        );
        assert!(bloom.layers.len() >= 2, "the filter grew");
    }
}
