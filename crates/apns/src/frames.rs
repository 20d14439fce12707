//! HTTP/2 frame headers, and a streaming scanner that watches one direction of a
//! connection for the frames h2 does not report to us (SETTINGS values, GOAWAY's
//! last-stream-id and debug data). Pure: bytes in, frames out.

/// Length of an HTTP/2 frame header.
pub const HEADER_LEN: usize = 9;
/// The client connection preface, which precedes the first frame the client sends.
pub const CLIENT_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

pub const TYPE_DATA: u8 = 0x0;
pub const TYPE_HEADERS: u8 = 0x1;
pub const TYPE_RST_STREAM: u8 = 0x3;
pub const TYPE_SETTINGS: u8 = 0x4;
pub const TYPE_PING: u8 = 0x6;
pub const TYPE_GOAWAY: u8 = 0x7;
pub const FLAG_ACK: u8 = 0x1;
pub const SETTINGS_MAX_CONCURRENT_STREAMS: u16 = 0x3;

/// Captured payloads are cut at this size (a GOAWAY's debug data can be anything).
const CAPTURE_LIMIT: usize = 16 * 1024;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameHeader {
    pub len: usize,
    pub kind: u8,
    pub flags: u8,
    pub stream_id: u32,
}

impl FrameHeader {
    pub fn parse(b: &[u8]) -> FrameHeader {
        FrameHeader {
            len: (usize::from(b[0]) << 16) | (usize::from(b[1]) << 8) | usize::from(b[2]),
            kind: b[3],
            flags: b[4],
            stream_id: u32::from_be_bytes([b[5], b[6], b[7], b[8]]) & 0x7fff_ffff,
        }
    }

    pub fn encode(&self, out: &mut Vec<u8>) {
        let len = self.len as u32;
        out.extend_from_slice(&len.to_be_bytes()[1..]);
        out.push(self.kind);
        out.push(self.flags);
        out.extend_from_slice(&self.stream_id.to_be_bytes());
    }

    pub fn is_ack(&self) -> bool {
        self.flags & FLAG_ACK != 0
    }
}

/// A whole SETTINGS frame with the given parameters.
pub fn settings_frame(params: &[(u16, u32)]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + 6 * params.len());
    FrameHeader {
        len: 6 * params.len(),
        kind: TYPE_SETTINGS,
        flags: 0,
        stream_id: 0,
    }
    .encode(&mut out);
    for (id, value) in params {
        out.extend_from_slice(&id.to_be_bytes());
        out.extend_from_slice(&value.to_be_bytes());
    }
    out
}

/// A whole GOAWAY frame.
pub fn goaway_frame(last_stream_id: u32, error_code: u32, debug: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + 8 + debug.len());
    FrameHeader {
        len: 8 + debug.len(),
        kind: TYPE_GOAWAY,
        flags: 0,
        stream_id: 0,
    }
    .encode(&mut out);
    out.extend_from_slice(&(last_stream_id & 0x7fff_ffff).to_be_bytes());
    out.extend_from_slice(&error_code.to_be_bytes());
    out.extend_from_slice(debug);
    out
}

/// The parameters of a SETTINGS payload.
pub fn parse_settings(payload: &[u8]) -> Vec<(u16, u32)> {
    payload
        .chunks_exact(6)
        .map(|c| {
            (
                u16::from_be_bytes([c[0], c[1]]),
                u32::from_be_bytes([c[2], c[3], c[4], c[5]]),
            )
        })
        .collect()
}

/// A GOAWAY payload: last stream id, error code, debug data.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GoAway {
    pub last_stream_id: u32,
    pub error_code: u32,
    pub debug: Vec<u8>,
}

pub fn parse_goaway(payload: &[u8]) -> Option<GoAway> {
    if payload.len() < 8 {
        return None;
    }
    Some(GoAway {
        last_stream_id: u32::from_be_bytes([payload[0], payload[1], payload[2], payload[3]])
            & 0x7fff_ffff,
        error_code: u32::from_be_bytes([payload[4], payload[5], payload[6], payload[7]]),
        debug: payload[8..].to_vec(),
    })
}

/// What the scanner reports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// A SETTINGS frame (not an ACK) with its parameters.
    Settings(Vec<(u16, u32)>),
    GoAway(GoAway),
}

/// Follows frame boundaries across arbitrary read sizes and reports SETTINGS and GOAWAY.
/// Payloads of other frames are skipped without copying.
#[derive(Debug)]
pub struct FrameScanner {
    preface_left: usize,
    header: [u8; HEADER_LEN],
    have: usize,
    /// Payload bytes of the current frame still to pass.
    skip: usize,
    capture: Option<(FrameHeader, Vec<u8>)>,
}

impl FrameScanner {
    /// A scanner for the server-to-client direction (no preface).
    pub fn new() -> FrameScanner {
        FrameScanner::with_preface(0)
    }

    /// A scanner that first passes `preface` bytes (the client preface on the server side).
    pub fn with_preface(preface: usize) -> FrameScanner {
        FrameScanner {
            preface_left: preface,
            header: [0; HEADER_LEN],
            have: 0,
            skip: 0,
            capture: None,
        }
    }

    /// Is the scanner between two frames?
    pub fn at_boundary(&self) -> bool {
        self.preface_left == 0 && self.have == 0 && self.skip == 0
    }

    pub fn feed(&mut self, mut data: &[u8], on_event: &mut dyn FnMut(Event)) {
        while !data.is_empty() {
            if self.preface_left > 0 {
                let n = self.preface_left.min(data.len());
                self.preface_left -= n;
                data = &data[n..];
                continue;
            }
            if self.skip > 0 {
                let n = self.skip.min(data.len());
                if let Some((_, buf)) = &mut self.capture {
                    let room = CAPTURE_LIMIT.saturating_sub(buf.len());
                    buf.extend_from_slice(&data[..n.min(room)]);
                }
                self.skip -= n;
                data = &data[n..];
                if self.skip == 0 {
                    self.finish_frame(on_event);
                }
                continue;
            }
            let n = (HEADER_LEN - self.have).min(data.len());
            self.header[self.have..self.have + n].copy_from_slice(&data[..n]);
            self.have += n;
            data = &data[n..];
            if self.have == HEADER_LEN {
                self.have = 0;
                let h = FrameHeader::parse(&self.header);
                let wanted = (h.kind == TYPE_SETTINGS && !h.is_ack()) || h.kind == TYPE_GOAWAY;
                if wanted {
                    self.capture = Some((h, Vec::with_capacity(h.len.min(CAPTURE_LIMIT))));
                }
                self.skip = h.len;
                if h.len == 0 {
                    self.finish_frame(on_event);
                }
            }
        }
    }

    fn finish_frame(&mut self, on_event: &mut dyn FnMut(Event)) {
        if let Some((h, payload)) = self.capture.take() {
            match h.kind {
                TYPE_SETTINGS => on_event(Event::Settings(parse_settings(&payload))),
                TYPE_GOAWAY => {
                    if let Some(g) = parse_goaway(&payload) {
                        on_event(Event::GoAway(g))
                    }
                }
                _ => {}
            }
        }
    }
}

impl Default for FrameScanner {
    fn default() -> Self {
        FrameScanner::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data_frame(stream: u32, len: usize) -> Vec<u8> {
        let mut out = Vec::new();
        FrameHeader {
            len,
            kind: TYPE_DATA,
            flags: 0,
            stream_id: stream,
        }
        .encode(&mut out);
        out.extend(std::iter::repeat_n(0xAB, len));
        out
    }

    fn stream() -> Vec<u8> {
        let mut s = settings_frame(&[(SETTINGS_MAX_CONCURRENT_STREAMS, 1), (0x4, 65535)]);
        s.extend(data_frame(1, 300));
        let mut ack = Vec::new();
        FrameHeader {
            len: 0,
            kind: TYPE_SETTINGS,
            flags: FLAG_ACK,
            stream_id: 0,
        }
        .encode(&mut ack);
        s.extend(ack);
        s.extend(settings_frame(&[(SETTINGS_MAX_CONCURRENT_STREAMS, 1000)]));
        s.extend(data_frame(3, 0));
        s.extend(goaway_frame(7, 0, br#"{"reason":"Shutdown"}"#));
        s
    }

    fn expected() -> Vec<Event> {
        vec![
            Event::Settings(vec![(3, 1), (4, 65535)]),
            Event::Settings(vec![(3, 1000)]),
            Event::GoAway(GoAway {
                last_stream_id: 7,
                error_code: 0,
                debug: br#"{"reason":"Shutdown"}"#.to_vec(),
            }),
        ]
    }

    #[test]
    fn same_events_whatever_the_read_sizes() {
        let bytes = stream();
        for chunk in [1, 2, 5, 9, 10, 64, 4096] {
            let mut scanner = FrameScanner::new();
            let mut events = Vec::new();
            for piece in bytes.chunks(chunk) {
                scanner.feed(piece, &mut |e| events.push(e));
            }
            assert_eq!(events, expected(), "chunk size {chunk}");
            assert!(scanner.at_boundary());
        }
    }

    #[test]
    fn skips_the_client_preface() {
        let mut bytes = CLIENT_PREFACE.to_vec();
        bytes.extend(stream());
        let mut scanner = FrameScanner::with_preface(CLIENT_PREFACE.len());
        let mut events = Vec::new();
        for piece in bytes.chunks(7) {
            scanner.feed(piece, &mut |e| events.push(e));
        }
        assert_eq!(events, expected());
    }

    #[test]
    fn header_round_trip_and_stream_id_reserved_bit() {
        let h = FrameHeader {
            len: 0x012345,
            kind: 7,
            flags: 1,
            stream_id: 0x7fff_ffff,
        };
        let mut b = Vec::new();
        h.encode(&mut b);
        assert_eq!(FrameHeader::parse(&b), h);
        b[5] |= 0x80;
        assert_eq!(FrameHeader::parse(&b).stream_id, 0x7fff_ffff);
        assert_eq!(parse_goaway(&[0; 7]), None);
    }
}
