//! Sending a file range straight from the page cache to a socket.
//!
//! sendfile(2) hands the page-cache pages to the socket: no copy through
//! user space, where the io_uring path copies twice (page cache → buffer →
//! socket). But sendfile reads the file synchronously, and a range not in
//! the page cache would stall the whole shard on the disk. So it is used
//! only for a range that cachestat(2) (Linux 6.5) reports fully cached — a
//! page evicted, or still being read in, between the two calls costs one
//! read, nothing worse — and the io_uring path serves the rest. cachestat
//! answers only for files the caller owns or may write (Linux 6.14 and
//! backports), and a system-call filter may not know it (the packaged
//! unit's `@system-service` on an older systemd): a site's files are often
//! root's, and a service's user neither. Once it refuses, a shard asks by
//! one-byte reads that do not wait (`RWF_NOWAIT`) at each 128 KiB of the
//! range and at its end (readahead brings a file in by such runs) instead,
//! as it does on a kernel without cachestat: the io_uring path was 35–40 %
//! slower than nginx's sendfile for 80–200 KB files. Where neither
//! answers (a file system without `RWF_NOWAIT`), the io_uring path serves. The socket must be non-blocking (every connection's is):
//! sendfile sends what fits and the caller waits for room its own way.

use std::cell::Cell;
use std::io;
use std::os::fd::RawFd;

/// The page size the kernel counts cached pages in.
fn page_size() -> u64 {
    static PAGE: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    // SAFETY: sysconf(3) only reads a system value.
    *PAGE.get_or_init(|| match unsafe { libc::sysconf(libc::_SC_PAGESIZE) } {
        n if n > 0 => n as u64,
        _ => 4096,
    })
}

/// cachestat(2)'s number, the same in the generic table (aarch64) and on
/// x86_64; libc does not name it yet.
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
const SYS_CACHESTAT: libc::c_long = 451;

thread_local! {
    /// Cleared for good when cachestat gives no answer (a kernel before
    /// 6.5; a file it refuses, or a seccomp filter): the shard asks by
    /// reads from then on (`by_reads`), not cachestat and then reads for
    /// every range of a refused file (a site's files are all alike).
    static CACHESTAT: Cell<bool> = const { Cell::new(true) };
}

/// What cachestat says of a range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Residency {
    /// Every page is in the page cache.
    Cached,
    /// Some page is not.
    NotCached,
    /// No answer for this file (its file system reads no `RWF_NOWAIT`):
    /// do not ask again during this transfer.
    Unknown,
}

#[repr(C)]
struct CachestatRange {
    off: u64,
    len: u64,
}

#[repr(C)]
#[derive(Default)]
struct Cachestat {
    nr_cache: u64,
    nr_dirty: u64,
    nr_writeback: u64,
    nr_evicted: u64,
    nr_recently_evicted: u64,
}

/// Whether every page of `len` bytes of `fd` from `off` is in the page
/// cache.
pub fn residency(fd: RawFd, off: u64, len: u64) -> Residency {
    if len == 0 {
        return Residency::Unknown;
    }
    if !CACHESTAT.with(Cell::get) {
        return by_reads(fd, off, len);
    }
    #[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
    {
        let range = CachestatRange { off, len };
        let mut stat = Cachestat::default();
        // SAFETY: cachestat(2) reads `range` and writes `stat`, both live
        // and laid out as the kernel's structs; it changes nothing.
        let rc = unsafe {
            libc::syscall(
                SYS_CACHESTAT,
                fd,
                std::ptr::from_ref(&range),
                std::ptr::from_mut(&mut stat),
                0,
            )
        };
        if rc != 0 {
            match io::Error::last_os_error().raw_os_error() {
                Some(libc::ENOSYS) => CACHESTAT.with(|c| c.set(false)),
                // Said once a shard: it is not asked again.
                Some(libc::EPERM) => {
                    CACHESTAT.with(|c| c.set(false));
                    log::info!(
                        "static files: cachestat(2) refused (a file this user neither owns \
                         nor may write, or a system-call filter); files are looked at by \
                         reads that do not wait before sendfile"
                    );
                }
                _ => return Residency::Unknown,
            }
            return by_reads(fd, off, len);
        }
        let page = page_size();
        let pages = (off + len).div_ceil(page) - off / page;
        if stat.nr_cache >= pages {
            Residency::Cached
        } else {
            Residency::NotCached
        }
    }
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    {
        let _ = (fd, off);
        Residency::Unknown
    }
}

/// The distance between two looks of `by_reads`: readahead brings a file
/// in by runs of 128 KiB and more.
const READ_STEP: u64 = 128 << 10;

/// cachestat's answer where it gives none: a one-byte read that does not
/// wait for the disk (`RWF_NOWAIT`: EAGAIN when the page is not in the
/// cache; a file system without it says so, and this "cannot tell") at the
/// range's start, every `READ_STEP` and its last byte. A page evicted
/// between the looks costs sendfile one read, as a page evicted after
/// cachestat's answer does.
fn by_reads(fd: RawFd, off: u64, len: u64) -> Residency {
    let last = off + len - 1;
    let mut at = off;
    loop {
        let mut byte = 0u8;
        let iov = libc::iovec {
            iov_base: std::ptr::from_mut(&mut byte).cast(),
            iov_len: 1,
        };
        let Ok(offset) = libc::off_t::try_from(at) else {
            return Residency::Unknown;
        };
        // SAFETY: preadv2(2) writes at most one byte into `byte`, which
        // `iov` points at and outlives the call.
        let n = unsafe { libc::preadv2(fd, &iov, 1, offset, libc::RWF_NOWAIT) };
        match n {
            // The file ended before the range: sendfile finds it short.
            0 | 1 => {}
            _ => {
                return match io::Error::last_os_error().raw_os_error() {
                    Some(libc::EAGAIN) => Residency::NotCached,
                    _ => Residency::Unknown,
                };
            }
        }
        if at == last {
            return Residency::Cached;
        }
        at = (at + READ_STEP).min(last);
    }
}

/// One sendfile(2) of up to `len` bytes of `file` from `off` to the
/// non-blocking `socket`: the bytes sent (0 at the file's end), or
/// `WouldBlock` when the socket has no room.
pub fn send(socket: RawFd, file: RawFd, off: u64, len: u64) -> io::Result<usize> {
    let mut offset = libc::off_t::try_from(off).map_err(|_| io::ErrorKind::InvalidInput)?;
    // The kernel sends at most about 2 GiB per call anyway.
    let count = usize::try_from(len).unwrap_or(usize::MAX).min(1 << 30);
    loop {
        // SAFETY: sendfile(2) between two descriptors the caller holds open;
        // `offset` is ours, so the file's own position is untouched.
        let n = unsafe { libc::sendfile(socket, file, &mut offset, count) };
        if n >= 0 {
            return Ok(n as usize);
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::os::fd::AsRawFd;

    fn file_of(len: usize) -> (std::fs::File, std::path::PathBuf) {
        let path =
            std::env::temp_dir().join(format!("coreserve-sendfile-{}-{len}", std::process::id()));
        let mut f = std::fs::File::create(&path).unwrap();
        f.write_all(&vec![7u8; len]).unwrap();
        f.sync_all().unwrap();
        (std::fs::File::open(&path).unwrap(), path)
    }

    #[test]
    fn a_file_dropped_from_the_cache_is_not_cached_until_read() {
        let (f, path) = file_of(256 << 10);
        // SAFETY: advice on our own clean (synced) file.
        unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
        if residency(f.as_raw_fd(), 0, 256 << 10) == Residency::NotCached {
            std::io::copy(&mut &f, &mut std::io::sink()).unwrap();
            assert_eq!(residency(f.as_raw_fd(), 0, 256 << 10), Residency::Cached);
            assert_eq!(residency(f.as_raw_fd(), 4095, 2), Residency::Cached);
        }
        assert_eq!(residency(f.as_raw_fd(), 0, 0), Residency::Unknown);
        std::fs::remove_file(path).unwrap();
    }

    /// Where cachestat gives no answer, reads that do not wait give it.
    #[test]
    fn reads_that_do_not_wait_tell_a_cached_range_from_one_on_disk() {
        let (f, path) = file_of(512 << 10);
        let fd = f.as_raw_fd();
        let mut fs = std::mem::MaybeUninit::<libc::statfs>::zeroed();
        // SAFETY: fstatfs writes one statfs into the buffer it is given.
        assert_eq!(unsafe { libc::fstatfs(fd, fs.as_mut_ptr()) }, 0);
        // SAFETY: fstatfs succeeded, so it filled the buffer.
        let memory = unsafe { fs.assume_init() }.f_type == libc::TMPFS_MAGIC;
        // The advice is advice: pages the kernel still holds a moment (a
        // loaded host's writeback) stay; given again a few times before
        // the pages are taken to be kept (CI saw them kept once).
        let mut first = Residency::Cached;
        for _ in 0..10 {
            // SAFETY: advice on our own clean (synced) file.
            unsafe { libc::posix_fadvise(fd, 0, 0, libc::POSIX_FADV_DONTNEED) };
            first = by_reads(fd, 0, 512 << 10);
            if memory || first != Residency::Cached {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        match first {
            // A file system without RWF_NOWAIT for its reads.
            Residency::Unknown => {
                std::fs::remove_file(path).unwrap();
                return;
            }
            // tmpfs keeps its pages: no disk to wait for.
            first if memory => assert_eq!(first, Residency::Cached),
            // Its pages dropped: a read would wait for the disk.
            first => assert_eq!(first, Residency::NotCached),
        }
        std::io::copy(&mut &f, &mut std::io::sink()).unwrap();
        assert_eq!(by_reads(fd, 0, 512 << 10), Residency::Cached);
        assert_eq!(by_reads(fd, 300_000, 1), Residency::Cached);
        // Past its end: cached as far as it goes; sendfile finds it short.
        assert_eq!(by_reads(fd, 500 << 10, 100 << 10), Residency::Cached);
        std::fs::remove_file(path).unwrap();
    }

    #[test]
    fn send_moves_the_range_and_stops_when_the_socket_is_full() {
        let (f, path) = file_of(4 << 20);
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let mut reader = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (sock, _) = l.accept().unwrap();
        sock.set_nonblocking(true).unwrap();
        let n = send(sock.as_raw_fd(), f.as_raw_fd(), 100, 1000).unwrap();
        assert_eq!(n, 1000);
        let mut got = vec![0u8; 1000];
        reader.read_exact(&mut got).unwrap();
        assert!(got.iter().all(|&b| b == 7));
        // Past the end of the file: nothing to send.
        assert_eq!(
            send(sock.as_raw_fd(), f.as_raw_fd(), 4 << 20, 10).unwrap(),
            0
        );
        // Nobody reads: the socket fills and says so instead of blocking.
        let mut sent = 0;
        let full = loop {
            match send(sock.as_raw_fd(), f.as_raw_fd(), 0, 4 << 20) {
                Ok(n) if n > 0 => sent += n,
                other => break other,
            }
            assert!(sent < 64 << 20, "the socket never filled");
        };
        assert_eq!(full.unwrap_err().kind(), io::ErrorKind::WouldBlock);
        std::fs::remove_file(path).unwrap();
    }
}
