//! Content codings (RFC 9110 §8.4.1): which ones a client accepts, and gzip
//! (RFC 1952) written as a stream, a piece at a time. Each piece can be
//! flushed so that everything written so far decodes at the client: a
//! response streamed by its upstream stays streamed when it is compressed.
//!
//! The deflate state is large (a few hundred KiB) and costly to set up, so a
//! thread keeps the states its finished streams used and hands them to the
//! next ones: no allocation per compressed response once a shard is warm.

use std::cell::{Cell, RefCell};

use flate2::{Compress, Compression, Crc, FlushCompress, Status};

/// The content codings coreserve can send, best first on a tie.
const KNOWN: [&str; 2] = ["br", "gzip"];

/// The codings among `br` and `gzip` that an `Accept-Encoding` value
/// (its fields joined by commas) accepts, best first by their q-values
/// (`br` before `gzip` on a tie; `q=0` refuses, `*` stands for what is not
/// named).
pub fn accepted_encodings(text: &str) -> Vec<&'static str> {
    let star = quality(text, "*");
    let mut ranked: Vec<(&'static str, f32)> = KNOWN
        .into_iter()
        .filter_map(|coding| {
            // `x-gzip`, gzip's old name, counts as gzip (RFC 9110 §8.4.1.3).
            let named = match coding {
                "gzip" => quality(text, "gzip").or_else(|| quality(text, "x-gzip")),
                _ => quality(text, coding),
            };
            Some((coding, named.or(star)?))
        })
        .filter(|&(_, q)| q > 0.0)
        .collect();
    // A stable sort keeps br first among equals.
    ranked.sort_by(|a, b| b.1.total_cmp(&a.1));
    ranked.into_iter().map(|(coding, _)| coding).collect()
}

/// Whether an `Accept-Encoding` value accepts gzip (or its old name
/// `x-gzip`, which RFC 9110 §8.4.1.3 says to read as gzip).
pub fn accepts_gzip(text: &str) -> bool {
    let q = quality(text, "gzip")
        .or_else(|| quality(text, "x-gzip"))
        .or_else(|| quality(text, "*"));
    q.is_some_and(|q| q > 0.0)
}

/// The q-value `text` gives `coding` (1 when it names it without one; 0
/// when its q-value does not parse), or None when it does not name it.
fn quality(text: &str, coding: &str) -> Option<f32> {
    text.split(',').find_map(|item| {
        let mut parts = item.split(';').map(str::trim);
        if !parts.next()?.eq_ignore_ascii_case(coding) {
            return None;
        }
        let q = parts
            .find_map(|p| p.strip_prefix("q=").or_else(|| p.strip_prefix("Q=")))
            .map_or(Some(1.0), |v| v.trim().parse::<f32>().ok())
            .unwrap_or(0.0);
        Some(q)
    })
}

/// The gzip member header: no name, no time (a proxy has none to give),
/// deflate, made on Unix.
const GZIP_HEADER: [u8; 10] = [0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 3];

/// Most deflate states a thread keeps for reuse: the compressed responses
/// one shard has under way at once under a busy load (50 connections over
/// 2 shards keep about 25); beyond that they are freed.
const SPARE_STATES: usize = 32;

/// Most gzip streams under way at once on a thread: each holds a deflate
/// state from its response's head to its end (an event stream, a slow
/// reader: indefinitely), so past this a response goes uncompressed
/// rather than memory growing with the connections (256 of them are
/// about 70 MiB).
pub const MAX_LIVE_STREAMS: u32 = 256;

/// An output buffer that grew beyond this is not kept with its state.
const SPARE_OUTPUT_BYTES: usize = 64 << 10;

/// A deflate state at its level, and an output buffer, reset for reuse.
struct Spare {
    level: u32,
    deflate: Compress,
    output: Vec<u8>,
}

thread_local! {
    /// The deflate states and buffers of finished streams.
    static SPARE: RefCell<Vec<Spare>> = const { RefCell::new(Vec::new()) };
    /// Streams of this thread not yet dropped.
    static LIVE: Cell<u32> = const { Cell::new(0) };
}

/// The compressor broke (it never does on valid input; the stream is
/// then unusable and the response is cut short).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the gzip compressor failed")]
pub struct GzipError;

/// One gzip stream being written: the header before the first bytes, the
/// deflated payload, the trailer (CRC-32 and length) at `finish`. What it
/// writes collects in its `output` until the caller takes it.
pub struct GzipStream {
    /// Taken back by the thread's spares when the stream is dropped.
    spare: Option<Spare>,
    crc: Crc,
    started: bool,
    finished: bool,
}

impl std::fmt::Debug for GzipStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GzipStream")
            .field("in", &self.crc.amount())
            .finish()
    }
}

impl GzipStream {
    /// Whether another stream may start on this thread (fewer than
    /// `MAX_LIVE_STREAMS` are under way): asked before a response's head
    /// says it is compressed.
    pub fn available() -> bool {
        LIVE.with(Cell::get) < MAX_LIVE_STREAMS
    }

    /// A stream compressing at `level` (1 fastest to 9 smallest).
    pub fn new(level: u32) -> GzipStream {
        LIVE.with(|n| n.set(n.get() + 1));
        let spare = SPARE.with(|s| {
            let mut s = s.borrow_mut();
            let at = s.iter().position(|sp| sp.level == level)?;
            Some(s.swap_remove(at))
        });
        GzipStream {
            spare: Some(spare.unwrap_or_else(|| Spare {
                level,
                // Raw deflate: the gzip framing is written here.
                deflate: Compress::new(Compression::new(level), false),
                output: Vec::new(),
            })),
            crc: Crc::new(),
            started: false,
            finished: false,
        }
    }

    /// Compress `payload` into the output (some of it may stay in the
    /// compressor until the next `flush` or `finish`).
    pub fn write(&mut self, payload: &[u8]) -> Result<(), GzipError> {
        if payload.is_empty() {
            return Ok(());
        }
        if self.finished {
            return Err(GzipError);
        }
        self.start();
        self.crc.update(payload);
        self.deflate(payload, FlushCompress::None)
    }

    /// Put what the compressor holds into the output, so that everything
    /// written so far decodes (a sync flush: the stream goes on after it).
    pub fn flush(&mut self) -> Result<(), GzipError> {
        if !self.started || self.finished {
            return Ok(());
        }
        self.deflate(&[], FlushCompress::Sync)
    }

    /// Put the end of the stream into the output: the last of the
    /// compressed payload and the trailer, once (a second call adds
    /// nothing). Nothing may be written after it.
    pub fn finish(&mut self) -> Result<(), GzipError> {
        if self.finished {
            return Ok(());
        }
        self.finished = true;
        self.start();
        self.deflate(&[], FlushCompress::Finish)?;
        let (sum, amount) = (self.crc.sum(), self.crc.amount());
        let out = self.output_mut()?;
        out.extend_from_slice(&sum.to_le_bytes());
        out.extend_from_slice(&amount.to_le_bytes());
        Ok(())
    }

    /// The compressed bytes written since the last `clear`.
    pub fn output(&self) -> &[u8] {
        self.spare.as_ref().map_or(&[], |s| &s.output)
    }

    /// Forget the output (the caller sent it on).
    pub fn clear(&mut self) {
        if let Some(s) = &mut self.spare {
            s.output.clear();
        }
    }

    fn output_mut(&mut self) -> Result<&mut Vec<u8>, GzipError> {
        self.spare.as_mut().map(|s| &mut s.output).ok_or(GzipError)
    }

    fn start(&mut self) {
        if !self.started {
            self.started = true;
            if let Ok(out) = self.output_mut() {
                out.extend_from_slice(&GZIP_HEADER);
            }
        }
    }

    /// Run `input` through the compressor into the output, growing it until
    /// the compressor has taken all of the input and, for a flush, said all
    /// it had to say (it leaves room in the output unused).
    fn deflate(&mut self, mut input: &[u8], flush: FlushCompress) -> Result<(), GzipError> {
        let Spare {
            deflate, output, ..
        } = self.spare.as_mut().ok_or(GzipError)?;
        loop {
            output.reserve(input.len() / 2 + 256);
            let before = deflate.total_in();
            let status = deflate
                .compress_vec(input, output, flush)
                .map_err(|_| GzipError)?;
            input = &input[(deflate.total_in() - before) as usize..];
            let room_left = output.len() < output.capacity();
            match (flush, status) {
                (FlushCompress::Finish, Status::StreamEnd) => return Ok(()),
                (FlushCompress::Finish, _) => {}
                _ if input.is_empty() && room_left => return Ok(()),
                _ => {}
            }
        }
    }
}

/// `input` gzipped whole at `level`, as one gzip member: a static file
/// compressed once and kept.
pub fn gzip_whole(input: &[u8], level: u32) -> Result<Vec<u8>, GzipError> {
    let mut stream = GzipStream::new(level);
    stream.write(input)?;
    stream.finish()?;
    let spare = stream.spare.as_mut().ok_or(GzipError)?;
    Ok(std::mem::take(&mut spare.output))
}

impl Drop for GzipStream {
    fn drop(&mut self) {
        let _ = LIVE.try_with(|n| n.set(n.get().saturating_sub(1)));
        let Some(mut spare) = self.spare.take() else {
            return;
        };
        if spare.output.capacity() > SPARE_OUTPUT_BYTES {
            spare.output = Vec::new();
        }
        spare.output.clear();
        spare.deflate.reset();
        // During the thread's own teardown the spares may be gone.
        let _ = SPARE.try_with(|s| {
            let mut s = s.borrow_mut();
            if s.len() < SPARE_STATES {
                s.push(spare);
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn gunzip(bytes: &[u8]) -> std::io::Result<Vec<u8>> {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(bytes).read_to_end(&mut out)?;
        Ok(out)
    }

    #[test]
    fn a_whole_body_is_one_gzip_member() {
        let text = b"a file compressed once and kept ".repeat(1000);
        for input in [&text[..], b""] {
            let out = gzip_whole(input, 2).unwrap();
            assert_eq!(gunzip(&out).unwrap(), input);
        }
        assert!(gzip_whole(&text, 2).unwrap().len() < text.len() / 20);
    }

    #[test]
    fn what_it_writes_is_gzip() {
        let text: Vec<u8> = (0..200_000u32)
            .flat_map(|i| format!("line {} of a text\n", i % 977).into_bytes())
            .collect();
        for level in [1, 6, 9] {
            let mut g = GzipStream::new(level);
            let mut out = Vec::new();
            for piece in text.chunks(7_000) {
                g.write(piece).unwrap();
                out.extend_from_slice(g.output());
                g.clear();
            }
            g.finish().unwrap();
            out.extend_from_slice(g.output());
            assert!(out.len() < text.len() / 5, "level {level}: {}", out.len());
            assert_eq!(gunzip(&out).unwrap(), text, "level {level}");
        }
        // Nothing at all is an empty member; a second finish adds nothing,
        // and nothing can be written after it.
        let mut g = GzipStream::new(2);
        g.finish().unwrap();
        g.finish().unwrap();
        assert_eq!(gunzip(g.output()).unwrap(), b"");
        assert_eq!(g.output().len(), 20);
        assert_eq!(g.write(b"late"), Err(GzipError));
    }

    #[test]
    fn streams_are_counted_while_they_live() {
        let before = LIVE.with(Cell::get);
        let streams: Vec<GzipStream> = (0..MAX_LIVE_STREAMS - before)
            .map(|_| GzipStream::new(2))
            .collect();
        assert!(!GzipStream::available());
        drop(streams);
        assert_eq!(LIVE.with(Cell::get), before);
        assert!(GzipStream::available());
    }

    #[test]
    fn a_flush_makes_everything_so_far_decodable() {
        let mut g = GzipStream::new(6);
        g.write(b"data: first event\n\n").unwrap();
        g.flush().unwrap();
        // A decoder given only this much already has the first event.
        let mut d = flate2::Decompress::new(false);
        let mut plain = Vec::with_capacity(1024);
        d.decompress_vec(
            &g.output()[GZIP_HEADER.len()..],
            &mut plain,
            flate2::FlushDecompress::Sync,
        )
        .unwrap();
        assert_eq!(plain, b"data: first event\n\n");
        g.write(b"data: second\n\n").unwrap();
        g.finish().unwrap();
        assert_eq!(
            gunzip(g.output()).unwrap(),
            b"data: first event\n\ndata: second\n\n"
        );
        // A flush before anything was written writes nothing.
        let mut g = GzipStream::new(6);
        g.flush().unwrap();
        assert!(g.output().is_empty());
    }

    #[test]
    fn a_dropped_state_serves_the_next_stream_clean() {
        {
            let mut g = GzipStream::new(3);
            g.write(b"left behind in the compressor").unwrap();
            // Dropped unfinished (a client went away): reset, kept.
        }
        let kept = SPARE.with(|s| s.borrow().iter().filter(|sp| sp.level == 3).count());
        assert_eq!(kept, 1);
        let mut g = GzipStream::new(3);
        assert!(g.output().is_empty());
        g.write(b"fresh").unwrap();
        g.finish().unwrap();
        assert_eq!(gunzip(g.output()).unwrap(), b"fresh");
        assert_eq!(SPARE.with(|s| s.borrow().len()), 0, "taken");
        drop(g);
        // A state serves its own level only.
        let other = GzipStream::new(9);
        assert_eq!(SPARE.with(|s| s.borrow().len()), 1, "level 3 left alone");
        drop(other);
    }

    #[test]
    fn gzip_is_accepted_by_name_or_star_unless_refused() {
        assert!(accepts_gzip("gzip, deflate, br"));
        assert!(accepts_gzip("GZIP;q=0.5"));
        assert!(accepts_gzip("x-gzip"));
        assert!(accepts_gzip("*"));
        assert!(!accepts_gzip("gzip;q=0"));
        assert!(!accepts_gzip("gzip;q=0.000, *"));
        assert!(!accepts_gzip("br, deflate"));
        assert!(!accepts_gzip("identity"));
        assert!(!accepts_gzip(""));
        assert!(!accepts_gzip("*;q=0"));
    }

    #[test]
    fn the_codings_a_client_accepts_best_first() {
        assert_eq!(accepted_encodings("gzip, deflate, br"), vec!["br", "gzip"]);
        assert_eq!(accepted_encodings("gzip;q=0.5"), vec!["gzip"]);
        assert_eq!(accepted_encodings("br;q=0, gzip"), vec!["gzip"]);
        assert_eq!(accepted_encodings("*"), vec!["br", "gzip"]);
        assert_eq!(accepted_encodings("*, br;q=0"), vec!["gzip"]);
        assert!(accepted_encodings("identity").is_empty());
        assert!(accepted_encodings("").is_empty());
        // Ranked by q: the client prefers gzip here.
        assert_eq!(accepted_encodings("br;q=0.1, gzip;q=1"), vec!["gzip", "br"]);
        assert_eq!(accepted_encodings("gzip, br;q=0.9"), vec!["gzip", "br"]);
        // gzip's old name, as `accepts_gzip` reads it.
        assert_eq!(accepted_encodings("x-gzip"), vec!["gzip"]);
        assert_eq!(accepted_encodings("x-gzip;q=0.5, br"), vec!["br", "gzip"]);
        assert_eq!(accepted_encodings("*;q=0.5, br"), vec!["br", "gzip"]);
        assert_eq!(accepted_encodings("gzip;q=0.5, *"), vec!["br", "gzip"]);
    }
}
