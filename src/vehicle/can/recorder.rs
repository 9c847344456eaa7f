//! Recorder middleware: a candump-format log of everything a port sends and receives.
//!
//! Owns: [`Recorder`], a [`CanPort`] wrapping another port and writing one
//! [`candump`](super::candump) line per frame to any `AsyncWrite` (a file, a pipe, a
//! buffer), so a session can be replayed with `canplayer` or read by `log2asc`.
//!
//! Does not own: the line format (see [`super::candump`]) or opening files.
//!
//! Lines are formatted on the stack and written through a buffered writer under an async
//! lock: recording allocates nothing per frame, and a slow writer slows the port down
//! (backpressure) rather than losing lines. Call [`Recorder::flush`] before reading the
//! log. The timestamp is the wall clock when the frame was sent or received, as candump's.
//! A write error is kept and reported by `flush`, and recording stops; the port keeps
//! working.

use super::candump::format_line;
use super::{CanAnyFrame, CanError, CanPort, CanPortStats};
use std::sync::atomic::{AtomicU64, Ordering};
use tokio::io::{AsyncWrite, AsyncWriteExt, BufWriter};
use tokio::sync::Mutex;

/// What the recorder writes.
#[derive(Clone, Debug)]
pub struct RecorderOptions {
    /// Record frames this port sends.
    pub tx: bool,
    /// Record frames this port receives.
    pub rx: bool,
    /// Interface name in the log; the port's name when absent.
    pub iface: Option<String>,
    /// Clock giving microseconds since the Unix epoch (tests pass a fixed one).
    pub clock: fn() -> u64,
}

fn wall_micros() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

impl Default for RecorderOptions {
    fn default() -> Self {
        RecorderOptions {
            tx: true,
            rx: true,
            iface: None,
            clock: wall_micros,
        }
    }
}

struct Sink<W> {
    out: BufWriter<W>,
    error: Option<std::io::Error>,
}

/// A [`CanPort`] that logs its traffic in candump format.
pub struct Recorder<P, W> {
    inner: P,
    opts: RecorderOptions,
    sink: Mutex<Sink<W>>,
    lines: AtomicU64,
}

impl<P: CanPort, W: AsyncWrite + Unpin + Send + 'static> Recorder<P, W> {
    pub fn new(inner: P, out: W, opts: RecorderOptions) -> Self {
        Recorder {
            inner,
            opts,
            sink: Mutex::new(Sink {
                out: BufWriter::new(out),
                error: None,
            }),
            lines: AtomicU64::new(0),
        }
    }

    /// The wrapped port.
    pub fn inner(&self) -> &P {
        &self.inner
    }

    /// Lines written so far.
    pub fn lines(&self) -> u64 {
        self.lines.load(Ordering::Relaxed)
    }

    async fn record(&self, frame: &CanAnyFrame) {
        let iface = self.opts.iface.as_deref().unwrap_or(self.inner.name());
        let line = format_line((self.opts.clock)(), iface, frame);
        let mut sink = self.sink.lock().await;
        if sink.error.is_some() {
            return;
        }
        match sink.out.write_all(line.as_bytes()).await {
            Ok(()) => {
                self.lines.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => sink.error = Some(e),
        }
    }

    /// Write buffered lines out; reports the first write error, if any.
    pub async fn flush(&self) -> std::io::Result<()> {
        let mut sink = self.sink.lock().await;
        if let Some(e) = sink.error.take() {
            return Err(e);
        }
        sink.out.flush().await
    }

    /// Flush and give back the port and the writer.
    pub async fn into_parts(self) -> std::io::Result<(P, W)> {
        self.flush().await?;
        Ok((self.inner, self.sink.into_inner().out.into_inner()))
    }
}

impl<P: CanPort, W: AsyncWrite + Unpin + Send + Sync + 'static> CanPort for Recorder<P, W> {
    fn name(&self) -> &str {
        self.inner.name()
    }

    fn fd_capable(&self) -> bool {
        self.inner.fd_capable()
    }

    async fn send(&self, frame: CanAnyFrame) -> Result<(), CanError> {
        self.inner.send(frame).await?;
        if self.opts.tx {
            self.record(&frame).await;
        }
        Ok(())
    }

    async fn recv(&self) -> Result<CanAnyFrame, CanError> {
        let frame = self.inner.recv().await?;
        if self.opts.rx {
            self.record(&frame).await;
        }
        Ok(frame)
    }

    fn stats(&self) -> CanPortStats {
        self.inner.stats()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::router::frame::{CanFdFrame, CanFrame, CanId};
    use crate::vehicle::can::candump::parse_line;
    use crate::vehicle::can::vbus::VirtualBus;

    fn fixed_clock() -> u64 {
        1_700_000_000_123_456
    }

    #[tokio::test]
    async fn writes_candump_lines_for_both_directions() {
        let bus = VirtualBus::new("r");
        let other = bus.port();
        let rec = Recorder::new(
            bus.port(),
            Vec::<u8>::new(),
            RecorderOptions {
                iface: Some("vcan0".into()),
                clock: fixed_clock,
                ..RecorderOptions::default()
            },
        );
        let id = CanId::standard(0x7E0).unwrap();
        rec.send(CanFrame::new(id, &[0x02, 0x10, 0x03]).unwrap().into())
            .await
            .unwrap();
        other
            .send(
                CanFdFrame::new(CanId::standard(0x7E8).unwrap(), &[0xAA; 12])
                    .unwrap()
                    .into(),
            )
            .await
            .unwrap();
        rec.recv().await.unwrap();
        assert_eq!(rec.lines(), 2);
        let (_, out) = rec.into_parts().await.unwrap();
        let text = String::from_utf8(out).unwrap();
        assert_eq!(
            text,
            "(1700000000.123456) vcan0 7E0#021003\n\
             (1700000000.123456) vcan0 7E8##1AAAAAAAAAAAAAAAAAAAAAAAA\n"
        );
        for line in text.lines() {
            assert!(parse_line(line).is_ok());
        }
    }

    #[tokio::test]
    async fn tx_only_and_real_clock_and_port_name() {
        let bus = VirtualBus::new("r");
        let other = bus.port();
        let rec = Recorder::new(
            bus.port(),
            Vec::<u8>::new(),
            RecorderOptions {
                rx: false,
                ..RecorderOptions::default()
            },
        );
        let f: CanAnyFrame = CanFrame::new(CanId::standard(1).unwrap(), &[1])
            .unwrap()
            .into();
        rec.send(f).await.unwrap();
        other.send(f).await.unwrap();
        rec.recv().await.unwrap();
        let (_, out) = rec.into_parts().await.unwrap();
        let text = String::from_utf8(out).unwrap();
        assert_eq!(text.lines().count(), 1);
        let p = parse_line(&text).unwrap();
        assert_eq!(p.iface, "virtual:r/1");
        // a wall-clock timestamp: after 2023
        assert!(p.micros > 1_700_000_000_000_000);
    }

    /// A writer that always fails.
    struct Broken;
    impl AsyncWrite for Broken {
        fn poll_write(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
            _: &[u8],
        ) -> std::task::Poll<std::io::Result<usize>> {
            std::task::Poll::Ready(Err(std::io::Error::other("disk full")))
        }
        fn poll_flush(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            std::task::Poll::Ready(Err(std::io::Error::other("disk full")))
        }
        fn poll_shutdown(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            std::task::Poll::Ready(Ok(()))
        }
    }

    #[tokio::test]
    async fn write_errors_surface_in_flush_and_the_port_keeps_working() {
        let bus = VirtualBus::new("r");
        let other = bus.port();
        let rec = Recorder::new(bus.port(), Broken, RecorderOptions::default());
        let f: CanAnyFrame = CanFrame::new(CanId::standard(1).unwrap(), &[1])
            .unwrap()
            .into();
        // BufWriter only writes through when its buffer fills; push enough lines to fill it.
        for _ in 0..400 {
            rec.send(f).await.unwrap();
        }
        assert_eq!(other.try_recv().unwrap().data(), &[1]);
        let err = rec.flush().await.unwrap_err();
        assert!(err.to_string().contains("disk full"));
    }
}
