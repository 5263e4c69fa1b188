//! The stream amiquip reads from and writes to: our socket, with every content header frame
//! passed through [`frames`](crate::driver::frames) on the way in and out.
//!
//! amiquip parses only the bytes this stream hands it, so a message it could not survive never
//! reaches it. Frames other than content headers are passed through as they are, without
//! being buffered whole.

use crate::driver::closed::{ClosedChannels, Verdict};
use crate::driver::frames::{self, RawIds, HEADER_FRAME};
use crate::driver::handshake::{self, Witness, MAX_CONNECTION_FRAME};
use crate::driver::tls::TlsTransport;
use mio::{Evented, Poll, PollOpt, Ready, Token};
use std::io::{self, Read, Write};
use std::sync::Arc;

/// Type, channel and payload size precede every frame's payload.
const FRAME_HEADER: usize = 7;

/// The frame-end octet that follows every payload.
const FRAME_END: usize = 1;

/// The protocol header a client writes before its first frame.
const PROTOCOL_HEADER: usize = 8;

/// Largest content header frame taken: RabbitMQ's own frame limit is far smaller, so a larger
/// one comes from a hostile peer, and the connection is dropped rather than the frame read.
const MAX_HEADER_FRAME: usize = 16 * 1024 * 1024;

/// What the guard reads from and writes to: the socket, or TLS on it.
pub(crate) enum Transport {
    Plain(mio::net::TcpStream),
    Tls(Box<TlsTransport>),
}

impl Read for Transport {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Transport::Plain(socket) => socket.read(buf),
            Transport::Tls(tls) => tls.read(buf),
        }
    }
}

impl Write for Transport {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Transport::Plain(socket) => socket.write(buf),
            Transport::Tls(tls) => tls.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Transport::Plain(socket) => socket.flush(),
            Transport::Tls(tls) => tls.flush(),
        }
    }
}

impl Transport {
    /// The socket amiquip's poll watches, whatever runs on it.
    fn evented(&self) -> &mio::net::TcpStream {
        match self {
            Transport::Plain(socket) => socket,
            Transport::Tls(tls) => tls.socket(),
        }
    }
}

/// How much of the socket one read takes.
const READ_CHUNK: usize = 16 * 1024;

/// A socket whose content header frames are made safe before amiquip parses them.
pub(crate) struct GuardedStream {
    socket: Transport,
    inbound: Inbound,
    outbound: Outbound,
    raw_ids: RawIds,
    /// What the broker said as the connection began: its first byte (a TLS answer to a plain
    /// connection, say), and a refusal.
    witness: Arc<Witness>,
    /// Where the socket is read into: kept, because zeroing a fresh one for every read cost
    /// more than the rest of the read path.
    chunk: Box<[u8]>,
}

impl GuardedStream {
    pub fn new(socket: Transport, witness: Arc<Witness>) -> GuardedStream {
        GuardedStream {
            witness,
            socket,
            inbound: Inbound::default(),
            outbound: Outbound {
                passing: PROTOCOL_HEADER,
                ..Outbound::default()
            },
            raw_ids: RawIds::new(),
            chunk: vec![0; READ_CHUNK].into_boxed_slice(),
        }
    }
}

impl Read for GuardedStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            if self.inbound.has_output() || self.inbound.ended {
                return Ok(self.inbound.take(buf));
            }
            // The rest of a frame that passes unchanged (a message body, above all) goes from
            // the socket straight into amiquip's buffer: only header frames are looked at, and
            // a large body would otherwise be copied three times more.
            let straight = self.inbound.passing.min(buf.len());
            if straight > 0 {
                let read = self.socket.read(&mut buf[..straight])?;
                if read == 0 {
                    self.inbound.end();
                    continue;
                }
                self.inbound.passing -= read;
                return Ok(read);
            }
            // Read until the socket would block (amiquip polls edge-triggered), or until there
            // is something to hand on.
            match self.socket.read(&mut self.chunk)? {
                0 => self.inbound.end(),
                read => {
                    self.witness.saw_byte(self.chunk[0]);
                    self.inbound
                        .push(&self.chunk[..read], &mut self.raw_ids, &self.witness)?
                }
            }
        }
    }
}

impl Write for GuardedStream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.outbound
            .write(&mut self.socket, buf, &mut self.raw_ids)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.outbound.flush_pending(&mut self.socket)?;
        self.socket.flush()
    }
}

impl Evented for GuardedStream {
    fn register(
        &self,
        poll: &Poll,
        token: Token,
        interest: Ready,
        opts: PollOpt,
    ) -> io::Result<()> {
        self.socket.evented().register(poll, token, interest, opts)
    }

    fn reregister(
        &self,
        poll: &Poll,
        token: Token,
        interest: Ready,
        opts: PollOpt,
    ) -> io::Result<()> {
        self.socket
            .evented()
            .reregister(poll, token, interest, opts)
    }

    fn deregister(&self, poll: &Poll) -> io::Result<()> {
        self.socket.evented().deregister(poll)
    }
}

impl amiquip::IoStream for GuardedStream {}

/// Splits the inbound byte stream into frames and rewrites content headers.
#[derive(Default)]
struct Inbound {
    /// Bytes of the frame header being read.
    header: Vec<u8>,
    /// Bytes of the current frame still to pass through unread.
    passing: usize,
    /// Bytes of the current frame still to drop: it is for a channel the broker closed.
    dropping: usize,
    closed: ClosedChannels,
    /// A content header frame being collected whole (header, payload and end octet).
    collecting: Option<Collecting>,
    /// Bytes ready for amiquip, of which it has taken the first `taken`.
    output: Vec<u8>,
    taken: usize,
    ended: bool,
}

/// A content header frame being read whole, and its whole length.
struct Collecting {
    frame: Vec<u8>,
    total: usize,
}

impl Inbound {
    /// Takes bytes from the socket; an error for a frame no broker sends (the connection ends).
    fn push(
        &mut self,
        mut input: &[u8],
        raw_ids: &mut RawIds,
        witness: &Witness,
    ) -> io::Result<()> {
        while !input.is_empty() {
            if self.dropping > 0 {
                let taken = self.dropping.min(input.len());
                self.dropping -= taken;
                input = &input[taken..];
            } else if self.passing > 0 {
                let taken = self.passing.min(input.len());
                self.output.extend_from_slice(&input[..taken]);
                self.passing -= taken;
                input = &input[taken..];
            } else if let Some(collecting) = self.collecting.as_mut() {
                let wanted = collecting.total - collecting.frame.len();
                let taken = wanted.min(input.len());
                collecting.frame.extend_from_slice(&input[..taken]);
                input = &input[taken..];
                if collecting.frame.len() == collecting.total {
                    let frame = self.collecting.take().expect("collecting").frame;
                    if frame[0] == HEADER_FRAME {
                        self.output
                            .extend_from_slice(&rewrite_inbound(frame, raw_ids));
                    } else {
                        witness
                            .saw_connection_method(&frame[FRAME_HEADER..frame.len() - FRAME_END]);
                        self.output.extend_from_slice(&frame);
                    }
                }
            } else {
                let taken = (header_length(&self.header) - self.header.len()).min(input.len());
                self.header.extend_from_slice(&input[..taken]);
                input = &input[taken..];
                if self.header.len() == header_length(&self.header) {
                    self.begin_frame()?;
                    self.header.clear();
                }
            }
        }
        Ok(())
    }

    /// The header of a frame (and, for a channel's method, its class and method ids) is in
    /// `header`: drop the frame, collect it whole, or pass it on as it comes.
    fn begin_frame(&mut self) -> io::Result<()> {
        let header = &self.header;
        let size = payload_size(header);
        let channel = u16::from_be_bytes([header[1], header[2]]);
        let method = (header.len() > FRAME_HEADER).then(|| {
            let id = |at: usize| u16::from_be_bytes([header[at], header[at + 1]]);
            (id(FRAME_HEADER), id(FRAME_HEADER + 2))
        });
        let unread = (FRAME_HEADER + FRAME_END).saturating_add(size) - header.len();
        if self.closed.judge(header[0], channel, method) == Verdict::Drop {
            self.dropping = unread;
            return Ok(());
        }
        if header[0] == HEADER_FRAME {
            if size > MAX_HEADER_FRAME {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("a {size}-byte message header: no broker sends one"),
                ));
            }
            let total = FRAME_HEADER + size + FRAME_END;
            // Grown as the bytes come, not reserved on the peer's word.
            let mut frame = Vec::with_capacity(total.min(64 * 1024));
            frame.extend_from_slice(header);
            self.collecting = Some(Collecting { frame, total });
        } else if handshake::is_connection_frame(header) && size <= MAX_CONNECTION_FRAME {
            let total = FRAME_HEADER + size + FRAME_END;
            let mut frame = Vec::with_capacity(total);
            frame.extend_from_slice(header);
            self.collecting = Some(Collecting { frame, total });
        } else {
            self.output.extend_from_slice(header);
            self.passing = unread;
        }
        Ok(())
    }

    /// The socket closed: hand on whatever partial frame there was, as it came.
    fn end(&mut self) {
        self.output.append(&mut self.header);
        if let Some(mut collecting) = self.collecting.take() {
            self.output.append(&mut collecting.frame);
        }
        self.ended = true;
    }

    fn has_output(&self) -> bool {
        self.taken < self.output.len()
    }

    /// Hands amiquip what it has room for; the rest stays where it is until next time.
    fn take(&mut self, buf: &mut [u8]) -> usize {
        let ready = &self.output[self.taken..];
        let taken = buf.len().min(ready.len());
        buf[..taken].copy_from_slice(&ready[..taken]);
        self.taken += taken;
        if self.taken == self.output.len() {
            self.output.clear();
            self.taken = 0;
        }
        taken
    }
}

/// How many bytes of a frame's start are read before it is judged: its header, and for a
/// channel's method frame the class and method ids too.
fn header_length(header: &[u8]) -> usize {
    if header.len() < FRAME_HEADER {
        return FRAME_HEADER;
    }
    let channel = u16::from_be_bytes([header[1], header[2]]);
    match ClosedChannels::wants_method(header[0], channel) && payload_size(header) >= 4 {
        true => FRAME_HEADER + 4,
        false => FRAME_HEADER,
    }
}

/// What the guard hands amiquip for a byte stream read from the socket in `chunks`, and the
/// most it held back at any time (a partial frame); an error for a frame no broker sends.
#[cfg(fuzzing)]
pub(crate) fn inbound_of<'a>(
    chunks: impl IntoIterator<Item = &'a [u8]>,
) -> io::Result<(Vec<u8>, usize)> {
    let (mut inbound, mut raw_ids) = (Inbound::default(), RawIds::new());
    let witness = Witness::default();
    let (mut handed, mut held) = (Vec::new(), 0);
    for chunk in chunks {
        inbound.push(chunk, &mut raw_ids, &witness)?;
        let collecting = inbound.collecting.as_ref();
        held = held.max(inbound.header.len() + collecting.map_or(0, |c| c.frame.capacity()));
        handed.append(&mut inbound.output);
    }
    Ok((handed, held))
}

/// Payload size of the frame whose 7-byte header this is.
fn payload_size(header: &[u8]) -> usize {
    let size = u32::from_be_bytes([header[3], header[4], header[5], header[6]]);
    usize::try_from(size).unwrap_or(usize::MAX)
}

/// Whole length of the frame whose 7-byte header this is (amiquip's own frames).
fn frame_length(header: &[u8]) -> usize {
    FRAME_HEADER
        .saturating_add(payload_size(header))
        .saturating_add(FRAME_END)
}

fn rewrite_inbound(frame: Vec<u8>, raw_ids: &mut RawIds) -> Vec<u8> {
    let payload = &frame[FRAME_HEADER..frame.len() - FRAME_END];
    match frames::sanitize(payload, raw_ids) {
        Some(payload) => {
            log::warn!("rewrote the properties of an incoming message that the AMQP driver could not parse safely");
            reframe(&frame, &payload)
        }
        None => frame,
    }
}

/// `frame` with its payload replaced.
fn reframe(frame: &[u8], payload: &[u8]) -> Vec<u8> {
    let mut rewritten = Vec::with_capacity(payload.len() + FRAME_HEADER + FRAME_END);
    rewritten.extend_from_slice(&frame[..3]);
    rewritten.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    rewritten.extend_from_slice(payload);
    rewritten.push(frame[frame.len() - 1]);
    rewritten
}

/// Passes amiquip's frames to the socket, restoring correlation ids in content headers.
///
/// amiquip hands over whole frames and writes again only while it has bytes left. A rewritten
/// frame that the socket takes only in part is therefore reported one byte short: amiquip keeps
/// that byte and comes back with it, and by then the rest of the rewritten frame goes out first.
#[derive(Default)]
struct Outbound {
    /// Bytes of the current frame (or the protocol header) that the socket has yet to take as
    /// they are.
    passing: usize,
    /// A rewritten frame, and how much of it the socket has taken.
    pending: Vec<u8>,
    pending_written: usize,
    /// Bytes of the original frame amiquip still holds for us, to be dropped.
    owed: usize,
}

impl Outbound {
    fn write<W: Write>(
        &mut self,
        socket: &mut W,
        buf: &[u8],
        raw_ids: &mut RawIds,
    ) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        self.flush_pending(socket)?;
        if self.owed > 0 {
            let dropped = self.owed.min(buf.len());
            self.owed -= dropped;
            return Ok(dropped);
        }
        if self.passing > 0 {
            let written = socket.write(&buf[..self.passing.min(buf.len())])?;
            self.passing -= written;
            return Ok(written);
        }
        // At a frame boundary: pass whole frames through up to the first one to rewrite.
        let mut span = 0;
        while span + FRAME_HEADER <= buf.len() {
            let total = frame_length(&buf[span..]);
            let frame = &buf[span..(span + total).min(buf.len())];
            if frame.len() == total && frame[0] == HEADER_FRAME {
                let payload = &frame[FRAME_HEADER..total - FRAME_END];
                if frames::carries_token(payload, raw_ids) {
                    if span > 0 {
                        break;
                    }
                    let payload = frames::restore(payload, raw_ids).expect("carries a token");
                    return self.write_rewritten(socket, reframe(frame, &payload), total);
                }
            }
            if frame.len() == total && handshake::is_connection_frame(frame) {
                let payload = &frame[FRAME_HEADER..total - FRAME_END];
                if let Some(payload) = handshake::announce_capability(payload) {
                    if span > 0 {
                        break;
                    }
                    return self.write_rewritten(socket, reframe(frame, &payload), total);
                }
            }
            span += total;
        }
        // amiquip writes whole frames, so a boundary always has a frame header after it; were
        // it not so, the bytes are passed on as they are.
        let span = if span == 0 {
            buf.len()
        } else {
            span.min(buf.len())
        };
        let written = socket.write(&buf[..span])?;
        self.passing = remainder_of_frame(buf, written);
        Ok(written)
    }

    fn write_rewritten<W: Write>(
        &mut self,
        socket: &mut W,
        frame: Vec<u8>,
        original: usize,
    ) -> io::Result<usize> {
        self.pending = frame;
        self.pending_written = 0;
        match self.flush_pending(socket) {
            Ok(()) => Ok(original),
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => {
                self.owed = 1;
                Ok(original - 1)
            }
            Err(error) => Err(error),
        }
    }

    /// Writes what is left of a rewritten frame; `WouldBlock` if the socket takes not all of it.
    fn flush_pending<W: Write>(&mut self, socket: &mut W) -> io::Result<()> {
        while self.pending_written < self.pending.len() {
            let written = socket.write(&self.pending[self.pending_written..])?;
            if written == 0 {
                return Err(io::ErrorKind::WriteZero.into());
            }
            self.pending_written += written;
        }
        self.pending.clear();
        self.pending_written = 0;
        Ok(())
    }
}

/// After `written` bytes of the whole frames at the start of `buf`, how many bytes of the frame
/// in progress are still to go.
fn remainder_of_frame(buf: &[u8], written: usize) -> usize {
    let mut boundary = 0;
    while boundary < written {
        if buf.len() - boundary < FRAME_HEADER {
            return 0;
        }
        boundary += frame_length(&buf[boundary..]);
    }
    boundary - written
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(kind: u8, payload: &[u8]) -> Vec<u8> {
        let mut bytes = vec![kind, 0, 1];
        bytes.extend_from_slice(&(payload.len() as u32).to_be_bytes());
        bytes.extend_from_slice(payload);
        bytes.push(0xce);
        bytes
    }

    /// A `basic` content header with only a correlation id.
    fn correlated(id: &[u8]) -> Vec<u8> {
        let mut payload = vec![0, 60, 0, 0, 0, 0, 0, 0, 0, 0, 0, 5];
        payload.extend_from_slice(&(1u16 << 10).to_be_bytes());
        payload.push(id.len() as u8);
        payload.extend_from_slice(id);
        frame(HEADER_FRAME, &payload)
    }

    /// A content header with correlation id `id` as the broker sends it, and as amiquip gets it.
    fn through_inbound(id: &[u8], raw_ids: &mut RawIds) -> (Vec<u8>, Vec<u8>) {
        let mut inbound = Inbound::default();
        let original = correlated(id);
        inbound
            .push(&original, raw_ids, &Witness::default())
            .unwrap();
        (original, inbound.output)
    }

    /// What amiquip gets for `stream` read from the socket `chunk` bytes at a time.
    fn in_chunks(stream: &[u8], chunk: usize) -> Vec<u8> {
        let (mut inbound, mut raw_ids) = (Inbound::default(), RawIds::new());
        for piece in stream.chunks(chunk) {
            inbound
                .push(piece, &mut raw_ids, &Witness::default())
                .unwrap();
        }
        inbound.output
    }

    #[test]
    fn amiquip_takes_the_output_in_order_whatever_its_buffer() {
        let mut stream = frame(1, b"method");
        stream.extend(correlated(b"id-1"));
        for room in [1, 3, 16, 1000] {
            let mut inbound = Inbound::default();
            inbound
                .push(&stream, &mut RawIds::new(), &Witness::default())
                .unwrap();
            let mut taken = Vec::new();
            let mut buf = vec![0; room];
            while inbound.has_output() {
                let n = inbound.take(&mut buf);
                taken.extend_from_slice(&buf[..n]);
            }
            assert_eq!(taken, stream, "room for {room}");
            assert!(inbound.output.is_empty(), "nothing kept once all is taken");
        }
    }

    #[test]
    fn inbound_frames_pass_unchanged_whatever_the_chunking() {
        let mut stream = frame(1, b"method");
        stream.extend(correlated(b"id-1"));
        stream.extend(frame(3, b"body bytes"));
        stream.extend(frame(8, b""));
        for chunk in [1, 2, 7, 8, 100] {
            assert_eq!(in_chunks(&stream, chunk), stream, "chunks of {chunk}");
        }
    }

    #[test]
    fn a_non_utf8_id_goes_in_as_a_token_and_comes_back_out_as_it_was() {
        let mut raw_ids = RawIds::new();
        let (original, token_frame) = through_inbound(b"\xff\xfe", &mut raw_ids);
        assert_ne!(token_frame, original);

        let mut outbound = Outbound::default();
        let mut socket = Vec::new();
        let mut amiquip_buffer = frame(1, b"publish");
        amiquip_buffer.extend(&token_frame);
        amiquip_buffer.extend(frame(3, b"5"));
        let mut offset = 0;
        while offset < amiquip_buffer.len() {
            offset += outbound
                .write(&mut socket, &amiquip_buffer[offset..], &mut raw_ids)
                .unwrap();
        }
        let mut expected = frame(1, b"publish");
        expected.extend(&original);
        expected.extend(frame(3, b"5"));
        assert_eq!(socket, expected);
    }

    /// A socket that takes at most `room` bytes, then would block until given more room.
    struct Tight {
        taken: Vec<u8>,
        room: usize,
    }

    impl Write for Tight {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            if self.room == 0 {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            let taken = self.room.min(buf.len());
            self.taken.extend_from_slice(&buf[..taken]);
            self.room -= taken;
            Ok(taken)
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_rewritten_frame_the_socket_takes_in_part_keeps_amiquip_writing() {
        let mut raw_ids = RawIds::new();
        let (original, token_frame) = through_inbound(b"\xff\xfe", &mut raw_ids);

        let mut outbound = Outbound::default();
        let mut socket = Tight {
            taken: Vec::new(),
            room: 5,
        };
        let mut offset = 0;
        let mut would_block = 0;
        while offset < token_frame.len() {
            match outbound.write(&mut socket, &token_frame[offset..], &mut raw_ids) {
                Ok(written) => offset += written,
                Err(error) => {
                    assert_eq!(error.kind(), io::ErrorKind::WouldBlock);
                    would_block += 1;
                    socket.room = 3;
                }
            }
        }
        assert!(would_block > 0);
        assert_eq!(
            socket.taken, original,
            "amiquip wrote until the whole frame was out"
        );
    }

    /// A method frame on `channel` with class and method ids and `arguments`.
    fn method(channel: u16, class: u16, id: u16, arguments: &[u8]) -> Vec<u8> {
        let mut payload = class.to_be_bytes().to_vec();
        payload.extend_from_slice(&id.to_be_bytes());
        payload.extend_from_slice(arguments);
        let mut bytes = frame(1, &payload);
        bytes[1..3].copy_from_slice(&channel.to_be_bytes());
        bytes
    }

    #[test]
    fn what_the_broker_sends_on_a_channel_it_closed_never_reaches_amiquip() {
        let close = method(3, 20, 40, b"\x01\x96\x04timed\x00\x00\x00\x00");
        let deliver = method(3, 60, 60, b"late delivery");
        let other = method(4, 60, 60, b"channel 4 goes on");
        let mut content = correlated(b"id-1");
        content[1..3].copy_from_slice(&3u16.to_be_bytes());
        let reopened = method(3, 20, 11, b"\x00\x00\x00\x00");
        let mut stream = close.clone();
        for dropped in [&close, &deliver, &content] {
            stream.extend(dropped);
        }
        stream.extend(&other);
        stream.extend(&close);
        stream.extend(&reopened);
        stream.extend(&deliver);
        let mut expected = close.clone();
        expected.extend(&other);
        expected.extend(&reopened);
        expected.extend(&deliver);
        for chunk in [1, 2, 7, 8, 11, 12, 1000] {
            assert_eq!(in_chunks(&stream, chunk), expected, "chunks of {chunk}");
        }
    }

    #[test]
    fn a_header_frame_no_broker_sends_ends_the_connection_unread() {
        let mut inbound = Inbound::default();
        let mut huge = vec![HEADER_FRAME, 0, 1];
        huge.extend_from_slice(&u32::MAX.to_be_bytes());
        let error = inbound
            .push(&huge, &mut RawIds::new(), &Witness::default())
            .unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::InvalidData);
        assert!(inbound.output.is_empty());
    }
}
