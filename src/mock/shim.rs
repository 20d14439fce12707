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

use crate::apns::frames::{
    self, CLIENT_PREFACE, Event, FrameHeader, FrameScanner, HEADER_LEN, TYPE_PING, TYPE_SETTINGS,
};

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
    // read side
    raw: BytesMut,
    ready: BytesMut,
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
            raw: BytesMut::with_capacity(32 * 1024),
            ready: BytesMut::with_capacity(32 * 1024),
            preface_left: CLIENT_PREFACE.len(),
            eof: false,
            scanner: FrameScanner::new(),
            injecting: None,
        }
    }

    /// Move whole frames from `raw` to `ready`, leaving out the ones the mock hides from h2.
    fn filter(&mut self) {
        if self.preface_left > 0 {
            let n = self.preface_left.min(self.raw.len());
            self.ready.extend_from_slice(&self.raw.split_to(n));
            self.preface_left -= n;
        }
        while self.preface_left == 0 && self.raw.len() >= HEADER_LEN {
            let h = FrameHeader::parse(&self.raw[..HEADER_LEN]);
            if self.raw.len() < HEADER_LEN + h.len {
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
                self.ready
                    .extend_from_slice(&self.raw[..HEADER_LEN + h.len]);
            }
            self.raw.advance(HEADER_LEN + h.len);
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
            if !this.ready.is_empty() {
                let n = this.ready.len().min(buf.remaining());
                buf.put_slice(&this.ready.split_to(n));
                return Poll::Ready(Ok(()));
            }
            if this.eof {
                return Poll::Ready(Ok(()));
            }
            let mut tmp = [0u8; 16 * 1024];
            let mut rb = ReadBuf::new(&mut tmp);
            match Pin::new(&mut this.inner).poll_read(cx, &mut rb) {
                Poll::Ready(Ok(())) => {
                    if rb.filled().is_empty() {
                        this.eof = true;
                    } else {
                        this.raw.extend_from_slice(rb.filled());
                        this.filter();
                    }
                }
                other => return other,
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
