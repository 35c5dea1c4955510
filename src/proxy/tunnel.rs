//! An upgraded connection (WebSocket): after the upstream's 101, bytes go
//! both ways as they are until either side closes or both stay silent for
//! the route's `tunnel-idle-timeout`. Each way has a buffer of its own, so
//! one side that reads slowly holds up only what goes to it: the other way
//! keeps moving (as nginx's two buffers do), and two peers that both write
//! before they read cannot wait on each other through the proxy.

use std::io;
use std::time::{Duration, Instant};

use crate::transport::Socket;

/// Bytes moved per read.
const CHUNK: usize = 16 << 10;

/// Which side had something.
#[derive(Clone, Copy)]
enum Side {
    Client,
    Upstream,
}

/// Copy both ways until one side closes, fails, or the tunnel idles out;
/// `client_early` and `upstream_early` are bytes each side sent before the
/// switch that were already read (they go first). Returns the bytes sent to
/// the client.
pub async fn run(
    client: &mut Socket,
    upstream: &mut Socket,
    client_early: &[u8],
    upstream_early: &[u8],
    idle: Duration,
    send_timeout: Duration,
) -> u64 {
    let mut to_client = upstream_early.len() as u64;
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
        return to_client;
    }
    if client.non_blocking() && upstream.non_blocking() {
        return to_client + duplex(client, upstream, idle, send_timeout).await;
    }
    // Sockets the ring does not watch (a Unix upstream, a shard without a
    // ring): one way at a time, each write waited for.
    let mut buf = vec![0u8; CHUNK];
    loop {
        let deadline = Instant::now() + idle;
        let woke = futures_lite::future::or(
            async { client.readable(deadline).await.map(|_| Side::Client) },
            async { upstream.readable(deadline).await.map(|_| Side::Upstream) },
        )
        .await;
        let Ok(first) = woke else {
            return to_client;
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
                Ok(n) => {
                    if matches!(side, Side::Upstream) {
                        to_client += n as u64;
                    }
                }
                Err(_) => return to_client,
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
    buf: Vec<u8>,
    /// What is still to write: `buf[start..end]`.
    start: usize,
    end: usize,
    /// When the write, finding no room, fails (`send-timeout` after its
    /// last progress); None while nothing waits.
    stall: Option<Instant>,
}

impl Pipe {
    fn new() -> Pipe {
        Pipe {
            buf: vec![0u8; CHUNK],
            start: 0,
            end: 0,
            stall: None,
        }
    }

    fn pending(&self) -> bool {
        self.start < self.end
    }
}

/// Both ways at once, never waiting on a write: each side is waited on for
/// what its way needs (a read when its buffer is empty, room when it is
/// not). Returns the bytes sent to the client.
async fn duplex(
    client: &mut Socket,
    upstream: &mut Socket,
    idle: Duration,
    send_timeout: Duration,
) -> u64 {
    let mut up = Pipe::new();
    let mut down = Pipe::new();
    let mut to_client = 0u64;
    let mut quiet_until = Instant::now() + idle;
    loop {
        let now = Instant::now();
        let Ok(sent_up) = step(client, upstream, &mut up, now, send_timeout) else {
            return to_client;
        };
        let Ok(sent_down) = step(upstream, client, &mut down, now, send_timeout) else {
            return to_client;
        };
        to_client += sent_down.written as u64;
        if sent_up.moved || sent_down.moved {
            quiet_until = now + idle;
            continue;
        }
        let deadline = [Some(quiet_until), up.stall, down.stall]
            .into_iter()
            .flatten()
            .min()
            .expect("the idle deadline is always there");
        let woke = futures_lite::future::or(
            client.ready(!up.pending(), down.pending() || client.unsent(), deadline),
            upstream.ready(!down.pending(), up.pending() || upstream.unsent(), deadline),
        )
        .await;
        // Idle for `idle`, a write stalled for `send-timeout`, or a failure.
        if woke.is_err() {
            return to_client;
        }
    }
}

/// What one `step` did.
struct Stepped {
    /// Bytes written to the far side.
    written: usize,
    /// Something was read or written.
    moved: bool,
}

/// Move `p`'s way, from `from` to `to`: write what waits as far as `to`
/// takes it now, then, once nothing waits, read what `from` has. An error
/// when a side closed or failed.
fn step(
    from: &mut Socket,
    to: &mut Socket,
    p: &mut Pipe,
    now: Instant,
    send_timeout: Duration,
) -> io::Result<Stepped> {
    let mut done = Stepped {
        written: 0,
        moved: false,
    };
    if to.unsent() {
        to.try_flush()?;
    }
    while p.pending() {
        match to.try_write(&p.buf[p.start..p.end]) {
            None => break,
            Some(Ok(n)) => {
                p.start += n;
                done.written += n;
            }
            Some(Err(e)) => return Err(e),
        }
    }
    done.moved = done.written > 0;
    if p.pending() || to.unsent() {
        if done.moved || p.stall.is_none() {
            p.stall = Some(now + send_timeout);
        }
        return Ok(done);
    }
    p.stall = None;
    match from.try_read(&mut p.buf) {
        None => {}
        Some(Ok(0)) => return Err(io::ErrorKind::UnexpectedEof.into()),
        Some(Ok(n)) => {
            (p.start, p.end) = (0, n);
            done.moved = true;
        }
        Some(Err(e)) => return Err(e),
    }
    Ok(done)
}
