//! A frame-level shim between the mock's TLS stream and h2's server, so the mock can do
//! what h2 does not let a server do but APNs does: announce a stream limit of 1 and
//! raise it later (extra SETTINGS frames), send a GOAWAY with a chosen last-stream-id,
//! and ignore PINGs. Frames are injected only between h2's frames; the client's ACKs
//! of injected SETTINGS are removed before h2 sees them.

use std::collections::VecDeque;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use apns::frames::{
    self, CLIENT_PREFACE, Event, FrameHeader, FrameScanner, HEADER_LEN, TYPE_PING, TYPE_SETTINGS,
};

/// How much the shim asks of TLS per read (a TLS record's plaintext is at most 16 KiB).
const READ_CHUNK: usize = 16 * 1024;

/// Who sent a SETTINGS frame, so its ACK goes to the right place.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Origin {
    H2,
    Injected(Option<u32>),
}

/// Shared between the shim and the mock's connection task.
#[derive(Debug, Default)]
pub struct ShimControl {
    queue: Mutex<VecDeque<Vec<u8>>>,
    origins: Mutex<VecDeque<Origin>>,
    writer: Mutex<Option<Waker>>,
    pub drop_pings: Arc<AtomicBool>,
    pub pings_dropped: AtomicU64,
    /// The stream limit last announced, and the last one the client acknowledged.
    advertised: AtomicU32,
    acked: AtomicU32,
}

impl ShimControl {
    pub fn new(initial_limit: u32, drop_pings: Arc<AtomicBool>) -> Arc<ShimControl> {
        let c = Arc::new(ShimControl {
            drop_pings,
            ..ShimControl::default()
        });
        c.advertised.store(initial_limit, Ordering::SeqCst);
        c.acked.store(initial_limit, Ordering::SeqCst);
        c.announce_limit(initial_limit);
        c
    }

    /// Queue a SETTINGS frame with a new SETTINGS_MAX_CONCURRENT_STREAMS.
    pub fn announce_limit(&self, limit: u32) {
        self.advertised.store(limit, Ordering::SeqCst);
        let frame = frames::settings_frame(&[(frames::SETTINGS_MAX_CONCURRENT_STREAMS, limit)]);
        self.queue.lock().expect("shim lock").push_back(frame);
        self.wake_writer();
    }

    /// Queue a GOAWAY frame.
    pub fn goaway(&self, last_stream_id: u32, error_code: u32, debug: &[u8]) {
        let frame = frames::goaway_frame(last_stream_id, error_code, debug);
        self.queue.lock().expect("shim lock").push_back(frame);
        self.wake_writer();
    }

    /// The limit to enforce: lenient while the client may not know the newest one yet.
    pub fn enforced_limit(&self) -> u32 {
        self.advertised
            .load(Ordering::SeqCst)
            .max(self.acked.load(Ordering::SeqCst))
    }

    fn wake_writer(&self) {
        if let Some(w) = self.writer.lock().expect("shim lock").take() {
            w.wake();
        }
    }
}

pub struct Shim<T> {
    inner: T,
    ctl: Arc<ShimControl>,
    // read side: bytes from TLS; the first `passable` of them are whole frames (or the
    // preface) that h2 may read, in place.
    raw: BytesMut,
    passable: usize,
    preface_left: usize,
    eof: bool,
    // write side
    scanner: FrameScanner,
    injecting: Option<(Vec<u8>, usize)>,
}

impl<T> Shim<T> {
    pub fn new(inner: T, ctl: Arc<ShimControl>) -> Shim<T> {
        Shim {
            inner,
            ctl,
            raw: BytesMut::with_capacity(READ_CHUNK),
            passable: 0,
            preface_left: CLIENT_PREFACE.len(),
            eof: false,
            scanner: FrameScanner::new(),
            injecting: None,
        }
    }

    /// Vet the whole frames after the passable prefix of `raw`: those h2 may see join the
    /// prefix where they lie; those the mock hides from h2 are cut out.
    fn filter(&mut self) {
        if self.preface_left > 0 {
            let n = self.preface_left.min(self.raw.len() - self.passable);
            self.passable += n;
            self.preface_left -= n;
        }
        while self.preface_left == 0 && self.raw.len() - self.passable >= HEADER_LEN {
            let at = self.passable;
            let h = FrameHeader::parse(&self.raw[at..at + HEADER_LEN]);
            let len = HEADER_LEN + h.len;
            if self.raw.len() - at < len {
                break;
            }
            let keep = match h.kind {
                TYPE_PING if !h.is_ack() && self.ctl.drop_pings.load(Ordering::Relaxed) => {
                    self.ctl.pings_dropped.fetch_add(1, Ordering::Relaxed);
                    false
                }
                TYPE_SETTINGS if h.is_ack() => {
                    match self.ctl.origins.lock().expect("shim lock").pop_front() {
                        Some(Origin::Injected(limit)) => {
                            if let Some(l) = limit {
                                self.ctl.acked.store(l, Ordering::SeqCst);
                            }
                            false
                        }
                        _ => true,
                    }
                }
                _ => true,
            };
            if keep {
                self.passable += len;
            } else if at == 0 {
                self.raw.advance(len);
            } else {
                // Rare (a hidden frame behind frames h2 has not read yet): close the gap.
                self.raw.copy_within(at + len.., at);
                self.raw.truncate(self.raw.len() - len);
            }
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Shim<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        loop {
            if this.passable > 0 {
                let n = this.passable.min(buf.remaining());
                buf.put_slice(&this.raw[..n]);
                this.raw.advance(n);
                this.passable -= n;
                return Poll::Ready(Ok(()));
            }
            if this.eof {
                return Poll::Ready(Ok(()));
            }
            // Read straight into `raw`'s spare room: no zeroed scratch buffer, no copy.
            if this.raw.capacity() - this.raw.len() < READ_CHUNK / 4 {
                this.raw.reserve(READ_CHUNK);
            }
            match tokio_util::io::poll_read_buf(Pin::new(&mut this.inner), cx, &mut this.raw) {
                Poll::Ready(Ok(0)) => this.eof = true,
                Poll::Ready(Ok(_)) => this.filter(),
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

impl<T: AsyncWrite + Unpin> Shim<T> {
    /// Write queued injections if we are between h2's frames. Ready when none is left
    /// half-written.
    fn poll_inject(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        loop {
            if let Some((bytes, off)) = &mut self.injecting {
                while *off < bytes.len() {
                    let n = match Pin::new(&mut self.inner).poll_write(cx, &bytes[*off..]) {
                        Poll::Ready(Ok(n)) => n,
                        Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                        Poll::Pending => return Poll::Pending,
                    };
                    if n == 0 {
                        return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                    }
                    *off += n;
                }
                self.injecting = None;
            }
            if !self.scanner.at_boundary() {
                return Poll::Ready(Ok(()));
            }
            let next = self.ctl.queue.lock().expect("shim lock").pop_front();
            let Some(frame) = next else {
                *self.ctl.writer.lock().expect("shim lock") = Some(cx.waker().clone());
                return Poll::Ready(Ok(()));
            };
            let h = FrameHeader::parse(&frame[..HEADER_LEN]);
            if h.kind == TYPE_SETTINGS {
                let limit = frames::parse_settings(&frame[HEADER_LEN..])
                    .into_iter()
                    .find(|(id, _)| *id == frames::SETTINGS_MAX_CONCURRENT_STREAMS)
                    .map(|(_, v)| v);
                self.ctl
                    .origins
                    .lock()
                    .expect("shim lock")
                    .push_back(Origin::Injected(limit));
            }
            self.injecting = Some((frame, 0));
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Shim<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        match this.poll_inject(cx) {
            Poll::Ready(Ok(())) => {}
            Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
            Poll::Pending => return Poll::Pending,
        }
        let n = match Pin::new(&mut this.inner).poll_write(cx, buf) {
            Poll::Ready(Ok(n)) => n,
            other => return other,
        };
        let ctl = &this.ctl;
        this.scanner.feed(&buf[..n], &mut |e| {
            if let Event::Settings(_) = e {
                ctl.origins.lock().expect("shim lock").push_back(Origin::H2);
            }
        });
        Poll::Ready(Ok(n))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        match this.poll_inject(cx) {
            Poll::Ready(Ok(())) => {}
            other => return other,
        }
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use apns::frames::{FLAG_ACK, TYPE_DATA, TYPE_HEADERS};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn frame(kind: u8, flags: u8, stream_id: u32, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        FrameHeader {
            len: payload.len(),
            kind,
            flags,
            stream_id,
        }
        .encode(&mut out);
        out.extend_from_slice(payload);
        out
    }

    /// What the client sends and what h2 behind the shim must see of it.
    fn client_bytes() -> (Vec<u8>, Vec<u8>) {
        let settings = frame(TYPE_SETTINGS, 0, 0, &[0, 3, 0, 0, 0, 100]);
        let ping = frame(TYPE_PING, 0, 0, &[7; 8]);
        let headers = frame(TYPE_HEADERS, 0x4, 1, &[0x82; 40]);
        let ack = frame(TYPE_SETTINGS, FLAG_ACK, 0, &[]);
        let data = frame(TYPE_DATA, 0x1, 1, &[b'x'; 3000]);
        let mut sent = CLIENT_PREFACE.to_vec();
        let mut seen = CLIENT_PREFACE.to_vec();
        // A hidden ACK first (at the front of the buffer), then one behind frames h2
        // has not read yet, and a dropped PING between two kept frames.
        for (f, kept) in [
            (&ack, false),
            (&settings, true),
            (&ping, false),
            (&headers, true),
            (&ack, false),
            (&data, true),
        ] {
            sent.extend_from_slice(f);
            if kept {
                seen.extend_from_slice(f);
            }
        }
        (sent, seen)
    }

    /// Send `sent` through a shim in writes of `chunk` bytes; return what h2 would read.
    async fn through_shim(sent: Vec<u8>, chunk: usize) -> (Vec<u8>, Arc<ShimControl>) {
        let ctl = ShimControl::new(5, Arc::new(AtomicBool::new(true)));
        ctl.announce_limit(7);
        let (mut client, server) = tokio::io::duplex(64 * 1024);
        let mut shim = Shim::new(server, ctl.clone());
        // Our two injected SETTINGS go out first, so the client's two ACKs are ours.
        shim.flush().await.expect("flush");
        let mut injected = vec![0u8; 2 * (HEADER_LEN + 6)];
        client
            .read_exact(&mut injected)
            .await
            .expect("injected SETTINGS");
        let writer = tokio::spawn(async move {
            for part in sent.chunks(chunk) {
                client.write_all(part).await.expect("write");
                tokio::task::yield_now().await;
            }
            client.shutdown().await.expect("shutdown");
            client
        });
        let mut seen = Vec::new();
        shim.read_to_end(&mut seen).await.expect("read");
        drop(writer.await.expect("writer"));
        (seen, ctl)
    }

    #[tokio::test]
    async fn hidden_frames_are_cut_out_wherever_they_lie() {
        let (sent, expected) = client_bytes();
        for chunk in [sent.len(), 1, 7, 100, 1000] {
            let (seen, ctl) = through_shim(sent.clone(), chunk).await;
            assert_eq!(seen, expected, "writes of {chunk} bytes");
            assert_eq!(
                ctl.pings_dropped.load(Ordering::Relaxed),
                1,
                "chunk {chunk}"
            );
            assert_eq!(ctl.enforced_limit(), 7, "chunk {chunk}");
            assert_eq!(ctl.acked.load(Ordering::SeqCst), 7, "both ACKs were ours");
        }
    }
}
