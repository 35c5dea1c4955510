//! What the host allows: resource limits and io_uring. Checked once by the
//! master before any shard starts, so that a host that cannot run coreserve
//! gets one clear line instead of a panic deep inside an executor.

use std::io;

/// glommio refuses to start an executor with less locked memory than this.
pub const MIN_MEMLOCK: u64 = 512 * 1024;

/// Why this host cannot run coreserve, with the fix in the message.
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    /// RLIMIT_MEMLOCK is below glommio's minimum even after raising it.
    #[error(
        "locked-memory limit is {have} KiB but io_uring needs at least {need} KiB: \
         raise it (ulimit -l unlimited, LimitMEMLOCK=infinity in the systemd unit, \
         or memlock in /etc/security/limits.conf)",
        have = .have / 1024, need = MIN_MEMLOCK / 1024
    )]
    MemlockTooLow {
        /// The effective limit, bytes.
        have: u64,
    },
    /// io_uring_setup returned EPERM.
    #[error(
        "io_uring is disabled on this host (io_uring_setup: permission denied): \
         set the sysctl kernel.io_uring_disabled=0, or run as a member of \
         kernel.io_uring_group"
    )]
    IoUringDisabled,
    /// io_uring_setup returned ENOSYS.
    #[error(
        "io_uring is not available (io_uring_setup: function not implemented): the kernel \
         lacks it or a seccomp filter blocks it (Docker's default profile does; run with \
         --security-opt seccomp=unconfined or a profile that allows io_uring_setup, \
         io_uring_enter and io_uring_register)"
    )]
    IoUringBlocked,
    /// io_uring_setup failed for another reason.
    #[error("io_uring is not usable: io_uring_setup failed: {0}")]
    IoUring(io::Error),
    /// getrlimit/setrlimit failed.
    #[error("cannot read or raise {which}: {err}")]
    Rlimit {
        /// RLIMIT_NOFILE or RLIMIT_MEMLOCK.
        which: &'static str,
        /// The error.
        err: io::Error,
    },
}

/// The limits in force after `prepare`.
#[derive(Debug, Clone, Copy)]
pub struct HostLimits {
    /// Open files (RLIMIT_NOFILE soft limit).
    pub nofile: u64,
    /// Locked memory in bytes (RLIMIT_MEMLOCK soft limit); `u64::MAX` for unlimited.
    pub memlock: u64,
}

impl HostLimits {
    /// The locked-memory limit for logs: `unlimited` or in KiB.
    pub fn memlock_display(&self) -> String {
        if self.memlock == libc::RLIM_INFINITY {
            "unlimited".into()
        } else {
            format!("{} KiB", self.memlock / 1024)
        }
    }
}

/// Raise the soft open-file and locked-memory limits to the hard ones, then
/// check that io_uring can be used.
pub fn prepare() -> Result<HostLimits, HostError> {
    let nofile = raise(libc::RLIMIT_NOFILE, "RLIMIT_NOFILE")?;
    let memlock = raise(libc::RLIMIT_MEMLOCK, "RLIMIT_MEMLOCK")?;
    if memlock < MIN_MEMLOCK {
        return Err(HostError::MemlockTooLow { have: memlock });
    }
    probe_io_uring()?;
    Ok(HostLimits { nofile, memlock })
}

/// Set the soft limit to the hard one; return the soft limit now in force.
fn raise(resource: libc::__rlimit_resource_t, which: &'static str) -> Result<u64, HostError> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `lim` is a valid rlimit for the kernel to fill.
    if unsafe { libc::getrlimit(resource, &mut lim) } != 0 {
        let err = io::Error::last_os_error();
        return Err(HostError::Rlimit { which, err });
    }
    if lim.rlim_cur < lim.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: lim.rlim_max,
            rlim_max: lim.rlim_max,
        };
        // SAFETY: a valid rlimit that only raises the soft limit to the hard one.
        if unsafe { libc::setrlimit(resource, &raised) } == 0 {
            lim.rlim_cur = lim.rlim_max;
        }
    }
    Ok(lim.rlim_cur)
}

/// Create and close a tiny ring, to tell "disabled" from "blocked" from
/// "fine" before glommio tries and fails less legibly.
fn probe_io_uring() -> Result<(), HostError> {
    // struct io_uring_params is 120 bytes; the kernel fills it in.
    let mut params = [0u64; 15];
    // SAFETY: io_uring_setup(entries, params) with a zeroed params block of the
    // kernel's size; the returned fd is closed below.
    let fd = unsafe { libc::syscall(libc::SYS_io_uring_setup, 2u32, params.as_mut_ptr()) };
    if fd < 0 {
        let err = io::Error::last_os_error();
        return Err(match err.raw_os_error() {
            Some(libc::EPERM) => HostError::IoUringDisabled,
            Some(libc::ENOSYS) => HostError::IoUringBlocked,
            _ => HostError::IoUring(err),
        });
    }
    // SAFETY: `fd` is the ring we just created and nothing else refers to it.
    unsafe { libc::close(fd as i32) };
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_say_how_to_fix() {
        let m = HostError::MemlockTooLow { have: 64 * 1024 }.to_string();
        assert!(
            m.contains("64 KiB") && m.contains("512 KiB") && m.contains("ulimit -l"),
            "{m}"
        );
        assert!(HostError::IoUringDisabled
            .to_string()
            .contains("io_uring_disabled"));
    }
}
