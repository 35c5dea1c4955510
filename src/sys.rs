//! The socket system calls on a request's path, made through syscall(2)
//! rather than libc's `send` and `recv`. Those two are thread cancellation
//! points: in a process with more than one thread, glibc wraps each call in
//! `__pthread_enable_asynccancel` and `__pthread_disable_asynccancel`
//! (1.4 % of a proxied request's CPU in a profile; bench/RESULTS.md).
//! nginx's single-threaded workers skip that wrapping, and coreserve never
//! cancels a thread, so it has no use for it either.

use std::io;
use std::os::fd::RawFd;

/// One non-blocking send(2) from `buf` to the socket `fd`; no SIGPIPE for
/// a peer that went away (EPIPE instead).
pub fn send(fd: RawFd, buf: &[u8]) -> io::Result<usize> {
    let flags = libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL;
    // SAFETY: sendto(2) reads `buf`, valid for its length.
    unsafe {
        transfer(
            libc::SYS_sendto,
            fd,
            buf.as_ptr().cast_mut(),
            buf.len(),
            flags,
        )
    }
}

/// One non-blocking recv(2) from the socket `fd` into `buf`, with `flags`
/// added (`MSG_PEEK`).
pub fn recv(fd: RawFd, buf: &mut [u8], flags: libc::c_int) -> io::Result<usize> {
    let flags = flags | libc::MSG_DONTWAIT;
    // SAFETY: recvfrom(2) writes `buf`, valid for its length.
    unsafe { transfer(libc::SYS_recvfrom, fd, buf.as_mut_ptr(), buf.len(), flags) }
}

/// sendto(2) or recvfrom(2) (`nr`) of `len` bytes at `buf` on the socket
/// `fd`, with no address. Every argument goes as a C long, as syscall(2)
/// reads them. MSG_DONTWAIT in `flags` keeps it from blocking the shard.
///
/// # Safety
/// `buf` must be valid for `len` bytes, for reading (sendto) or writing
/// (recvfrom).
unsafe fn transfer(
    nr: libc::c_long,
    fd: RawFd,
    buf: *mut u8,
    len: usize,
    flags: libc::c_int,
) -> io::Result<usize> {
    // SAFETY: the caller vouches for `buf`; a bad `fd` is an error, EBADF.
    let n = unsafe {
        libc::syscall(
            nr,
            libc::c_long::from(fd),
            buf as libc::c_long,
            len as libc::c_long,
            libc::c_long::from(flags),
            0 as libc::c_long,
            0 as libc::c_long,
        )
    };
    done(n)
}

/// syscall(2)'s result: -1 with errno set on failure, else the count.
fn done(n: libc::c_long) -> io::Result<usize> {
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// The inode of what descriptor `fd` is open to (a socket, a pipe: what
/// `/proc/PID/fd` links name `socket:[N]`, `pipe:[N]`).
pub fn inode(fd: RawFd) -> io::Result<u64> {
    let mut st = std::mem::MaybeUninit::<libc::stat>::uninit();
    // SAFETY: fstat fills `st` when it returns 0; it is read only then.
    if unsafe { libc::fstat(fd, st.as_mut_ptr()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fstat returned 0.
    Ok(unsafe { st.assume_init() }.st_ino)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;
    use std::os::unix::net::UnixStream;

    #[test]
    fn send_recv_peek_and_their_errors() {
        let (a, b) = UnixStream::pair().unwrap();
        let mut buf = [0u8; 8];
        assert_eq!(
            recv(b.as_raw_fd(), &mut buf, 0).unwrap_err().kind(),
            io::ErrorKind::WouldBlock
        );
        assert_eq!(send(a.as_raw_fd(), b"hello").unwrap(), 5);
        assert_eq!(
            recv(b.as_raw_fd(), &mut buf[..1], libc::MSG_PEEK).unwrap(),
            1
        );
        assert_eq!(recv(b.as_raw_fd(), &mut buf, 0).unwrap(), 5);
        assert_eq!(&buf[..5], b"hello");
        drop(b);
        // A peer that went away: EPIPE, and no SIGPIPE kills the test.
        assert_eq!(
            send(a.as_raw_fd(), b"x").unwrap_err().kind(),
            io::ErrorKind::BrokenPipe
        );
        assert_eq!(
            recv(-1, &mut buf, 0).unwrap_err().raw_os_error(),
            Some(libc::EBADF)
        );
    }
}
