//! Content header frames made safe for amiquip's parser, and restored on the way out.
//!
//! amiquip parses message properties recursively on its I/O thread and reads every short string
//! as UTF-8. A header table nested a few thousand levels deep overflows that thread's stack and
//! aborts the process; a `correlation_id` that is not UTF-8 silently shifts the fields after it,
//! so `reply_to` is lost. RabbitMQ delivers both. Every inbound content header therefore passes
//! through [`sanitize`] first (see `guard`), which rewrites only what amiquip cannot take:
//!
//! * a header table nested deeper than [`MAX_HEADER_DEPTH`] becomes a table holding only
//!   [`REJECTED_HEADER`], whose value says why; a server answers such a request with an error;
//! * a `correlation_id` that is not UTF-8 becomes a token, remembered with its bytes; when a reply
//!   carrying the token goes out, [`restore`] puts the original bytes back, so the caller gets
//!   its own id;
//! * any other short string that is not UTF-8 has its non-ASCII bytes replaced by `?`;
//! * a property list that cannot be parsed at all becomes one with only the rejection header.

use std::collections::{HashMap, VecDeque};

/// Header that replaces headers the driver could not safely parse; its value says why.
pub const REJECTED_HEADER: &str = "x-fib-rpc-rejected";

/// Deepest nesting of tables and arrays in a message's headers that is passed to the driver.
/// Real headers (RabbitMQ's own `x-death` included) nest a few levels; the driver's parser needs
/// roughly half a kilobyte of stack per level.
pub(crate) const MAX_HEADER_DEPTH: usize = 64;

/// How many non-UTF-8 correlation ids a connection remembers until their replies go out.
const RAW_ID_CAPACITY: usize = 1024;

/// Frame type of a content header.
pub(crate) const HEADER_FRAME: u8 = 2;

/// Class id, weight and body size precede the property flags.
const PROPERTIES_OFFSET: usize = 12;

/// Properties of `basic`, in wire order.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    ShortString,
    Table,
    Octet,
    Timestamp,
}

const CORRELATION_ID: usize = 5;
const HEADERS: usize = 2;
const BASIC_PROPERTIES: [Kind; 14] = [
    Kind::ShortString, // content_type
    Kind::ShortString, // content_encoding
    Kind::Table,       // headers
    Kind::Octet,       // delivery_mode
    Kind::Octet,       // priority
    Kind::ShortString, // correlation_id
    Kind::ShortString, // reply_to
    Kind::ShortString, // expiration
    Kind::ShortString, // message_id
    Kind::Timestamp,   // timestamp
    Kind::ShortString, // type
    Kind::ShortString, // user_id
    Kind::ShortString, // app_id
    Kind::ShortString, // cluster_id
];

/// Non-UTF-8 correlation ids of one connection, by the token that stands in for each.
#[derive(Debug)]
pub(crate) struct RawIds {
    prefix: String,
    next: u64,
    bytes: HashMap<String, Vec<u8>>,
    order: VecDeque<String>,
}

impl RawIds {
    pub fn new() -> RawIds {
        RawIds {
            prefix: format!("\u{fffd}fib-rpc-raw-id:{}:", uuid::Uuid::new_v4().simple()),
            next: 0,
            bytes: HashMap::new(),
            order: VecDeque::new(),
        }
    }

    fn token_for(&mut self, raw: &[u8]) -> String {
        let token = format!("{}{}", self.prefix, self.next);
        self.next += 1;
        if self.order.len() == RAW_ID_CAPACITY {
            if let Some(oldest) = self.order.pop_front() {
                self.bytes.remove(&oldest);
            }
        }
        self.bytes.insert(token.clone(), raw.to_vec());
        self.order.push_back(token.clone());
        token
    }

    fn take(&mut self, token: &[u8]) -> Option<Vec<u8>> {
        if !token.starts_with(self.prefix.as_bytes()) {
            return None;
        }
        let token = std::str::from_utf8(token).ok()?;
        let raw = self.bytes.remove(token)?;
        self.order.retain(|kept| kept != token);
        Some(raw)
    }
}

/// One property as it stands on the wire (length prefix included).
#[derive(Clone, Copy)]
struct Property<'a> {
    index: usize,
    raw: &'a [u8],
}

/// The properties present in a content header, in wire order. Held on the stack: every header
/// frame of every message passes through here, on the I/O thread.
struct Properties<'a> {
    found: [Property<'a>; BASIC_PROPERTIES.len()],
    count: usize,
}

impl<'a> std::ops::Deref for Properties<'a> {
    type Target = [Property<'a>];

    fn deref(&self) -> &[Property<'a>] {
        &self.found[..self.count]
    }
}

/// The properties of a content header payload, or `None` if they cannot be parsed.
fn split(payload: &[u8]) -> Option<Properties<'_>> {
    // Whatever class the header names, the driver reads `basic` properties, and so do we.
    let flags = u16::from_be_bytes(
        payload
            .get(PROPERTIES_OFFSET..PROPERTIES_OFFSET + 2)?
            .try_into()
            .ok()?,
    );
    // Bit 0 announces more flag words; `basic` has no properties that need them.
    if flags & 1 != 0 {
        return None;
    }
    let mut position = PROPERTIES_OFFSET + 2;
    let mut properties = Properties {
        found: [Property { index: 0, raw: &[] }; BASIC_PROPERTIES.len()],
        count: 0,
    };
    for (index, kind) in BASIC_PROPERTIES.iter().enumerate() {
        if flags & (1 << (15 - index)) == 0 {
            continue;
        }
        let length = match kind {
            Kind::ShortString => 1 + usize::from(*payload.get(position)?),
            Kind::Table => 4 + read_u32(payload, position)?,
            Kind::Octet => 1,
            Kind::Timestamp => 8,
        };
        let raw = payload.get(position..position + length)?;
        properties.found[properties.count] = Property { index, raw };
        properties.count += 1;
        position += length;
    }
    (position == payload.len()).then_some(properties)
}

pub(crate) fn read_u32(bytes: &[u8], at: usize) -> Option<usize> {
    let word = u32::from_be_bytes(bytes.get(at..at + 4)?.try_into().ok()?);
    usize::try_from(word).ok()
}

/// The inbound content header payload rewritten for the driver, or `None` if it is fine as it is.
pub(crate) fn sanitize(payload: &[u8], raw_ids: &mut RawIds) -> Option<Vec<u8>> {
    let Some(properties) = split(payload) else {
        return Some(rejected_properties(payload, "malformed message properties"));
    };
    let mut replaced: Vec<(usize, Vec<u8>)> = Vec::new();
    for property in properties.iter() {
        let value = &property.raw[property_prefix(property.index)..];
        match BASIC_PROPERTIES[property.index] {
            Kind::ShortString if std::str::from_utf8(value).is_err() => {
                let text = if property.index == CORRELATION_ID {
                    raw_ids.token_for(value).into_bytes()
                } else {
                    value
                        .iter()
                        .map(|&byte| if byte.is_ascii() { byte } else { b'?' })
                        .collect()
                };
                replaced.push((property.index, short_string(&text)));
            }
            Kind::Table => {
                if let Err(reason) = check_table(value) {
                    replaced.push((property.index, table(&[(REJECTED_HEADER, reason)])));
                }
            }
            _ => {}
        }
    }
    if replaced.is_empty() {
        return None;
    }
    // Same properties present, so the flags stay as they are.
    let mut rewritten = payload[..PROPERTIES_OFFSET + 2].to_vec();
    for property in properties.iter() {
        match replaced.iter().find(|(index, _)| *index == property.index) {
            Some((_, bytes)) => rewritten.extend_from_slice(bytes),
            None => rewritten.extend_from_slice(property.raw),
        }
    }
    Some(rewritten)
}

/// True if this outbound content header payload carries a token [`restore`] would replace.
pub(crate) fn carries_token(payload: &[u8], raw_ids: &RawIds) -> bool {
    !raw_ids.bytes.is_empty() && token_of(payload, raw_ids).is_some()
}

fn token_of<'a>(payload: &'a [u8], raw_ids: &RawIds) -> Option<&'a [u8]> {
    let properties = split(payload)?;
    let correlation = *properties.iter().find(|p| p.index == CORRELATION_ID)?;
    let token = &correlation.raw[1..];
    let known = std::str::from_utf8(token).is_ok_and(|text| raw_ids.bytes.contains_key(text));
    known.then_some(token)
}

/// The outbound content header payload with a correlation id token turned back into the
/// caller's bytes, or `None` if it carries no token.
pub(crate) fn restore(payload: &[u8], raw_ids: &mut RawIds) -> Option<Vec<u8>> {
    if raw_ids.bytes.is_empty() {
        return None;
    }
    let properties = split(payload)?;
    let correlation = properties.iter().find(|p| p.index == CORRELATION_ID)?;
    let raw = raw_ids.take(&correlation.raw[1..])?;
    let mut rewritten = payload[..PROPERTIES_OFFSET + 2].to_vec();
    for property in properties.iter() {
        if property.index == CORRELATION_ID {
            rewritten.extend_from_slice(&short_string(&raw));
        } else {
            rewritten.extend_from_slice(property.raw);
        }
    }
    Some(rewritten)
}

/// Length prefix of a property's wire form.
fn property_prefix(index: usize) -> usize {
    match BASIC_PROPERTIES[index] {
        Kind::ShortString => 1,
        Kind::Table => 4,
        Kind::Octet | Kind::Timestamp => 0,
    }
}

/// Keeps class, weight and body size; replaces every property with the rejection header alone.
fn rejected_properties(payload: &[u8], reason: &str) -> Vec<u8> {
    let mut rewritten = payload[..PROPERTIES_OFFSET.min(payload.len())].to_vec();
    rewritten.resize(PROPERTIES_OFFSET, 0);
    rewritten.extend_from_slice(&(1u16 << (15 - HEADERS)).to_be_bytes());
    rewritten.extend_from_slice(&table(&[(REJECTED_HEADER, reason)]));
    rewritten
}

fn short_string(text: &[u8]) -> Vec<u8> {
    let length = u8::try_from(text.len()).expect("tokens and replaced strings fit a short string");
    let mut bytes = vec![length];
    bytes.extend_from_slice(text);
    bytes
}

/// A field table of long strings, length prefix included.
fn table(entries: &[(&str, &str)]) -> Vec<u8> {
    let mut body = Vec::new();
    for (key, value) in entries {
        body.extend_from_slice(&short_string(key.as_bytes()));
        body.push(b'S');
        body.extend_from_slice(&(value.len() as u32).to_be_bytes());
        body.extend_from_slice(value.as_bytes());
    }
    let mut bytes = (body.len() as u32).to_be_bytes().to_vec();
    bytes.extend_from_slice(&body);
    bytes
}

/// The width of a field value of type `tag` that has no length prefix; `None` for the types
/// with one (strings, byte arrays, arrays, tables) and for unknown types.
pub(crate) fn fixed_width(tag: u8) -> Option<usize> {
    Some(match tag {
        b't' | b'b' | b'B' => 1,
        b's' | b'U' | b'u' => 2,
        b'I' | b'i' | b'f' => 4,
        b'L' | b'l' | b'd' | b'T' => 8,
        b'D' => 5,
        b'V' => 0,
        _ => return None,
    })
}

/// Checks a field table's contents (without its length prefix) the way the driver will read
/// them, without recursion: tables and arrays may nest at most [`MAX_HEADER_DEPTH`] deep.
/// Anything the driver would stop reading at (an unknown type, a truncated value) ends the scan
/// of that level, as it ends the driver's.
fn check_table(contents: &[u8]) -> Result<(), &'static str> {
    // Each open level: where it ends, and whether its entries have names (tables) or not; on
    // the stack, as every request's headers pass through here.
    let mut levels = [(0, false); MAX_HEADER_DEPTH];
    levels[0] = (contents.len(), true);
    let mut depth = 1;
    let mut position = 0;
    while depth > 0 {
        let (end, named) = levels[depth - 1];
        if position >= end {
            position = end;
            depth -= 1;
            continue;
        }
        if named {
            let key_length = usize::from(contents[position]);
            position += 1 + key_length;
        }
        let Some(&tag) = contents.get(position).filter(|_| position < end) else {
            position = end;
            continue;
        };
        position += 1;
        let fixed = match tag {
            b'S' | b'x' | b'A' | b'F' => {
                let Some(length) = read_u32(contents, position).filter(|_| position + 4 <= end)
                else {
                    position = end;
                    continue;
                };
                position += 4;
                let inner_end = position.saturating_add(length);
                if inner_end > end {
                    position = end;
                    continue;
                }
                if tag == b'A' || tag == b'F' {
                    if depth >= MAX_HEADER_DEPTH {
                        return Err("headers nested too deep");
                    }
                    levels[depth] = (inner_end, tag == b'F');
                    depth += 1;
                    continue;
                }
                length
            }
            _ => match fixed_width(tag) {
                Some(width) => width,
                None => {
                    position = end;
                    continue;
                }
            },
        };
        position += fixed;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Class id of `basic`, the only class with content.
    const BASIC_CLASS: u16 = 60;

    /// A `basic` content header payload with these (index, wire bytes) properties.
    fn header(properties: &[(usize, Vec<u8>)]) -> Vec<u8> {
        let mut payload = BASIC_CLASS.to_be_bytes().to_vec();
        payload.extend_from_slice(&[0, 0]);
        payload.extend_from_slice(&5u64.to_be_bytes());
        let flags = properties
            .iter()
            .fold(0u16, |flags, (index, _)| flags | 1 << (15 - index));
        payload.extend_from_slice(&flags.to_be_bytes());
        for (_, bytes) in properties {
            payload.extend_from_slice(bytes);
        }
        payload
    }

    /// A table whose single entry `n` nests `depth` tables deep.
    fn nested(depth: usize) -> Vec<u8> {
        let mut inner = (0u32).to_be_bytes().to_vec();
        for _ in 1..depth {
            let mut entry = short_string(b"n");
            entry.push(b'F');
            entry.extend_from_slice(&inner);
            inner = (entry.len() as u32).to_be_bytes().to_vec();
            inner.extend_from_slice(&entry);
        }
        inner
    }

    #[test]
    fn ordinary_headers_pass_unchanged() {
        let mut raw_ids = RawIds::new();
        let payload = header(&[
            (0, short_string(b"text/plain")),
            (2, table(&[("x-deadline-ms", "1")])),
            (5, short_string(b"id-1")),
            (6, short_string(b"amq.gen-abc")),
        ]);
        assert!(sanitize(&payload, &mut raw_ids).is_none());
        assert!(sanitize(&header(&[(2, nested(MAX_HEADER_DEPTH))]), &mut raw_ids).is_none());
    }

    #[test]
    fn deep_headers_are_replaced_and_the_rest_is_kept() {
        let mut raw_ids = RawIds::new();
        let reply_to = short_string(b"amq.gen-abc");
        let payload = header(&[
            (2, nested(5000)),
            (5, short_string(b"id-1")),
            (6, reply_to.clone()),
        ]);
        let rewritten = sanitize(&payload, &mut raw_ids).expect("rewritten");
        let properties = split(&rewritten).unwrap();
        assert_eq!(properties.len(), 3);
        assert_eq!(properties[1].raw, short_string(b"id-1"));
        assert_eq!(properties[2].raw, reply_to);
        let headers = properties[0].raw;
        assert!(String::from_utf8_lossy(headers).contains(REJECTED_HEADER));
        assert!(String::from_utf8_lossy(headers).contains("too deep"));
        assert!(sanitize(&header(&[(2, nested(MAX_HEADER_DEPTH + 1))]), &mut raw_ids).is_some());
    }

    #[test]
    fn deep_arrays_count_as_nesting_too() {
        let mut value = (0u32).to_be_bytes().to_vec();
        for _ in 0..200 {
            let mut element = vec![b'A'];
            element.extend_from_slice(&value);
            value = (element.len() as u32).to_be_bytes().to_vec();
            value.extend_from_slice(&element);
        }
        let mut entry = short_string(b"a");
        entry.push(b'A');
        entry.extend_from_slice(&value);
        let mut headers = (entry.len() as u32).to_be_bytes().to_vec();
        headers.extend_from_slice(&entry);
        assert_eq!(check_table(&headers[4..]), Err("headers nested too deep"));
    }

    #[test]
    fn a_non_utf8_correlation_id_round_trips_through_a_token() {
        let mut raw_ids = RawIds::new();
        let raw = b"\xff\xfe id".to_vec();
        let request = header(&[(5, short_string(&raw)), (6, short_string(b"q"))]);
        let rewritten = sanitize(&request, &mut raw_ids).expect("rewritten");
        let properties = split(&rewritten).unwrap();
        let token = properties[0].raw[1..].to_vec();
        assert!(std::str::from_utf8(&token).is_ok());
        assert_eq!(properties[1].raw, short_string(b"q"), "reply_to kept");

        let reply = header(&[(0, short_string(b"text/plain")), (5, short_string(&token))]);
        let restored = restore(&reply, &mut raw_ids).expect("restored");
        let properties = split(&restored).unwrap();
        assert_eq!(properties[1].raw, short_string(&raw));
        assert!(
            restore(&reply, &mut raw_ids).is_none(),
            "a token is used once"
        );
    }

    #[test]
    fn other_non_utf8_strings_keep_their_length() {
        let mut raw_ids = RawIds::new();
        let request = header(&[(0, short_string(b"t\xffxt")), (6, short_string(b"q"))]);
        let rewritten = sanitize(&request, &mut raw_ids).expect("rewritten");
        let properties = split(&rewritten).unwrap();
        assert_eq!(properties[0].raw, short_string(b"t?xt"));
    }

    #[test]
    fn unparsable_properties_are_replaced_by_the_rejection_alone() {
        let mut raw_ids = RawIds::new();
        let mut broken = header(&[(5, short_string(b"id"))]);
        broken.truncate(broken.len() - 1);
        let rewritten = sanitize(&broken, &mut raw_ids).expect("rewritten");
        let properties = split(&rewritten).unwrap();
        let flags = &rewritten[PROPERTIES_OFFSET..PROPERTIES_OFFSET + 2];
        assert_eq!(flags, (1u16 << (15 - HEADERS)).to_be_bytes());
        assert_eq!(properties.len(), 1);
        assert_eq!(
            &rewritten[..PROPERTIES_OFFSET],
            &broken[..PROPERTIES_OFFSET]
        );
    }

    #[test]
    fn the_raw_id_table_is_bounded() {
        let mut raw_ids = RawIds::new();
        let first = raw_ids.token_for(b"\xff0");
        for i in 0..RAW_ID_CAPACITY {
            raw_ids.token_for(format!("\u{ff}{i}").as_bytes());
        }
        assert_eq!(raw_ids.bytes.len(), RAW_ID_CAPACITY);
        assert!(raw_ids.take(first.as_bytes()).is_none());
    }

    #[test]
    fn a_header_naming_another_class_is_still_checked_as_the_driver_reads_it() {
        let mut raw_ids = RawIds::new();
        let mut payload = header(&[(2, nested(5000))]);
        payload[0..2].copy_from_slice(&61u16.to_be_bytes());
        assert!(sanitize(&payload, &mut raw_ids).is_some());
    }
}
