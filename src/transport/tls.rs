//! A TLS server connection over a shard's TCP socket: rustls's state
//! machine fed and drained by hand, so the socket is read the way plain
//! ones are — one recv when the readiness ring says data is there
//! (`read_tls` straight from the socket, no copy through a buffer of ours),
//! a wait on the ring otherwise — and written with send(2), waiting on the
//! ring's one-shot writable poll only when the socket is full.
//!
//! Renegotiation cannot happen: rustls does not implement it (a TLS 1.2
//! HelloRequest is never sent; a client's renegotiation attempt gets a
//! `no_renegotiation` warning and nothing more).

use std::io::{self, Read, Write};
use std::os::fd::RawFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::net::TcpStream;
use rustls::{ServerConfig, ServerConnection};

use super::Stream;

use crate::readiness::Interest;
use crate::recheck;

/// Bytes read from the socket at a time on a shard without a readiness
/// ring (a TLS record is at most 16 KiB and a little).
const NO_RING_READ: usize = 16 << 10;

/// A TLS connection: the socket and rustls's state for it.
pub struct TlsStream {
    /// `Stream::Direct` on a shard with a readiness ring, `Stream::Tcp`
    /// on one without.
    pub(super) tcp: Stream,
    pub(super) conn: ServerConnection,
}

impl TlsStream {
    /// Start a server-side TLS connection on `tcp`, fed first with `early`:
    /// the bytes already read from it (the start of the ClientHello). An
    /// error here (not TLS at all, a malformed hello) ends the connection:
    /// it comes back with the stream, for the caller to close.
    pub(super) fn new(
        tcp: Stream,
        config: Arc<ServerConfig>,
        early: &[u8],
    ) -> Result<TlsStream, (io::Error, Stream)> {
        let conn = match ServerConnection::new(config) {
            Ok(conn) => conn,
            Err(e) => return Err((invalid(e), tcp)),
        };
        let mut t = TlsStream { tcp, conn };
        match t.feed(early) {
            Ok(()) => Ok(t),
            Err(e) => Err((e, t.tcp)),
        }
    }

    /// Hand rustls the bytes read before it existed.
    fn feed(&mut self, mut rest: &[u8]) -> io::Result<()> {
        while !rest.is_empty() {
            if self.conn.read_tls(&mut rest)? == 0 {
                break;
            }
            self.process()?;
        }
        Ok(())
    }

    /// Decrypt what was read. On a protocol error rustls has queued an
    /// alert: it is sent if the socket takes it now, and the error returned.
    pub(super) fn process(&mut self) -> io::Result<()> {
        if let Err(e) = self.conn.process_new_packets() {
            let fd = self.tcp.fd();
            while self.conn.wants_write() {
                if self.conn.write_tls(&mut Send(fd)).is_err() {
                    break;
                }
            }
            return Err(invalid(e));
        }
        Ok(())
    }

    /// Whether decrypted bytes wait to be read.
    pub(super) fn buffered(&mut self) -> bool {
        self.conn.process_new_packets().map_or(true, |s| {
            s.plaintext_bytes_to_read() > 0 || s.peer_has_closed()
        })
    }

    /// What the decrypted side holds: `Some(true)`, bytes to read;
    /// `Some(false)`, the peer's close_notify and nothing before it; `None`,
    /// neither. A protocol error reads as a close.
    pub(super) fn pending(&mut self) -> Option<bool> {
        match self.conn.process_new_packets() {
            Ok(s) if s.plaintext_bytes_to_read() > 0 => Some(true),
            Ok(s) if s.peer_has_closed() => Some(false),
            Ok(_) => None,
            Err(_) => Some(false),
        }
    }

    /// Whether the peer sent its close_notify (and nothing is left to
    /// read before it): it has said all it will, but may still read.
    pub(super) fn notified_close(&mut self) -> bool {
        self.conn
            .process_new_packets()
            .is_ok_and(|s| s.peer_has_closed() && s.plaintext_bytes_to_read() == 0)
    }

    /// One read of what the socket holds into rustls, if it is worth a
    /// look (None: nothing there now, wait for the ring). `Some(Ok(0))` is
    /// the end of the stream.
    pub(super) fn recv(&mut self, interest: Option<&mut Interest>) -> Option<io::Result<usize>> {
        let fd = self.tcp.fd();
        let read = match interest {
            Some(interest) => self.conn.read_tls(&mut RingRecv { interest, fd }),
            None => self.conn.read_tls(&mut Recv(fd)),
        };
        match read {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => None,
            Err(e) => Some(Err(e)),
            Ok(n) => Some(self.process().map(|()| n)),
        }
    }

    /// Send everything rustls has queued, waiting through the ring when the
    /// socket is full; a stall until `deadline` fails it. With `renew`, a
    /// wait after writes that sent something may last that long again: a
    /// client that reads slowly but steadily is not a stall (plain sockets
    /// measure send-timeout between writes too).
    pub(super) async fn flush(
        &mut self,
        interest: Option<&mut Interest>,
        mut deadline: Instant,
        renew: Option<Duration>,
    ) -> io::Result<()> {
        let Some(interest) = interest else {
            return self.flush_without_ring(deadline).await;
        };
        let fd = self.tcp.fd();
        // Some went out since the deadline was set: moved on before a wait
        // (not at every write: a clock read each).
        let mut progressed = false;
        while self.conn.wants_write() {
            match self.conn.write_tls(&mut Send(fd)) {
                Ok(n) => progressed |= n > 0,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if let Some(stall) = renew.filter(|_| std::mem::take(&mut progressed)) {
                        deadline = Instant::now() + stall;
                    }
                    interest.writable(deadline).await.map_err(io::Error::from)?;
                }
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Send what rustls has queued as far as the socket takes it now,
    /// never waiting (the rest stays queued: `conn.wants_write()`); the
    /// bytes sent.
    pub(super) fn push(&mut self) -> io::Result<usize> {
        let fd = self.tcp.fd();
        let mut sent = 0;
        while self.conn.wants_write() {
            match self.conn.write_tls(&mut Send(fd)) {
                Ok(n) => sent += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(e),
            }
        }
        Ok(sent)
    }

    /// Without a ring: what is queued goes out through glommio's write.
    async fn flush_without_ring(&mut self, deadline: Instant) -> io::Result<()> {
        let mut out = Vec::new();
        while self.conn.wants_write() {
            self.conn.write_tls(&mut out)?;
        }
        let timeout = deadline.saturating_duration_since(Instant::now());
        if timeout.is_zero() {
            return Err(io::ErrorKind::TimedOut.into());
        }
        let tcp = self.glommio()?;
        let _ = tcp.set_write_timeout(Some(timeout));
        tcp.write_all(&out).await
    }

    /// Without a ring: wait for bytes through glommio's read (after the
    /// shard's budget of direct reads), and hand them to rustls.
    pub(super) async fn fill_without_ring(&mut self, deadline: Instant) -> io::Result<usize> {
        if let Some(read) = recheck::direct(|| match self.recv(None) {
            None => Err(io::ErrorKind::WouldBlock.into()),
            Some(r) => r,
        })
        .await
        {
            return read;
        }
        let timeout = deadline.saturating_duration_since(Instant::now());
        if timeout.is_zero() {
            return Err(io::ErrorKind::TimedOut.into());
        }
        let tcp = self.glommio()?;
        let _ = tcp.set_read_timeout(Some(timeout));
        let mut scratch = vec![0u8; NO_RING_READ];
        let n = recheck::wait(tcp.read(&mut scratch)).await?;
        let mut rest = &scratch[..n];
        loop {
            // An empty slice tells rustls of the end of the stream.
            let took = self.conn.read_tls(&mut rest)?;
            self.process()?;
            if rest.is_empty() || took == 0 {
                return Ok(n);
            }
        }
    }

    /// The glommio stream the no-ring paths wait on.
    fn glommio(&mut self) -> io::Result<&mut TcpStream> {
        match &mut self.tcp {
            Stream::Tcp(tcp) => Ok(tcp),
            _ => Err(io::Error::other(
                "TLS without a ring needs a glommio stream",
            )),
        }
    }

    /// Send close_notify (the peer then knows the response was not cut).
    pub(super) fn close_notify(&mut self) {
        self.conn.send_close_notify();
    }
}

/// A recv(2) through the ring: WouldBlock when the ring says nothing came.
struct RingRecv<'a> {
    interest: &'a mut Interest,
    fd: RawFd,
}

impl Read for RingRecv<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.interest
            .try_recv(self.fd, buf)
            .unwrap_or(Err(io::ErrorKind::WouldBlock.into()))
    }
}

/// A plain non-blocking recv(2).
struct Recv(RawFd);

impl Read for Recv {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        super::recv(self.0, buf, 0)
    }
}

/// A non-blocking send(2); no SIGPIPE for a peer that went away.
struct Send(RawFd);

impl Write for Send {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        super::send(self.0, buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// rustls's errors as I/O errors: the connection cannot go on.
fn invalid(e: rustls::Error) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}
