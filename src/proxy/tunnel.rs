//! An upgraded connection (WebSocket): after the upstream's 101, bytes go
//! both ways as they are until either side closes or both stay silent for
//! the route's `tunnel-idle-timeout`.

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
