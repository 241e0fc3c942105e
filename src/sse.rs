//! Server-sent events on the wire (`text/event-stream`, HTML Living Standard
//! §9.2): one encoder for every stream mcpvisor sends and one parser for every
//! stream it reads.
//!
//! Sent with [`Frame`]: status notifications (the event bus encodes each
//! once), log lines, the legacy proxy's rewritten `endpoint` events and the
//! proxy's error events. Read with [`Parser`], a push front end over
//! `eventsource-stream` for relays that pass bytes on and only look at the
//! events; the CLI reads the daemon's streams with `eventsource-stream`
//! directly. A leaf module: it knows nothing of the rest of the crate.

use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{BufMut, Bytes, BytesMut};
use eventsource_stream::{EventStream, EventStreamError};
use futures::channel::mpsc;
use futures::Stream;
use thiserror::Error;

pub use eventsource_stream::Event;

/// The comment line that keeps an idle stream open.
pub const KEEP_ALIVE: Bytes = Bytes::from_static(b":keep-alive\n\n");

/// Most bytes a [`Parser`] takes without completing an event (16 MiB).
pub const MAX_EVENT_BYTES: usize = 16 << 20;

/// One event to send: optional `id:` and `event:` lines, then the data.
///
/// `data` may hold line breaks (`\n`, `\r\n` or `\r`): each line becomes a
/// `data:` line of its own, so a reader gets the data back with `\n` breaks.
/// `id` and `event` are single lines: anything from their first line break
/// on (and, for `id`, from a NUL on, which readers would refuse) is left out,
/// so no value can start a field or an event of its own.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Frame<'a> {
    pub id: Option<&'a str>,
    pub event: Option<&'a str>,
    pub data: &'a str,
}

impl<'a> Frame<'a> {
    /// An event carrying `data`, with no `id:` or `event:` line.
    pub fn new(data: &'a str) -> Frame<'a> {
        Frame { id: None, event: None, data }
    }

    pub fn id(self, id: &'a str) -> Frame<'a> {
        Frame { id: Some(id), ..self }
    }

    pub fn event(self, event: &'a str) -> Frame<'a> {
        Frame { event: Some(event), ..self }
    }

    /// The event as bytes, blank line included.
    pub fn encode(&self) -> Bytes {
        let mut out = BytesMut::with_capacity(self.data.len() + 32);
        self.encode_into(&mut out);
        out.freeze()
    }

    /// Appends the event to `out`, blank line included.
    pub fn encode_into(&self, out: &mut BytesMut) {
        if let Some(id) = self.id {
            put_field(out, "id", first_line(id, true));
        }
        if let Some(event) = self.event {
            put_field(out, "event", first_line(event, false));
        }
        for line in lines(self.data) {
            put_field(out, "data", line);
        }
        out.put_u8(b'\n');
    }
}

fn put_field(out: &mut BytesMut, name: &str, value: &str) {
    out.put_slice(name.as_bytes());
    out.put_slice(b": ");
    out.put_slice(value.as_bytes());
    out.put_u8(b'\n');
}

fn first_line(value: &str, stop_at_nul: bool) -> &str {
    let end = value.find(|c| c == '\n' || c == '\r' || (stop_at_nul && c == '\0')).unwrap_or(value.len());
    &value[..end]
}

/// The lines of `data`, split at `\r\n`, `\r` and `\n`; one empty line for
/// empty data.
fn lines(data: &str) -> impl Iterator<Item = &str> {
    let mut rest = Some(data);
    std::iter::from_fn(move || {
        let text = rest?;
        match text.find(['\r', '\n']) {
            Some(i) => {
                let skip = if text[i..].starts_with("\r\n") { 2 } else { 1 };
                rest = Some(&text[i + skip..]);
                Some(&text[..i])
            }
            None => {
                rest = None;
                Some(text)
            }
        }
    })
}

/// Why a stream could not be read as server-sent events.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ParseError {
    #[error("reading an event stream: invalid UTF-8 {at} bytes in")]
    Utf8 { at: usize },
    #[error("reading an event stream: more than {limit} bytes without a complete event")]
    TooLarge { limit: usize },
    #[error("reading an event stream: {0}")]
    Syntax(String),
}

/// Parses an event stream fed chunk by chunk.
///
/// For relays: they pass each chunk on unchanged and feed it here to learn
/// what the events say. The parsing is `eventsource-stream`'s; this adds a
/// push interface and two bounds it lacks: invalid UTF-8 is an error (the
/// library would hold every later byte waiting for the sequence to
/// complete) and so is an event over [`MAX_EVENT_BYTES`]. After an error the
/// parser stays failed and every later feed returns the same error.
pub struct Parser {
    input: mpsc::UnboundedSender<Result<Bytes, Infallible>>,
    events: EventStream<mpsc::UnboundedReceiver<Result<Bytes, Infallible>>>,
    /// The start of a UTF-8 sequence split across chunks.
    utf8_tail: Vec<u8>,
    /// Bytes fed since the last complete event.
    unfinished: usize,
    /// Bytes fed in all.
    fed: usize,
    limit: usize,
    failed: Option<ParseError>,
}

impl std::fmt::Debug for Parser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Parser").field("fed", &self.fed).field("failed", &self.failed).finish_non_exhaustive()
    }
}

impl Default for Parser {
    fn default() -> Parser {
        Parser::with_limit(MAX_EVENT_BYTES)
    }
}

impl Parser {
    /// A parser that fails once `limit` bytes pass without a complete event.
    pub fn with_limit(limit: usize) -> Parser {
        let (input, output) = mpsc::unbounded();
        Parser {
            input,
            events: EventStream::new(output),
            utf8_tail: Vec::new(),
            unfinished: 0,
            fed: 0,
            limit,
            failed: None,
        }
    }

    /// Feeds `chunk`, calling `on_event` for each event it completes.
    ///
    /// # Errors
    /// The stream is not valid UTF-8, an event grew past the limit, or the
    /// stream is not an event stream.
    pub fn feed(&mut self, chunk: &[u8], mut on_event: impl FnMut(Event)) -> Result<(), ParseError> {
        if let Some(error) = &self.failed {
            return Err(error.clone());
        }
        let result = self.feed_checked(chunk, &mut on_event);
        if let Err(error) = &result {
            self.failed = Some(error.clone());
        }
        result
    }

    fn feed_checked(&mut self, chunk: &[u8], on_event: &mut impl FnMut(Event)) -> Result<(), ParseError> {
        self.check_utf8(chunk)?;
        self.fed += chunk.len();
        self.unfinished += chunk.len();
        if self.unfinished > self.limit {
            return Err(ParseError::TooLarge { limit: self.limit });
        }
        // The receiver never closes while `self` holds the sender.
        let _ = self.input.unbounded_send(Ok(Bytes::copy_from_slice(chunk)));
        let mut cx = Context::from_waker(futures::task::noop_waker_ref());
        loop {
            match Pin::new(&mut self.events).poll_next(&mut cx) {
                Poll::Ready(Some(Ok(event))) => {
                    self.unfinished = 0;
                    on_event(event);
                }
                Poll::Ready(Some(Err(EventStreamError::Parser(e)))) => return Err(ParseError::Syntax(e.to_string())),
                Poll::Ready(Some(Err(EventStreamError::Utf8(_)))) => return Err(ParseError::Utf8 { at: self.fed }),
                Poll::Ready(Some(Err(EventStreamError::Transport(never)))) => match never {},
                Poll::Ready(None) | Poll::Pending => break,
            }
        }
        // A blank line at the end: whatever came before it is complete, even
        // a block of comments that dispatches no event.
        if [&b"\n\n"[..], b"\r\r", b"\n\r\n", b"\r\r\n"].iter().any(|end| chunk.ends_with(end)) {
            self.unfinished = 0;
        }
        Ok(())
    }

    /// Refuses invalid UTF-8 as soon as it arrives, keeping the start of a
    /// sequence that the next chunk completes.
    fn check_utf8(&mut self, chunk: &[u8]) -> Result<(), ParseError> {
        let joined;
        let bytes = if self.utf8_tail.is_empty() {
            chunk
        } else {
            joined = [self.utf8_tail.as_slice(), chunk].concat();
            &joined
        };
        let tail_len = self.utf8_tail.len();
        match std::str::from_utf8(bytes) {
            Ok(_) => self.utf8_tail.clear(),
            Err(e) if e.error_len().is_none() => self.utf8_tail = bytes[e.valid_up_to()..].to_vec(),
            Err(e) => return Err(ParseError::Utf8 { at: self.fed + e.valid_up_to() - tail_len }),
        }
        Ok(())
    }

    /// Whether the bytes fed so far end inside an event: something sent
    /// after them must first end that event.
    pub fn mid_event(&self) -> bool {
        self.unfinished > 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn parse_all(chunks: &[&[u8]]) -> Result<Vec<Event>, ParseError> {
        let mut parser = Parser::default();
        let mut events = Vec::new();
        for chunk in chunks {
            parser.feed(chunk, |e| events.push(e))?;
        }
        Ok(events)
    }

    #[test]
    fn encodes_fields_and_splits_data_lines() {
        let frame = Frame::new("a\r\nb\rc\nd").id("7").event("message");
        assert_eq!(frame.encode(), "id: 7\nevent: message\ndata: a\ndata: b\ndata: c\ndata: d\n\n");
        assert_eq!(Frame::new("").encode(), "data: \n\n");
        assert_eq!(Frame::new("x").id("1\nevent: forged").encode(), "id: 1\ndata: x\n\n");
    }

    #[test]
    fn parses_events_split_anywhere() {
        let events =
            parse_all(&[b"event: endpoint\r\ndata: /messages/?session_id=1\r\n\r\n: ping\n\nid: 4\nda", b"ta: {}\n\n"])
                .unwrap();
        assert_eq!(events.len(), 2);
        assert_eq!(events[0].event, "endpoint");
        assert_eq!(events[0].data, "/messages/?session_id=1");
        assert_eq!((events[1].id.as_str(), events[1].data.as_str()), ("4", "{}"));
    }

    #[test]
    fn mid_event_is_known() {
        let mut parser = Parser::default();
        parser.feed(b"data: x\n", |_| {}).unwrap();
        assert!(parser.mid_event());
        parser.feed(b"\n", |_| {}).unwrap();
        assert!(!parser.mid_event());
    }

    #[test]
    fn refuses_invalid_utf8_and_oversized_events() {
        assert_eq!(parse_all(&[b"data: ok\n\ndata: \xff\n\n"]).unwrap_err(), ParseError::Utf8 { at: 16 });
        // A sequence split across chunks is fine; a broken one is not.
        assert_eq!(parse_all(&[b"data: \xc3", b"\xa9\n\n"]).unwrap()[0].data, "\u{e9}");
        assert_eq!(parse_all(&[b"data: \xc3", b"x\n\n"]).unwrap_err(), ParseError::Utf8 { at: 6 });
        let mut parser = Parser::with_limit(8);
        assert_eq!(parser.feed(b"data: 123456", |_| {}).unwrap_err(), ParseError::TooLarge { limit: 8 });
        assert_eq!(parser.feed(b"\n\n", |_| {}).unwrap_err(), ParseError::TooLarge { limit: 8 });
    }

    /// What a reader sees of a sent frame.
    fn expected(frame: &Frame, last_id: &mut String) -> Event {
        if let Some(id) = frame.id {
            *last_id = first_line(id, true).to_string();
        }
        let event = frame.event.map(|e| first_line(e, false)).filter(|e| !e.is_empty()).unwrap_or("message");
        Event {
            event: event.to_string(),
            data: lines(frame.data).collect::<Vec<_>>().join("\n"),
            id: last_id.clone(),
            retry: None,
        }
    }

    fn cut(bytes: &[u8], cuts: &[usize]) -> Vec<Vec<u8>> {
        let mut points: Vec<usize> = cuts.iter().map(|c| c % (bytes.len() + 1)).collect();
        points.sort_unstable();
        let mut out = Vec::new();
        let mut start = 0;
        for point in points.into_iter().chain([bytes.len()]) {
            out.push(bytes[start..point].to_vec());
            start = point;
        }
        out
    }

    /// Text with what matters to the format in it: line breaks, colons,
    /// spaces, NULs, a BOM, and any other character. (A byte picks each
    /// character: a `prop_oneof!` per character is slow in a debug build.)
    fn text(max: usize) -> impl Strategy<Value = String> {
        let pick = |(byte, other): (u8, char)| match byte % 12 {
            0..=3 => char::from(b'a' + byte % 5),
            4 => '\n',
            5 => '\r',
            6 => ':',
            7 => ' ',
            8 => '\0',
            9 => '\u{feff}',
            _ => other,
        };
        prop::collection::vec(any::<(u8, char)>(), 0..max).prop_map(move |v| v.into_iter().map(pick).collect())
    }

    /// Bytes rich in line breaks and colons.
    fn bytes(max: usize) -> impl Strategy<Value = Vec<u8>> {
        let pick = |byte: u8| match byte % 8 {
            0 => b'\n',
            1 => b'\r',
            2 => b':',
            _ => byte,
        };
        prop::collection::vec(any::<u8>(), 0..max).prop_map(move |v| v.into_iter().map(pick).collect())
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 20_000, failure_persistence: None, ..ProptestConfig::default() })]

        /// Whatever the values and wherever the stream is cut, a reader gets
        /// back exactly the frames sent: no more, no fewer, no field forged.
        #[test]
        fn frames_round_trip(
            frames in prop::collection::vec(
                (prop::option::of(text(8)), prop::option::of(text(8)), text(24)), 0..4),
            cuts in prop::collection::vec(any::<usize>(), 0..6),
        ) {
            let frames: Vec<Frame> = frames
                .iter()
                .map(|(id, event, data)| Frame { id: id.as_deref(), event: event.as_deref(), data })
                .collect();
            let mut wire = BytesMut::new();
            for frame in &frames {
                frame.encode_into(&mut wire);
            }
            let chunks = cut(&wire, &cuts);
            let events = parse_all(&chunks.iter().map(Vec::as_slice).collect::<Vec<_>>()).unwrap();
            let mut last_id = String::new();
            let want: Vec<Event> = frames.iter().map(|f| expected(f, &mut last_id)).collect();
            prop_assert_eq!(events, want);
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 10_000, failure_persistence: None, ..ProptestConfig::default() })]

        /// Any bytes at all: events or a clear error, never a panic.
        #[test]
        fn arbitrary_bytes_never_panic(
            bytes in bytes(200),
            cuts in prop::collection::vec(any::<usize>(), 0..4),
        ) {
            let chunks = cut(&bytes, &cuts);
            match parse_all(&chunks.iter().map(Vec::as_slice).collect::<Vec<_>>()) {
                Ok(_) => {}
                Err(e) => prop_assert!(e.to_string().starts_with("reading an event stream: ")),
            }
        }
    }
}
