//! The kernel's process table (`/proc`), as the supervision of app
//! instances reads it: a process's state, parent, group and start time;
//! the descendants of an instance that left its process group (a child
//! spawned `detached`, a daemon), which its stop must reach too, as PM2's
//! tree kill does; whether a group still has a process that runs; and the
//! reaping of a group's zombies left to coreserve (as a container's pid 1,
//! it inherits every orphan).

use std::collections::{HashMap, HashSet};

/// A process as its `/proc/PID/stat` line says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stat {
    /// Its state letter (`R`, `S`, `D`, `Z`, …).
    pub state: u8,
    /// Its parent's pid.
    pub parent: u32,
    /// Its process group.
    pub group: u32,
    /// When it started, in clock ticks since boot: with the pid, what
    /// tells it from a later process given the same pid.
    pub start: u64,
    /// Its user and system CPU time, in clock ticks.
    pub cpu: u64,
    /// Its virtual memory size, in bytes.
    pub vsize: u64,
    /// Its resident memory, in pages.
    pub rss: u64,
}

impl Stat {
    /// Read from a `/proc/PID/stat` line.
    pub fn parse(line: &str) -> Option<Stat> {
        // The command name, in parentheses, may hold anything: the fields
        // come after its last `)`.
        let mut f = line.rsplit_once(')')?.1.split_ascii_whitespace();
        let state = *f.next()?.as_bytes().first()?;
        let parent = f.next()?.parse().ok()?;
        let group = f.next()?.parse().ok()?;
        // session, tty, tpgid, flags, 4 fault counts: 8 fields, then its
        // user and system times.
        let user: u64 = f.nth(8)?.parse().ok()?;
        let system: u64 = f.next()?.parse().ok()?;
        // Its children's 2 times, priority, nice, threads, itrealvalue: 6
        // fields, then the start time.
        let start = f.nth(6)?.parse().ok()?;
        let vsize = f.next()?.parse().ok()?;
        let rss = f.next()?.parse().ok()?;
        Some(Stat {
            state,
            parent,
            group,
            start,
            cpu: user + system,
            vsize,
            rss,
        })
    }

    /// Process `pid`'s, if it exists.
    pub fn read(pid: u32) -> Option<Stat> {
        let line = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        Stat::parse(&line)
    }

    /// Neither a zombie nor dead.
    pub fn runs(&self) -> bool {
        !matches!(self.state, b'Z' | b'X' | b'x')
    }
}

/// A process known by its pid and start time: by the time it is looked at
/// again, its pid may be another process's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Known {
    /// Its pid.
    pub pid: u32,
    start: u64,
}

impl Known {
    /// Whether it still runs (the same process, neither zombie nor dead).
    pub fn runs(&self) -> bool {
        Stat::read(self.pid).is_some_and(|s| s.start == self.start && s.runs())
    }

    /// Reap it if it is a zombie whose parent is coreserve (an orphan a
    /// container's pid 1 inherited), still the same process.
    pub fn reap_if_ours(&self) {
        let mine = Stat::read(self.pid)
            .is_some_and(|s| s.start == self.start && !s.runs() && s.parent == std::process::id());
        if mine {
            reap(self.pid);
        }
    }

    /// Send it `signal`, if it is still the same process (as read just
    /// before: a pid reused in between could still be hit, as by any
    /// kill(2) without a pidfd).
    pub fn signal(&self, signal: libc::c_int) {
        if Stat::read(self.pid).is_some_and(|s| s.start == self.start) {
            // SAFETY: kill(2) on a pid just seen to be this process.
            unsafe { libc::kill(self.pid as libc::pid_t, signal) };
        }
    }
}

/// Every process of the table, by pid; `None` when `/proc` cannot be
/// read.
fn table() -> Option<HashMap<u32, Stat>> {
    let procs = std::fs::read_dir("/proc").ok()?;
    Some(
        procs
            .flatten()
            .filter_map(|e| {
                let pid = e.file_name().to_str()?.parse().ok()?;
                Some((pid, Stat::read(pid)?))
            })
            .collect(),
    )
}

/// The descendants of `leader` in `table`, found through their parents.
fn descendants(table: &HashMap<u32, Stat>, leader: u32) -> Vec<u32> {
    let mut children: HashMap<u32, Vec<u32>> = HashMap::new();
    for (&pid, s) in table {
        children.entry(s.parent).or_default().push(pid);
    }
    let me = std::process::id();
    let mut out = Vec::new();
    let mut seen = HashSet::from([leader]);
    let mut next = vec![leader];
    while let Some(pid) = next.pop() {
        for &child in children.get(&pid).into_iter().flatten() {
            // The table is no snapshot: a pid reused while it was read
            // could make a loop, or lead to coreserve itself.
            if child == me || !seen.insert(child) {
                continue;
            }
            out.push(child);
            next.push(child);
        }
    }
    out
}

/// The resident memory of `leader` and its descendants, in bytes, as PM2
/// counts an app's (`npm start` or `sh -c` run the server as a child);
/// `None` when the leader is gone. Pages two of them share count twice.
/// The tree is found through each thread's `children` file, a few reads
/// per process rather than the whole table; the table when the kernel
/// has no such files.
pub fn resident_bytes(leader: u32) -> Option<u64> {
    let own = Stat::read(leader)?.rss;
    let pages = match children_of(leader) {
        Some(first) => {
            let me = std::process::id();
            let mut seen = HashSet::from([leader]);
            let mut next = first;
            let mut pages = own;
            while let Some(pid) = next.pop() {
                // The tree is no snapshot: a pid reused meanwhile could
                // make a loop, or lead to coreserve itself.
                if pid == me || !seen.insert(pid) {
                    continue;
                }
                pages += Stat::read(pid).map_or(0, |s| s.rss);
                next.extend(children_of(pid).unwrap_or_default());
            }
            pages
        }
        None => {
            let table = table()?;
            let children = descendants(&table, leader).into_iter();
            own + children
                .filter_map(|p| table.get(&p))
                .map(|s| s.rss)
                .sum::<u64>()
        }
    };
    // SAFETY: sysconf(3) reads a constant.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(1) as u64;
    Some(pages * page)
}

/// The children of every thread of `pid`; `None` when none of its
/// threads' lists can be read (a kernel without
/// `/proc/PID/task/TID/children`, or `pid` gone). A thread that ends
/// while they are read is left out, not the process.
fn children_of(pid: u32) -> Option<Vec<u32>> {
    let mut out = Vec::new();
    let mut read = false;
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))
        .ok()?
        .flatten()
    {
        let Ok(list) = std::fs::read_to_string(task.path().join("children")) else {
            continue;
        };
        read = true;
        out.extend(
            list.split_ascii_whitespace()
                .filter_map(|p| p.parse::<u32>().ok()),
        );
    }
    read.then_some(out)
}

/// The descendants of `leader` that are not in its process group: a
/// signal to the group misses them.
pub fn strays(leader: u32) -> Vec<Known> {
    let Some(table) = table() else {
        return Vec::new();
    };
    descendants(&table, leader)
        .into_iter()
        .filter_map(|pid| {
            let s = &table[&pid];
            (s.group != leader).then_some(Known {
                pid,
                start: s.start,
            })
        })
        .collect()
}

/// The inodes of the sockets `leader` and its descendants hold open (an
/// app's listening socket may be a child's: `npm start`, a cluster
/// worker); `None` when `/proc` cannot be read, nor the leader's own
/// descriptors (`hidepid`, gone). A descendant's that cannot be read
/// (another user's) are left out.
pub fn socket_inodes(leader: u32) -> Option<HashSet<u64>> {
    let table = table()?;
    let mut inodes = HashSet::new();
    let pids = std::iter::once(leader).chain(descendants(&table, leader));
    for pid in pids {
        let fds = match std::fs::read_dir(format!("/proc/{pid}/fd")) {
            Ok(fds) => fds,
            Err(_) if pid == leader => return None,
            Err(_) => continue,
        };
        for fd in fds.flatten() {
            let Ok(link) = std::fs::read_link(fd.path()) else {
                continue;
            };
            let inode = link
                .to_str()
                .and_then(|l| l.strip_prefix("socket:["))
                .and_then(|l| l.strip_suffix(']'))
                .and_then(|n| n.parse::<u64>().ok());
            inodes.extend(inode);
        }
    }
    Some(inodes)
}

/// The processes, but coreserve, that hold one of the pipes whose inodes
/// are `pipes` open (another user's, unreadable, are left out). Nor a
/// process still running coreserve's own program: one it has just forked
/// to start another instance holds a copy of every descriptor until its
/// exec closes them.
pub fn holding(pipes: &[u64]) -> Vec<u32> {
    let me = std::process::id();
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let Ok(own) = std::fs::read_link("/proc/self/exe") else {
        return Vec::new();
    };
    let names: Vec<String> = pipes.iter().map(|i| format!("pipe:[{i}]")).collect();
    procs
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| pid != me)
        .filter(|pid| std::fs::read_link(format!("/proc/{pid}/exe")).ok().as_ref() != Some(&own))
        .filter(|pid| {
            std::fs::read_dir(format!("/proc/{pid}/fd")).is_ok_and(|fds| {
                fds.flatten().any(|fd| {
                    std::fs::read_link(fd.path())
                        .is_ok_and(|l| names.iter().any(|n| l.as_os_str() == n.as_str()))
                })
            })
        })
        .collect()
}

/// Whether the table shows a process of group `group` that runs (true
/// when it cannot be read). A group's zombies whose parent is coreserve
/// (the orphans a container's pid 1 inherits) are reaped on the way:
/// nothing else would, and each holds a slot of the process table.
pub fn group_runs(group: u32) -> bool {
    let Some(table) = table() else {
        return true;
    };
    let me = std::process::id();
    let mut runs = false;
    for (&pid, s) in table.iter().filter(|(_, s)| s.group == group) {
        if s.runs() {
            runs = true;
        } else if std::fs::read_dir(format!("/proc/{pid}/task")).is_ok_and(|t| t.count() > 1) {
            // Its main thread ended while others go on: it shows as a
            // zombie, and runs.
            runs = true;
        } else if s.parent == me && pid != group {
            // Never the group's leader: that is an instance, which its own
            // thread waits for.
            reap(pid);
        }
    }
    runs
}

/// The zombies whose parent is coreserve (the table read as it is; empty
/// when it cannot be).
pub fn zombie_children() -> Vec<u32> {
    let me = std::process::id();
    table()
        .into_iter()
        .flatten()
        .filter(|(_, s)| s.parent == me && s.state == b'Z')
        .map(|(pid, _)| pid)
        .collect()
}

/// Reap `pid`, a zombie child of coreserve's (an orphan it inherited), if
/// it is one; never waits.
pub fn reap(pid: u32) {
    // SAFETY: waitpid(2) on one pid, without waiting: a process that is
    // not our zombie child is left as it is.
    unsafe { libc::waitpid(pid as libc::pid_t, std::ptr::null_mut(), libc::WNOHANG) };
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(name: &str, state: &str, parent: u32, group: u32, start: u64) -> String {
        format!("4242 ({name}) {state} {parent} {group} {group} 0 -1 4194560 99 0 0 0 5 3 0 0 20 0 1 0 {start} 123 45")
    }

    #[test]
    fn a_stat_line_is_read_after_the_name() {
        let s = Stat::parse(&line("node", "S", 1, 7, 987)).unwrap();
        assert_eq!(
            s,
            Stat {
                state: b'S',
                parent: 1,
                group: 7,
                start: 987,
                cpu: 8,
                vsize: 123,
                rss: 45,
            }
        );
        assert!(s.runs());
        for dead in ["Z", "X"] {
            assert!(!Stat::parse(&line("node", dead, 1, 7, 9)).unwrap().runs());
        }
        // A name with a parenthesis and spaces in it.
        let odd = Stat::parse(&line("a) Z 1 9 (b", "R", 3, 7, 5)).unwrap();
        assert_eq!((odd.state, odd.parent, odd.group), (b'R', 3, 7));
        assert_eq!(Stat::parse("garbage"), None);
        assert_eq!(Stat::parse("1 (x) S 1"), None);
    }

    #[test]
    fn this_process_reads_as_itself() {
        let me = Stat::read(std::process::id()).unwrap();
        assert!(me.runs());
        // SAFETY: getppid and getpgrp cannot fail.
        let (parent, group) = unsafe { (libc::getppid(), libc::getpgrp()) };
        assert_eq!((me.parent, me.group), (parent as u32, group as u32));
        let known = Known {
            pid: std::process::id(),
            start: me.start,
        };
        assert!(known.runs());
        // Another start time: another process that had the pid.
        let other = Known {
            start: me.start + 1,
            ..known
        };
        assert!(!other.runs());
    }

    #[test]
    fn a_trees_memory_counts_its_children() {
        // A child that holds 64 MiB it has written, resident.
        let mut child = std::process::Command::new("python3")
            .args([
                "-c",
                "import sys; b = bytearray(64 << 20); sys.stdin.read()",
            ])
            .stdin(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let me = std::process::id();
        let mine = resident_bytes(me).unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let child_own = resident_bytes(child.id()).unwrap_or(0);
            let tree = resident_bytes(me).unwrap();
            if child_own >= 64 << 20 {
                assert!(tree >= child_own, "{tree} < {child_own}");
                assert!(mine < tree, "{mine} >= {tree}");
                break;
            }
            assert!(std::time::Instant::now() < deadline, "{child_own}");
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        // The whole table finds the same tree (the fallback's way).
        let listed = descendants(&table().unwrap(), me);
        assert!(listed.contains(&child.id()), "{listed:?}");
        assert_eq!(children_of(me).map(|c| c.contains(&child.id())), Some(true));
        drop(child.stdin.take());
        child.wait().unwrap();
        assert_eq!(resident_bytes(u32::MAX), None);
    }
}
