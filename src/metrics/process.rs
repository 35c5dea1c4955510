//! The standard process series every Prometheus client library exports
//! (`process_cpu_seconds_total`, `process_resident_memory_bytes`,
//! `process_open_fds`, …), from `/proc/self` at each scrape: what an
//! operator's dashboards and alerts already know, and what says a server
//! is near its descriptor limit or holding memory before it fails.

use std::fmt::Write;

/// What the process's `/proc/self/stat` line says (the caller reads it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stat {
    /// User and system CPU time, in clock ticks.
    pub cpu_ticks: u64,
    /// When it started, in clock ticks after boot.
    pub start_ticks: u64,
    /// Virtual memory size, bytes.
    pub vsize: u64,
    /// Resident set size, pages.
    pub rss_pages: u64,
}

/// The system's boot time, seconds since the epoch (`btime` of /proc/stat).
fn boot_time(text: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix("btime "))?
        .trim()
        .parse()
        .ok()
}

/// Append the process series, of `stat` (this process's, when it could be
/// read) and `/proc`; those that cannot be read are left out.
pub fn render(out: &mut String, stat: Option<Stat>) {
    // SAFETY: sysconf(3) reads a constant of the system.
    let (tick, page) = unsafe {
        (
            libc::sysconf(libc::_SC_CLK_TCK),
            libc::sysconf(libc::_SC_PAGESIZE),
        )
    };
    if let (Some(s), true) = (stat, tick > 0 && page > 0) {
        let (tick, page) = (tick as f64, page as u64);
        let _ = writeln!(
            out,
            "# HELP process_cpu_seconds_total User and system CPU time the process has spent, in seconds.\n\
             # TYPE process_cpu_seconds_total counter\n\
             process_cpu_seconds_total {}\n\
             # HELP process_resident_memory_bytes Resident memory size in bytes.\n\
             # TYPE process_resident_memory_bytes gauge\n\
             process_resident_memory_bytes {}\n\
             # HELP process_virtual_memory_bytes Virtual memory size in bytes.\n\
             # TYPE process_virtual_memory_bytes gauge\n\
             process_virtual_memory_bytes {}",
            s.cpu_ticks as f64 / tick,
            s.rss_pages * page,
            s.vsize
        );
        let boot = std::fs::read_to_string("/proc/stat")
            .ok()
            .as_deref()
            .and_then(boot_time);
        if let Some(boot) = boot {
            let _ = writeln!(
                out,
                "# HELP process_start_time_seconds Start time of the process since the epoch, in seconds.\n\
                 # TYPE process_start_time_seconds gauge\n\
                 process_start_time_seconds {}",
                boot as f64 + s.start_ticks as f64 / tick
            );
        }
    }
    if let Ok(fds) = std::fs::read_dir("/proc/self/fd") {
        let _ = writeln!(
            out,
            "# HELP process_open_fds Number of open file descriptors.\n\
             # TYPE process_open_fds gauge\n\
             process_open_fds {}",
            // The directory's own descriptor, open while it is read, is
            // not one of the process's.
            fds.count().saturating_sub(1)
        );
    }
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit(2) fills the struct it is given.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } == 0 {
        let _ = writeln!(
            out,
            "# HELP process_max_fds Maximum number of open file descriptors.\n\
             # TYPE process_max_fds gauge\n\
             process_max_fds {}",
            limit.rlim_cur
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boot_time_is_btime() {
        assert_eq!(
            boot_time("cpu 1 2 3\nbtime 1765000000\nprocesses 9\n"),
            Some(1765000000)
        );
        assert_eq!(boot_time("cpu 1\n"), None);
    }

    /// Every series once, with its HELP and TYPE, its value a number.
    #[test]
    fn the_series_are_well_formed() {
        let mut out = String::new();
        let stat = Stat {
            cpu_ticks: 0,
            start_ticks: 100,
            vsize: 1 << 30,
            rss_pages: 2500,
        };
        render(&mut out, Some(stat));
        for name in [
            "process_cpu_seconds_total",
            "process_resident_memory_bytes",
            "process_virtual_memory_bytes",
            "process_start_time_seconds",
            "process_open_fds",
            "process_max_fds",
        ] {
            assert_eq!(out.matches(&format!("# TYPE {name} ")).count(), 1, "{out}");
            let value = out
                .lines()
                .find_map(|l| l.strip_prefix(&format!("{name} ")))
                .unwrap_or_else(|| panic!("{name} in {out}"));
            // A test process may not have run a tick yet.
            let least = if name == "process_cpu_seconds_total" {
                0.0
            } else {
                1.0
            };
            assert!(
                value.parse::<f64>().is_ok_and(|v| v >= least),
                "{name} {value}"
            );
        }
    }
}
