//! The standard process series every Prometheus client library exports
//! (`process_cpu_seconds_total`, `process_resident_memory_bytes`,
//! `process_open_fds`, …), read from `/proc/self` at each scrape: what an
//! operator's dashboards and alerts already know, and what says a server
//! is near its descriptor limit or holding memory before it fails.

use std::fmt::Write;

/// What `/proc/self/stat` says of the process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stat {
    /// User and system CPU time, in clock ticks.
    cpu_ticks: u64,
    /// When it started, in clock ticks after boot.
    start_ticks: u64,
    /// Virtual memory size, bytes.
    vsize: u64,
    /// Resident set size, pages.
    rss_pages: u64,
}

/// Read the fields of `/proc/self/stat` this needs. The command name (in
/// parentheses, and able to hold spaces and parentheses itself) is skipped
/// to its last `)`.
fn parse_stat(text: &str) -> Option<Stat> {
    let after = &text[text.rfind(')')? + 1..];
    // Fields from the 3rd (state) on; utime is the 14th of the whole line.
    let f: Vec<&str> = after.split_whitespace().collect();
    let field = |n: usize| -> Option<u64> { f.get(n - 3)?.parse().ok() };
    Some(Stat {
        cpu_ticks: field(14)? + field(15)?,
        start_ticks: field(22)?,
        vsize: field(23)?,
        rss_pages: field(24)?,
    })
}

/// The system's boot time, seconds since the epoch (`btime` of /proc/stat).
fn boot_time(text: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix("btime "))?
        .trim()
        .parse()
        .ok()
}

/// Append the process series; those that cannot be read are left out.
pub fn render(out: &mut String) {
    // SAFETY: sysconf(3) reads a constant of the system.
    let (tick, page) = unsafe {
        (
            libc::sysconf(libc::_SC_CLK_TCK),
            libc::sysconf(libc::_SC_PAGESIZE),
        )
    };
    let stat = std::fs::read_to_string("/proc/self/stat")
        .ok()
        .as_deref()
        .and_then(parse_stat);
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
    fn the_stat_line_is_read_past_a_name_with_spaces_and_parentheses() {
        let line = "4242 (co re) (x)) S 1 4242 4242 0 -1 4194560 1000 0 0 0 \
                    150 50 0 0 20 0 5 0 123456 987654321 2500 18446744073709551615";
        assert_eq!(
            parse_stat(line),
            Some(Stat {
                cpu_ticks: 200,
                start_ticks: 123456,
                vsize: 987654321,
                rss_pages: 2500,
            })
        );
        assert_eq!(parse_stat("4242 (cut"), None);
        assert_eq!(parse_stat("1 (x) S 1 2"), None);
        let own = std::fs::read_to_string("/proc/self/stat").unwrap();
        assert!(parse_stat(&own).is_some_and(|s| s.rss_pages > 0), "{own}");
    }

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
        render(&mut out);
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
