//! The admin listener: the master's own small HTTP endpoint for metrics,
//! on 127.0.0.1 by default, apart from the traffic the shards serve.
//!
//! Each scrape asks every shard for a snapshot over its control channel and
//! answers once all have replied (the analogue of cluster's process.send).

use std::cell::Cell;
use std::mem::MaybeUninit;
use std::rc::Rc;
use std::time::Duration;

use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::channels::local_channel::{self, LocalSender};
use glommio::net::{TcpListener, TcpStream};

use crate::http::parse::{self, HeadLimits, HeadScanner, Method, MAX_HEADERS_LIMIT};
use crate::listener::AcceptErrors;

/// How long an admin exchange may take, from accept to the last byte of the
/// answer: the whole request, not each read, so a client trickling bytes
/// cannot hold a connection open.
pub const ADMIN_TIMEOUT: Duration = Duration::from_secs(5);

/// Admin connections served at once; past it a connection gets 503. Scrapers
/// need one or two; the cap keeps a flood from piling up tasks and buffers
/// in the master.
pub const ADMIN_MAX_CONNECTIONS: usize = 64;

/// Requests to the admin endpoint are small; anything larger is refused.
const ADMIN_MAX_HEAD: usize = 8192;

/// The content type of Prometheus' text exposition format.
pub const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Asks the master for the rendered metrics; the reply comes on the sender.
pub type ScrapeRequest = LocalSender<String>;

/// Accept admin connections until cancelled.
pub async fn serve(listener: TcpListener, path: Rc<str>, scrape: Rc<dyn Fn(ScrapeRequest)>) {
    let mut errors = AcceptErrors::default();
    let open = Rc::new(Cell::new(0usize));
    loop {
        match listener.accept().await {
            Ok(mut stream) => {
                let (path, scrape, open) = (path.clone(), scrape.clone(), open.clone());
                glommio::spawn_local(async move {
                    open.set(open.get() + 1);
                    let exchange = async {
                        if open.get() > ADMIN_MAX_CONNECTIONS {
                            reply(&mut stream, 503, "text/plain", "too many connections\n").await
                        } else {
                            answer(&mut stream, &path, &*scrape).await
                        }
                    };
                    let deadline = async {
                        glommio::timer::Timer::new(ADMIN_TIMEOUT).await;
                        Err(std::io::ErrorKind::TimedOut.into())
                    };
                    let _ = futures_lite::future::or(exchange, deadline).await;
                    open.set(open.get() - 1);
                })
                .detach();
            }
            Err(e) => errors.pause(&e, "admin").await,
        }
    }
}

async fn answer(
    stream: &mut TcpStream,
    path: &str,
    scrape: &dyn Fn(ScrapeRequest),
) -> std::io::Result<()> {
    let mut buf = vec![0u8; ADMIN_MAX_HEAD];
    let mut len = 0;
    let mut scanner = HeadScanner::default();
    let end = loop {
        if len == buf.len() {
            return reply(stream, 431, "text/plain", "request too large\n").await;
        }
        let n = stream.read(&mut buf[len..]).await?;
        if n == 0 {
            return Ok(());
        }
        len += n;
        if let Some(end) = scanner.find_end(&buf[..len]) {
            break end;
        }
    };
    let limits = HeadLimits {
        max_header_bytes: ADMIN_MAX_HEAD,
        max_uri_bytes: ADMIN_MAX_HEAD,
        max_headers: 64,
    };
    let mut headers = [const { MaybeUninit::uninit() }; MAX_HEADERS_LIMIT];
    let (method, wanted) = match parse::parse(&buf[..end], &mut headers, &limits) {
        Ok(req) => (req.method, req.path == path),
        Err(_) => return reply(stream, 400, "text/plain", "bad request\n").await,
    };
    let head_only = method == Method::Head;
    if !wanted {
        let body = "not found: the metrics are at the configured path\n";
        return reply_to(stream, 404, "text/plain", body, "", head_only).await;
    }
    if !matches!(method, Method::Get | Method::Head) {
        let allow = "Allow: GET, HEAD\r\n";
        return reply_to(
            stream,
            405,
            "text/plain",
            "only GET and HEAD\n",
            allow,
            false,
        )
        .await;
    }
    let (tx, rx) = local_channel::new_bounded(1);
    scrape(tx);
    // No answer: the master stops (a drain, an upgrade's handover) and
    // dropped the request. An empty 200 would be a scrape that worked and
    // found no series (Prometheus marks them all stale).
    let Some(body) = rx.recv().await else {
        let body = "the server is stopping: no metrics\n";
        return reply_to(stream, 503, "text/plain", body, "", head_only).await;
    };
    reply_to(stream, 200, PROMETHEUS_TEXT, &body, "", head_only).await
}

async fn reply(
    stream: &mut TcpStream,
    status: u16,
    content_type: &str,
    body: &str,
) -> std::io::Result<()> {
    reply_to(stream, status, content_type, body, "", false).await
}

/// Write a response, with the header lines in `extra` (each ending in
/// CRLF); for HEAD, the same head (its length included), no body.
async fn reply_to(
    stream: &mut TcpStream,
    status: u16,
    content_type: &str,
    body: &str,
    extra: &str,
    head_only: bool,
) -> std::io::Result<()> {
    let reason = crate::http::status::Status::from_code(status).map_or("", |s| s.reason());
    let date = httpdate::fmt_http_date(std::time::SystemTime::now());
    let head = format!(
        "HTTP/1.1 {status} {reason}\r\nServer: coreserve\r\nDate: {date}\r\n\
         Content-Type: {content_type}\r\nContent-Length: {}\r\n{extra}Connection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    if !head_only {
        stream.write_all(body.as_bytes()).await?;
    }
    stream.flush().await
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};

    use super::*;

    /// The text of a GET of `path` from the admin listener at `addr`.
    fn get(addr: std::net::SocketAddr, path: &str) -> String {
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        let mut text = String::new();
        s.read_to_string(&mut text).unwrap();
        text
    }

    /// A scrape the master answers is a 200 with its text; one it drops
    /// (it stops) is a 503, never an empty 200.
    #[test]
    fn a_scrape_the_master_drops_is_a_503() {
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let (stop_tx, stop_rx) = std::sync::mpsc::channel::<()>();
        let server = std::thread::spawn(move || {
            glommio::LocalExecutorBuilder::default()
                .spawn(move || async move {
                    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
                    addr_tx.send(listener.local_addr().unwrap()).unwrap();
                    let asked = Rc::new(Cell::new(0));
                    let scrape: Rc<dyn Fn(ScrapeRequest)> = Rc::new(move |tx: ScrapeRequest| {
                        asked.set(asked.get() + 1);
                        if asked.get() == 1 {
                            glommio::spawn_local(async move {
                                let _ = tx.send("coreserve_info 1\n".to_string()).await;
                            })
                            .detach();
                        }
                    });
                    let serving = glommio::spawn_local(serve(listener, "/metrics".into(), scrape));
                    while stop_rx.try_recv().is_err() {
                        glommio::timer::sleep(Duration::from_millis(10)).await;
                    }
                    drop(serving);
                })
                .unwrap()
                .join()
                .unwrap();
        });
        let addr = addr_rx.recv().unwrap();
        let answered = get(addr, "/metrics");
        assert!(answered.starts_with("HTTP/1.1 200 "), "{answered}");
        assert!(
            answered.ends_with("\r\n\r\ncoreserve_info 1\n"),
            "{answered}"
        );
        let dropped = get(addr, "/metrics");
        assert!(dropped.starts_with("HTTP/1.1 503 "), "{dropped}");
        stop_tx.send(()).unwrap();
        server.join().unwrap();
    }
}
