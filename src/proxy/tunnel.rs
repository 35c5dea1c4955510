//! An upgraded connection (WebSocket): after the upstream's 101, bytes go
//! both ways as they are until either side closes or both stay silent for
//! the route's `tunnel-idle-timeout`; a client that only half-closes (a
//! FIN after its close frame) has it passed on, and still gets what the
//! upstream sends until the upstream closes (or is quiet for
//! `HALF_CLOSED_IDLE`). Each way has a buffer of its own, so
//! one side that reads slowly holds up only what goes to it: the other way
//! keeps moving (as nginx's two buffers do), and two peers that both write
//! before they read cannot wait on each other through the proxy.

use std::io;
use std::time::{Duration, Instant};

use super::buffers::{self, Buffer};
use crate::transport::Socket;

/// Longest quiet wait for the upstream once the client half-closed.
const HALF_CLOSED_IDLE: Duration = Duration::from_secs(5);

/// Bytes moved per read.
const CHUNK: usize = 16 << 10;

/// Which side had something.
#[derive(Clone, Copy)]
enum Side {
    Client,
    Upstream,
}

/// What went through a tunnel.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Moved {
    /// Bytes sent to the client.
    pub to_client: u64,
    /// Bytes read from the client once the tunnel began (not those read
    /// before, which the connection counted).
    pub from_client: u64,
}

/// Copy both ways until one side closes, fails, or the tunnel idles out;
/// `client_early` and `upstream_early` are bytes each side sent before the
/// switch that were already read (they go first).
pub async fn run(
    client: &mut Socket,
    upstream: &mut Socket,
    client_early: &[u8],
    upstream_early: &[u8],
    idle: Duration,
    send_timeout: Duration,
) -> Moved {
    let mut moved = Moved {
        to_client: upstream_early.len() as u64,
        from_client: 0,
    };
    if !client_early.is_empty()
        && upstream
            .write_all(client_early, send_timeout)
            .await
            .is_err()
        || !upstream_early.is_empty()
            && client
                .write_all(upstream_early, send_timeout)
                .await
                .is_err()
    {
        return moved;
    }
    if client.non_blocking() && upstream.non_blocking() {
        let both = duplex(client, upstream, idle, send_timeout).await;
        moved.to_client += both.to_client;
        moved.from_client = both.from_client;
        return moved;
    }
    // Sockets the ring does not watch (a shard without a ring): one way
    // at a time, each write waited for.
    let mut buf = vec![0u8; CHUNK];
    loop {
        let deadline = Instant::now() + idle;
        let woke = futures_lite::future::or(
            async { client.readable(deadline).await.map(|_| Side::Client) },
            async { upstream.readable(deadline).await.map(|_| Side::Upstream) },
        )
        .await;
        let Ok(first) = woke else {
            return moved;
        };
        // Whichever woke first, then the other, so neither waits on the
        // other's traffic.
        let order = match first {
            Side::Client => [Side::Client, Side::Upstream],
            Side::Upstream => [Side::Upstream, Side::Client],
        };
        for side in order {
            let (from, to) = match side {
                Side::Client => (&mut *client, &mut *upstream),
                Side::Upstream => (&mut *upstream, &mut *client),
            };
            match pass(from, to, &mut buf, send_timeout).await {
                Ok(n) => match side {
                    Side::Upstream => moved.to_client += n as u64,
                    Side::Client => moved.from_client += n as u64,
                },
                Err(_) => return moved,
            }
        }
    }
}

/// Move what `from` has now to `to`: 0 when it had nothing; an error when
/// it closed or a side failed.
async fn pass(
    from: &mut Socket,
    to: &mut Socket,
    buf: &mut [u8],
    send_timeout: Duration,
) -> io::Result<usize> {
    match from.try_read(buf) {
        None => Ok(0),
        Some(Ok(0)) => Err(io::ErrorKind::UnexpectedEof.into()),
        Some(Ok(n)) => to.write_all(&buf[..n], send_timeout).await.map(|_| n),
        Some(Err(e)) => Err(e),
    }
}

/// One way's bytes: read from one side, not yet all written to the other.
struct Pipe {
    /// A buffer of the shard's spares, held only while it has bytes to
    /// write (or for a read): an idle tunnel holds none, so a thousand
    /// quiet WebSockets do not keep 32 KiB each.
    buf: Option<Buffer>,
    /// What is still to write: `buf[start..end]`.
    start: usize,
    end: usize,
    /// When the write, finding no room, fails (`send-timeout` after its
    /// last progress); None while nothing waits.
    stall: Option<Instant>,
    /// Bytes written to the far side so far.
    sent: u64,
    /// Bytes read from the near side so far.
    got: u64,
}

impl Pipe {
    fn new() -> Pipe {
        Pipe {
            buf: None,
            start: 0,
            end: 0,
            stall: None,
            sent: 0,
            got: 0,
        }
    }

    fn pending(&self) -> bool {
        self.start < self.end
    }

    /// The bytes still to write.
    fn waiting(&self) -> &[u8] {
        self.buf
            .as_deref()
            .map_or(&[], |b| &b[self.start..self.end])
    }

    /// Everything written: the buffer goes back to the shard's spares.
    fn emptied(&mut self) {
        (self.start, self.end) = (0, 0);
        self.buf = None;
    }
}

/// Both ways at once, never waiting on a write: each side is waited on for
/// what its way needs (a read when that way has nothing waiting to be
/// written, room when it has). A client that ends its way (a FIN: one
/// that half-closes after its WebSocket close frame) is heard by the
/// upstream, once what was read for it is written, and the way back goes
/// on until the upstream closes too (its close frame, its last messages),
/// fails, or idles out. When the upstream closes, what was read for it is
/// still written to it (it may only have half-closed), and the tunnel ends.
async fn duplex(
    client: &mut Socket,
    upstream: &mut Socket,
    idle: Duration,
    send_timeout: Duration,
) -> Moved {
    let mut up = Pipe::new();
    let mut down = Pipe::new();
    // The client's way, until the client ends it.
    let mut up_open = true;
    let mut idle = idle;
    let mut quiet_until = Instant::now() + idle;
    loop {
        let now = Instant::now();
        let mut moved = false;
        let mut ended = None;
        if up_open {
            match step(client, upstream, &mut up, now, send_timeout) {
                Ok(m) => moved |= m,
                Err(e) => ended = Some((e, Side::Client)),
            }
        }
        if ended.is_none() {
            match step(upstream, client, &mut down, now, send_timeout) {
                Ok(m) => moved |= m,
                Err(e) => ended = Some((e, Side::Upstream)),
            }
        }
        if let Some((e, side)) = ended {
            // A failure ends both ways. The client's end is passed on
            // (`step` finds it only once what its way held was written).
            let end = e.kind() == io::ErrorKind::UnexpectedEof;
            if end && matches!(side, Side::Client) && upstream.shutdown_write().await.is_ok() {
                up_open = false;
                // The app's last words come soon after the end it heard;
                // one that ignores it (or a client gone for good, whose
                // reset goes unseen now) holds the pair this long at most.
                idle = idle.min(HALF_CLOSED_IDLE);
                quiet_until = quiet_until.min(now + idle);
                continue;
            }
            if end && matches!(side, Side::Upstream) && up_open {
                finish(upstream, &mut up, send_timeout).await;
            }
            return Moved {
                to_client: down.sent,
                from_client: up.got,
            };
        }
        if moved {
            quiet_until = now + idle;
            // A peer as fast as loopback keeps every read full and every
            // write taken: without this the tunnel would keep the shard
            // (its other connections, the ring's driver) for as long as
            // the transfer lasts.
            futures_lite::future::yield_now().await;
            continue;
        }
        let deadline = [Some(quiet_until), up.stall, down.stall]
            .into_iter()
            .flatten()
            .min()
            .expect("the idle deadline is always there");
        // A way with bytes waiting for its writer reads nothing more: its
        // reader is not waited on (it would say "readable" at once, and
        // again, without anything moving); nor is a client that ended its
        // way (its end reads as "readable" for good).
        let up_held = up.pending() || upstream.unsent();
        let down_held = down.pending() || client.unsent();
        let woke = futures_lite::future::or(
            client.ready(up_open && !up_held, down_held, deadline),
            upstream.ready(!down_held, up_open && up_held, deadline),
        )
        .await;
        // Idle for `idle`, a write stalled for `send-timeout`, or a failure.
        if woke.is_err() {
            return Moved {
                to_client: down.sent,
                from_client: up.got,
            };
        }
    }
}

/// Move `p`'s way, from `from` to `to`: write what waits as far as `to`
/// takes it now (counted in `p.sent`), then, once nothing waits, read what
/// `from` has. Whether anything moved (TLS records going out too); an error
/// when a side failed, `UnexpectedEof` when `from` closed.
fn step(
    from: &mut Socket,
    to: &mut Socket,
    p: &mut Pipe,
    now: Instant,
    send_timeout: Duration,
) -> io::Result<bool> {
    let mut moved = false;
    if to.unsent() {
        moved = to.try_flush()? > 0;
    }
    while p.pending() {
        match to.try_write(p.waiting()) {
            None => break,
            Some(Ok(n)) => {
                p.start += n;
                p.sent += n as u64;
                moved = true;
            }
            Some(Err(e)) => return Err(e),
        }
    }
    if p.pending() || to.unsent() {
        // The stall runs from the last progress: TLS records going out
        // count, not only bytes rustls took.
        if moved || p.stall.is_none() {
            p.stall = Some(now + send_timeout);
        }
        return Ok(moved);
    }
    p.stall = None;
    (p.start, p.end) = (0, 0);
    let buf = p.buf.get_or_insert_with(|| buffers::take_at_least(CHUNK));
    // A spare may be longer (an exchange's, as long as the head limit):
    // a way holds at most CHUNK for a slow reader, as documented.
    match from.try_read(&mut buf[..CHUNK]) {
        None => p.emptied(),
        Some(Ok(0)) => return Err(io::ErrorKind::UnexpectedEof.into()),
        Some(Ok(n)) => {
            (p.start, p.end) = (0, n);
            p.got += n as u64;
            moved = true;
        }
        Some(Err(e)) => return Err(e),
    }
    Ok(moved)
}

/// Write what `p` holds for `to` (counted in `p.sent`), and what TLS
/// still has to send (`relay::write_rest`: up to `send_timeout` without progress).
async fn finish(to: &mut Socket, p: &mut Pipe, send_timeout: Duration) {
    let rest = p.waiting();
    let len = rest.len() as u64;
    if super::relay::write_rest(to, rest, send_timeout)
        .await
        .is_ok()
    {
        p.sent += len;
    }
    p.emptied();
}
