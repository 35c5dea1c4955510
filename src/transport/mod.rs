//! The byte streams connections run on: a client's socket or an upstream
//! connection, TCP, Unix, or TLS over TCP (`tls`). A `Socket` says what it
//! can do — read through the shard's readiness ring (one direct recv when
//! data is there), or through glommio on a shard without one; hand a plain
//! TCP descriptor to `sendfile` — so the layers above take one type, and a
//! stream that cannot (TLS) falls back to plain reads and writes.

mod tls;

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, IntoRawFd, OwnedFd, RawFd};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::net::{TcpStream, UnixStream};

use crate::http::session::InputBuffer;
use crate::readiness::{Aside, Interest, Readiness};
use crate::recheck;
use crate::sys::{recv, send};
use tls::TlsStream;

/// A stream of one of the kinds. `Socket`'s constructors choose the kind
/// from whether the shard has a readiness ring, so a `Direct` stream always
/// has its registration and a glommio one never does.
pub enum Stream {
    /// A TCP or Unix socket on a shard with a readiness ring: read and
    /// written with system calls on its descriptor, waited on through the
    /// ring. Not a glommio stream, which would arm a poll on glommio's own
    /// ring for each socket and keep about 500 bytes that nothing uses.
    Direct(OwnedFd),
    /// A TCP connection on a shard without a ring: glommio's stream waits
    /// (boxed: rare, and the connection's future holds a `Stream`).
    Tcp(Box<TcpStream>),
    /// A Unix stream socket on a shard without a ring (an upstream at
    /// `unix:/path`), and its descriptor (glommio's type does not tell it).
    Unix(Box<UnixStream>, RawFd),
    /// A TLS connection a client made to an HTTPS address, over a `Direct`
    /// or `Tcp` stream; boxed, so that a plain connection's future stays
    /// small.
    Tls(Box<TlsStream>),
}

/// One connected socket of a shard, with its registration on the shard's
/// readiness ring when there is one. Dropping it removes the registration
/// before the socket closes (field order).
pub struct Socket {
    interest: Option<Interest>,
    stream: Stream,
    /// The other end's address when known from the start (a client's, as
    /// accept gave it); else `peer_addr` asks the kernel.
    peer: Option<std::net::SocketAddr>,
    /// This end shut its reading (`reading_was_shut`): the end of stream a
    /// read or peek meets is its own, not the peer's leaving.
    deaf: bool,
}

impl AsFd for Socket {
    fn as_fd(&self) -> BorrowedFd<'_> {
        // SAFETY: the descriptor belongs to the stream, which `self` holds
        // for as long as the borrow lasts.
        unsafe { BorrowedFd::borrow_raw(self.fd()) }
    }
}

impl Stream {
    /// The descriptor.
    fn fd(&self) -> RawFd {
        match self {
            Stream::Direct(fd) => fd.as_raw_fd(),
            Stream::Tcp(s) => s.as_raw_fd(),
            Stream::Unix(_, fd) => *fd,
            Stream::Tls(t) => t.tcp.fd(),
        }
    }
}

impl Socket {
    /// A socket registered with `readiness`, if the shard has a ring.
    fn new(stream: Stream, readiness: Option<&Rc<Readiness>>) -> Socket {
        let mut socket = Socket {
            interest: None,
            stream,
            peer: None,
            deaf: false,
        };
        socket.interest = readiness.map(|r| r.register(socket.fd()));
        socket
    }

    /// A connection the shard accepted (non-blocking, owned alone), from
    /// `peer` when accept said: read directly and waited on through
    /// `readiness`, or through glommio on a shard without a ring.
    pub fn accepted(
        conn: OwnedFd,
        peer: Option<std::net::SocketAddr>,
        readiness: Option<&Rc<Readiness>>,
    ) -> Socket {
        match readiness {
            Some(_) => Socket::new(Stream::Direct(conn), readiness),
            // SAFETY: a connected socket nothing else owns; glommio takes it.
            None => Socket::glommio(unsafe { TcpStream::from_raw_fd(conn.into_raw_fd()) }),
        }
        .with_peer(peer)
    }

    /// The socket, its peer's address known to be `peer` (when Some).
    pub fn with_peer(mut self, peer: Option<std::net::SocketAddr>) -> Socket {
        self.peer = peer;
        self
    }

    /// Say that this end shut the socket's reading (the shard closed it
    /// as idle) after a request had come on it: that request is served,
    /// and `closed` no longer takes the end of stream the shutdown makes
    /// for the client's leaving (which it could not hear now).
    pub fn reading_was_shut(&mut self) {
        self.deaf = true;
    }

    /// A connection glommio accepted or made (on a shard without a ring).
    pub fn glommio(stream: TcpStream) -> Socket {
        Socket::new(Stream::Tcp(Box::new(stream)), None)
    }

    /// Start connecting to `addr` through the shard's ring, without
    /// waiting; true when the connection is still being made (wait with
    /// `Socket::connected`).
    pub fn connect_tcp(
        addr: &std::net::SocketAddr,
        readiness: &Rc<Readiness>,
    ) -> io::Result<(Socket, bool)> {
        let socket = socket2::Socket::new(
            socket2::Domain::for_address(*addr),
            socket2::Type::STREAM.nonblocking().cloexec(),
            Some(socket2::Protocol::TCP),
        )?;
        socket.set_nodelay(true)?;
        let pending = match socket.connect(&(*addr).into()) {
            Ok(()) => false,
            Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => true,
            Err(e) => return Err(e),
        };
        let stream = Stream::Direct(socket.into());
        Ok((Socket::new(stream, Some(readiness)), pending))
    }

    /// Connect to the Unix socket at `path`. A local connect does not
    /// wait: it succeeds, or fails at once (EAGAIN when the listener's
    /// backlog is full).
    pub fn connect_unix(
        path: &std::path::Path,
        readiness: Option<&Rc<Readiness>>,
    ) -> io::Result<Socket> {
        let socket = socket2::Socket::new(
            socket2::Domain::UNIX,
            socket2::Type::STREAM.nonblocking().cloexec(),
            None,
        )?;
        socket.connect(&socket2::SockAddr::unix(path)?)?;
        let stream = match readiness {
            Some(_) => Stream::Direct(socket.into()),
            None => {
                let fd = socket.into_raw_fd();
                // SAFETY: `fd` is a connected stream socket this function
                // owns; the glommio stream takes it over.
                Stream::Unix(Box::new(unsafe { UnixStream::from_raw_fd(fd) }), fd)
            }
        };
        Ok(Socket::new(stream, readiness))
    }

    /// The descriptor.
    pub fn fd(&self) -> RawFd {
        self.stream.fd()
    }

    /// The descriptor `sendfile` may write to (a client's socket): None for
    /// TLS, whose bytes must be encrypted on their way (a file then goes
    /// through `write_all`), and for a glommio Unix stream.
    pub fn sendfile_fd(&self) -> Option<RawFd> {
        match &self.stream {
            Stream::Direct(fd) => Some(fd.as_raw_fd()),
            Stream::Tcp(s) => Some(s.as_raw_fd()),
            Stream::Unix(..) | Stream::Tls(_) => None,
        }
    }

    /// The peer's address: as accept gave it, else asked of the kernel (a
    /// system call, which fails once the peer's reset came); None for a
    /// Unix socket.
    pub fn peer_addr(&self) -> Option<std::net::SocketAddr> {
        self.peer
            .or_else(|| socket2::SockRef::from(self).peer_addr().ok()?.as_socket())
    }

    /// Turn a plain TCP connection into a TLS server connection, fed first
    /// with `early`, the bytes already read from it; the registration on
    /// the ring stays. Fails on anything but TCP, and when `early` is not
    /// the start of a TLS handshake.
    pub fn start_tls(self, config: Arc<rustls::ServerConfig>, early: &[u8]) -> io::Result<Socket> {
        if !matches!(self.stream, Stream::Direct(_) | Stream::Tcp(_)) {
            return Err(io::Error::other("TLS runs over TCP only"));
        }
        let Socket {
            interest,
            stream,
            peer,
            deaf,
        } = self;
        match TlsStream::new(stream, config, early) {
            Ok(t) => Ok(Socket {
                interest,
                stream: Stream::Tls(Box::new(t)),
                peer,
                deaf,
            }),
            Err((e, stream)) => {
                // Dropped as a `Socket`: the registration goes before the
                // descriptor closes.
                drop(Socket {
                    interest,
                    stream,
                    peer,
                    deaf,
                });
                Err(e)
            }
        }
    }

    /// Complete the TLS handshake by `deadline` (nothing to do on a plain
    /// socket). A malformed or truncated hello, an alert or the peer
    /// leaving ends it with an error, and only this connection.
    pub async fn handshake(&mut self, deadline: Instant) -> io::Result<()> {
        let Stream::Tls(t) = &mut self.stream else {
            return Ok(());
        };
        loop {
            if t.conn.wants_write() {
                let flushed = t.flush(self.interest.as_mut(), deadline, None).await;
                // Done under TLS 1.3, what failed is the write of what
                // follows the handshake (the session tickets, sent once
                // the client's Finished is read): a client that shook
                // hands and left at once (a TLS health check) failed
                // nothing, as nginx sees it. Its connection ends at the
                // first read. (Under TLS 1.2 the server's own Finished is
                // still to go when rustls says it is done: a failure.)
                let done = !t.conn.is_handshaking()
                    && t.conn.protocol_version() == Some(rustls::ProtocolVersion::TLSv1_3);
                if flushed.is_err() && !done {
                    return flushed;
                }
            }
            if !t.conn.is_handshaking() {
                return Ok(());
            }
            match fill(t, &mut self.interest, deadline).await? {
                0 => return Err(io::ErrorKind::UnexpectedEof.into()),
                _ => continue,
            }
        }
    }

    /// Whether this is a TLS connection.
    pub fn is_tls(&self) -> bool {
        matches!(self.stream, Stream::Tls(_))
    }

    /// The ALPN protocol agreed on, if any (TLS only).
    pub fn alpn(&self) -> Option<&[u8]> {
        match &self.stream {
            Stream::Tls(t) => t.conn.alpn_protocol(),
            _ => None,
        }
    }

    /// Read what has arrived into `room`, waiting until `deadline` at most
    /// for something to. With a ring, a completion says when to look, so a
    /// read costs one recv and no submission. `Room::before_wait` runs once
    /// if the socket has to be waited on. A socket that keeps having data
    /// at once steps aside for the shard's other tasks every
    /// `READS_AT_ONCE` reads (without a ring the shard's budget does it).
    pub async fn read(
        &mut self,
        room: &mut (impl Room + ?Sized),
        deadline: Instant,
    ) -> io::Result<usize> {
        // Before the read, not after it: a caller may drop this future
        // while it waits (a read raced against the upstream's answer), and
        // what a finished recv took would be lost with it.
        match self.interest.as_mut().map(Interest::aside) {
            Some(Aside::Reactor) => recheck::step_aside().await,
            Some(Aside::Yield) => futures_lite::future::yield_now().await,
            Some(Aside::No) | None => {}
        }
        let (read, waited) = recheck::waited(self.read_now_or_later(room, deadline)).await;
        if let Some(interest) = self.interest.as_mut() {
            interest.counted(waited);
        }
        read
    }

    /// `read` but for stepping aside.
    async fn read_now_or_later(
        &mut self,
        room: &mut (impl Room + ?Sized),
        deadline: Instant,
    ) -> io::Result<usize> {
        let fd = self.fd();
        if let Stream::Tls(t) = &mut self.stream {
            return read_tls(t, &mut self.interest, room, deadline).await;
        }
        if let Some(interest) = self.interest.as_mut() {
            let mut waited = false;
            loop {
                if let Some(read) = interest.try_recv(fd, room.room()) {
                    return read;
                }
                if !std::mem::replace(&mut waited, true) {
                    room.before_wait();
                }
                interest.readable(Some(deadline)).await?;
            }
        }
        self.read_without_ring(room, deadline).await
    }

    /// One non-blocking read, if the socket is worth a look (None: nothing
    /// there now).
    pub fn try_read(&mut self, buf: &mut [u8]) -> Option<io::Result<usize>> {
        let fd = self.fd();
        if let Stream::Tls(t) = &mut self.stream {
            if let Some(read) = plaintext(t, buf) {
                return Some(read);
            }
            if let Err(e) = t.recv(self.interest.as_mut())? {
                return Some(Err(e));
            }
            return plaintext(t, buf);
        }
        if let Some(interest) = self.interest.as_mut() {
            return interest.try_recv(fd, buf);
        }
        match recv(fd, buf, 0) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => None,
            r => Some(r),
        }
    }

    /// On a shard without a readiness ring: the socket is read directly
    /// first, and again after the shard's other tasks ran, within the
    /// shard's budget (`recheck`); only a socket still silent then waits
    /// through glommio's read and timer.
    async fn read_without_ring(
        &mut self,
        room: &mut (impl Room + ?Sized),
        deadline: Instant,
    ) -> io::Result<usize> {
        let fd = self.fd();
        if let Some(read) = recheck::direct(|| recv(fd, room.room(), 0)).await {
            return read;
        }
        room.before_wait();
        // Measured now: stepping aside took time.
        let timeout = deadline.saturating_duration_since(Instant::now());
        if timeout.is_zero() {
            return Err(io::ErrorKind::TimedOut.into());
        }
        match &mut self.stream {
            Stream::Tcp(s) => {
                let _ = s.set_read_timeout(Some(timeout));
                recheck::wait(s.read(room.room())).await
            }
            Stream::Unix(s, _) => within(timeout, s.read(room.room())).await,
            Stream::Direct(_) => Err(io::Error::other("a direct socket without its ring")),
            Stream::Tls(_) => unreachable!("TLS reads in read_tls"),
        }
    }

    /// Write all of `buf`; a stall longer than `timeout` fails the write.
    pub async fn write_all(&mut self, buf: &[u8], timeout: Duration) -> io::Result<()> {
        let fd = self.fd();
        match &mut self.stream {
            Stream::Direct(_) => {
                let Some(interest) = self.interest.as_mut() else {
                    return Err(io::Error::other("a direct socket without its ring"));
                };
                send_direct(fd, interest, buf, timeout, false, &mut None)
                    .await
                    .map(drop)
            }
            Stream::Tcp(s) => {
                let _ = s.set_write_timeout(Some(timeout));
                s.write_all(buf).await
            }
            Stream::Unix(s, _) => within(timeout, s.write_all(buf)).await,
            Stream::Tls(t) => {
                let mut rest = buf;
                while !rest.is_empty() {
                    // rustls takes what fits its buffer (64 KiB), encrypted.
                    let n = std::io::Write::write(&mut t.conn.writer(), rest)?;
                    if n == 0 && !t.conn.wants_write() {
                        // Closed for writing (close_notify sent): no room
                        // will come.
                        return Err(io::ErrorKind::WriteZero.into());
                    }
                    rest = &rest[n..];
                    let deadline = Instant::now() + timeout;
                    t.flush(self.interest.as_mut(), deadline, Some(timeout))
                        .await?;
                }
                Ok(())
            }
        }
    }

    /// Whether `try_write`, `unsent`, `try_flush` and `ready` serve this
    /// socket: one the ring watches, plain or TLS over it (a tunnel that
    /// moves both ways at once needs them).
    pub fn non_blocking(&self) -> bool {
        self.interest.is_some()
            && match &self.stream {
                Stream::Direct(_) => true,
                Stream::Tls(t) => matches!(t.tcp, Stream::Direct(_)),
                Stream::Tcp(_) | Stream::Unix(..) => false,
            }
    }

    /// Write what the socket takes of `buf` now, never waiting: None when
    /// it has no room. Over TLS rustls takes the bytes, encrypted, and
    /// what the socket does not take yet waits there (`unsent`); it takes
    /// none while some wait. Only where `non_blocking`.
    pub fn try_write(&mut self, buf: &[u8]) -> Option<io::Result<usize>> {
        match &mut self.stream {
            Stream::Direct(fd) => match send(fd.as_raw_fd(), buf) {
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                    ) =>
                {
                    None
                }
                r => Some(r),
            },
            Stream::Tls(t) => {
                if let Err(e) = t.push() {
                    return Some(Err(e));
                }
                if t.conn.wants_write() {
                    return None;
                }
                let n = match std::io::Write::write(&mut t.conn.writer(), buf) {
                    Ok(0) if !buf.is_empty() => return Some(Err(io::ErrorKind::WriteZero.into())),
                    Ok(n) => n,
                    Err(e) => return Some(Err(e)),
                };
                Some(t.push().map(|_| n))
            }
            Stream::Tcp(_) | Stream::Unix(..) => Some(Err(io::Error::other(
                "a non-blocking write needs a socket the ring watches",
            ))),
        }
    }

    /// Whether bytes `try_write` took still wait to go (TLS records).
    pub fn unsent(&self) -> bool {
        matches!(&self.stream, Stream::Tls(t) if t.conn.wants_write())
    }

    /// Send what waits (`unsent`) as far as the socket takes it now; the
    /// bytes that went.
    pub fn try_flush(&mut self) -> io::Result<usize> {
        match &mut self.stream {
            Stream::Tls(t) => t.push(),
            _ => Ok(0),
        }
    }

    /// Wait until the socket is worth a read (`read`) or has room for a
    /// write (`write`), at most until `deadline`. Only where
    /// `non_blocking`; with neither, it waits for the deadline.
    pub async fn ready(&mut self, read: bool, write: bool, deadline: Instant) -> io::Result<()> {
        if read {
            if let Stream::Tls(t) = &mut self.stream {
                if t.buffered() {
                    return Ok(());
                }
            }
        }
        let Some(interest) = self.interest.as_mut() else {
            return Err(io::Error::other("no ring to wait on"));
        };
        if read && interest.may_hold_more() {
            return Ok(());
        }
        let waited = match (read, write) {
            (true, true) => interest.readable_or_writable(deadline).await.map(drop),
            (true, false) => interest.readable(Some(deadline)).await,
            (false, true) => interest.writable(deadline).await,
            (false, false) => {
                glommio::timer::sleep(deadline.saturating_duration_since(Instant::now())).await;
                return Err(io::ErrorKind::TimedOut.into());
            }
        };
        waited.map_err(io::Error::from)
    }

    /// Half-close: no more bytes from this side (after TLS's close_notify).
    pub async fn shutdown_write(&mut self) -> io::Result<()> {
        if let Stream::Tls(t) = &mut self.stream {
            t.close_notify();
            t.flush(
                self.interest.as_mut(),
                Instant::now() + CLOSE_NOTIFY_TIME,
                None,
            )
            .await?;
        }
        socket2::SockRef::from(&*self).shutdown(std::net::Shutdown::Write)
    }

    /// Wait for a connection started by `Socket::connect_tcp` to be made,
    /// until `deadline`; its failure comes back as the connect's error.
    pub async fn connected(&mut self, deadline: Instant) -> io::Result<()> {
        let Some(interest) = self.interest.as_mut() else {
            return Err(io::Error::other("waiting for a connection needs the ring"));
        };
        interest.writable(deadline).await?;
        match socket2::SockRef::from(&*self).take_error()? {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Whether the peer has closed (or reset) the connection, looking
    /// without taking anything: bytes waiting are not a close. For a pooled
    /// upstream connection before reuse, and a client whose proxied request
    /// is waiting on an upstream.
    pub fn peer_closed(&mut self) -> bool {
        self.peek() == Peek::Closed
    }

    fn peek(&self) -> Peek {
        peek(self.fd())
    }

    /// Wait until the peer closes or resets the connection. Bytes it sends
    /// meanwhile (a pipelined request) are left for the next read, and end
    /// the watch: a client that sends is there. For a client whose proxied
    /// request waits on its upstream: nginx's `proxy_ignore_client_abort off`.
    /// After `reading_was_shut` a peek would meet this end's own shutdown:
    /// it ends only when the client resets or the shard cuts the
    /// connection (a drain's deadline), looked at every `DEAF_POLL`.
    pub async fn closed(&mut self) {
        if self.deaf {
            while !hung_up(self.fd()) {
                glommio::timer::sleep(DEAF_POLL).await;
            }
            return;
        }
        if self.stirred().await == Peek::Data {
            std::future::pending::<()>().await;
        }
    }

    /// `work`, unless the peer closes or resets first (`closed`): `None`
    /// then, and `work` is dropped. For what a proxied request waits on
    /// (a connect, a response) while its client may leave.
    pub async fn unless_closed<T>(
        &mut self,
        work: impl std::future::Future<Output = T>,
    ) -> Option<T> {
        futures_lite::future::or(async { Some(work.await) }, async {
            self.closed().await;
            None
        })
        .await
    }

    /// Wait until the peer sends something or closes; nothing is taken, and
    /// the next read looks. For an upstream that may answer while its
    /// request's body is still going up.
    pub async fn answered(&mut self) {
        self.stirred().await;
    }

    /// Wait until a peek finds bytes or the end, and say which. Over TLS
    /// the bytes are records: they are taken into rustls (what they
    /// decrypt to stays there for the next read), and say whether the
    /// client sent data, failed, or only talked TLS (a key update: go on
    /// waiting). Its `close_notify` alone is the end of what it sends, not
    /// of what it reads (Go's `CloseWrite`, as a plain client's
    /// half-close... which a plain socket cannot tell from leaving): it has
    /// left only once the connection itself ends too (curl and browsers
    /// close it right after their close_notify).
    async fn stirred(&mut self) -> Peek {
        loop {
            if let Stream::Tls(t) = &mut self.stream {
                if let Some(seen) = t.pending() {
                    if !seen && t.notified_close() {
                        return self.connection_ends().await;
                    }
                    return seen_as_peek(seen);
                }
            }
            // The ring says so without a system call when nothing happened.
            let quiet = self.interest.as_ref().is_some_and(Interest::is_quiet);
            let mut seen = if quiet { Peek::Nothing } else { self.peek() };
            if let (Peek::Data, Stream::Tls(t)) = (seen, &mut self.stream) {
                // The peek saw bytes: the read below must take them, even
                // with no completion to say so (a poll that stopped).
                if let Some(interest) = self.interest.as_mut() {
                    interest.look_again();
                }
                seen = match t.recv(self.interest.as_mut()) {
                    None => Peek::Nothing,
                    Some(Ok(0)) => Peek::Closed,
                    // rustls's plaintext buffer is full: a client sending.
                    Some(Err(_)) if t.pending() == Some(true) => Peek::Data,
                    Some(Err(_)) => Peek::Closed,
                    // What it brought is looked at above: data, a close_notify.
                    Some(Ok(_)) => Peek::Nothing,
                };
                if seen == Peek::Nothing {
                    // Bytes taken (a record's start, a key update): look
                    // again; the next peek finds more, or nothing and waits.
                    continue;
                }
            }
            match seen {
                Peek::Nothing => {}
                seen => {
                    if let Some(interest) = self.interest.as_mut() {
                        interest.look_again();
                    }
                    return seen;
                }
            }
            if !self.until_stirred().await {
                return Peek::Closed;
            }
        }
    }

    /// Wait until the socket may hold something new (the ring's word; or
    /// 100 ms without a ring); false when the wait itself failed.
    async fn until_stirred(&mut self) -> bool {
        match self.interest.as_mut() {
            Some(interest) => {
                // Nothing is there, so forgetting what said to look loses
                // nothing: new bytes bring a new completion.
                interest.take_ready();
                interest.readable(None).await.is_ok()
            }
            None => {
                glommio::timer::sleep(Duration::from_millis(100)).await;
                true
            }
        }
    }

    /// After a TLS close_notify: wait for the connection's own end (its
    /// FIN or reset), which is then `Closed`. Bytes after a close_notify
    /// break TLS: taken as an end too.
    async fn connection_ends(&mut self) -> Peek {
        loop {
            let quiet = self.interest.as_ref().is_some_and(Interest::is_quiet);
            if !quiet && self.peek() != Peek::Nothing {
                if let Some(interest) = self.interest.as_mut() {
                    interest.look_again();
                }
                return Peek::Closed;
            }
            if !self.until_stirred().await {
                return Peek::Closed;
            }
        }
    }

    /// Write `buf`, unless the peer starts answering (sends bytes or
    /// closes) while the write waits for room: then stop there. Returns
    /// the bytes written, all of `buf` unless it stopped. A stall longer
    /// than `timeout` fails the write. For a request body going to an
    /// upstream that may answer before it has read it all (an early 413),
    /// which would otherwise hold the exchange until the timeout. `stall`
    /// is when the stall under way ends the write, kept by the caller from
    /// one call to the next (None until the socket is first full, and again
    /// after any progress): a peer that keeps answering without reading
    /// does not renew the timeout. Without a ring, or over TLS, this is
    /// `write_all`.
    pub async fn write_or_answer(
        &mut self,
        buf: &[u8],
        timeout: Duration,
        stall: &mut Option<Instant>,
    ) -> io::Result<usize> {
        let fd = self.fd();
        let (Some(interest), Stream::Direct(_)) = (self.interest.as_mut(), &self.stream) else {
            return self.write_all(buf, timeout).await.map(|()| buf.len());
        };
        send_direct(fd, interest, buf, timeout, true, stall).await
    }

    /// Whether bytes the peer sent wait unread in the kernel (a pipelined
    /// request, a TLS close_notify): closing now would reset the
    /// connection, and the reset destroys what of the response the peer
    /// has not read yet (RFC 9112 §9.6). A close alone is not such bytes.
    pub fn unread_in_kernel(&self) -> bool {
        // Always a look: the ring can be late to say that bytes came, and
        // being late here is the reset this is to avoid.
        self.peek() == Peek::Data
    }

    /// Whether the socket holds bytes or a close that no read took yet
    /// (a pooled upstream connection must hold neither).
    pub fn has_input(&mut self) -> bool {
        if let Stream::Tls(t) = &mut self.stream {
            if t.buffered() {
                return true;
            }
        }
        // The ring says so without a system call when nothing happened.
        if self.interest.as_ref().is_some_and(Interest::is_quiet) {
            return false;
        }
        self.peek() != Peek::Nothing
    }

    /// Wait until the socket may have something to read (or is closed),
    /// at most until `deadline`. Nothing is taken: the next `try_read` or
    /// `read` finds it. Without a ring this looks every 10 ms (an upgraded
    /// tunnel on a shard that could not set up its ring).
    pub async fn readable(&mut self, deadline: Instant) -> io::Result<()> {
        if let Stream::Tls(t) = &mut self.stream {
            if t.buffered() {
                return Ok(());
            }
        }
        if let Some(interest) = self.interest.as_mut() {
            if interest.may_hold_more() {
                return Ok(());
            }
            return interest
                .readable(Some(deadline))
                .await
                .map_err(io::Error::from);
        }
        loop {
            if self.has_input() {
                return Ok(());
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(io::ErrorKind::TimedOut.into());
            }
            glommio::timer::sleep(left.min(Duration::from_millis(10))).await;
        }
    }

    /// Half-close, then read and discard until the peer closes too, for
    /// `time` (nginx's lingering close): unread data would turn our FIN
    /// into a reset that destroys the response in flight. Past `time`, as
    /// long as the peer is still taking the response (the bytes it has not
    /// acknowledged, `unacknowledged`, are fewer than a `time` before),
    /// `time` again, up to `most` in all: a client that pipelines (apt
    /// sends a request as each response comes) and reads slowly would
    /// otherwise send into a closed socket, whose reset drops what the
    /// kernel still had to send it. One that takes nothing (a window shut
    /// for good, a peer gone) ends the linger at `time`. No bound on
    /// the bytes: a client that sends a whole body too large before it
    /// reads (Python's `requests`) must get to read its 413. The clock is
    /// looked at before every read, as nginx does with `lingering_time`: a
    /// read that finds data waiting never reaches its deadline, so a peer
    /// that sends without pause would otherwise be read for ever.
    pub async fn linger_close(&mut self, scratch: &mut [u8], time: Duration, most: Duration) {
        if self.shutdown_write().await.is_err() {
            return;
        }
        let start = Instant::now();
        let mut deadline = start + time;
        let mut outstanding = self.unacknowledged();
        loop {
            let now = Instant::now();
            if now >= deadline {
                let left = (start + most).saturating_duration_since(now);
                let still = self.unacknowledged();
                if left.is_zero() || still == 0 || still >= outstanding {
                    return;
                }
                outstanding = still;
                deadline = now + time.min(left);
            }
            match self.read(scratch, deadline).await {
                Ok(1..) => {}
                Err(e) if e.kind() == io::ErrorKind::TimedOut => {}
                Ok(0) | Err(_) => return,
            }
        }
    }

    /// Wait, without reading, until the peer has acknowledged every byte
    /// sent (`unacknowledged`), for as long as it keeps taking them: a
    /// `quiet` while in which it took none ends the wait, as do `until`
    /// and the connection's end (a reset). For a socket whose reading side
    /// is shut already (a drain's), whose close would reset what the kernel
    /// still has to send if the peer sends again: once all of it is
    /// acknowledged, a reset loses nothing the peer was sent (its kernel
    /// holds it, and hands it over first).
    pub async fn until_acknowledged(&mut self, quiet: Duration, until: Instant) {
        let mut outstanding = self.unacknowledged();
        let mut moved = Instant::now();
        while outstanding > 0 && !self.tcp_closed() {
            glommio::timer::sleep(ACK_POLL).await;
            let now = Instant::now();
            let still = self.unacknowledged();
            if still < outstanding {
                moved = now;
            }
            outstanding = still;
            if now.duration_since(moved) >= quiet || now >= until {
                return;
            }
        }
    }

    /// Whether the TCP connection has ended (TCP_INFO's state is CLOSE:
    /// reset, or closed both ways): what is left in its queue goes nowhere.
    fn tcp_closed(&self) -> bool {
        // SAFETY: tcp_info is plain old data, all zeroes a valid value.
        let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
        let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
        // SAFETY: getsockopt writes at most `len` bytes into `info`.
        let r = unsafe {
            libc::getsockopt(
                self.fd(),
                libc::IPPROTO_TCP,
                libc::TCP_INFO,
                (&mut info as *mut libc::tcp_info).cast(),
                &mut len,
            )
        };
        r != 0 || info.tcpi_state == TCP_CLOSE
    }

    /// Bytes sent that the peer has not acknowledged yet (SIOCOUTQ), our
    /// FIN included: while there are any, a reset from a closed socket
    /// would drop them. 0 when the kernel cannot say.
    pub fn unacknowledged(&self) -> usize {
        let mut n: libc::c_int = 0;
        // SAFETY: TIOCOUTQ (SIOCOUTQ for a socket) writes one int.
        let r = unsafe { libc::ioctl(self.fd(), libc::TIOCOUTQ, &mut n) };
        if r == 0 {
            usize::try_from(n).unwrap_or(0)
        } else {
            0
        }
    }
}

/// How often `Socket::until_acknowledged` looks.
const ACK_POLL: Duration = Duration::from_millis(20);

/// TCP_INFO's state of a connection that has ended (the kernel's
/// `TCP_CLOSE`).
const TCP_CLOSE: u8 = 7;

/// How long a closing TLS connection waits to send its close_notify.
const CLOSE_NOTIFY_TIME: Duration = Duration::from_secs(2);

/// `Socket::read` for TLS: decrypted bytes already there, else one read of
/// the socket into rustls (waiting on the ring, or glommio without one).
async fn read_tls(
    t: &mut TlsStream,
    interest: &mut Option<Interest>,
    room: &mut (impl Room + ?Sized),
    deadline: Instant,
) -> io::Result<usize> {
    let mut waited = false;
    loop {
        if let Some(read) = plaintext(t, room.room()) {
            return read;
        }
        // What reading brought to send (a key update, an alert).
        if t.conn.wants_write() {
            t.flush(interest.as_mut(), deadline, None).await?;
        }
        if interest.is_none() {
            if !std::mem::replace(&mut waited, true) {
                room.before_wait();
            }
            t.fill_without_ring(deadline).await?;
            continue;
        }
        if t.recv(interest.as_mut()).transpose()?.is_some() {
            continue;
        }
        if !std::mem::replace(&mut waited, true) {
            room.before_wait();
        }
        if let Some(i) = interest.as_mut() {
            i.readable(Some(deadline)).await?;
        }
    }
}

/// Read the socket into rustls once, waiting for it until `deadline`;
/// the bytes read (0: end of stream).
async fn fill(
    t: &mut TlsStream,
    interest: &mut Option<Interest>,
    deadline: Instant,
) -> io::Result<usize> {
    loop {
        let Some(i) = interest.as_mut() else {
            return t.fill_without_ring(deadline).await;
        };
        if let Some(read) = t.recv(Some(i)) {
            return read;
        }
        interest
            .as_mut()
            .expect("checked above")
            .readable(Some(deadline))
            .await?;
    }
}

/// Decrypted bytes into `buf`, if any are there (None: read the socket);
/// `Ok(0)` once the peer has closed with close_notify.
fn plaintext(t: &mut TlsStream, buf: &mut [u8]) -> Option<io::Result<usize>> {
    match std::io::Read::read(&mut t.conn.reader(), buf) {
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => None,
        r => Some(r),
    }
}

/// Where a read puts its bytes.
pub trait Room {
    /// The space to read into; never empty.
    fn room(&mut self) -> &mut [u8];
    /// Called once before the read has to wait (an idle connection gives
    /// back memory then).
    fn before_wait(&mut self) {}
}

impl Room for [u8] {
    fn room(&mut self) -> &mut [u8] {
        self
    }
}

impl Room for InputBuffer {
    fn room(&mut self) -> &mut [u8] {
        self.spare()
    }
}

/// A connection's input read for a request body: room for a buffer's
/// worth at a time (`InputBuffer::body_room`).
pub struct BodyRoom<'a>(pub &'a mut InputBuffer);

impl Room for BodyRoom<'_> {
    fn room(&mut self) -> &mut [u8] {
        self.0.body_room()
    }
}

/// What a peek found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Peek {
    Data,
    Nothing,
    Closed,
}

/// What a TLS connection's decrypted side holds (`TlsStream::pending`) as
/// a peek would say it.
fn seen_as_peek(data: bool) -> Peek {
    if data {
        Peek::Data
    } else {
        Peek::Closed
    }
}

/// What the socket `fd` holds, looking without taking.
/// How often a socket whose reading this end shut is looked at for its
/// end (`Socket::closed`): such sockets are few (a request on its way as
/// the shard closed its connection), and a readiness wait would fire at
/// once and for ever, the shutdown's end of stream being readable.
const DEAF_POLL: Duration = Duration::from_millis(250);

/// Whether the socket `fd` has hung up or failed: cut both ways (a drain's
/// deadline), or reset by the peer; not the end of stream of a shutdown
/// for reading alone, which poll(2) reports as readable only.
fn hung_up(fd: RawFd) -> bool {
    let mut p = libc::pollfd {
        fd,
        events: 0,
        revents: 0,
    };
    // SAFETY: one pollfd on a descriptor the socket holds open; a zero
    // timeout never blocks. POLLHUP and POLLERR are reported whatever
    // `events` asks.
    let n = unsafe { libc::poll(&mut p, 1, 0) };
    n > 0 && p.revents & (libc::POLLHUP | libc::POLLERR) != 0
}

fn peek(fd: RawFd) -> Peek {
    match recv(fd, &mut [0u8; 1], libc::MSG_PEEK) {
        Ok(0) => Peek::Closed,
        Ok(_) => Peek::Data,
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Peek::Nothing,
        Err(_) => Peek::Closed,
    }
}

/// send(2) `buf` on the direct socket `fd` until all of it went, waiting on
/// the ring (`interest`) when the socket is full; a stall longer than
/// `timeout` fails the write. With `stop_on_answer` the wait also ends when
/// the peer sends bytes or closes, and the write stops there (see
/// `Socket::write_or_answer`). Returns the bytes written. `deadline` ends
/// the stall under way, if one is (a stall begun by an earlier call goes
/// on). The clock is read only once the socket is full, not for a write
/// that goes out at once.
async fn send_direct(
    fd: RawFd,
    interest: &mut Interest,
    buf: &[u8],
    timeout: Duration,
    stop_on_answer: bool,
    deadline: &mut Option<Instant>,
) -> io::Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        match send(fd, &buf[done..]) {
            Ok(n) => {
                done += n;
                *deadline = None;
                continue;
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
        let by = *deadline.get_or_insert_with(|| Instant::now() + timeout);
        if !stop_on_answer {
            interest.writable(by).await?;
        } else if interest.readable_or_writable(by).await? {
            // No room, and the peer stirred: it may be answering.
            match peek(fd) {
                Peek::Nothing => {
                    // A stale event: nothing is there, and new bytes
                    // bring a new completion.
                    interest.take_ready();
                }
                _ => {
                    interest.look_again();
                    return Ok(done);
                }
            }
        }
    }
    Ok(done)
}

/// Run `io` for at most `timeout`: a timer races it (for streams without
/// socket timeouts of their own).
async fn within<T>(
    timeout: Duration,
    io: impl std::future::Future<Output = io::Result<T>>,
) -> io::Result<T> {
    futures_lite::future::or(io, async {
        glommio::timer::sleep(timeout).await;
        Err(io::ErrorKind::TimedOut.into())
    })
    .await
}
