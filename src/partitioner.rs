//! Which partition of `orders` a record's key belongs on, computed the way
//! the producers upstream compute it. Pure: no Kafka types.
//!
//! Why the processor checks: one order is owned by one partition (its book
//! dedups it and remembers what it holds). Two upstream producers with
//! different partitioners put the same order ID on two partitions, and two
//! owners would decide it twice. The Java client hashes keys with murmur2;
//! librdkafka (and every client built on it) defaults to
//! `consistent_random`, a CRC32 of the key. A record whose partition is not
//! the one the configured partitioner gives its key is dead-lettered as
//! `wrong_partition` before it reaches the engine, so it decides nothing.
//!
//! Both functions match their reference bit for bit (test vectors from the
//! Java client's `Utils.murmur2` and librdkafka's `rdmurmur2.c`, `rdcrc32.h`
//! and its partitioner test `0048-partitioner.c`; `tests/partition_check.rs`
//! compares them with librdkafka's own partitioners on a real broker).

use serde::{Deserialize, Serialize};
use std::fmt;

/// How upstream producers pick a keyed record's partition of `orders`
/// (config `kafka.orders_partitioner`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Partitioner {
    /// The Java client's default: `(murmur2(key) & 0x7fffffff) % partitions`;
    /// librdkafka's `murmur2` and `murmur2_random` compute the same for a key.
    Murmur2,
    /// librdkafka's default: `crc32(key) % partitions`; records with an
    /// empty or no key go to a random partition.
    ConsistentRandom,
    /// No check: every partition is accepted.
    Off,
}

impl Partitioner {
    /// The partitioners a record can be recognised by, in the order a
    /// misrouted record's detail tries them.
    pub const KNOWN: [Partitioner; 2] = [Partitioner::Murmur2, Partitioner::ConsistentRandom];

    pub fn as_str(self) -> &'static str {
        match self {
            Partitioner::Murmur2 => "murmur2",
            Partitioner::ConsistentRandom => "consistent_random",
            Partitioner::Off => "off",
        }
    }

    /// The value of librdkafka's producer property `partitioner` that puts
    /// keyed records where this partitioner does (`murmur2_random`: murmur2
    /// for keys, random for records without one, as the Java client);
    /// `None` for `Off` (librdkafka's default then applies).
    pub fn librdkafka_property(self) -> Option<&'static str> {
        match self {
            Partitioner::Murmur2 => Some("murmur2_random"),
            Partitioner::ConsistentRandom => Some("consistent_random"),
            Partitioner::Off => None,
        }
    }

    /// The partition of `key` among `partitions`, or `None` where the
    /// partitioner gives no fixed one: `Off`, no partitions, and an empty
    /// key under `consistent_random` (random).
    pub fn partition(self, key: &[u8], partitions: u32) -> Option<u32> {
        if partitions == 0 {
            return None;
        }
        match self {
            Partitioner::Murmur2 => Some((murmur2(key) & 0x7fff_ffff) % partitions),
            Partitioner::ConsistentRandom if key.is_empty() => None,
            Partitioner::ConsistentRandom => Some(crc32(key) % partitions),
            Partitioner::Off => None,
        }
    }
}

impl fmt::Display for Partitioner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// MurmurHash2 as Kafka's Java client computes it (`Utils.murmur2`, seed
/// `0x9747b28c`, little-endian words), which librdkafka's `rd_murmur2`
/// reproduces. Java returns it as a signed `int`; this is the same bits.
pub fn murmur2(data: &[u8]) -> u32 {
    const SEED: u32 = 0x9747_b28c;
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;
    // Java folds the length in as an `int`: only its low 32 bits count.
    let mut h = SEED ^ (data.len() as u32);
    let mut words = data.chunks_exact(4);
    for word in &mut words {
        let mut k = u32::from_le_bytes([word[0], word[1], word[2], word[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    let tail = words.remainder();
    if tail.len() >= 3 {
        h ^= u32::from(tail[2]) << 16;
    }
    if tail.len() >= 2 {
        h ^= u32::from(tail[1]) << 8;
    }
    if let Some(first) = tail.first() {
        h ^= u32::from(*first);
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h
}

/// CRC-32 as librdkafka's `rd_crc32` (and zlib's `crc32`) computes it:
/// polynomial 0x04c11db7 reflected, initial and final XOR 0xffffffff.
pub fn crc32(data: &[u8]) -> u32 {
    !data.iter().fold(!0u32, |crc, byte| {
        CRC32_TABLE[usize::from((crc as u8) ^ byte)] ^ (crc >> 8)
    })
}

/// The byte-at-a-time table of the reflected polynomial, built at compile time.
const CRC32_TABLE: [u32; 256] = {
    const REFLECTED_POLY: u32 = 0xedb8_8320;
    let mut table = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut crc = i as u32;
        let mut bit = 0;
        while bit < 8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ REFLECTED_POLY
            } else {
                crc >> 1
            };
            bit += 1;
        }
        table[i] = crc;
        i += 1;
    }
    table
};

/// The partition check of one consumer of `orders`: the configured
/// partitioner and the topic's partition count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Routing {
    pub partitioner: Partitioner,
    pub partitions: u32,
}

/// A record on another partition than its key's, with what it does match.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Misrouted {
    /// The partition the record was read from.
    pub partition: i32,
    pub partitions: u32,
    pub partitioner: Partitioner,
    /// Where `partitioner` puts the key.
    pub expected: u32,
    /// The first known partitioner that puts the key where it is, if any.
    pub matches: Option<Partitioner>,
}

impl Routing {
    /// A check that accepts every record.
    pub const OFF: Routing = Routing {
        partitioner: Partitioner::Off,
        partitions: 0,
    };

    /// Whether the record at `partition` with `key` is where the configured
    /// partitioner puts it. Records without a key, or with an empty one,
    /// pass: no partitioner places them by key, and they are dead-lettered
    /// for their key anyway (`key_mismatch` or `missing_order_id`).
    pub fn check(&self, partition: i32, key: Option<&[u8]>) -> Result<(), Misrouted> {
        let Some(key) = key.filter(|key| !key.is_empty()) else {
            return Ok(());
        };
        let Some(expected) = self.partitioner.partition(key, self.partitions) else {
            return Ok(());
        };
        if i64::from(expected) == i64::from(partition) {
            return Ok(());
        }
        let matches = Partitioner::KNOWN.into_iter().find(|known| {
            known
                .partition(key, self.partitions)
                .is_some_and(|p| i64::from(p) == i64::from(partition))
        });
        Err(Misrouted {
            partition,
            partitions: self.partitions,
            partitioner: self.partitioner,
            expected,
            matches,
        })
    }
}

impl fmt::Display for Misrouted {
    /// The dead letter's `error_detail`: where the record is, where it
    /// belongs, and which producer's partitioner put it there.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "record is on partition {} of {}, but kafka.orders_partitioner {} puts its key on partition {}; ",
            self.partition, self.partitions, self.partitioner, self.expected
        )?;
        match self.matches {
            Some(known) => write!(f, "it matches partitioner {known}"),
            None => {
                let known: Vec<&str> = Partitioner::KNOWN.iter().map(|p| p.as_str()).collect();
                write!(f, "it matches no known partitioner ({})", known.join(", "))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn murmur2_matches_the_java_client() {
        // Kafka's clients/src/test/java/org/apache/kafka/common/utils/UtilsTest.java
        // (Java's signed int results).
        let java: [(&[u8], i32); 6] = [
            (b"21", -973_932_308),
            (b"foobar", -790_332_482),
            (b"a-little-bit-long-string", -985_981_536),
            (b"a-little-bit-longer-string", -1_486_304_829),
            (
                b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8",
                -58_897_971,
            ),
            (b"abc", 479_470_107),
        ];
        for (key, expected) in java {
            assert_eq!(
                murmur2(key) as i32,
                expected,
                "{:?}",
                String::from_utf8_lossy(key)
            );
        }
    }

    #[test]
    fn murmur2_matches_librdkafka() {
        // librdkafka src/rdmurmur2.c, unittest_murmur2 (results checked
        // there against the Java client).
        let unaligned = "PreAmbleWillBeRemoved,ThePrePartThatIs";
        let cases: [(&str, u32); 11] = [
            ("kafka", 0xd067_cf64),
            ("giberish123456789", 0x8f55_2b0c),
            ("1234", 0x9fc9_7b14),
            ("234", 0xe7c0_09ca),
            ("34", 0x8739_30da),
            ("4", 0x5a4b_5ca1),
            (unaligned, 0x7842_4f1c),
            (&unaligned[1..], 0x4a62_b377),
            (&unaligned[2..], 0xe0e4_e09e),
            (&unaligned[3..], 0x62b8_b43f),
            ("", 0x106e_08d9),
        ];
        for (key, expected) in cases {
            assert_eq!(murmur2(key.as_bytes()), expected, "{key:?}");
        }
    }

    #[test]
    fn crc32_matches_librdkafka_and_the_standard_check_value() {
        assert_eq!(crc32(b"123456789"), 0xcbf4_3926, "CRC-32/ISO-HDLC check");
        assert_eq!(crc32(b""), 0);
        // librdkafka tests/0048-partitioner.c ("acquired using the crc32
        // command").
        assert_eq!(crc32(b"23456"), 0xb1b4_51d7);
        assert_eq!(
            crc32(b"this is another string with more length to it perhaps"),
            0xb015_0df7
        );
        assert_eq!(crc32(b"hejsan"), 0xd077_037e);
    }

    #[test]
    fn partitions_match_librdkafkas_partitioner_test() {
        // 0048-partitioner.c's expectations for 17 partitions (keys "",
        // "23456", a long string, "hejsan").
        let keys: [&[u8]; 4] = [
            b"",
            b"23456",
            b"this is another string with more length to it perhaps",
            b"hejsan",
        ];
        let n = 17;
        let murmur: [u32; 4] = [0x106e_08d9, 0x058d_780f, 0x4f77_03da, 0x5ec1_9395];
        let crc: [Option<u32>; 4] = [
            None,
            Some(0xb1b4_51d7),
            Some(0xb015_0df7),
            Some(0xd077_037e),
        ];
        for (i, key) in keys.iter().enumerate() {
            assert_eq!(
                Partitioner::Murmur2.partition(key, n),
                Some(murmur[i] % n),
                "{i}"
            );
            assert_eq!(
                Partitioner::ConsistentRandom.partition(key, n),
                crc[i].map(|h| h % n),
                "{i}"
            );
            assert_eq!(Partitioner::Off.partition(key, n), None);
        }
        // The sign bit is cleared before the modulo, as Java's toPositive.
        let negative = b"foobar"; // murmur2 is negative as a Java int
        assert!((murmur2(negative) as i32) < 0);
        assert_eq!(
            Partitioner::Murmur2.partition(negative, 7),
            Some((murmur2(negative) & 0x7fff_ffff) % 7)
        );
        assert_eq!(Partitioner::Murmur2.partition(negative, 0), None);
    }

    #[test]
    fn config_names_round_trip() {
        for partitioner in [
            Partitioner::Murmur2,
            Partitioner::ConsistentRandom,
            Partitioner::Off,
        ] {
            let text = toml::Value::try_from(partitioner).unwrap();
            assert_eq!(text.as_str(), Some(partitioner.as_str()));
            let back: Partitioner = text.try_into().unwrap();
            assert_eq!(back, partitioner);
        }
    }

    /// An order ID whose murmur2 and CRC32 partitions differ (and one
    /// whose partition matches neither).
    fn differing_key(partitions: u32) -> String {
        (0..)
            .map(|i| format!("o-{i}"))
            .find(|id| {
                Partitioner::Murmur2.partition(id.as_bytes(), partitions)
                    != Partitioner::ConsistentRandom.partition(id.as_bytes(), partitions)
            })
            .unwrap()
    }

    #[test]
    fn check_names_the_partitioner_a_misrouted_record_matches() {
        let routing = Routing {
            partitioner: Partitioner::Murmur2,
            partitions: 4,
        };
        let id = differing_key(4);
        let key = Some(id.as_bytes());
        let murmur = Partitioner::Murmur2.partition(id.as_bytes(), 4).unwrap() as i32;
        let crc = Partitioner::ConsistentRandom
            .partition(id.as_bytes(), 4)
            .unwrap() as i32;
        assert_eq!(routing.check(murmur, key), Ok(()));
        let wrong = routing.check(crc, key).unwrap_err();
        assert_eq!(wrong.matches, Some(Partitioner::ConsistentRandom));
        assert_eq!(wrong.expected as i32, murmur);
        let detail = wrong.to_string();
        assert!(
            detail.contains(&format!("partition {crc} of 4"))
                && detail.contains(&format!("puts its key on partition {murmur}"))
                && detail.ends_with("it matches partitioner consistent_random"),
            "{detail}"
        );
        let neither = (0..4).find(|p| *p != murmur && *p != crc).unwrap();
        let lost = routing.check(neither, key).unwrap_err();
        assert_eq!(lost.matches, None);
        assert!(
            lost.to_string()
                .ends_with("it matches no known partitioner (murmur2, consistent_random)"),
            "{lost}"
        );

        let crc_routing = Routing {
            partitioner: Partitioner::ConsistentRandom,
            partitions: 4,
        };
        assert_eq!(crc_routing.check(crc, key), Ok(()));
        assert_eq!(
            crc_routing.check(murmur, key).unwrap_err().matches,
            Some(Partitioner::Murmur2)
        );
    }

    #[test]
    fn records_without_a_key_and_the_off_setting_pass() {
        let routing = Routing {
            partitioner: Partitioner::Murmur2,
            partitions: 4,
        };
        for partition in 0..4 {
            assert_eq!(routing.check(partition, None), Ok(()));
            assert_eq!(routing.check(partition, Some(b"")), Ok(()));
            assert_eq!(Routing::OFF.check(partition, Some(b"o-1")), Ok(()));
        }
        // A partition the topic does not have matches nothing.
        let beyond = routing.check(9, Some(b"o-1")).unwrap_err();
        assert_eq!(beyond.matches, None);
    }

    /// Why the check may pass records without a key: the decoder
    /// dead-letters every one of them for its key (or worse) anyway, so
    /// none is decided on whatever partition it landed.
    #[test]
    fn records_without_a_key_are_dead_lettered_anyway() {
        use crate::order::decode::{decode_order, Decoded};
        let values: [&[u8]; 6] = [
            br#"{"type":"order_placed","order_id":"o-1","lines":[]}"#,
            br#"{"type":"order_placed","order_id":"o-1","lines":[{"quantity":"two"}]}"#,
            br#"{"type":"order_cancelled","order_id":"o-1"}"#,
            br#"{"type":"order_placed","order_id":""}"#,
            b"{not json",
            b"",
        ];
        for value in values {
            for key in [None, Some(&b""[..])] {
                let decoded = decode_order(key, Some(value), 65_536);
                assert!(
                    matches!(decoded, Decoded::DeadLetter(_)),
                    "{key:?} {:?}: {decoded:?}",
                    String::from_utf8_lossy(value)
                );
            }
        }
    }

    proptest! {
        /// Exactly one partition passes for any keyed record, and it is
        /// within the topic.
        #[test]
        fn one_partition_per_key(key in proptest::collection::vec(any::<u8>(), 1..64),
                                 partitions in 1u32..64,
                                 crc in any::<bool>()) {
            let partitioner = if crc { Partitioner::ConsistentRandom } else { Partitioner::Murmur2 };
            let routing = Routing { partitioner, partitions };
            let passing: Vec<i32> = (0..partitions as i32)
                .filter(|p| routing.check(*p, Some(&key)).is_ok())
                .collect();
            prop_assert_eq!(passing.len(), 1);
            prop_assert!((passing[0] as u32) < partitions);
        }
    }
}
