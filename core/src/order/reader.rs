//! A reader for the contract's order events, by hand: one pass over the
//! record's bytes, into buffers a shard reuses from record to record.
//!
//! Why not serde_json: an order is about forty short strings in three
//! nested collections, and serde's visitor per field, key matching through
//! `Deserialize` impls and a fresh vector per collection cost about half of
//! the engine's instructions (docs/benchmarks.md, issue 14). Here keys are
//! matched as bytes, strings are found eight bytes at a time
//! (`json::find_special`), text stays in the record unless it carries an
//! escape (then it is unescaped into [`Scratch::text`]), and lines,
//! addresses and payments go into vectors that keep their capacity.
//!
//! **serde_json stays the oracle.** The reader accepts only records that
//! serde_json reads into the same value (a property test and the fuzz
//! target check it on arbitrary and mutated records); anything else it
//! declines with `None` and the caller decodes the record with serde_json
//! (`decode::decode_order`), so every record it declines gets exactly
//! today's outcome, details included. It declines, among others: anything
//! but an object at the top; a value of another type than the contract's
//! (a quantity of `"two"`, a struct as an array); a number past `i64`, with
//! a fraction or exponent, `-0`, or with a leading zero; a duplicate field;
//! a duplicate address name (serde keeps the last, the reader does not try);
//! a key with an escape; an escape serde would refuse; an unknown field
//! nested deeper than [`MAX_SKIP_DEPTH`]; more than [`MAX_READ_ADDRESSES`]
//! addresses; anything after the object but whitespace.

use super::json;
use super::validate::{Demand, Place};

/// Deepest nesting of an unknown field's value that the reader skips
/// itself (an unknown `{"a":[[1]]}` is 3 deep). Deeper values are declined
/// and serde_json, which skips any depth, reads the record.
pub const MAX_SKIP_DEPTH: usize = 64;
/// Most addresses the reader reads itself: it checks names for duplicates
/// pair by pair, so it declines larger maps (far past any limit an order
/// may have: `limits.max_addresses` defaults to 10) rather than spend
/// quadratic time on them.
pub const MAX_READ_ADDRESSES: usize = 32;

/// Where a text field's bytes are: in the record, or (with the top bit of
/// `at`) in [`Scratch::text`], unescaped.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Text {
    at: u32,
    len: u32,
}

/// The top bit of [`Text::at`]: the text is in the scratch buffer. Records
/// are at most `limits.max_record_bytes` (at most 10^8) long, so offsets
/// never reach it.
const IN_SCRATCH: u32 = 1 << 31;

impl Text {
    fn in_record(at: usize, len: usize) -> Text {
        Text {
            at: at as u32,
            len: len as u32,
        }
    }

    /// The text, if it is in `record` (not in the scratch buffer).
    pub fn in_record_of<'a>(&self, record: &'a str) -> Option<&'a str> {
        if self.at & IN_SCRATCH != 0 {
            return None;
        }
        let at = self.at as usize;
        record.get(at..at + self.len as usize)
    }

    fn in_scratch(at: usize, len: usize) -> Text {
        Text {
            at: at as u32 | IN_SCRATCH,
            len: len as u32,
        }
    }
}

/// One line of an order, as read.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LineAt {
    pub sku: Text,
    pub quantity: i64,
    pub unit_price_minor: i64,
    pub ship_to: Text,
}

/// One address of an order, as read, with the name lines ship to.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AddressAt {
    pub key: Text,
    pub name: Text,
    pub line1: Text,
    pub line2: Option<Text>,
    pub city: Text,
    pub region: Option<Text>,
    pub postal_code: Text,
    pub country: Text,
}

/// One payment of an order, as read.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PaymentAt {
    pub method: Text,
    pub amount_minor: i64,
    pub authorization_id: Option<Text>,
}

/// The top-level fields of an order event, as read: the same fields as
/// `decode::Flat`, each `None` when absent or `null`. The collections are in
/// [`Scratch`]; `lines`, `addresses` and `payments` say whether they were
/// present and not `null`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Head {
    pub kind: Option<Text>,
    pub order_id: Option<Text>,
    pub customer_id: Option<Text>,
    pub placed_at: Option<Text>,
    pub currency: Option<Text>,
    pub cancelled_at: Option<Text>,
    pub reason: Option<Text>,
    pub lines: bool,
    pub addresses: bool,
    pub payments: bool,
}

/// What reading a record leaves behind, kept by a shard and reused for
/// every record: unescaped text and the order's collections. Their
/// capacity stays, so a steady stream of orders allocates nothing here.
#[derive(Debug, Default)]
pub struct Scratch {
    /// Text that carried escapes, unescaped; [`Text`]s with the scratch bit
    /// point here. Also text loaded from serde's decoding (`load`).
    pub(crate) text: String,
    pub(crate) lines: Vec<LineAt>,
    /// In the record's order until validation sorts them by name.
    pub(crate) addresses: Vec<AddressAt>,
    pub(crate) payments: Vec<PaymentAt>,
    /// Per object kind, after each field (or at the start: the last
    /// place), the field that followed it last time: producers write keys
    /// in one order, so the reader tries that name first and matches most
    /// keys with one comparison.
    next_field: [[u8; GUESSES]; KINDS],
    /// Filled by validation: where each line points, and the demand.
    pub(crate) places: Vec<Place>,
    pub(crate) demand: Vec<Demand>,
}

impl Scratch {
    fn clear(&mut self) {
        self.text.clear();
        self.lines.clear();
        self.addresses.clear();
        self.payments.clear();
    }

    /// Loads an `order_placed` decoded by serde_json (the slow path), its
    /// text copied into the scratch buffer, so that one validator serves
    /// both paths.
    pub fn load(&mut self, order: &super::OrderPlaced<'_>) -> Head {
        self.clear();
        let text = &mut self.text;
        let mut put = |value: &str| {
            let at = text.len();
            text.push_str(value);
            Text::in_scratch(at, value.len())
        };
        let head = Head {
            kind: None,
            order_id: Some(put(&order.order_id)),
            customer_id: order.customer_id.as_deref().map(&mut put),
            placed_at: order.placed_at.as_deref().map(&mut put),
            currency: order.currency.as_deref().map(&mut put),
            cancelled_at: None,
            reason: None,
            lines: order.lines.is_some(),
            addresses: order.addresses.is_some(),
            payments: order.payments.is_some(),
        };
        for line in order.lines.iter().flatten() {
            self.lines.push(LineAt {
                sku: put(&line.sku),
                quantity: line.quantity,
                unit_price_minor: line.unit_price_minor,
                ship_to: put(&line.ship_to),
            });
        }
        for (key, address) in order.addresses.iter().flatten() {
            self.addresses.push(AddressAt {
                key: put(key),
                name: put(&address.name),
                line1: put(&address.line1),
                line2: address.line2.as_deref().map(&mut put),
                city: put(&address.city),
                region: address.region.as_deref().map(&mut put),
                postal_code: put(&address.postal_code),
                country: put(&address.country),
            });
        }
        for payment in order.payments.iter().flatten() {
            self.payments.push(PaymentAt {
                method: put(&payment.method),
                amount_minor: payment.amount_minor,
                authorization_id: payment.authorization_id.as_deref().map(&mut put),
            });
        }
        head
    }
}

/// Resolves [`Text`]s: the record's text and the scratch buffer.
#[derive(Debug, Clone, Copy)]
pub struct Doc<'a> {
    record: &'a str,
    scratch: &'a str,
}

impl<'a> Doc<'a> {
    /// `scratch` is the text of the [`Scratch`] the record was read into.
    pub fn new(record: &'a str, scratch: &'a str) -> Doc<'a> {
        Doc { record, scratch }
    }

    pub fn get(&self, text: Text) -> &'a str {
        let (base, at) = if text.at & IN_SCRATCH != 0 {
            (self.scratch, text.at & !IN_SCRATCH)
        } else {
            (self.record, text.at)
        };
        let at = at as usize;
        &base[at..at + text.len as usize]
    }
}

/// Reads `record` into `scratch`: its text (UTF-8, checked here) and its
/// top-level fields, or `None` when the reader declines (see the module's
/// comment) and serde_json must decide.
pub fn read<'a>(record: &'a [u8], scratch: &mut Scratch) -> Option<(&'a str, Head)> {
    scratch.clear();
    let text = simdutf8::basic::from_utf8(record).ok()?;
    let mut reader = Reader {
        text,
        bytes: record,
        at: 0,
        scratch,
    };
    let head = reader.order()?;
    reader.ws();
    (reader.at == record.len()).then_some((text, head))
}

/// Fields seen in one object, one bit each, to refuse duplicates.
#[derive(Default)]
struct Seen(u32);

impl Seen {
    /// Marks field `bit`; `None` if it was seen already.
    fn first(&mut self, bit: u32) -> Option<()> {
        let mask = 1 << bit;
        if self.0 & mask != 0 {
            return None;
        }
        self.0 |= mask;
        Some(())
    }

    fn has(&self, bit: u32) -> bool {
        self.0 & (1 << bit) != 0
    }
}

/// A field name as the reader matches it in place, before scanning for
/// the key's end: the name and its closing quote as two masked
/// little-endian words (names are at most 16 bytes).
#[derive(Debug, Clone, Copy)]
struct Name {
    text: &'static [u8],
    words: [u64; 2],
    masks: [u64; 2],
}

impl Name {
    const fn new(text: &'static str) -> Name {
        let bytes = text.as_bytes();
        assert!(bytes.len() <= 16, "field names are at most 16 bytes");
        let mut words = [0u64; 2];
        let mut masks = [0u64; 2];
        let mut i = 0;
        // The name's bytes, then its closing quote if it fits in 16.
        while i <= bytes.len() && i < 16 {
            let byte = if i < bytes.len() { bytes[i] } else { b'"' };
            words[i / 8] |= (byte as u64) << (8 * (i % 8));
            masks[i / 8] |= 0xff << (8 * (i % 8));
            i += 1;
        }
        Name {
            text: bytes,
            words,
            masks,
        }
    }
}

/// Object kinds whose key order the reader learns (see [`Scratch`]'s
/// `next_field`).
const ORDER: usize = 0;
const LINE: usize = 1;
const ADDRESS: usize = 2;
const ADDRESS_FIELDS: usize = 3;
const PAYMENT: usize = 4;
const KINDS: usize = 5;
/// Most fields of one object kind, plus one for "at the start".
const GUESSES: usize = 11;

/// Where the reader is in an object, for [`Reader::member`].
struct Members {
    kind: usize,
    /// The last known field, or `GUESSES - 1` at the start.
    previous: usize,
    first: bool,
}

impl Members {
    fn new(kind: usize) -> Members {
        Members {
            kind,
            previous: GUESSES - 1,
            first: true,
        }
    }
}

/// One member of an object, as [`Reader::member`] found it.
enum Member {
    /// A key of the object's names, by index.
    Known(usize),
    Other(Text),
    End,
}

struct Reader<'s> {
    /// The record, and the same as bytes.
    text: &'s str,
    bytes: &'s [u8],
    at: usize,
    scratch: &'s mut Scratch,
}

impl Reader<'_> {
    /// The byte at the reader, or 0 past the end (0 is never valid where
    /// the reader looks, so the end needs no test of its own).
    #[inline(always)]
    fn byte(&self) -> u8 {
        self.bytes.get(self.at).copied().unwrap_or(0)
    }

    #[inline(always)]
    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.at).copied()
    }

    /// Skips JSON whitespace (records rarely have any: one test).
    #[inline(always)]
    fn ws(&mut self) {
        while self.byte() <= b' ' && matches!(self.byte(), b' ' | b'\n' | b'\t' | b'\r') {
            self.at += 1;
        }
    }

    /// Skips whitespace, then takes `byte`.
    #[inline(always)]
    fn eat(&mut self, byte: u8) -> Option<()> {
        if self.byte() != byte {
            self.ws();
            if self.byte() != byte {
                return None;
            }
        }
        self.at += 1;
        Some(())
    }

    /// Is the key at the reader (after its opening quote) `name`?
    #[inline(always)]
    fn is_key(&self, name: &Name) -> bool {
        let at = self.at;
        let Some(chunk) = self.bytes.get(at..at + 16) else {
            let rest = &self.bytes[at..];
            return rest.starts_with(name.text) && rest.get(name.text.len()) == Some(&b'"');
        };
        let word = |i: usize| u64::from_le_bytes(chunk[8 * i..8 * i + 8].try_into().expect("8"));
        word(0) & name.masks[0] == name.words[0]
            && word(1) & name.masks[1] == name.words[1]
            && (name.text.len() < 16 || self.bytes.get(at + 16) == Some(&b'"'))
    }

    /// The next member of an object (the reader is after its `{` or after
    /// the last member's value): a key equal to one of `names` (matched in
    /// place, the learned next name first) as its index, any other key as
    /// its text, or the end of the object; the reader then stands on the
    /// value. Keys with escapes are declined.
    #[inline(always)]
    fn member<const N: usize>(
        &mut self,
        members: &mut Members,
        names: &[Name; N],
    ) -> Option<Member> {
        self.ws();
        match self.byte() {
            b'}' => {
                self.at += 1;
                return Some(Member::End);
            }
            b',' if !members.first => {
                self.at += 1;
                self.eat(b'"')?;
            }
            b'"' if members.first => self.at += 1,
            _ => return None,
        }
        members.first = false;
        let guesses = &mut self.scratch.next_field[members.kind];
        let guess = usize::from(guesses[members.previous]);
        let known = if guess < N && self.is_key(&names[guess]) {
            Some(guess)
        } else {
            names.iter().position(|name| self.is_key(name))
        };
        let member = match known {
            Some(index) => {
                self.scratch.next_field[members.kind][members.previous] = index as u8;
                members.previous = index;
                self.at += names[index].text.len() + 1;
                Member::Known(index)
            }
            None => {
                let start = self.at;
                let end = json::find_special(self.bytes, start);
                if self.bytes.get(end) != Some(&b'"') {
                    return None; // an escape (or a control character)
                }
                self.at = end + 1;
                Member::Other(Text::in_record(start, end - start))
            }
        };
        self.eat(b':')?;
        self.ws();
        Some(member)
    }

    /// After `[`: the elements of an array, calling `element` on each.
    #[inline(always)]
    fn array(&mut self, mut element: impl FnMut(&mut Self) -> Option<()>) -> Option<()> {
        self.ws();
        if self.byte() == b']' {
            self.at += 1;
            return Some(());
        }
        loop {
            self.ws();
            element(self)?;
            self.ws();
            match self.byte() {
                b',' => self.at += 1,
                b']' => {
                    self.at += 1;
                    return Some(());
                }
                _ => return None,
            }
        }
    }

    /// A string value.
    #[inline(always)]
    fn string(&mut self) -> Option<Text> {
        if self.byte() != b'"' {
            return None;
        }
        let start = self.at + 1;
        let end = json::find_special(self.bytes, start);
        if self.bytes.get(end) == Some(&b'"') {
            self.at = end + 1;
            return Some(Text::in_record(start, end - start));
        }
        self.escaped(start, end)
    }

    /// The rest of a string from its first escape at `end`, unescaped into
    /// the scratch buffer as serde_json's `parse_str` does; `None` for what
    /// it refuses (a control character, a bad or lone-surrogate escape).
    #[cold]
    fn escaped(&mut self, start: usize, mut end: usize) -> Option<Text> {
        let text = &mut self.scratch.text;
        let from = text.len();
        let mut run = start;
        loop {
            // `run` and `end` are at ASCII bytes (or the end): char boundaries.
            text.push_str(&self.text[run..end]);
            match *self.bytes.get(end)? {
                b'"' => {
                    self.at = end + 1;
                    return Some(Text::in_scratch(from, text.len() - from));
                }
                b'\\' => {}
                _ => return None, // a control character
            }
            let escape = *self.bytes.get(end + 1)?;
            end += 2;
            let unescaped = match escape {
                b'"' => '"',
                b'\\' => '\\',
                b'/' => '/',
                b'b' => '\u{8}',
                b'f' => '\u{c}',
                b'n' => '\n',
                b'r' => '\r',
                b't' => '\t',
                b'u' => {
                    let first = hex4(self.bytes.get(end..end + 4)?)?;
                    end += 4;
                    let code = match first {
                        0xD800..=0xDBFF => {
                            if self.bytes.get(end..end + 2)? != b"\\u" {
                                return None;
                            }
                            let second = hex4(self.bytes.get(end + 2..end + 6)?)?;
                            if !(0xDC00..=0xDFFF).contains(&second) {
                                return None;
                            }
                            end += 6;
                            0x1_0000 + ((first - 0xD800) << 10) + (second - 0xDC00)
                        }
                        0xDC00..=0xDFFF => return None,
                        _ => first,
                    };
                    char::from_u32(code)?
                }
                _ => return None,
            };
            text.push(unescaped);
            run = end;
            end = json::find_special(self.bytes, end);
        }
    }

    /// `null` as `None`, else a string.
    #[inline(always)]
    fn optional_string(&mut self) -> Option<Option<Text>> {
        if self.null() {
            return Some(None);
        }
        self.string().map(Some)
    }

    /// Takes `null` if it is next.
    #[inline(always)]
    fn null(&mut self) -> bool {
        if self.byte() == b'n' && self.bytes.get(self.at..self.at + 4) == Some(b"null") {
            self.at += 4;
            return true;
        }
        false
    }

    /// An integer as serde_json reads one into an `i64`: `None` for a
    /// fraction, an exponent, a leading zero, `-0` or a value past `i64`
    /// (serde_json refuses those, with messages the slow path keeps).
    #[inline(always)]
    fn integer(&mut self) -> Option<i64> {
        let negative = self.byte() == b'-';
        if negative {
            self.at += 1;
        }
        let start = self.at;
        let mut value: u64 = 0;
        loop {
            let digit = self.byte().wrapping_sub(b'0');
            if digit > 9 {
                break;
            }
            value = value.checked_mul(10)?.checked_add(u64::from(digit))?;
            self.at += 1;
        }
        let digits = self.at - start;
        if digits == 0 || (digits > 1 && self.bytes[start] == b'0') {
            return None;
        }
        if let b'.' | b'e' | b'E' = self.byte() {
            return None;
        }
        if negative {
            if value == 0 || value > i64::MIN.unsigned_abs() {
                return None;
            }
            return Some(0i64.wrapping_sub_unsigned(value));
        }
        i64::try_from(value).ok()
    }

    /// Skips any value serde_json's `IgnoredAny` would accept (it checks
    /// the syntax, not surrogates in escapes), up to [`MAX_SKIP_DEPTH`]
    /// levels of arrays and objects. Iterative: `open` holds one bit per
    /// level, set for an object.
    fn skip(&mut self) -> Option<()> {
        let mut open: u64 = 0;
        let mut depth = 0;
        loop {
            // A value.
            self.ws();
            match self.peek()? {
                b'{' | b'[' => {
                    let object = self.peek()? == b'{';
                    self.at += 1;
                    if depth == MAX_SKIP_DEPTH {
                        return None;
                    }
                    open = (open << 1) | u64::from(object);
                    depth += 1;
                    self.ws();
                    let close = if object { b'}' } else { b']' };
                    if self.peek()? != close {
                        if object {
                            self.skip_key()?;
                        }
                        continue;
                    }
                    self.at += 1;
                    open >>= 1;
                    depth -= 1;
                }
                b'"' => self.skip_string()?,
                b't' => self.word(b"true")?,
                b'f' => self.word(b"false")?,
                b'n' => self.word(b"null")?,
                _ => self.skip_number()?,
            }
            // After a value: a comma (then the next member) or closings.
            loop {
                if depth == 0 {
                    return Some(());
                }
                let object = open & 1 == 1;
                self.ws();
                match self.peek()? {
                    b',' => {
                        self.at += 1;
                        if object {
                            self.skip_key()?;
                        }
                        break;
                    }
                    b'}' if object => {}
                    b']' if !object => {}
                    _ => return None,
                }
                self.at += 1;
                open >>= 1;
                depth -= 1;
            }
        }
    }

    /// A key and its colon inside a skipped object.
    fn skip_key(&mut self) -> Option<()> {
        self.ws();
        self.skip_string()?;
        self.eat(b':')
    }

    fn word(&mut self, word: &[u8]) -> Option<()> {
        if self.bytes.get(self.at..self.at + word.len())? != word {
            return None;
        }
        self.at += word.len();
        Some(())
    }

    /// A string as serde_json's `ignore_str` checks one: no control
    /// characters, valid escapes, any four hex digits after `\u`.
    fn skip_string(&mut self) -> Option<()> {
        if self.peek()? != b'"' {
            return None;
        }
        let mut at = self.at + 1;
        loop {
            at = json::find_special(self.bytes, at);
            match *self.bytes.get(at)? {
                b'"' => {
                    self.at = at + 1;
                    return Some(());
                }
                b'\\' => match *self.bytes.get(at + 1)? {
                    b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => at += 2,
                    b'u' => {
                        hex4(self.bytes.get(at + 2..at + 6)?)?;
                        at += 6;
                    }
                    _ => return None,
                },
                _ => return None,
            }
        }
    }

    /// A number of any JSON form (`-`, integer part, fraction, exponent).
    fn skip_number(&mut self) -> Option<()> {
        let digits = |reader: &mut Self| {
            let start = reader.at;
            while reader.byte().is_ascii_digit() {
                reader.at += 1;
            }
            reader.at - start
        };
        if self.byte() == b'-' {
            self.at += 1;
        }
        let start = self.at;
        let whole = digits(self);
        if whole == 0 || (whole > 1 && self.bytes[start] == b'0') {
            return None;
        }
        if self.byte() == b'.' {
            self.at += 1;
            if digits(self) == 0 {
                return None;
            }
        }
        if let b'e' | b'E' = self.byte() {
            self.at += 1;
            if let b'+' | b'-' = self.byte() {
                self.at += 1;
            }
            if digits(self) == 0 {
                return None;
            }
        }
        Some(())
    }

    /// The top-level object: the fields of `decode::Flat`.
    fn order(&mut self) -> Option<Head> {
        const NAMES: [Name; 10] = [
            Name::new("type"),
            Name::new("order_id"),
            Name::new("customer_id"),
            Name::new("placed_at"),
            Name::new("currency"),
            Name::new("lines"),
            Name::new("addresses"),
            Name::new("payments"),
            Name::new("cancelled_at"),
            Name::new("reason"),
        ];
        self.eat(b'{')?;
        let mut head = Head::default();
        let mut seen = Seen::default();
        let mut members = Members::new(ORDER);
        loop {
            match self.member(&mut members, &NAMES)? {
                Member::End => return Some(head),
                Member::Other(_) => self.skip()?,
                Member::Known(field) => {
                    seen.first(field as u32)?;
                    match field {
                        0 => head.kind = self.optional_string()?,
                        1 => head.order_id = self.optional_string()?,
                        2 => head.customer_id = self.optional_string()?,
                        3 => head.placed_at = self.optional_string()?,
                        4 => head.currency = self.optional_string()?,
                        5 => head.lines = self.list(Self::line)?,
                        6 => head.addresses = self.addresses()?,
                        7 => head.payments = self.list(Self::payment)?,
                        8 => head.cancelled_at = self.optional_string()?,
                        _ => head.reason = self.optional_string()?,
                    }
                }
            }
        }
    }

    /// `null` (false), or an array whose elements `element` reads (true).
    #[inline(always)]
    fn list(&mut self, element: impl FnMut(&mut Self) -> Option<()>) -> Option<bool> {
        if self.null() {
            return Some(false);
        }
        self.eat(b'[')?;
        self.array(element)?;
        Some(true)
    }

    #[inline(always)]
    fn line(&mut self) -> Option<()> {
        const NAMES: [Name; 4] = [
            Name::new("sku"),
            Name::new("quantity"),
            Name::new("unit_price_minor"),
            Name::new("ship_to"),
        ];
        self.eat(b'{')?;
        let mut line = LineAt::default();
        let mut seen = Seen::default();
        let mut members = Members::new(LINE);
        loop {
            match self.member(&mut members, &NAMES)? {
                Member::End => break,
                Member::Other(_) => self.skip()?,
                Member::Known(field) => {
                    seen.first(field as u32)?;
                    match field {
                        0 => line.sku = self.string()?,
                        1 => line.quantity = self.integer()?,
                        2 => line.unit_price_minor = self.integer()?,
                        _ => line.ship_to = self.string()?,
                    }
                }
            }
        }
        // Every field is required (serde: "missing field").
        (seen.0 == 0b1111).then_some(())?;
        self.scratch.lines.push(line);
        Some(())
    }

    /// `null` (false), or the address map (true).
    fn addresses(&mut self) -> Option<bool> {
        if self.null() {
            return Some(false);
        }
        self.eat(b'{')?;
        let mut members = Members::new(ADDRESS);
        loop {
            match self.member(&mut members, &[])? {
                Member::End => break,
                Member::Known(_) => return None,
                Member::Other(key) => {
                    if self.scratch.addresses.len() == MAX_READ_ADDRESSES {
                        return None;
                    }
                    let mut address = self.address()?;
                    address.key = key;
                    self.scratch.addresses.push(address);
                }
            }
        }
        // Duplicate names: serde keeps the last; declined instead.
        let addresses = &self.scratch.addresses;
        let key = |t: Text| &self.bytes[t.at as usize..(t.at + t.len) as usize];
        for (i, a) in addresses.iter().enumerate() {
            if addresses[..i].iter().any(|b| key(b.key) == key(a.key)) {
                return None;
            }
        }
        Some(true)
    }

    #[inline(always)]
    fn address(&mut self) -> Option<AddressAt> {
        const NAMES: [Name; 7] = [
            Name::new("name"),
            Name::new("line1"),
            Name::new("line2"),
            Name::new("city"),
            Name::new("region"),
            Name::new("postal_code"),
            Name::new("country"),
        ];
        self.eat(b'{')?;
        let mut address = AddressAt::default();
        let mut seen = Seen::default();
        // Address names are the map's keys; the fields learn their own order.
        let mut members = Members::new(ADDRESS_FIELDS);
        loop {
            match self.member(&mut members, &NAMES)? {
                Member::End => break,
                Member::Other(_) => self.skip()?,
                Member::Known(field) => {
                    seen.first(field as u32)?;
                    match field {
                        0 => address.name = self.string()?,
                        1 => address.line1 = self.string()?,
                        2 => address.line2 = self.optional_string()?,
                        3 => address.city = self.string()?,
                        4 => address.region = self.optional_string()?,
                        5 => address.postal_code = self.string()?,
                        _ => address.country = self.string()?,
                    }
                }
            }
        }
        // All but line2 and region are required.
        (seen.0 | 0b10100 == 0b111_1111).then_some(address)
    }

    #[inline(always)]
    fn payment(&mut self) -> Option<()> {
        const NAMES: [Name; 3] = [
            Name::new("method"),
            Name::new("amount_minor"),
            Name::new("authorization_id"),
        ];
        self.eat(b'{')?;
        let mut payment = PaymentAt::default();
        let mut seen = Seen::default();
        let mut members = Members::new(PAYMENT);
        loop {
            match self.member(&mut members, &NAMES)? {
                Member::End => break,
                Member::Other(_) => self.skip()?,
                Member::Known(field) => {
                    seen.first(field as u32)?;
                    match field {
                        0 => payment.method = self.string()?,
                        1 => payment.amount_minor = self.integer()?,
                        _ => payment.authorization_id = self.optional_string()?,
                    }
                }
            }
        }
        (seen.has(0) && seen.has(1)).then_some(())?;
        self.scratch.payments.push(payment);
        Some(())
    }
}

/// Four hex digits, as serde_json's `decode_hex_escape` reads them.
fn hex4(digits: &[u8]) -> Option<u32> {
    digits.iter().try_fold(0u32, |value, digit| {
        let nibble = (*digit as char).to_digit(16)?;
        Some(value << 4 | nibble)
    })
}
