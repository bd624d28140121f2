//! JSON text written straight into a byte buffer, byte for byte as
//! `serde_json` writes it, for the output payloads the engine produces for
//! every record (`events::status_json`, `events::requested_json`).
//!
//! Why not serde_json: escaping a string there looks up every byte in a
//! table, one at a time, behind the `Serializer` and `Formatter` layers;
//! on the order mix that was 16 % of all the engine's instructions, for
//! text that almost never needs an escape. Here eight bytes are checked
//! at once and every run of bytes that needs none is copied with one
//! `extend_from_slice`. The unit tests compare against serde_json's output.

/// The escape serde_json writes after a backslash for byte `b`, `u` for
/// `\u00XX`, 0 when the byte is written as it is (serde_json's `ESCAPE`).
const fn escape(b: u8) -> u8 {
    match b {
        0x08 => b'b',
        b'\t' => b't',
        b'\n' => b'n',
        0x0c => b'f',
        b'\r' => b'r',
        b'"' => b'"',
        b'\\' => b'\\',
        0x00..=0x1f => b'u',
        _ => 0,
    }
}

/// Bytes of a word checked at once.
const WORD: usize = 8;
const ONES: u64 = u64::from_ne_bytes([0x01; WORD]);
const HIGHS: u64 = u64::from_ne_bytes([0x80; WORD]);

/// The bytes of `word` (read little-endian) that need an escape in a JSON
/// string, below 0x20, `"` or `\`, as their high bits. `(x - ONES * n) &
/// !x & HIGHS` is non-zero iff some byte of `x` is below `n` (n ≤ 0x80); a
/// borrow can only mark a byte above one that really is below, so the
/// lowest marked byte is always a real one (the JSON reader's scan for the
/// end of a string relies on that).
#[inline]
pub(crate) fn special_bytes(word: u64) -> u64 {
    let below = |x: u64, n: u8| x.wrapping_sub(ONES * n as u64) & !x & HIGHS;
    let quote = word ^ (ONES * b'"' as u64);
    let backslash = word ^ (ONES * b'\\' as u64);
    below(word, 0x20) | below(quote, 1) | below(backslash, 1)
}

/// Does any byte of `word` need an escape? Exact (see [`special_bytes`]).
#[inline]
fn any_escape(word: u64) -> bool {
    special_bytes(word) != 0
}

/// Index of the first byte of `bytes` from `from` on that is below 0x20,
/// `"` or `\` (`bytes.len()` if none), eight bytes at a time.
#[inline]
pub(crate) fn find_special(bytes: &[u8], mut from: usize) -> usize {
    while let Some(chunk) = bytes.get(from..from + WORD) {
        let marks = special_bytes(u64::from_le_bytes(chunk.try_into().expect("WORD bytes")));
        if marks != 0 {
            return from + (marks.trailing_zeros() / 8) as usize;
        }
        from += WORD;
    }
    while from < bytes.len() && escape(bytes[from]) == 0 {
        from += 1;
    }
    from
}

/// Appends the JSON string whose text is `parts` joined, quotes included.
pub fn push_str(out: &mut Vec<u8>, parts: &[&str]) {
    out.push(b'"');
    for part in parts {
        push_escaped(out, part.as_bytes());
    }
    out.push(b'"');
}

/// Appends `text` escaped as inside a JSON string. Bytes of 0x80 and up
/// (UTF-8 past ASCII) and DEL are written as they are, as serde_json does.
fn push_escaped(out: &mut Vec<u8>, text: &[u8]) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    // `text[start..i]` is the run of bytes checked and needing no escape.
    let (mut start, mut i) = (0, 0);
    while i < text.len() {
        if let Some(chunk) = text.get(i..i + WORD) {
            let word = u64::from_le_bytes(chunk.try_into().expect("WORD bytes"));
            if !any_escape(word) {
                i += WORD;
                continue;
            }
        }
        // The word (or the short tail) holds an escape: byte by byte.
        let end = (i + WORD).min(text.len());
        while i < end {
            let byte = text[i];
            let code = escape(byte);
            if code != 0 {
                out.extend_from_slice(&text[start..i]);
                if code == b'u' {
                    out.extend_from_slice(b"\\u00");
                    out.push(HEX[usize::from(byte >> 4)]);
                    out.push(HEX[usize::from(byte & 0xf)]);
                } else {
                    out.extend_from_slice(&[b'\\', code]);
                }
                start = i + 1;
            }
            i += 1;
        }
    }
    out.extend_from_slice(&text[start..]);
}

/// The decimal digits of `n`, written into `buf` (a u64 has at most 20).
pub(crate) fn decimal(n: u64, buf: &mut [u8; 20]) -> &str {
    let mut at = buf.len();
    let mut rest = n;
    loop {
        at -= 1;
        buf[at] = b'0' + (rest % 10) as u8;
        rest /= 10;
        if rest == 0 {
            break;
        }
    }
    std::str::from_utf8(&buf[at..]).expect("ASCII digits")
}

/// Appends `n` in decimal, as serde_json writes an integer.
pub fn push_i64(out: &mut Vec<u8>, n: i64) {
    if n < 0 {
        out.push(b'-');
    }
    out.extend_from_slice(decimal(n.unsigned_abs(), &mut [0; 20]).as_bytes());
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Text for property tests: any character, with control characters,
    /// quotes, backslashes, runs of plain letters and non-ASCII made common.
    pub(crate) const TEXT: &str = "(\\PC|[\\x00-\\x1f\"\\\\\\x7f]|[a-z ]{1,12}|é|🏠){0,40}";

    fn string(parts: &[&str]) -> String {
        let mut out = Vec::new();
        push_str(&mut out, parts);
        String::from_utf8(out).expect("valid UTF-8")
    }

    #[test]
    fn every_byte_escapes_as_serde_json() {
        for b in 0u8..=0x7f {
            let text = char::from(b).to_string();
            // Alone, and inside a word-sized run on both sides.
            let padded = format!("abcdefgh{text}ijklmnopq");
            for text in [text, padded] {
                assert_eq!(
                    string(&[&text]),
                    serde_json::to_string(&text).unwrap(),
                    "{b:#x}"
                );
            }
        }
    }

    #[test]
    fn parts_join_into_one_string() {
        assert_eq!(
            string(&["o-\"1\"", "/", "home", ":requested"]),
            r#""o-\"1\"/home:requested""#
        );
        assert_eq!(string(&[]), r#""""#);
    }

    #[test]
    fn find_special_finds_the_first_one() {
        for len in 0..20 {
            for at in 0..=len {
                for bad in [0x00, 0x1f, b'"', b'\\'] {
                    let mut bytes = vec![b'a'; len];
                    if at < len {
                        bytes[at] = bad;
                        // A second one later, and non-ASCII before, change nothing.
                        if at + 1 < len {
                            bytes[len - 1] = b'"';
                        }
                        if at > 0 {
                            bytes[at - 1] = 0xc3;
                        }
                    }
                    for from in 0..=at {
                        assert_eq!(find_special(&bytes, from), at, "{bytes:?} from {from}");
                    }
                }
            }
        }
    }

    #[test]
    fn any_escape_finds_each_position() {
        for at in 0..WORD {
            for bad in [0x00, 0x1f, b'"', b'\\'] {
                let mut bytes = *b"aaaaaaaa";
                bytes[at] = bad;
                assert!(any_escape(u64::from_le_bytes(bytes)), "{bad:#x} at {at}");
            }
            for good in [0x20, b'!', b'#', b'[', b']', 0x7f, 0x80, 0xff] {
                let mut bytes = *b"aaaaaaaa";
                bytes[at] = good;
                assert!(!any_escape(u64::from_le_bytes(bytes)), "{good:#x} at {at}");
            }
        }
    }

    proptest! {
        #[test]
        fn strings_match_serde_json(
            text in TEXT,
            any in any::<String>(),
        ) {
            for text in [&text, &any] {
                prop_assert_eq!(string(&[text]), serde_json::to_string(text).unwrap());
                let middle = text.len() / 2;
                if text.is_char_boundary(middle) {
                    let (head, tail) = text.split_at(middle);
                    prop_assert_eq!(string(&[head, tail]), serde_json::to_string(text).unwrap());
                }
            }
        }

        #[test]
        fn integers_match_serde_json(n in any::<i64>()) {
            let mut out = Vec::new();
            push_i64(&mut out, n);
            prop_assert_eq!(out, serde_json::to_vec(&n).unwrap());
        }
    }

    #[test]
    fn integer_edges() {
        for n in [0, -1, 9, 10, i64::MAX, i64::MIN] {
            let mut out = Vec::new();
            push_i64(&mut out, n);
            assert_eq!(out, serde_json::to_vec(&n).unwrap());
        }
    }
}
