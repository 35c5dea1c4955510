//! The `coreserve` binary: flags → configuration → master. The only place
//! errors become exit codes.

use std::io::Write;
use std::process::ExitCode;

use std::sync::OnceLock;

use coreserve::cli::{Cli, Command};
use coreserve::log_queue::{Flusher, LogQueue};
use coreserve::master::{self, MasterError};

/// Waits for the log's queued lines before the process exits.
static LOG: OnceLock<Flusher> = OnceLock::new();

fn main() -> ExitCode {
    let cli = coreserve::cli::parse_or_exit();
    // A command's own output (`--check`, `status`) is read at once, as
    // `nginx -t`'s is: no time on its lines.
    let serving = !cli.check && cli.command.is_none();
    init_logging(serving);
    coreserve::access_log::writer::start();
    // Here, before any shard: a thread started by a pinned shard would
    // keep its CPU. Should it fail, the executors say so as they start.
    let _ = coreserve::keep_awake::start_thread();
    if serving {
        coreserve::apps::reap_orphans_as_init();
    }
    let code = run(cli);
    flush_log();
    code
}

/// Let the log writers put out what is queued (at most 2 s each: stderr
/// may be stalled for good), so the lines that say why the process ends
/// are not lost with it.
fn flush_log() {
    let left = coreserve::access_log::writer::flush(std::time::Duration::from_secs(2));
    if left > 0 {
        log::warn!("access log: {left} bytes of lines are not written: the log did not take them within 2 s of the exit");
    }
    let lost = coreserve::access_log::lost_unsaid();
    if lost > 0 {
        log::warn!("access log: {lost} line(s) were lost to failed writes, and no write had worked again by the exit");
    }
    if let Some(f) = LOG.get() {
        f.flush(std::time::Duration::from_secs(2));
    }
}

fn run(cli: Cli) -> ExitCode {
    // One line per panic, in the log's form; where it was caught (a request
    // handler, a connection) is logged by the code that caught it.
    std::panic::set_hook(Box::new(|info| {
        let thread = std::thread::current();
        let at = info
            .location()
            .map(|l| format!(" at {}:{}", l.file(), l.line()))
            .unwrap_or_default();
        log::error!(
            "panic in thread {}{at}: {}",
            thread.name().unwrap_or("?"),
            coreserve::panics::message(info.payload())
        );
        // The main thread's panic ends the process: its line first.
        if thread.name() == Some("main") {
            flush_log();
        }
    }));
    if let Some(Command::Status { url, interval }) = cli.command.clone() {
        return status(cli, url, interval);
    }
    let check = cli.check;
    let again = cli.clone();
    let config = match cli.load() {
        Ok(c) => c,
        Err(errors) => {
            // The warnings of the load (written by the log thread) before
            // the errors, which --check writes itself: in file order, not
            // mixed at random.
            if check {
                flush_log();
            }
            let say = |line: &dyn std::fmt::Display| {
                if check {
                    coreserve::systemd::print_error(line);
                } else {
                    log::error!("{line}");
                }
            };
            let (shown, more) = coreserve::config::shown_errors(&errors);
            for e in shown {
                say(e);
            }
            if let Some(more) = &more {
                say(more);
            }
            if !check {
                log::error!("configuration has {} error(s); not starting", errors.len());
            }
            return ExitCode::from(2);
        }
    };
    // A CPU list that cannot be honoured (or too many shards for it) is
    // named as any configuration error: by its flag, or by its line in the
    // file.
    let cpus_at = again.cpu_error_at(&config, false);
    let shards_at = again.cpu_error_at(&config, true);
    let cpus_error = move |cpu: &coreserve::cpus::CpuError| {
        let mut at = match cpu {
            coreserve::cpus::CpuError::TooManyShards { .. } => shards_at.clone(),
            _ => cpus_at.clone(),
        };
        at.rule = cpu.to_string();
        at.to_string()
    };
    if check {
        // Every start-up check but binding: the CPUs, the host's limits,
        // io_uring and the privilege a port below 1024 needs.
        return match master::preflight(&config) {
            Ok(p) => {
                let short = p.short_of_descriptors(&config);
                let tasks = p.short_of_tasks(&config).err().map(|e| e.to_string());
                for warning in p.shared_cpus().into_iter().chain(short).chain(tasks) {
                    log::warn!("{warning}");
                }
                // The warnings (through the log thread) come first, as the
                // docs say, when both go to one terminal or pipe.
                flush_log();
                // Which file, as `nginx -t` names it: with none found, the
                // defaults were checked, not the file the user meant.
                match &config.source {
                    Some(file) => println!("configuration OK: {}", file.display()),
                    None => println!(
                        "configuration OK (no configuration file: the built-in defaults and the flags)"
                    ),
                }
                ExitCode::SUCCESS
            }
            Err(e) => {
                flush_log();
                match &e {
                    MasterError::Cpus(cpu) => coreserve::systemd::print_error(&cpus_error(cpu)),
                    e => coreserve::systemd::print_error(e),
                }
                // A CPU list that cannot be honoured is the configuration's
                // fault; a host that cannot run io_uring is not.
                ExitCode::from(if matches!(e, MasterError::Cpus(_)) {
                    2
                } else {
                    1
                })
            }
        };
    }
    // SIGHUP reads the same file again and applies the same flags over it.
    let reload = std::sync::Arc::new(move || again.clone().reload());
    match master::run(config, reload) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e @ MasterError::Forced(_)) => {
            log::warn!("{e}");
            // Shards may still be running: leave without unwinding them.
            flush_log();
            std::process::exit(1);
        }
        // The configuration's fault, as under `--check`: status 2, which
        // the service's RestartPreventExitStatus= does not restart on.
        Err(MasterError::Cpus(cpu)) => {
            log::error!("{}", cpus_error(&cpu));
            log::error!("configuration has 1 error(s); not starting");
            ExitCode::from(2)
        }
        Err(e) => {
            log::error!("{e}");
            ExitCode::from(1)
        }
    }
}

/// `coreserve status`: the URL from the flag, else from the configuration's
/// admin listener.
fn status(cli: Cli, url: Option<String>, interval: std::time::Duration) -> ExitCode {
    // The file the address came from, to compare with the one the server
    // that answers there runs.
    let expected = url.is_none().then(|| cli.config_path()).flatten();
    let url = match url {
        Some(u) => u,
        None => match cli.metrics() {
            Ok(m) => match m.listen {
                Some(addr) if addr.port() == 0 => {
                    log::error!(
                        "the metrics endpoint is on any free port ([metrics] listen = \"{addr}\"): pass --url with the address its \"metrics on\" line names"
                    );
                    return ExitCode::from(2);
                }
                Some(mut addr) => {
                    // A wildcard is asked on its loopback: `[::]` may take
                    // IPv6 alone.
                    match addr.ip() {
                        std::net::IpAddr::V4(ip) if ip.is_unspecified() => {
                            addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into())
                        }
                        std::net::IpAddr::V6(ip) if ip.is_unspecified() => {
                            addr.set_ip(std::net::Ipv6Addr::LOCALHOST.into())
                        }
                        _ => {}
                    }
                    format!("http://{addr}{}", m.path)
                }
                None => {
                    log::error!(
                        "the metrics endpoint is off ([metrics] listen = \"off\"); pass --url"
                    );
                    return ExitCode::from(2);
                }
            },
            Err(errors) => {
                for e in errors {
                    log::error!("{e}");
                }
                log::error!("cannot tell where the metrics are; pass --url");
                return ExitCode::from(2);
            }
        },
    };
    match coreserve::status::run(&url, interval, expected.as_deref()) {
        Ok(table) => {
            print!("{table}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            log::error!("{e}");
            // A URL that is not one is a usage error, as a bad flag is.
            match e {
                coreserve::status::StatusError::Url(_) => ExitCode::from(2),
                _ => ExitCode::from(1),
            }
        }
    }
}

/// One line per message on stderr. Under systemd (stderr the stream
/// `JOURNAL_STREAM` names: `systemd::stderr_is_journal`) each
/// line carries its syslog priority as `<N>`, so journald files it at the
/// right level (journald stamps the time); elsewhere each starts with its
/// level and, when `serving` (not `--check` or `status`), before it the
/// time in UTC to the millisecond, as nginx's error log has it. An app's output lines (`app_output`) and the "listening
/// on" lines (`listening`) are logged whatever level RUST_LOG gives the
/// rest, unless it names them. rustls is held to errors unless RUST_LOG
/// names it: it warns of each
/// peer's misstep (an alert, a refused renegotiation, a message out of
/// order), which any client can repeat on one connection to flood the log;
/// nginx logs a client's TLS failures at `info`, below its default level.
fn init_logging(serving: bool) {
    let journald = coreserve::systemd::stderr_is_journal();
    let mut builder = env_logger::Builder::new();
    // A spec env_logger cannot read whole (`RUST_LOG=bogus==`, a typo) it
    // warns of and half ignores, leaving every line but those named above
    // off: the start-up and shutdown lines too. The default instead, said
    // once the log is set up. An empty one (`RUST_LOG= coreserve`) is none.
    let mut unread = None;
    let spec = std::env::var("RUST_LOG").ok().filter(|filter| {
        if filter.trim().is_empty() {
            return false;
        }
        let read = env_filter::Builder::new()
            .try_parse(filter)
            .map(|_| ())
            .map_err(|e| e.to_string())
            .and_then(|()| misspelled_level(filter));
        if let Ok(Some(module)) = &read {
            // Kept: the rest stays at the default level below.
            unread = Some(format!(
                "RUST_LOG={filter:?}: `{module}` names no module coreserve logs from; the rest of it applies"
            ));
        }
        if let Err(e) = read {
            unread = Some(format!(
                "RUST_LOG={filter:?}: {e}; logging at the default level (info)"
            ));
            return false;
        }
        true
    });
    match spec.ok_or(()) {
        // RUST_LOG as env_logger reads it, but for what it leaves out:
        // `rustls=debug` alone would turn every other line off, the error
        // that stops start-up too, where an operator asked for more; the
        // rest stays at info unless a level alone says otherwise ("off"
        // is off). rustls held to errors if it does not name it.
        Ok(filter) => {
            builder.filter_level(log::LevelFilter::Info);
            if !filter.contains("rustls") && filter.trim() != "off" {
                builder.filter_module("rustls", log::LevelFilter::Error);
            }
            // An app's output is kept whatever level quiets coreserve's
            // own lines (RUST_LOG=warn), unless RUST_LOG names it.
            if filter.trim() != "off" {
                builder.filter_module(coreserve::apps::OUTPUT_TARGET, log::LevelFilter::Info);
                builder.filter_module(coreserve::master::LISTENING_TARGET, log::LevelFilter::Info);
            }
            builder.parse_filters(&filter);
        }
        Err(()) => {
            builder
                .filter_level(log::LevelFilter::Info)
                .filter_module("rustls", log::LevelFilter::Error);
        }
    }
    // Through a queue of its own thread: a stderr nobody reads must not
    // stop whoever logs (a shard, the master, an app's output relay).
    let stamped = serving && !journald;
    let dropped: fn(u64) -> String = match (journald, stamped) {
        (true, _) => |n| format!("<4>{n} log line(s) dropped: the log was not read fast enough\n"),
        (false, true) => |n| {
            let now = coreserve::utc::Rfc3339Millis(std::time::SystemTime::now());
            format!("{now} WARN  {n} log line(s) dropped: the log was not read fast enough\n")
        },
        (false, false) => {
            |n| format!("WARN  {n} log line(s) dropped: the log was not read fast enough\n")
        }
    };
    if let Ok(queue) = LogQueue::to_stderr(dropped) {
        let _ = LOG.set(queue.flusher());
        builder.target(env_logger::Target::Pipe(Box::new(queue)));
    }
    builder
        .format(move |buf, record| {
            // Most messages are formatted; a plain one is not copied.
            let formatted;
            let text = match record.args().as_str() {
                Some(plain) => plain,
                None => {
                    formatted = record.args().to_string();
                    &formatted
                }
            };
            // A library's message may be a multi-line debug dump (glommio's
            // `SkippingOs {` …): one line, its indentation folded. Only
            // coreserve's own keep an indented continuation.
            let folded;
            let text = if record.target().starts_with("coreserve") || !text.contains('\n') {
                text
            } else {
                folded = fold_lines(text);
                &folded
            };
            let text = escaped(text);
            if journald {
                let prio = match record.level() {
                    log::Level::Error => 3,
                    log::Level::Warn => 4,
                    log::Level::Info => 6,
                    log::Level::Debug | log::Level::Trace => 7,
                };
                if text.contains('\n') {
                    // Each continuation line an entry of the same priority.
                    let text = text.replace("\n    ", &format!("\n<{prio}>    "));
                    writeln!(buf, "<{prio}>{text}")
                } else {
                    writeln!(buf, "<{prio}>{text}")
                }
            } else if stamped {
                let now = coreserve::utc::Rfc3339Millis(std::time::SystemTime::now());
                writeln!(buf, "{now} {:<5} {text}", record.level())
            } else {
                writeln!(buf, "{:<5} {text}", record.level())
            }
        })
        .init();
    if let Some(why) = unread {
        log::warn!("{why}");
    }
}

/// A word of `filter` alone that is no level and names no module whose
/// lines coreserve writes: env_logger takes `RUST_LOG=debg` for a module
/// `debg` at every level, and so turns every other line off, errors too.
/// `Ok(Some(module))`: a `module=level` naming none of coreserve's
/// (`corserve=debug`, a typo; `hyper=off` from a shared environment), said
/// but harmless, the rest staying at the default level.
fn misspelled_level(filter: &str) -> Result<Option<&str>, String> {
    const LEVELS: [&str; 6] = ["off", "error", "warn", "info", "debug", "trace"];
    const TARGETS: [&str; 5] = [
        "coreserve",
        "rustls",
        "glommio",
        coreserve::apps::OUTPUT_TARGET,
        coreserve::master::LISTENING_TARGET,
    ];
    let directives = filter.split('/').next().unwrap_or("");
    let mut foreign = None;
    for word in directives
        .split(',')
        .map(str::trim)
        .filter(|w| !w.is_empty())
    {
        let (module, alone) = match word.split_once('=') {
            Some((module, _)) => (module.trim(), false),
            None if LEVELS.iter().any(|l| word.eq_ignore_ascii_case(l)) => continue,
            None => (word, true),
        };
        // env_logger matches a module's name as a prefix of the target's
        // (`core` names coreserve's lines).
        let ours = TARGETS
            .iter()
            .any(|t| t.starts_with(module) || module.starts_with(t));
        if ours {
            continue;
        }
        if !alone {
            foreign = foreign.or(Some(module));
            continue;
        }
        return Err(format!(
            "`{module}` is neither a level ({}) nor a module coreserve logs from ({})",
            LEVELS.join(", "),
            TARGETS.join(", ")
        ));
    }
    Ok(foreign)
}

/// `text` on one line: each line break and the spaces around it become
/// one space.
fn fold_lines(text: &str) -> String {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

/// A log message with its control characters escaped (a socket path or log
/// file named with a line break, an app's colour codes), so that nothing in
/// it can end its line early and make the rest look like a line of its own:
/// the one line break kept is the one before an indented continuation
/// line (four spaces: an app's last output under the error it explains).
fn escaped(text: &str) -> std::borrow::Cow<'_, str> {
    let kept = |i: usize, c: char| c == '\t' || (c == '\n' && text[i + 1..].starts_with("    "));
    if !text
        .char_indices()
        .any(|(i, c)| c.is_control() && !kept(i, c))
    {
        return text.into();
    }
    let mut out = String::with_capacity(text.len() + 8);
    for (i, c) in text.char_indices() {
        match c {
            c if !c.is_control() || kept(i, c) => out.push(c),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            c => out.push_str(&format!("\\x{:02x}", c as u32)),
        }
    }
    out.into()
}

#[cfg(test)]
mod tests {
    use super::escaped;

    #[test]
    fn a_library_s_debug_dump_is_folded_into_one_line() {
        assert_eq!(
            super::fold_lines("Error: registering buffers. SkippingOs {\n    code: 12,\n    kind: OutOfMemory,\n}"),
            "Error: registering buffers. SkippingOs { code: 12, kind: OutOfMemory, }"
        );
    }

    #[test]
    fn control_characters_are_escaped_but_an_indented_continuation() {
        assert_eq!(escaped("plain line"), "plain line");
        assert_eq!(escaped("a\nb\r\u{1b}[31m\tc"), "a\\nb\\r\\x1b[31m\tc");
        assert_eq!(
            escaped("exited; its last output:\n    Error: x\n    at y"),
            "exited; its last output:\n    Error: x\n    at y"
        );
        assert_eq!(escaped("x\n   three"), "x\\n   three");
    }
}
