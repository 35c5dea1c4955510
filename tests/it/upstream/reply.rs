//! What the fixture writes: `Reply`, a list of steps, and the canned
//! (mis)behaviours.

use std::time::Duration;

use super::{Gate, Request};

/// One thing the fixture does in answer to a request.
#[derive(Debug, Clone)]
pub(super) enum Step {
    Write(Vec<u8>),
    Sleep(Duration),
    Wait(Gate),
    /// Shut the connection (FIN) and stop.
    Close,
    /// Abort the connection (RST: SO_LINGER 0) and stop.
    Reset,
    /// Say nothing more; read (and record) until the peer closes.
    Hold,
    /// Tunnel: send back every byte received until the peer closes.
    Echo,
}

/// What the fixture does in answer to one request: writes, pauses, then
/// either waits for the next request on the connection (the default), or
/// closes, resets, holds or echoes.
#[derive(Debug, Clone, Default)]
pub struct Reply {
    pub(super) steps: Vec<Step>,
}

impl Reply {
    /// Nothing yet.
    pub fn new() -> Reply {
        Reply::default()
    }

    /// Write these bytes.
    pub fn write(mut self, bytes: impl AsRef<[u8]>) -> Reply {
        self.steps.push(Step::Write(bytes.as_ref().to_vec()));
        self
    }

    /// Pause.
    pub fn sleep(mut self, d: Duration) -> Reply {
        self.steps.push(Step::Sleep(d));
        self
    }

    /// Pause until the test opens `gate`.
    pub fn wait(mut self, gate: &Gate) -> Reply {
        self.steps.push(Step::Wait(gate.clone()));
        self
    }

    /// Then close the connection (FIN).
    pub fn close(mut self) -> Reply {
        self.steps.push(Step::Close);
        self
    }

    /// Then reset the connection (RST).
    pub fn reset(mut self) -> Reply {
        self.steps.push(Step::Reset);
        self
    }

    /// Then say nothing more until the peer closes.
    pub fn hold(mut self) -> Reply {
        self.steps.push(Step::Hold);
        self
    }

    /// Then echo every byte back until the peer closes.
    pub fn echo(mut self) -> Reply {
        self.steps.push(Step::Echo);
        self
    }

    /// 200 with this body and a Content-Length; the connection stays open.
    pub fn ok(body: impl AsRef<[u8]>) -> Reply {
        Reply::status(200, &[], body)
    }

    /// A response with a Content-Length; the connection stays open.
    pub fn status(code: u16, headers: &[(&str, &str)], body: impl AsRef<[u8]>) -> Reply {
        let body = body.as_ref();
        let mut out = format!("HTTP/1.1 {code} {}\r\n", reason(code));
        for (n, v) in headers {
            out.push_str(&format!("{n}: {v}\r\n"));
        }
        out.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
        let mut bytes = out.into_bytes();
        bytes.extend_from_slice(body);
        Reply::new().write(bytes)
    }

    /// 200 whose body is the request as the upstream saw it: the request
    /// line, each field as `name: value` on a line, an empty line, the body.
    pub fn echo_request(req: &Request) -> Reply {
        let mut body = format!("{} {}\n", req.method, req.target).into_bytes();
        for (n, v) in &req.headers {
            body.extend_from_slice(format!("{n}: {v}\n").as_bytes());
        }
        body.push(b'\n');
        body.extend_from_slice(&req.body);
        Reply::ok_to(req, body)
    }

    /// 200 with this body, or for a HEAD request its head alone (with the
    /// Content-Length the body would have).
    pub fn ok_to(req: &Request, body: impl AsRef<[u8]>) -> Reply {
        let body = body.as_ref();
        if req.method == "HEAD" {
            Reply::new().write(format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n",
                body.len()
            ))
        } else {
            Reply::ok(body)
        }
    }

    /// These steps, then `other`'s.
    pub fn then(mut self, other: Reply) -> Reply {
        self.steps.extend(other.steps);
        self
    }

    /// A response head that is not HTTP, then silence.
    pub fn garbage() -> Reply {
        Reply::new()
            .write("HELLO-GARBAGE this is not a status line\r\nX-Bad: bytes\r\n\r\n")
            .hold()
    }

    /// A status line and 1 MiB of fields with no end of head, then silence.
    pub fn oversized_head() -> Reply {
        let mut head = b"HTTP/1.1 200 OK\r\n".to_vec();
        let mut i = 0;
        while head.len() < 1 << 20 {
            head.extend_from_slice(
                format!("X-Filler-{i}: {}\r\n", "GARBAGE".repeat(14)).as_bytes(),
            );
            i += 1;
        }
        Reply::new().write(head).hold()
    }

    /// A head promising 100 bytes, 10 of them, then a close.
    pub fn truncated_body() -> Reply {
        Reply::new()
            .write("HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789")
            .close()
    }

    /// Nothing at all: the request is read, never answered.
    pub fn silence() -> Reply {
        Reply::new().hold()
    }

    /// The request is read, then the connection is reset without a byte.
    pub fn reset_after_request() -> Reply {
        Reply::new().reset()
    }

    /// 200 `body` after a pause.
    pub fn slow(delay: Duration, body: &str) -> Reply {
        Reply::new().sleep(delay).then(Reply::ok(body))
    }

    /// A chunked `text/event-stream` of `n` events (`data: 1`, `data: 2`,
    /// …), one chunk each, `delay` apart, then the last chunk.
    pub fn sse(n: usize, delay: Duration) -> Reply {
        let mut r = Reply::new().write(
            "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\nTransfer-Encoding: chunked\r\n\r\n",
        );
        for i in 1..=n {
            if i > 1 {
                r = r.sleep(delay);
            }
            r = r.write(chunk(format!("data: {i}\n\n")));
        }
        r.write("0\r\n\r\n")
    }

    /// 101 Switching Protocols (to `websocket`), then an echo tunnel.
    pub fn upgrade_echo() -> Reply {
        Reply::new()
            .write("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n")
            .echo()
    }
}

/// One chunk of a chunked body, framed.
pub fn chunk(data: impl AsRef<[u8]>) -> Vec<u8> {
    let data = data.as_ref();
    let mut out = format!("{:x}\r\n", data.len()).into_bytes();
    out.extend_from_slice(data);
    out.extend_from_slice(b"\r\n");
    out
}

fn reason(code: u16) -> &'static str {
    match code {
        101 => "Switching Protocols",
        200 => "OK",
        204 => "No Content",
        304 => "Not Modified",
        400 => "Bad Request",
        404 => "Not Found",
        500 => "Internal Server Error",
        _ => "Whatever",
    }
}
