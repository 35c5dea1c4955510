//! Writing a message body with the framing its head announced: a
//! Content-Length body, chunked (RFC 9112 §7.1), or delimited by closing
//! the connection (a response to an HTTP/1.0 client). What a proxy needs to
//! re-frame what it forwards: the bytes it writes are never the peer's
//! framing, only the payload, so nothing the peer sent can smuggle a second
//! message through.

/// The line that ends every chunk's data and the last chunk's trailers.
pub const CRLF: &[u8] = b"\r\n";

/// The last chunk with no trailer fields.
pub const LAST_CHUNK: &[u8] = b"0\r\n\r\n";

/// Why a body could not be written as its head announced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    /// More payload than the Content-Length announced.
    #[error("body longer than its Content-Length")]
    TooLong,
    /// The body ended before the Content-Length was reached.
    #[error("body shorter than its Content-Length")]
    TooShort,
    /// Payload for a message that has no body (HEAD, 204, 304).
    #[error("payload for a message without a body")]
    NoBody,
}

/// How the body being written is framed, and how far it has got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyEncoder {
    /// No body at all.
    None,
    /// Exactly this many payload bytes are still to be written.
    Length(u64),
    /// Chunked: each write is one chunk, `finish` writes the last chunk.
    Chunked,
    /// Delimited by the end of the connection: payload as it is.
    Close,
}

impl BodyEncoder {
    /// Append `payload` to `out`, framed. An empty payload writes nothing
    /// (an empty chunk would end a chunked body).
    pub fn write(&mut self, out: &mut Vec<u8>, payload: &[u8]) -> Result<(), EncodeError> {
        if payload.is_empty() {
            return Ok(());
        }
        match self {
            BodyEncoder::None => return Err(EncodeError::NoBody),
            BodyEncoder::Length(left) => {
                let n = payload.len() as u64;
                if n > *left {
                    return Err(EncodeError::TooLong);
                }
                *left -= n;
                out.extend_from_slice(payload);
            }
            BodyEncoder::Chunked => {
                write_chunk_size(out, payload.len());
                out.extend_from_slice(payload);
                out.extend_from_slice(CRLF);
            }
            BodyEncoder::Close => out.extend_from_slice(payload),
        }
        Ok(())
    }

    /// End the body: the last chunk for chunked, a check that everything
    /// announced was written for Content-Length. After it the encoder
    /// writes nothing more.
    pub fn finish(&mut self, out: &mut Vec<u8>) -> Result<(), EncodeError> {
        let done = std::mem::replace(self, BodyEncoder::None);
        match done {
            BodyEncoder::Length(left) if left > 0 => Err(EncodeError::TooShort),
            BodyEncoder::Chunked => {
                out.extend_from_slice(LAST_CHUNK);
                Ok(())
            }
            _ => Ok(()),
        }
    }

    /// Whether a body written with this framing ends without closing the
    /// connection (everything but `Close`).
    pub fn self_delimited(&self) -> bool {
        !matches!(self, BodyEncoder::Close)
    }
}

/// Append a chunk-size line (`1a2b\r\n`) for a chunk of `len` bytes; the
/// caller writes the data and a CRLF after it (a proxy may send the data
/// from another buffer without copying it here).
pub fn write_chunk_size(out: &mut Vec<u8>, len: usize) {
    let mut digits = [0u8; 16];
    let mut i = digits.len();
    let mut n = len;
    loop {
        i -= 1;
        digits[i] = b"0123456789abcdef"[n & 0xf];
        n >>= 4;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
    out.extend_from_slice(CRLF);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::body::BodyDecoder;
    use crate::http::parse::BodyFraming;

    #[test]
    fn chunked_round_trips_through_the_decoder() {
        let mut out = Vec::new();
        let mut e = BodyEncoder::Chunked;
        for part in [&b"hello"[..], b"", &[b'x'; 300][..], b"!"] {
            e.write(&mut out, part).unwrap();
        }
        e.finish(&mut out).unwrap();
        assert!(out.starts_with(b"5\r\nhello\r\n12c\r\n"));
        assert!(out.ends_with(b"1\r\n!\r\n0\r\n\r\n"));
        let mut d = BodyDecoder::new(BodyFraming::Chunked, u64::MAX, 1024).unwrap();
        let p = d.decode(&out).unwrap();
        assert!(p.done);
        assert_eq!(p.consumed, out.len());
        assert_eq!(p.payload, 306);
        // Finished: nothing more is written.
        assert_eq!(e.write(&mut out, b"late"), Err(EncodeError::NoBody));
    }

    #[test]
    fn content_length_is_held_to_what_it_announced() {
        let mut out = Vec::new();
        let mut e = BodyEncoder::Length(5);
        e.write(&mut out, b"abc").unwrap();
        assert_eq!(e.write(&mut out, b"def"), Err(EncodeError::TooLong));
        assert_eq!(e.clone().finish(&mut out), Err(EncodeError::TooShort));
        e.write(&mut out, b"de").unwrap();
        e.finish(&mut out).unwrap();
        assert_eq!(out, b"abcde");
    }

    #[test]
    fn no_body_and_close_delimited() {
        let mut out = Vec::new();
        assert_eq!(
            BodyEncoder::None.write(&mut out, b"x"),
            Err(EncodeError::NoBody)
        );
        let mut e = BodyEncoder::Close;
        e.write(&mut out, b"as is").unwrap();
        e.finish(&mut out).unwrap();
        assert_eq!(out, b"as is");
        assert!(!BodyEncoder::Close.self_delimited());
        assert!(BodyEncoder::Chunked.self_delimited());
    }

    #[test]
    fn chunk_sizes_are_lowercase_hex() {
        for (len, line) in [
            (0, "0\r\n"),
            (15, "f\r\n"),
            (16, "10\r\n"),
            (0xabcdef, "abcdef\r\n"),
        ] {
            let mut out = Vec::new();
            write_chunk_size(&mut out, len);
            assert_eq!(out, line.as_bytes());
        }
    }
}
