//! A tiny raw AMQP 0-9-1 client written directly on `std::net::TcpStream`, for tests that
//! must put bytes on the wire that well-behaved clients (amiquip) cannot express: property
//! strings that are not UTF-8, header tables nested thousands of levels deep. Messages are
//! read back byte-for-byte with `basic.get`.
//!
//! Everything here panics with a descriptive message on any protocol or I/O failure, so a
//! test shows exactly why it failed; only `Drop` is quiet.

use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::time::{Duration, Instant};

const FRAME_METHOD: u8 = 1;
const FRAME_HEADER: u8 = 2;
const FRAME_BODY: u8 = 3;
const FRAME_HEARTBEAT: u8 = 8;
const FRAME_END: u8 = 0xCE;

/// The channel every operation uses.
const CHANNEL: u16 = 1;
/// The largest frame we ask for; the broker may impose a smaller one.
const CLIENT_FRAME_MAX: u32 = 131_072;
/// How long any single wait for the broker may take before the test panics.
const IO_TIMEOUT: Duration = Duration::from_secs(30);
/// How long `Drop` waits for connection.close-ok.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

const CONNECTION_CLOSE: (u16, u16) = (10, 50);
const CONNECTION_CLOSE_OK: (u16, u16) = (10, 51);
const CHANNEL_CLOSE: (u16, u16) = (20, 40);

const BASIC_CLASS: u16 = 60;

/// Message properties as raw wire bytes, so a test can send what well-behaved clients cannot.
#[derive(Default, Clone, Debug, PartialEq)]
pub struct RawProperties {
    pub content_type: Option<Vec<u8>>,
    /// A complete encoded field table INCLUDING its 4-byte length prefix.
    pub headers: Option<Vec<u8>>,
    pub correlation_id: Option<Vec<u8>>,
    pub reply_to: Option<Vec<u8>>,
    pub expiration: Option<Vec<u8>>,
    pub type_: Option<Vec<u8>>,
}

/// One raw connection with channel 1 open.
pub struct RawAmqp {
    stream: TcpStream,
    frame_max: u32,
    /// The broker closed the connection (or we already did); `Drop` only shuts the socket.
    closed: bool,
}

struct Frame {
    kind: u8,
    channel: u16,
    payload: Vec<u8>,
}

impl RawAmqp {
    /// Connects and opens channel 1; `addr` like "127.0.0.1:5672"; user/pass guest/guest,
    /// vhost "/". Panics with a clear message if it cannot (tests never skip).
    pub fn connect(addr: &str) -> RawAmqp {
        let stream = TcpStream::connect(addr).unwrap_or_else(|error| {
            panic!(
                "raw AMQP: cannot reach the RabbitMQ broker at {addr} ({error}); run \
                 scripts/broker.sh, or scripts/test.sh which starts it"
            )
        });
        stream
            .set_read_timeout(Some(IO_TIMEOUT))
            .expect("raw AMQP: set_read_timeout");
        stream
            .set_write_timeout(Some(IO_TIMEOUT))
            .expect("raw AMQP: set_write_timeout");
        let _ = stream.set_nodelay(true);
        let mut amqp = RawAmqp {
            stream,
            frame_max: CLIENT_FRAME_MAX,
            closed: false,
        };
        amqp.write_all(b"AMQP\0\0\x09\x01", "protocol header");

        amqp.expect_method(0, (10, 10), "connection.start");
        let mut start_ok = method(10, 11);
        put_u32(&mut start_ok, 0); // client-properties: empty table
        put_shortstr(&mut start_ok, b"PLAIN");
        put_longstr(&mut start_ok, b"\0guest\0guest");
        put_shortstr(&mut start_ok, b"en_US");
        amqp.send_frame(FRAME_METHOD, 0, &start_ok, "connection.start-ok");

        let tune = amqp.expect_method(0, (10, 30), "connection.tune");
        let mut tune = Cursor::new(&tune, "connection.tune");
        let channel_max = match tune.u16() {
            0 => 2047,
            n => n,
        };
        let server_frame_max = tune.u32();
        let _heartbeat = tune.u16();
        amqp.frame_max = match server_frame_max {
            0 => CLIENT_FRAME_MAX,
            n => n.min(CLIENT_FRAME_MAX),
        };
        let mut tune_ok = method(10, 31);
        put_u16(&mut tune_ok, channel_max);
        put_u32(&mut tune_ok, amqp.frame_max);
        put_u16(&mut tune_ok, 0); // no heartbeats
        amqp.send_frame(FRAME_METHOD, 0, &tune_ok, "connection.tune-ok");

        let mut open = method(10, 40);
        put_shortstr(&mut open, b"/");
        put_shortstr(&mut open, b"");
        open.push(0);
        amqp.send_frame(FRAME_METHOD, 0, &open, "connection.open");
        amqp.expect_method(0, (10, 41), "connection.open-ok");

        let mut channel_open = method(20, 10);
        put_shortstr(&mut channel_open, b"");
        amqp.send_frame(FRAME_METHOD, CHANNEL, &channel_open, "channel.open");
        amqp.expect_method(CHANNEL, (20, 11), "channel.open-ok");
        amqp
    }

    /// Declares a non-durable, non-exclusive, not auto-delete queue; waits for declare-ok.
    pub fn declare_queue(&mut self, name: &str) {
        self.queue_declare(name, 0);
    }

    /// Deletes the queue unconditionally; waits for delete-ok.
    pub fn delete_queue(&mut self, name: &str) {
        let mut delete = method(50, 40);
        put_u16(&mut delete, 0);
        put_shortstr(&mut delete, name.as_bytes());
        delete.push(0); // not if-unused, not if-empty, wait for the reply
        self.send_frame(FRAME_METHOD, CHANNEL, &delete, "queue.delete");
        self.expect_method(CHANNEL, (50, 41), "queue.delete-ok");
    }

    /// Publishes to the default exchange: basic.publish, the content header carrying exactly
    /// the given properties, then the body split into frames (none for an empty body).
    pub fn publish(&mut self, routing_key: &str, properties: &RawProperties, body: &[u8]) {
        let mut publish = method(BASIC_CLASS, 40);
        put_u16(&mut publish, 0);
        put_shortstr(&mut publish, b"");
        put_shortstr(&mut publish, routing_key.as_bytes());
        publish.push(0); // not mandatory, not immediate
        self.send_frame(FRAME_METHOD, CHANNEL, &publish, "basic.publish");

        let header = encode_content_header(properties, body.len() as u64);
        assert!(
            header.len() + 8 <= self.frame_max as usize,
            "raw AMQP: content header of {} bytes does not fit frame_max {}",
            header.len(),
            self.frame_max
        );
        self.send_frame(FRAME_HEADER, CHANNEL, &header, "content header");

        let chunk = self.frame_max as usize - 8;
        for part in body.chunks(chunk) {
            self.send_frame(FRAME_BODY, CHANNEL, part, "content body");
        }
    }

    /// basic.get with no-ack; waits for get-ok/get-empty. Returns the raw properties parsed
    /// back into [`RawProperties`] (other property fields are skipped) and the body.
    pub fn get(&mut self, queue: &str) -> Option<(RawProperties, Vec<u8>)> {
        let mut get = method(BASIC_CLASS, 70);
        put_u16(&mut get, 0);
        put_shortstr(&mut get, queue.as_bytes());
        get.push(1); // no-ack
        self.send_frame(FRAME_METHOD, CHANNEL, &get, "basic.get");

        let (id, _) = self.read_method(CHANNEL, "basic.get-ok or basic.get-empty");
        match id {
            (BASIC_CLASS, 72) => return None,
            (BASIC_CLASS, 71) => {}
            other => panic!(
                "raw AMQP: expected basic.get-ok (60,71) or basic.get-empty (60,72), got \
                 method {other:?}"
            ),
        }

        let header = self.read_frame("content header after basic.get-ok");
        assert_eq!(
            (header.kind, header.channel),
            (FRAME_HEADER, CHANNEL),
            "raw AMQP: expected a content header frame on channel 1 after basic.get-ok"
        );
        let (properties, body_size) = decode_content_header(&header.payload);

        let body_size = usize::try_from(body_size).expect("raw AMQP: body size overflows usize");
        let mut body = Vec::with_capacity(body_size);
        while body.len() < body_size {
            let frame = self.read_frame("content body");
            assert_eq!(
                (frame.kind, frame.channel),
                (FRAME_BODY, CHANNEL),
                "raw AMQP: expected a content body frame on channel 1 ({} of {body_size} \
                 bytes received)",
                body.len()
            );
            body.extend_from_slice(&frame.payload);
        }
        assert_eq!(
            body.len(),
            body_size,
            "raw AMQP: body frames overran the announced body size"
        );
        Some((properties, body))
    }

    /// Polls [`RawAmqp::get`] until a message arrives or `timeout` passes.
    pub fn get_within(
        &mut self,
        queue: &str,
        timeout: Duration,
    ) -> Option<(RawProperties, Vec<u8>)> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(message) = self.get(queue) {
                return Some(message);
            }
            let now = Instant::now();
            if now >= deadline {
                return None;
            }
            std::thread::sleep((deadline - now).min(Duration::from_millis(10)));
        }
    }

    /// A synchronous round trip (basic.qos → qos-ok): when it returns, the broker's channel
    /// has processed every earlier publish on this connection.
    pub fn sync(&mut self) {
        let mut qos = method(BASIC_CLASS, 10);
        put_u32(&mut qos, 0); // prefetch-size
        put_u16(&mut qos, 0); // prefetch-count
        qos.push(0); // not global
        self.send_frame(FRAME_METHOD, CHANNEL, &qos, "basic.qos");
        self.expect_method(CHANNEL, (BASIC_CLASS, 11), "basic.qos-ok");
    }

    fn queue_declare(&mut self, name: &str, bits: u8) {
        let mut declare = method(50, 10);
        put_u16(&mut declare, 0);
        put_shortstr(&mut declare, name.as_bytes());
        declare.push(bits);
        put_u32(&mut declare, 0); // arguments: empty table
        self.send_frame(FRAME_METHOD, CHANNEL, &declare, "queue.declare");
        self.expect_method(CHANNEL, (50, 11), "queue.declare-ok");
    }

    fn write_all(&mut self, bytes: &[u8], what: &str) {
        if let Err(error) = self.stream.write_all(bytes) {
            panic!("raw AMQP: cannot send {what}: {error}");
        }
    }

    fn send_frame(&mut self, kind: u8, channel: u16, payload: &[u8], what: &str) {
        let size = u32::try_from(payload.len()).expect("raw AMQP: frame payload too large");
        let mut frame = Vec::with_capacity(payload.len() + 8);
        frame.push(kind);
        put_u16(&mut frame, channel);
        put_u32(&mut frame, size);
        frame.extend_from_slice(payload);
        frame.push(FRAME_END);
        self.write_all(&frame, what);
    }

    fn try_read_frame(&mut self) -> io::Result<Frame> {
        let mut head = [0u8; 7];
        self.stream.read_exact(&mut head)?;
        let kind = head[0];
        let channel = u16::from_be_bytes([head[1], head[2]]);
        let size = u32::from_be_bytes([head[3], head[4], head[5], head[6]]) as usize;
        let mut payload = vec![0u8; size + 1];
        self.stream.read_exact(&mut payload)?;
        if payload.pop() != Some(FRAME_END) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("frame (type {kind}, channel {channel}, size {size}) lacks the 0xCE end"),
            ));
        }
        Ok(Frame {
            kind,
            channel,
            payload,
        })
    }

    /// The next non-heartbeat frame; panics (with the broker's reason, if it closed the
    /// connection or channel) on anything unexpected.
    fn read_frame(&mut self, waiting_for: &str) -> Frame {
        loop {
            let frame = match self.try_read_frame() {
                Ok(frame) => frame,
                Err(error) => {
                    self.closed = true;
                    panic!("raw AMQP: connection failed while waiting for {waiting_for}: {error}")
                }
            };
            if frame.kind == FRAME_HEARTBEAT {
                continue;
            }
            if frame.kind == FRAME_METHOD && frame.payload.len() >= 4 {
                let id = (
                    u16::from_be_bytes([frame.payload[0], frame.payload[1]]),
                    u16::from_be_bytes([frame.payload[2], frame.payload[3]]),
                );
                if id == CONNECTION_CLOSE || id == CHANNEL_CLOSE {
                    let mut args = Cursor::new(&frame.payload[4..], "close");
                    let code = args.u16();
                    let text = String::from_utf8_lossy(args.shortstr()).into_owned();
                    let scope = if id == CONNECTION_CLOSE {
                        // The broker is closing the socket; Drop has nothing left to do.
                        self.closed = true;
                        "connection"
                    } else {
                        "channel"
                    };
                    panic!(
                        "raw AMQP: broker closed the {scope} while waiting for {waiting_for}: \
                         {code} {text}"
                    );
                }
            }
            return frame;
        }
    }

    /// Reads the next method frame on `channel`: its (class, method) and arguments.
    fn read_method(&mut self, channel: u16, waiting_for: &str) -> ((u16, u16), Vec<u8>) {
        let frame = self.read_frame(waiting_for);
        assert!(
            frame.kind == FRAME_METHOD && frame.channel == channel,
            "raw AMQP: expected a method frame on channel {channel} ({waiting_for}), got frame \
             type {} on channel {}",
            frame.kind,
            frame.channel
        );
        assert!(
            frame.payload.len() >= 4,
            "raw AMQP: method frame too short ({waiting_for})"
        );
        let id = (
            u16::from_be_bytes([frame.payload[0], frame.payload[1]]),
            u16::from_be_bytes([frame.payload[2], frame.payload[3]]),
        );
        (id, frame.payload[4..].to_vec())
    }

    fn expect_method(&mut self, channel: u16, expected: (u16, u16), name: &str) -> Vec<u8> {
        let (id, args) = self.read_method(channel, name);
        assert_eq!(
            id, expected,
            "raw AMQP: expected {name} {expected:?}, got method {id:?}"
        );
        args
    }
}

impl Drop for RawAmqp {
    /// connection.close, then wait (at most CLOSE_TIMEOUT) for close-ok; never panics.
    fn drop(&mut self) {
        if !self.closed {
            self.closed = true;
            let mut close = method(10, 50);
            put_u16(&mut close, 200);
            put_shortstr(&mut close, b"");
            put_u16(&mut close, 0);
            put_u16(&mut close, 0);
            let mut frame = vec![FRAME_METHOD];
            put_u16(&mut frame, 0);
            put_u32(&mut frame, close.len() as u32);
            frame.extend_from_slice(&close);
            frame.push(FRAME_END);
            if self.stream.write_all(&frame).is_ok()
                && self.stream.set_read_timeout(Some(CLOSE_TIMEOUT)).is_ok()
            {
                let deadline = Instant::now() + CLOSE_TIMEOUT;
                while Instant::now() < deadline {
                    match self.try_read_frame() {
                        Ok(frame)
                            if frame.kind == FRAME_METHOD
                                && frame.channel == 0
                                && frame.payload.len() >= 4 =>
                        {
                            let id = (
                                u16::from_be_bytes([frame.payload[0], frame.payload[1]]),
                                u16::from_be_bytes([frame.payload[2], frame.payload[3]]),
                            );
                            if id == CONNECTION_CLOSE_OK || id == CONNECTION_CLOSE {
                                break;
                            }
                        }
                        Ok(_) => {}
                        Err(_) => break,
                    }
                }
            }
        }
        let _ = self.stream.shutdown(Shutdown::Both);
    }
}

/// An encoded field table (with its length prefix):
/// `{"x": {"n": {"n": ... {"v": 1}}}}` nested `depth` tables deep in total (depth 1 is
/// `{"v": 1}`, the 1 a signed 32-bit `I`). Built iteratively from the inside out: the bytes
/// are accumulated back to front, so each enclosing level is a constant-size append.
pub fn nested_headers(depth: usize) -> Vec<u8> {
    assert!(depth >= 1, "nested_headers: depth must be at least 1");
    // The innermost table {"v": I 1}, reversed.
    let mut reversed = Vec::with_capacity(11 + 7 * (depth - 1));
    let mut innermost = Vec::with_capacity(11);
    let mut entry = Vec::with_capacity(7);
    put_shortstr(&mut entry, b"v");
    entry.push(b'I');
    entry.extend_from_slice(&1i32.to_be_bytes());
    put_u32(&mut innermost, entry.len() as u32);
    innermost.extend_from_slice(&entry);
    reversed.extend(innermost.iter().rev());

    for level in 2..=depth {
        let key: &[u8] = if level == depth { b"x" } else { b"n" };
        // This table's content: shortstr key, 'F', then the inner table so far.
        let content_len = 1 + key.len() + 1 + reversed.len();
        let mut prefix = Vec::with_capacity(4 + 1 + key.len() + 1);
        put_u32(
            &mut prefix,
            u32::try_from(content_len).expect("nested_headers: table too large"),
        );
        put_shortstr(&mut prefix, key);
        prefix.push(b'F');
        reversed.extend(prefix.iter().rev());
    }
    reversed.reverse();
    reversed
}

/// An encoded field table (with its length prefix) with these long-string (`S`) entries.
pub fn string_table(entries: &[(&str, &str)]) -> Vec<u8> {
    let mut content = Vec::new();
    for (key, value) in entries {
        put_shortstr(&mut content, key.as_bytes());
        content.push(b'S');
        put_longstr(&mut content, value.as_bytes());
    }
    let mut table = Vec::with_capacity(4 + content.len());
    put_u32(
        &mut table,
        u32::try_from(content.len()).expect("string_table: table too large"),
    );
    table.extend_from_slice(&content);
    table
}

// Property flag bits of the basic class content header.
const FLAG_CONTENT_TYPE: u16 = 1 << 15;
const FLAG_CONTENT_ENCODING: u16 = 1 << 14;
const FLAG_HEADERS: u16 = 1 << 13;
const FLAG_DELIVERY_MODE: u16 = 1 << 12;
const FLAG_PRIORITY: u16 = 1 << 11;
const FLAG_CORRELATION_ID: u16 = 1 << 10;
const FLAG_REPLY_TO: u16 = 1 << 9;
const FLAG_EXPIRATION: u16 = 1 << 8;
const FLAG_MESSAGE_ID: u16 = 1 << 7;
const FLAG_TIMESTAMP: u16 = 1 << 6;
const FLAG_TYPE: u16 = 1 << 5;
const FLAG_USER_ID: u16 = 1 << 4;
const FLAG_APP_ID: u16 = 1 << 3;
const FLAG_CLUSTER_ID: u16 = 1 << 2;
const FLAG_CONTINUATION: u16 = 1;

fn encode_content_header(properties: &RawProperties, body_size: u64) -> Vec<u8> {
    let mut flags = 0u16;
    let mut values = Vec::new();
    if let Some(content_type) = &properties.content_type {
        flags |= FLAG_CONTENT_TYPE;
        put_shortstr(&mut values, content_type);
    }
    if let Some(headers) = &properties.headers {
        flags |= FLAG_HEADERS;
        values.extend_from_slice(headers);
    }
    if let Some(correlation_id) = &properties.correlation_id {
        flags |= FLAG_CORRELATION_ID;
        put_shortstr(&mut values, correlation_id);
    }
    if let Some(reply_to) = &properties.reply_to {
        flags |= FLAG_REPLY_TO;
        put_shortstr(&mut values, reply_to);
    }
    if let Some(expiration) = &properties.expiration {
        flags |= FLAG_EXPIRATION;
        put_shortstr(&mut values, expiration);
    }
    if let Some(type_) = &properties.type_ {
        flags |= FLAG_TYPE;
        put_shortstr(&mut values, type_);
    }
    let mut header = Vec::with_capacity(14 + values.len());
    put_u16(&mut header, BASIC_CLASS);
    put_u16(&mut header, 0); // weight
    header.extend_from_slice(&body_size.to_be_bytes());
    put_u16(&mut header, flags);
    header.extend_from_slice(&values);
    header
}

/// Parses a basic content header payload: the properties we model, and the body size. Every
/// other present property is skipped according to its type.
fn decode_content_header(payload: &[u8]) -> (RawProperties, u64) {
    let mut cursor = Cursor::new(payload, "content header");
    let class = cursor.u16();
    assert_eq!(
        class, BASIC_CLASS,
        "raw AMQP: content header for class {class}"
    );
    let _weight = cursor.u16();
    let body_size = cursor.u64();
    let flags = cursor.u16();
    assert_eq!(
        flags & FLAG_CONTINUATION,
        0,
        "raw AMQP: property flags continuation is not supported by basic"
    );
    let has = |flag: u16| flags & flag != 0;
    let mut properties = RawProperties::default();
    if has(FLAG_CONTENT_TYPE) {
        properties.content_type = Some(cursor.shortstr().to_vec());
    }
    if has(FLAG_CONTENT_ENCODING) {
        cursor.shortstr();
    }
    if has(FLAG_HEADERS) {
        properties.headers = Some(cursor.table().to_vec());
    }
    if has(FLAG_DELIVERY_MODE) {
        cursor.u8();
    }
    if has(FLAG_PRIORITY) {
        cursor.u8();
    }
    if has(FLAG_CORRELATION_ID) {
        properties.correlation_id = Some(cursor.shortstr().to_vec());
    }
    if has(FLAG_REPLY_TO) {
        properties.reply_to = Some(cursor.shortstr().to_vec());
    }
    if has(FLAG_EXPIRATION) {
        properties.expiration = Some(cursor.shortstr().to_vec());
    }
    if has(FLAG_MESSAGE_ID) {
        cursor.shortstr();
    }
    if has(FLAG_TIMESTAMP) {
        cursor.u64();
    }
    if has(FLAG_TYPE) {
        properties.type_ = Some(cursor.shortstr().to_vec());
    }
    if has(FLAG_USER_ID) {
        cursor.shortstr();
    }
    if has(FLAG_APP_ID) {
        cursor.shortstr();
    }
    if has(FLAG_CLUSTER_ID) {
        cursor.shortstr();
    }
    assert!(
        cursor.is_empty(),
        "raw AMQP: {} unparsed bytes after the content header properties",
        cursor.remaining()
    );
    (properties, body_size)
}

fn method(class: u16, method: u16) -> Vec<u8> {
    let mut payload = Vec::with_capacity(64);
    put_u16(&mut payload, class);
    put_u16(&mut payload, method);
    payload
}

fn put_u16(buffer: &mut Vec<u8>, value: u16) {
    buffer.extend_from_slice(&value.to_be_bytes());
}

fn put_u32(buffer: &mut Vec<u8>, value: u32) {
    buffer.extend_from_slice(&value.to_be_bytes());
}

fn put_shortstr(buffer: &mut Vec<u8>, value: &[u8]) {
    let len = u8::try_from(value.len())
        .unwrap_or_else(|_| panic!("raw AMQP: shortstr of {} bytes (max 255)", value.len()));
    buffer.push(len);
    buffer.extend_from_slice(value);
}

fn put_longstr(buffer: &mut Vec<u8>, value: &[u8]) {
    put_u32(
        buffer,
        u32::try_from(value.len()).expect("raw AMQP: longstr too large"),
    );
    buffer.extend_from_slice(value);
}

/// A bounds-checked reader over a received payload; panics naming what was being parsed.
struct Cursor<'a> {
    data: &'a [u8],
    position: usize,
    what: &'static str,
}

impl<'a> Cursor<'a> {
    fn new(data: &'a [u8], what: &'static str) -> Self {
        Cursor {
            data,
            position: 0,
            what,
        }
    }

    fn take(&mut self, len: usize) -> &'a [u8] {
        let end = self
            .position
            .checked_add(len)
            .filter(|&end| end <= self.data.len())
            .unwrap_or_else(|| {
                panic!(
                    "raw AMQP: truncated {} ({} bytes needed at offset {}, {} available)",
                    self.what,
                    len,
                    self.position,
                    self.data.len()
                )
            });
        let bytes = &self.data[self.position..end];
        self.position = end;
        bytes
    }

    fn u8(&mut self) -> u8 {
        self.take(1)[0]
    }

    fn u16(&mut self) -> u16 {
        let bytes = self.take(2);
        u16::from_be_bytes([bytes[0], bytes[1]])
    }

    fn u32(&mut self) -> u32 {
        let bytes = self.take(4);
        u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]])
    }

    fn u64(&mut self) -> u64 {
        let mut bytes = [0u8; 8];
        bytes.copy_from_slice(self.take(8));
        u64::from_be_bytes(bytes)
    }

    fn shortstr(&mut self) -> &'a [u8] {
        let len = self.u8() as usize;
        self.take(len)
    }

    /// A whole field table, returned with its 4-byte length prefix.
    fn table(&mut self) -> &'a [u8] {
        let start = self.position;
        let len = self.u32() as usize;
        self.take(len);
        &self.data[start..self.position]
    }

    fn remaining(&self) -> usize {
        self.data.len() - self.position
    }

    fn is_empty(&self) -> bool {
        self.remaining() == 0
    }
}
