//! What the host allows: resource limits and io_uring. Checked once by the
//! master before any shard starts, so that a host that cannot run coreserve
//! gets one clear line instead of a panic deep inside an executor.

use std::io;

/// glommio refuses to start an executor with less locked memory than this.
pub const MIN_MEMLOCK: u64 = 512 * 1024;

/// glommio's io_memory per executor is at most this (its default is 10 MiB);
/// shards stream files through it, they do not need more.
pub const MAX_IO_MEMORY: u64 = 4 << 20;

/// glommio's smallest io_memory; it rounds anything less up to this.
const MIN_IO_MEMORY: u64 = 64 << 10;

/// glommio registers an executor's io_memory once with each of its three
/// rings (main, latency, poll), and the kernel counts every registration.
const REGISTRATIONS: u64 = 3;

/// Locked memory an executor's rings take besides io_memory (three rings of
/// 128 entries and two probe rings are about 80 KiB), with room to spare.
const RING_MEMLOCK: u64 = 128 << 10;

/// Executors' worth of ring memory kept free for restarting crashed shards:
/// glommio never releases a dead executor's rings.
const SPARE_EXECUTORS: u64 = 2;

/// Threads coreserve runs besides its shards': the main thread, the master
/// executor's and its blocking-call thread, keep-awake, the acceptor, the
/// app manager, the log writer and the access-log stream.
const BASE_THREADS: u64 = 8;

/// Threads each shard runs: its executor and glommio's blocking-call
/// thread (one keep-awake thread looks after every executor).
const THREADS_PER_SHARD: u64 = 2;

/// Tasks each app instance takes at least: its process, and coreserve's
/// thread that waits for it and two that relay its output. A Node process
/// runs a dozen threads of its own, which count too.
const TASKS_PER_INSTANCE: u64 = 4;

/// Descriptors coreserve holds besides its shards', apps' and
/// connections': its listeners, the metrics endpoint, the signal pipe, the
/// acceptor's bell, log files, the master's rings (about 18 measured).
const BASE_DESCRIPTORS: u64 = 24;

/// Descriptors each shard holds before any connection: its io_uring rings,
/// its readiness ring, eventfds, its hand-off bell (master dispatch), its
/// control bell (a descriptor on each side), its lifeline and control
/// channel, its own listener (reuseport): 13 measured with master
/// dispatch, 14 with reuseport.
const DESCRIPTORS_PER_SHARD: u64 = 15;

/// Descriptors coreserve holds for each app instance: the pipes that relay
/// its output and the handle it is waited on by.
const DESCRIPTORS_PER_INSTANCE: u64 = 4;

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
    /// RLIMIT_MEMLOCK is counted (no CAP_IPC_LOCK) and too small for the
    /// rings of this many executors.
    #[error(
        "locked-memory limit is {have} KiB but {executors} io_uring executors \
         ({shards} shards and the master) need at least {need} KiB: raise it \
         (ulimit -l unlimited, LimitMEMLOCK=infinity in the systemd unit, or memlock \
         in /etc/security/limits.conf) or run fewer shards",
        have = .have / 1024, need = .need / 1024, shards = .executors - 1
    )]
    MemlockTooLowForShards {
        /// The effective limit, bytes.
        have: u64,
        /// What `executors` need, bytes.
        need: u64,
        /// Shards plus the master.
        executors: u64,
    },
    /// RLIMIT_NOFILE leaves the shards too few descriptors to start and
    /// hold a connection each: a shard would fail to start ("no readiness
    /// ring", a shard that "failed to start") or the signal handlers could
    /// not be installed.
    #[error(
        "the open files limit (ulimit -n) is {have}, but {shards} shards{apps} need about \
         {need} descriptors before they hold connections: raise it (ulimit -n, LimitNOFILE= \
         in the systemd unit) or run fewer shards",
        apps = if *.instances == 0 { String::new() } else { format!(" and {} app instances", .instances) }
    )]
    TooFewDescriptors {
        /// The effective limit.
        have: u64,
        /// What coreserve needs, with a connection per shard.
        need: u64,
        /// Shards to start.
        shards: u64,
        /// App instances to start.
        instances: u64,
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
    /// io_uring_setup returned ENOMEM for even a tiny ring: the user's
    /// locked memory is taken (another instance of the user's, or one
    /// that has just stopped), not io_uring missing.
    #[error("io_uring_setup failed: out of locked memory ({LOCKED_MEMORY_HINT})")]
    IoUringNoMemory,
    /// io_uring_setup failed for another reason.
    #[error("io_uring is not usable: io_uring_setup failed: {0}")]
    IoUring(io::Error),
    /// RLIMIT_NPROC leaves too few tasks for the threads coreserve starts:
    /// glommio panics where it cannot start one.
    #[error(
        "the process limit (ulimit -u) is {limit} tasks for this user, {in_use} of them \
         running already, but {shards} shards{apps} need at least {need} more: raise it \
         (ulimit -u, LimitNPROC= in the systemd unit, or nproc in /etc/security/limits.conf) \
         or run fewer shards",
        apps = if *.instances == 0 { String::new() } else { format!(" and {} app instances", .instances) }
    )]
    TooFewTasks {
        /// The effective limit.
        limit: u64,
        /// The user's tasks (threads of every process) running now.
        in_use: u64,
        /// What coreserve would start.
        need: u64,
        /// Shards to start.
        shards: u64,
        /// App instances to start.
        instances: u64,
    },
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
    /// Whether the kernel counts io_uring's locked memory against `memlock`:
    /// it does unless the process has CAP_IPC_LOCK. The count is per user,
    /// summed over every ring of every executor.
    pub memlock_counted: bool,
    /// The user's tasks and the limit on them (RLIMIT_NPROC, which counts
    /// every thread of every process of the user); `None` when it does not
    /// bind this process (unlimited, or root or CAP_SYS_RESOURCE, which
    /// the kernel exempts).
    pub tasks: Option<Tasks>,
}

/// The user's tasks against RLIMIT_NPROC.
#[derive(Debug, Clone, Copy)]
pub struct Tasks {
    /// The soft limit, raised to the hard one.
    pub limit: u64,
    /// Tasks of this user running now, this process's included (as far as
    /// this PID namespace's /proc shows them).
    pub in_use: u64,
}

impl HostLimits {
    /// glommio's io_memory for each of `executors` executors (the shards and
    /// the master), so that all their rings and registered buffers fit in the
    /// counted locked-memory limit with room to restart crashed shards.
    /// Where the limit is not counted or unlimited, [`MAX_IO_MEMORY`].
    /// Below glommio's minimum, the error says what all of them need, so
    /// that the limit is raised once.
    pub fn io_memory_per_executor(&self, executors: usize) -> Result<u64, HostError> {
        let counted = self.memlock_counted && self.memlock != libc::RLIM_INFINITY;
        if !counted && self.memlock < MIN_MEMLOCK {
            return Err(HostError::MemlockTooLow { have: self.memlock });
        }
        if !counted {
            return Ok(MAX_IO_MEMORY);
        }
        let executors = executors as u64;
        let rings = (executors + SPARE_EXECUTORS) * RING_MEMLOCK;
        let need = (rings + executors * REGISTRATIONS * MIN_IO_MEMORY).max(MIN_MEMLOCK);
        if self.memlock < need {
            return Err(HostError::MemlockTooLowForShards {
                have: self.memlock,
                need,
                executors,
            });
        }
        let share = (self.memlock - rings) / (executors * REGISTRATIONS);
        Ok((share / MIN_IO_MEMORY * MIN_IO_MEMORY).clamp(MIN_IO_MEMORY, MAX_IO_MEMORY))
    }

    /// Descriptors the process holds besides its connections with `shards`
    /// shards, each holding `outside` connections outside its
    /// `max-connections` at worst (503s under way, those handed to it and
    /// not yet counted), and `instances` app instances (about: what the
    /// advice on `max-connections` leaves out).
    pub fn reserved_descriptors(shards: u64, outside: u64, instances: u64) -> u64 {
        BASE_DESCRIPTORS
            + shards * (DESCRIPTORS_PER_SHARD + outside)
            + instances * DESCRIPTORS_PER_INSTANCE
    }

    /// Whether the open-files limit lets `shards` shards and `instances`
    /// app instances start and each shard hold a connection.
    pub fn descriptors_for(&self, shards: u64, instances: u64) -> Result<(), HostError> {
        let need = Self::reserved_descriptors(shards, 0, instances) + shards;
        if self.nofile < need {
            return Err(HostError::TooFewDescriptors {
                have: self.nofile,
                need,
                shards,
                instances,
            });
        }
        Ok(())
    }

    /// Whether RLIMIT_NPROC leaves room for the threads of `shards` shards
    /// and `instances` app instances: a thread or process past it fails
    /// with EAGAIN, and glommio panics on it.
    pub fn tasks_for(&self, shards: u64, instances: u64) -> Result<(), HostError> {
        let Some(Tasks { limit, in_use }) = self.tasks else {
            return Ok(());
        };
        // This process's own threads so far are in `in_use`; BASE_THREADS
        // counts them again, a margin of a few.
        let need = BASE_THREADS + shards * THREADS_PER_SHARD + instances * TASKS_PER_INSTANCE;
        if in_use.saturating_add(need) > limit {
            return Err(HostError::TooFewTasks {
                limit,
                in_use,
                need,
                shards,
                instances,
            });
        }
        Ok(())
    }

    /// The locked-memory limit for logs: `unlimited` or in KiB.
    pub fn memlock_display(&self) -> String {
        if self.memlock == libc::RLIM_INFINITY {
            "unlimited".into()
        } else {
            format!("{} KiB", self.memlock / 1024)
        }
    }
}

/// Raise the soft open-file, locked-memory and process limits to the hard
/// ones, check that io_uring can be used, and count the user's tasks
/// against the process limit (see `HostLimits::tasks_for`).
pub fn prepare() -> Result<HostLimits, HostError> {
    let nofile = raise(libc::RLIMIT_NOFILE, "RLIMIT_NOFILE")?;
    // Checked against what the executors need once their number is known
    // (`io_memory_per_executor`).
    let memlock = raise(libc::RLIMIT_MEMLOCK, "RLIMIT_MEMLOCK")?;
    let nproc = raise(libc::RLIMIT_NPROC, "RLIMIT_NPROC")?;
    probe_io_uring()?;
    // SAFETY: getuid(2) cannot fail.
    let uid = unsafe { libc::getuid() };
    // The kernel exempts the host's root and holders of these capabilities
    // in the host's user namespace, not a container's root.
    let exempt = !in_user_namespace()
        && (uid == 0 || has_capability(CAP_SYS_RESOURCE) || has_capability(CAP_SYS_ADMIN));
    Ok(HostLimits {
        nofile,
        memlock,
        memlock_counted: !has_capability(CAP_IPC_LOCK) || in_user_namespace(),
        tasks: (nproc != libc::RLIM_INFINITY && !exempt).then(|| Tasks {
            limit: nproc,
            in_use: tasks_of(uid),
        }),
    })
}

/// The tasks (threads) of the processes whose real user is `uid`, as the
/// kernel counts them against RLIMIT_NPROC; 0 for what cannot be read.
fn tasks_of(uid: libc::uid_t) -> u64 {
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return 0;
    };
    let mut tasks = 0;
    for entry in procs.flatten() {
        if !entry
            .file_name()
            .as_encoded_bytes()
            .iter()
            .all(u8::is_ascii_digit)
        {
            continue;
        }
        let Ok(status) = std::fs::read_to_string(entry.path().join("status")) else {
            continue;
        };
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.split_whitespace().next())
                .and_then(|v| v.parse::<u64>().ok())
        };
        // `Uid:` is real, effective, saved and filesystem; the first counts.
        if field("Uid:") == Some(u64::from(uid)) {
            tasks += field("Threads:").unwrap_or(1);
        }
    }
    tasks
}

/// Whether this process runs in a user namespace other than the host's
/// (rootless podman, unprivileged LXD, `systemd-nspawn -U`): its
/// CAP_IPC_LOCK is then the namespace's, and the kernel, which asks the
/// host's namespace, still counts io_uring's locked memory.
fn in_user_namespace() -> bool {
    // The host's namespace maps every uid to itself.
    match std::fs::read_to_string("/proc/self/uid_map") {
        Ok(map) => map.split_whitespace().collect::<Vec<_>>() != ["0", "0", "4294967295"],
        // Unknown: assume counted, the cautious budget.
        Err(_) => true,
    }
}

const CAP_NET_BIND_SERVICE: u32 = 10;
const CAP_IPC_LOCK: u32 = 14;
const CAP_SYS_ADMIN: u32 = 21;
const CAP_SYS_RESOURCE: u32 = 24;

/// Whether capability `cap` (below 32) is in this thread's effective set
/// (root usually has them; a service under `User=` or `DynamicUser=` does
/// not).
fn has_capability(cap: u32) -> bool {
    const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;
    // struct __user_cap_header_struct { version, pid } and two
    // struct __user_cap_data_struct { effective, permitted, inheritable }.
    let mut header = [LINUX_CAPABILITY_VERSION_3, 0u32];
    let mut data = [0u32; 6];
    // SAFETY: capget(2) with a version-3 header and room for its two data
    // structs; the kernel writes only into `data`.
    let rc = unsafe { libc::syscall(libc::SYS_capget, header.as_mut_ptr(), data.as_mut_ptr()) };
    // If the kernel will not say, assume it is absent: limits are then
    // checked and budgeted as if they bind, which they may not.
    rc == 0 && data[0] & (1 << cap) != 0
}

/// The lowest port this process may listen on: 0 with
/// CAP_NET_BIND_SERVICE, else this network namespace's
/// `net.ipv4.ip_unprivileged_port_start` (1024 unless changed; it covers
/// IPv6 too). A bind below it fails with EACCES.
pub fn lowest_unprivileged_port() -> u16 {
    if has_capability(CAP_NET_BIND_SERVICE) {
        return 0;
    }
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_unprivileged_port_start")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(1024)
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

/// Whether a system call failed for want of this process's resources or
/// the system's (descriptors, buffers, memory), which no peer caused and no
/// other peer would change: a limit to wait out, not a fault to count.
pub fn out_of_resources(e: &std::io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
    )
}

/// What ENOMEM from io_uring means, said to the operator.
pub const LOCKED_MEMORY_HINT: &str = "io_uring could not lock memory: its rings count against this user's locked-memory limit (ulimit -l, LimitMEMLOCK=) with those of every other process of the user, and an instance that has just stopped holds its share for a moment after it exits; raise the limit, or start again";

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
            Some(libc::ENOMEM) => HostError::IoUringNoMemory,
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
        // Another process of the user's holds the locked memory: not a
        // kernel without io_uring.
        let m = HostError::IoUringNoMemory.to_string();
        assert!(
            m.contains("out of locked memory") && m.contains("every other process of the user"),
            "{m}"
        );
        let m = HostError::MemlockTooLow { have: 64 * 1024 }.to_string();
        assert!(
            m.contains("64 KiB") && m.contains("512 KiB") && m.contains("ulimit -l"),
            "{m}"
        );
        let m = HostError::TooFewTasks {
            limit: 40,
            in_use: 30,
            need: 22,
            shards: 2,
            instances: 2,
        }
        .to_string();
        assert!(
            m.contains("limit (ulimit -u) is 40 tasks for this user, 30 of them running already, but 2 shards and 2 app instances need at least 22 more")
                && m.contains("LimitNPROC=")
                && m.contains("fewer shards"),
            "{m}"
        );
        let m = HostError::MemlockTooLowForShards {
            have: 1024 * 1024,
            need: 2048 * 1024,
            executors: 5,
        }
        .to_string();
        assert!(
            m.contains("1024 KiB")
                && m.contains(
                    "5 io_uring executors (4 shards and the master) need at least 2048 KiB"
                )
                && m.contains("fewer shards"),
            "{m}"
        );
        assert!(HostError::IoUringDisabled
            .to_string()
            .contains("io_uring_disabled"));
    }

    fn limits(memlock: u64, counted: bool) -> HostLimits {
        HostLimits {
            nofile: 1024,
            memlock,
            memlock_counted: counted,
            tasks: None,
        }
    }

    #[test]
    fn the_task_limit_must_leave_room_for_every_thread() {
        let with = |limit, in_use| HostLimits {
            tasks: Some(Tasks { limit, in_use }),
            ..limits(u64::MAX, false)
        };
        // 8 + 2 x 2 + 2 x 4 = 20.
        assert!(with(100, 80).tasks_for(2, 2).is_ok());
        assert!(matches!(
            with(100, 81).tasks_for(2, 2),
            Err(HostError::TooFewTasks { need: 20, .. })
        ));
        assert!(with(16, 4).tasks_for(2, 0).is_ok());
        assert!(with(16, 5).tasks_for(2, 0).is_err());
        assert!(limits(u64::MAX, false).tasks_for(1000, 1000).is_ok());
    }

    #[test]
    fn the_open_files_limit_must_let_every_shard_start() {
        let with = |nofile| HostLimits {
            nofile,
            ..limits(u64::MAX, false)
        };
        // 24 + 16 x (15 + 1) = 280: what a 16-shard server holds idle
        // (227 measured) and a connection each.
        assert!(with(280).descriptors_for(16, 0).is_ok());
        let m = with(128).descriptors_for(16, 2).unwrap_err().to_string();
        assert!(
            m.contains("open files limit (ulimit -n) is 128, but 16 shards and 2 app instances need about 288 descriptors")
                && m.contains("LimitNOFILE=")
                && m.contains("fewer shards"),
            "{m}"
        );
        assert!(with(128).descriptors_for(2, 0).is_ok());
    }

    #[test]
    fn uncounted_or_unlimited_memlock_gives_the_most_io_memory() {
        assert_eq!(
            limits(MIN_MEMLOCK, false)
                .io_memory_per_executor(64)
                .unwrap(),
            MAX_IO_MEMORY
        );
        assert_eq!(
            limits(libc::RLIM_INFINITY, true)
                .io_memory_per_executor(64)
                .unwrap(),
            MAX_IO_MEMORY
        );
    }

    #[test]
    fn counted_memlock_is_shared_by_every_ring_of_every_executor() {
        for executors in [1usize, 2, 3, 5, 9, 33] {
            for memlock_kib in [1024u64, 1536, 4096, 8192, 65536, 1 << 20] {
                let l = limits(memlock_kib * 1024, true);
                let e = executors as u64;
                match l.io_memory_per_executor(executors) {
                    Ok(io) => {
                        assert!((MIN_IO_MEMORY..=MAX_IO_MEMORY).contains(&io));
                        assert_eq!(io % MIN_IO_MEMORY, 0);
                        // Everything the kernel counts, spare rings included.
                        let used = e * (RING_MEMLOCK + REGISTRATIONS * io)
                            + SPARE_EXECUTORS * RING_MEMLOCK;
                        assert!(
                            used <= l.memlock,
                            "{executors} executors, {memlock_kib} KiB: {used} > limit"
                        );
                    }
                    Err(HostError::MemlockTooLowForShards { need, .. }) => {
                        assert!(need > l.memlock);
                    }
                    Err(e) => panic!("{e}"),
                }
            }
        }
    }

    /// One message gives the whole need: not glommio's minimum first, and
    /// then, once raised to it, what the shards need.
    #[test]
    fn a_limit_below_the_minimum_is_told_what_every_executor_needs() {
        match limits(64 << 10, true).io_memory_per_executor(3) {
            Err(HostError::MemlockTooLowForShards { need, .. }) => {
                assert!(need > MIN_MEMLOCK, "{need}");
                assert!(limits(need, true).io_memory_per_executor(3).is_ok());
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            limits(64 << 10, false).io_memory_per_executor(3),
            Err(HostError::MemlockTooLow { .. })
        ));
    }

    #[test]
    fn eight_mib_counted_fits_two_shards_with_usable_buffers() {
        // The sandbox and a DynamicUser service: 8 MiB, counted, 2 shards.
        let io = limits(8 << 20, true).io_memory_per_executor(3).unwrap();
        assert!(io >= 512 << 10, "{io}");
    }
}
