//! The fixture's strict request parser: httparse for the head, then the
//! body by Content-Length or chunked (decoded here). Anything ambiguous is
//! an error the fixture records.

use super::Request;

pub(super) enum Parsed {
    /// More bytes needed; `wants_continue` once a head with
    /// `Expect: 100-continue` is complete and its body is not.
    Partial {
        wants_continue: bool,
    },
    Done(Request, usize),
    Bad(String),
}

/// Find the end of a line: the index of its CR, or an error on a bare LF.
fn line_end(b: &[u8]) -> Result<Option<usize>, String> {
    match b.iter().position(|&c| c == b'\n') {
        None => Ok(None),
        Some(0) => Err("a bare LF".into()),
        Some(i) if b[i - 1] != b'\r' => Err("a bare LF".into()),
        Some(i) => Ok(Some(i - 1)),
    }
}

/// Parse one request from the front of `buf`, strictly.
pub(super) fn parse(buf: &[u8]) -> Parsed {
    let mut fields = [httparse::EMPTY_HEADER; 128];
    let mut r = httparse::Request::new(&mut fields);
    let head_len = match r.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => {
            return Parsed::Partial {
                wants_continue: false,
            }
        }
        Err(e) => return Parsed::Bad(format!("head: {e}")),
    };
    let head = &buf[..head_len];
    for (i, &c) in head.iter().enumerate() {
        if c == b'\n' && (i == 0 || head[i - 1] != b'\r') {
            return Parsed::Bad("a bare LF in the head".into());
        }
    }
    let headers: Vec<(String, String)> = r
        .headers
        .iter()
        .map(|h| {
            (
                h.name.to_string(),
                String::from_utf8_lossy(h.value).into_owned(),
            )
        })
        .collect();
    let mut length = None;
    let mut te = Vec::new();
    let mut expect = false;
    for (n, v) in &headers {
        if n.eq_ignore_ascii_case("content-length") {
            if length.is_some() {
                return Parsed::Bad("two Content-Length fields".into());
            }
            if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) || v.len() > 15 {
                return Parsed::Bad(format!("Content-Length {v:?}"));
            }
            length = Some(v.parse::<usize>().unwrap());
        } else if n.eq_ignore_ascii_case("transfer-encoding") {
            te.push(v.clone());
        } else if n.eq_ignore_ascii_case("expect") {
            expect = v.eq_ignore_ascii_case("100-continue");
        }
    }
    let chunked = !te.is_empty();
    if chunked {
        if length.is_some() {
            return Parsed::Bad("Content-Length and Transfer-Encoding".into());
        }
        if te.len() != 1 || !te[0].eq_ignore_ascii_case("chunked") {
            return Parsed::Bad(format!("Transfer-Encoding {te:?}"));
        }
    }
    let rest = &buf[head_len..];
    let (body, trailers, chunk_extensions, body_len) = if chunked {
        match dechunk(rest) {
            Err(e) => return Parsed::Bad(e),
            Ok(None) => {
                return Parsed::Partial {
                    wants_continue: expect,
                }
            }
            Ok(Some(done)) => done,
        }
    } else {
        let n = length.unwrap_or(0);
        if rest.len() < n {
            return Parsed::Partial {
                wants_continue: expect,
            };
        }
        (rest[..n].to_vec(), Vec::new(), false, n)
    };
    let len = head_len + body_len;
    Parsed::Done(
        Request {
            n: 0,
            conn: 0,
            seq: 0,
            port: 0,
            method: r.method.unwrap().to_string(),
            target: r.path.unwrap().to_string(),
            version: r.version.unwrap(),
            headers,
            body,
            chunked,
            chunk_extensions,
            trailers,
            raw: buf[..len].to_vec(),
        },
        len,
    )
}

type Dechunked = (Vec<u8>, Vec<(String, String)>, bool, usize);

/// Decode a chunked body from the front of `b`: None if incomplete.
fn dechunk(b: &[u8]) -> Result<Option<Dechunked>, String> {
    let mut pos = 0;
    let mut pieces = Vec::new();
    let mut extensions = false;
    loop {
        let Some(end) = line_end(&b[pos..])? else {
            return Ok(None);
        };
        let line = std::str::from_utf8(&b[pos..pos + end]).map_err(|_| "chunk-size not text")?;
        let (size, ext) = match line.split_once(';') {
            Some((s, e)) => (s, Some(e)),
            None => (line, None),
        };
        extensions |= ext.is_some();
        if size.is_empty() || size.len() > 15 || !size.bytes().all(|c| c.is_ascii_hexdigit()) {
            return Err(format!("chunk-size line {line:?}"));
        }
        let size = usize::from_str_radix(size, 16).unwrap();
        pos += end + 2;
        if size == 0 {
            let mut trailers = Vec::new();
            loop {
                let Some(end) = line_end(&b[pos..])? else {
                    return Ok(None);
                };
                if end == 0 {
                    pos += 2;
                    let mut body = Vec::new();
                    for (from, to) in pieces {
                        body.extend_from_slice(&b[from..to]);
                    }
                    return Ok(Some((body, trailers, extensions, pos)));
                }
                let line = String::from_utf8_lossy(&b[pos..pos + end]).into_owned();
                let Some((n, v)) = line.split_once(':') else {
                    return Err(format!("trailer line {line:?}"));
                };
                trailers.push((n.to_string(), v.trim().to_string()));
                pos += end + 2;
            }
        }
        if b.len() < pos + size + 2 {
            return Ok(None);
        }
        pieces.push((pos, pos + size));
        if &b[pos + size..pos + size + 2] != b"\r\n" {
            return Err("chunk data not followed by CRLF".into());
        }
        pos += size + 2;
    }
}
