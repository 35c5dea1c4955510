//! Listening sockets, created by the master before any shard starts so that
//! a bind error stops start-up with a clear message.

use std::io;
use std::net::{SocketAddr, TcpListener};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, IntoRawFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};

use socket2::{Domain, Protocol, SockRef, Socket, Type};

use crate::throttle::Throttle;

/// What a listener speaks. A shard knows it for each listener by index:
/// the index travels with each hand-off, and each reuseport listener is
/// one address.
pub use crate::config::Scheme;

/// Pending-connection queue length asked of the kernel (it caps it at
/// net.core.somaxconn). Deep enough to absorb a burst while every shard is
/// busy and the master stops handing out connections.
pub const BACKLOG: i32 = 4096;

/// A listener that could not be set up, with the address.
#[derive(Debug, thiserror::Error)]
#[error("cannot listen on {addr}: {err}{hint}", hint = bind_hint(addr, err))]
pub struct BindError {
    /// The address asked for.
    pub addr: SocketAddr,
    /// What the kernel said.
    pub err: io::Error,
}

/// What to do about the bind errors a user meets most, so the message
/// does not end at the kernel's word for it.
fn bind_hint(addr: &SocketAddr, err: &io::Error) -> std::borrow::Cow<'static, str> {
    let hint = match err.kind() {
        // Ports below net.ipv4.ip_unprivileged_port_start (1024) need
        // CAP_NET_BIND_SERVICE, which only root has by default.
        io::ErrorKind::PermissionDenied if addr.port() != 0 => {
            "; a port below 1024 needs privilege: give the binary \
             CAP_NET_BIND_SERVICE (sudo setcap cap_net_bind_service=+ep \
             $(command -v coreserve)), let systemd pass the socket (socket \
             activation, packaging/activation/coreserve.socket), run the \
             packaged service (it has that capability), or use a port from 1024 up"
        }
        io::ErrorKind::AddrInUse => {
            "; another process listens there (ss -ltnp shows which), or pick \
             another port (port 0 takes a free one)"
        }
        io::ErrorKind::InvalidInput => {
            return match crate::config::unlistenable(addr) {
                Some(why) => format!("; {why}").into(),
                None => "".into(),
            };
        }
        _ => "",
    };
    hint.into()
}

/// How long the kernel holds a deferred connection that has sent nothing
/// before handing it over anyway (nginx's `deferred` uses the same second);
/// `limits.header-timeout` runs from then.
pub const DEFER_ACCEPT_SECS: libc::c_int = 1;

fn socket(addr: SocketAddr, reuse_port: bool, defer_accept: bool) -> io::Result<Socket> {
    let sk = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    // SO_REUSEADDR: restart without waiting out TIME_WAIT, as nginx does.
    sk.set_reuse_address(true)?;
    // An IPv6 address means IPv6 only (nginx's default), so "0.0.0.0:80"
    // and "[::]:80" can both be listed instead of colliding.
    if addr.is_ipv6() {
        sk.set_only_v6(true)?;
    }
    if reuse_port {
        sk.set_reuse_port(true)?;
    }
    if defer_accept {
        // A connection reaches accept only with its first bytes, so the
        // first read finds the request instead of arming a poll to wait
        // for it (server.defer-accept).
        // SAFETY: setsockopt(2) on our socket with an int-sized value.
        let rc = unsafe {
            libc::setsockopt(
                sk.as_raw_fd(),
                libc::IPPROTO_TCP,
                libc::TCP_DEFER_ACCEPT,
                std::ptr::from_ref(&DEFER_ACCEPT_SECS).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    prepare(&sk)?;
    Ok(sk)
}

/// What every listener needs, whoever made it (socket activation too):
/// non-blocking, because the accept loops call accept4 themselves; and
/// TCP_NODELAY, which Linux copies to each accepted socket, so no
/// connection pays a setsockopt for it. Responses are written whole, and
/// Nagle would only hold back the last segment of one.
pub fn prepare(listener: &impl AsFd) -> io::Result<()> {
    let sk = SockRef::from(listener);
    sk.set_nonblocking(true)?;
    sk.set_nodelay(true)
}

/// One listening socket on `addr`.
fn bind(addr: SocketAddr, reuse_port: bool, defer_accept: bool) -> Result<TcpListener, BindError> {
    let wrap = |err| BindError { addr, err };
    let sk = socket(addr, reuse_port, defer_accept).map_err(wrap)?;
    sk.bind(&addr.into()).map_err(wrap)?;
    sk.listen(BACKLOG).map_err(wrap)?;
    Ok(sk.into())
}

/// One listener for the master to accept on. Without SO_REUSEPORT, so a
/// server already on the port makes this fail instead of silently sharing it.
/// `defer_accept`: see [`DEFER_ACCEPT_SECS`].
pub fn bind_exclusive(addr: SocketAddr, defer_accept: bool) -> Result<TcpListener, BindError> {
    bind(addr, false, defer_accept)
}

/// `n` SO_REUSEPORT listeners on one address, one per shard. With port 0 they
/// all share the port the first one got.
pub fn bind_reuseport_group(
    addr: SocketAddr,
    n: usize,
    defer_accept: bool,
) -> Result<Vec<TcpListener>, BindError> {
    if addr.port() != 0 {
        // An earlier server with SO_REUSEPORT on this port would quietly take
        // a share of the connections; a plain bind tells us it is there.
        drop(bind_probe(addr).map_err(|err| BindError { addr, err })?);
    }
    let mut listeners = Vec::with_capacity(n);
    let mut bound = addr;
    for _ in 0..n {
        let l = bind(bound, true, defer_accept)?;
        bound = l.local_addr().map_err(|err| BindError { addr, err })?;
        listeners.push(l);
    }
    Ok(listeners)
}

/// One more SO_REUSEPORT listener on an address a group already holds (a
/// restarted shard's); no probe, the port is ours.
pub fn bind_reuseport_member(
    addr: SocketAddr,
    defer_accept: bool,
) -> Result<TcpListener, BindError> {
    bind(addr, true, defer_accept)
}

fn bind_probe(addr: SocketAddr) -> io::Result<Socket> {
    let sk = socket(addr, false, false)?;
    sk.bind(&addr.into())?;
    Ok(sk)
}

/// accept4(2) on a non-blocking listener: the new socket, non-blocking and
/// close-on-exec (glommio's own accept makes four system calls for this),
/// and the client's address. The address is taken here, where the kernel
/// has it whatever the client did since: a getpeername(2) made later
/// fails once the client's reset came (the access log's `-`).
pub fn accept4(listener: RawFd) -> io::Result<(OwnedFd, Option<SocketAddr>)> {
    // SAFETY: zeroes are a valid sockaddr_storage.
    let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    // SAFETY: accept4 on a listening socket the caller holds open (every
    // listener is bound non-blocking, see `socket`, so this cannot block the
    // executor), with room for any address and its length.
    let conn = unsafe {
        libc::accept4(
            listener,
            (&raw mut storage).cast(),
            &mut len,
            libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
        )
    };
    if conn < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a new descriptor that nothing else owns.
    let conn = unsafe { OwnedFd::from_raw_fd(conn) };
    // SAFETY: the kernel wrote an address of `len` bytes (at most the
    // storage's size, which it truncates to).
    let peer = unsafe { socket2::SockAddr::new(storage, len) }.as_socket();
    Ok((conn, peer))
}

/// Accept the next connection on a shard's own `listener`, whose
/// descriptor is `fd` (the listener must be non-blocking, as every listener
/// made here is), on a shard without a readiness ring: glommio's stream
/// waits on the connection.
///
/// accept4 directly, and while connections keep coming no io_uring at all:
/// the queue is looked at again after the shard's other tasks ran
/// (`recheck`) before glommio's accept waits on it.
pub async fn accept(
    listener: &glommio::net::TcpListener,
    fd: RawFd,
) -> glommio::Result<(glommio::net::TcpStream, Option<SocketAddr>), ()> {
    if let Some(accepted) = crate::recheck::direct(|| accept4(fd)).await {
        // SAFETY: a connected socket nothing else owns or will close.
        return accepted
            .map(|(conn, peer)| {
                let stream = unsafe { glommio::net::TcpStream::from_raw_fd(conn.into_raw_fd()) };
                (stream, peer)
            })
            .map_err(Into::into);
    }
    let stream = crate::recheck::wait(listener.accept()).await?;
    // glommio accepts without SOCK_NONBLOCK; every connection socket must be
    // non-blocking (sendfile has no MSG_DONTWAIT to lean on).
    // SAFETY: the stream's descriptor, open for as long as the borrow.
    let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(stream.as_raw_fd()) };
    SockRef::from(&fd).set_nonblocking(true)?;
    // glommio's accept gives no address: asked of the kernel if needed.
    Ok((stream, None))
}

/// Accept the next connection on the listener `fd`, waiting as the shard's
/// readiness ring tells (`interest` is the listener's registration): one
/// accept4 per connection, and no glommio accept or poll.
pub async fn accept_ready(
    interest: &mut crate::readiness::Interest,
    fd: RawFd,
) -> io::Result<(OwnedFd, Option<SocketAddr>)> {
    loop {
        // Each success may leave more in the backlog: look again next time.
        if let Some(accepted) = interest.try_io(|| accept4(fd), |_| true) {
            return accepted;
        }
        interest.readable(None).await?;
    }
}

/// How long accepting stops after the process runs out of descriptors or
/// memory; the kernel backlog holds new connections meanwhile (nginx pauses
/// accepting the same way).
pub const ACCEPT_PAUSE: Duration = Duration::from_millis(100);

/// Handles accept errors: retries at once when the peer went away, pauses
/// when the host is out of resources, and logs at most once a second.
#[derive(Debug, Default)]
pub struct AcceptErrors {
    lines: Throttle,
}

impl AcceptErrors {
    /// React to one accept error of the accept loop named `who`: how long
    /// to stop accepting, or None to go on at once (a connection reset
    /// before it was taken, a signal). Logs at most once a second.
    pub fn pause_for(
        &mut self,
        errno: Option<i32>,
        err: &dyn std::fmt::Display,
        who: &dyn std::fmt::Display,
    ) -> Option<Duration> {
        if matches!(
            errno,
            Some(libc::ECONNABORTED | libc::EINTR | libc::EAGAIN | libc::EPROTO)
        ) {
            return None;
        }
        if let Some(held) = self.lines.admit(Instant::now()) {
            log::warn!("{who}: accept failed: {err}{held}; pausing accept for {ACCEPT_PAUSE:?}");
        }
        Some(ACCEPT_PAUSE)
    }

    /// `pause_for`, waiting out the pause on the calling executor.
    pub async fn pause(&mut self, err: &glommio::GlommioError<()>, who: impl std::fmt::Display) {
        // The system's error in its own words, as the master's accept
        // says it: glommio's wrapper adds "IO error occurred: ".
        let (errno, said): (_, &dyn std::fmt::Display) = match err {
            glommio::GlommioError::IoError(e) => (e.raw_os_error(), e),
            glommio::GlommioError::EnhancedIoError { source, .. } => {
                (source.raw_os_error(), source)
            }
            e => (None, e),
        };
        if let Some(pause) = self.pause_for(errno, said, &who) {
            glommio::timer::sleep(pause).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_no_listener_can_take_is_said_in_words() {
        let einval = |addr: &str| {
            BindError {
                addr: addr.parse().unwrap(),
                err: io::Error::from_raw_os_error(libc::EINVAL),
            }
            .to_string()
        };
        assert_eq!(
            einval("[::ffff:127.0.0.1]:80"),
            "cannot listen on [::ffff:127.0.0.1]:80: Invalid argument (os error 22); \
             ::ffff:127.0.0.1 is an IPv4 address written as IPv6, which an IPv6-only \
             listener cannot take: write 127.0.0.1:80"
        );
        assert!(einval("[fe80::1]:80").ends_with(
            "; fe80::1 is a link-local address, which needs its interface's index \
             ([fe80::1%2]:80 for the interface `ip link` numbers 2), and no interface \
             of this machine has it (ip addr lists them)"
        ));
        // With its interface, or any other address: the kernel's word.
        assert!(einval("[fe80::1%2]:80").ends_with("(os error 22)"));
        assert!(einval("127.0.0.1:80").ends_with("(os error 22)"));
    }

    #[test]
    fn bind_errors_say_what_to_do() {
        let addr: SocketAddr = "0.0.0.0:80".parse().unwrap();
        let denied = BindError {
            addr,
            err: io::Error::from_raw_os_error(libc::EACCES),
        };
        let msg = denied.to_string();
        assert!(
            msg.starts_with("cannot listen on 0.0.0.0:80: Permission denied (os error 13); "),
            "{msg}"
        );
        assert!(msg.contains("CAP_NET_BIND_SERVICE"), "{msg}");
        assert!(msg.contains("socket activation"), "{msg}");
        let busy = BindError {
            addr,
            err: io::Error::from_raw_os_error(libc::EADDRINUSE),
        };
        assert!(busy
            .to_string()
            .starts_with("cannot listen on 0.0.0.0:80: Address already in use (os error 98); "));
        let other = BindError {
            addr,
            err: io::Error::from_raw_os_error(libc::EADDRNOTAVAIL),
        };
        assert!(!other.to_string().contains(';'), "{other}");
    }

    #[test]
    fn ipv4_and_ipv6_wildcards_bind_the_same_port() {
        let v6 = match bind_exclusive("[::]:0".parse().unwrap(), false) {
            Ok(l) => l,
            // A host without IPv6 has nothing to collide with.
            Err(e) if e.err.raw_os_error() == Some(libc::EAFNOSUPPORT) => return,
            Err(e) => panic!("{e}"),
        };
        let port = v6.local_addr().unwrap().port();
        let v4 = bind_exclusive(SocketAddr::from(([0, 0, 0, 0], port)), true).unwrap();
        assert_eq!(v4.local_addr().unwrap().port(), port);
    }

    #[test]
    fn port_zero_group_shares_one_port() {
        let group = bind_reuseport_group("127.0.0.1:0".parse().unwrap(), 3, true).unwrap();
        let port = group[0].local_addr().unwrap().port();
        assert_ne!(port, 0);
        assert!(group.iter().all(|l| l.local_addr().unwrap().port() == port));
    }

    #[test]
    fn a_port_in_use_is_refused_in_both_modes() {
        let first = bind_exclusive("127.0.0.1:0".parse().unwrap(), false).unwrap();
        let addr = first.local_addr().unwrap();
        assert!(bind_exclusive(addr, false).is_err());
        assert!(bind_reuseport_group(addr, 2, false).is_err());
        let group = bind_reuseport_group("127.0.0.1:0".parse().unwrap(), 1, false).unwrap();
        let taken = group[0].local_addr().unwrap();
        let err = bind_reuseport_group(taken, 2, false).unwrap_err();
        assert_eq!(err.err.kind(), io::ErrorKind::AddrInUse);
    }

    /// The connection loop sets nothing per socket: what it relies on must
    /// come from the listener. The client's address comes with it.
    #[test]
    fn accepted_sockets_inherit_nodelay_and_are_nonblocking() {
        for defer in [false, true] {
            let l = bind_exclusive("127.0.0.1:0".parse().unwrap(), defer).unwrap();
            let mut c = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
            std::io::Write::write_all(&mut c, b"GET / HTTP/1.1\r\n\r\n").unwrap();
            let fd = loop {
                match accept4(l.as_raw_fd()) {
                    Ok((fd, peer)) => {
                        assert_eq!(peer, Some(c.local_addr().unwrap()));
                        break fd;
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(5))
                    }
                    Err(e) => panic!("{e}"),
                }
            };
            let mut accepted = std::net::TcpStream::from(fd);
            assert!(accepted.nodelay().unwrap(), "defer {defer}");
            // Non-blocking: the request is there; a second read finds nothing
            // and says so at once.
            let mut buf = [0u8; 64];
            assert!(std::io::Read::read(&mut accepted, &mut buf).unwrap() > 0);
            let again = std::io::Read::read(&mut accepted, &mut buf).unwrap_err();
            assert_eq!(again.kind(), io::ErrorKind::WouldBlock);
        }
    }

    #[test]
    fn a_deferred_listener_hands_over_a_silent_connection_only_later() {
        let l = bind_exclusive("127.0.0.1:0".parse().unwrap(), true).unwrap();
        let _silent = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        // Not yet: nothing was sent (the kernel passes it on after
        // DEFER_ACCEPT_SECS and a retransmission, and header-timeout applies).
        std::thread::sleep(Duration::from_millis(100));
        let early = accept4(l.as_raw_fd()).unwrap_err();
        assert_eq!(early.kind(), io::ErrorKind::WouldBlock);
        let mut talker = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        std::io::Write::write_all(&mut talker, b"G").unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        while let Err(e) = accept4(l.as_raw_fd()) {
            assert_eq!(e.kind(), io::ErrorKind::WouldBlock);
            assert!(
                Instant::now() < deadline,
                "the talking connection never came"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}
