//! Writes coreserve's man pages and shell completions from the same clap
//! definition the binary parses its flags with, so the documentation of a
//! package can never disagree with the binary inside it.
//!
//! `coreserve-docgen OUT_DIR` writes:
//! - `OUT_DIR/man/coreserve.8` and `OUT_DIR/man/coreserve-status.8`
//! - `OUT_DIR/completions/coreserve.bash`, `_coreserve` (zsh), `coreserve.fish`

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::CommandFactory;
use clap_complete::Shell;
use clap_mangen::roff::{bold, italic, roman, Roff};
use clap_mangen::Man;
use coreserve::cli::Cli;

/// The manual section: coreserve is a daemon an administrator runs.
const SECTION: &str = "8";

fn main() -> ExitCode {
    let mut args = std::env::args_os().skip(1);
    let (Some(out), None) = (args.next(), args.next()) else {
        eprintln!("usage: coreserve-docgen OUT_DIR");
        return ExitCode::from(2);
    };
    match write_all(Path::new(&out)) {
        Ok(files) => {
            for f in files {
                println!("{}", f.display());
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("coreserve-docgen: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Writes every page and completion file under `out`; returns their paths.
fn write_all(out: &Path) -> io::Result<Vec<PathBuf>> {
    let man_dir = out.join("man");
    let comp_dir = out.join("completions");
    fs::create_dir_all(&man_dir)?;
    fs::create_dir_all(&comp_dir)?;
    let mut written = Vec::new();

    let page = man_page()?;
    written.push(write(&man_dir.join("coreserve.8"), &page)?);
    let status = status_page()?;
    written.push(write(&man_dir.join("coreserve-status.8"), &status)?);

    for (shell, name) in [
        (Shell::Bash, "coreserve.bash"),
        (Shell::Zsh, "_coreserve"),
        (Shell::Fish, "coreserve.fish"),
    ] {
        let mut buf = Vec::new();
        clap_complete::generate(shell, &mut Cli::command(), "coreserve", &mut buf);
        written.push(write(&comp_dir.join(name), &buf)?);
    }
    Ok(written)
}

fn write(path: &Path, bytes: &[u8]) -> io::Result<PathBuf> {
    fs::write(path, bytes)
        .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
    Ok(path.to_path_buf())
}

/// coreserve(8): clap's name, synopsis, description, options and commands,
/// then what an operator looks for that flags do not tell: files, signals,
/// environment and exit status.
fn man_page() -> io::Result<Vec<u8>> {
    let cmd = Cli::command();
    let man = Man::new(cmd.clone()).section(SECTION);
    let mut buf = Vec::new();
    man.render_title(&mut buf)?;
    man.render_name_section(&mut buf)?;
    man.render_synopsis_section(&mut buf)?;
    man.render_description_section(&mut buf)?;
    man.render_options_section(&mut buf)?;
    man.render_subcommands_section(&mut buf)?;
    operator_sections().to_writer(&mut buf)?;
    man.render_version_section(&mut buf)?;
    Ok(buf)
}

/// coreserve-status(8), for the `status` command.
fn status_page() -> io::Result<Vec<u8>> {
    let cmd = Cli::command();
    let status = cmd
        .find_subcommand("status")
        .expect("the clap definition has a status command")
        .clone()
        .name("coreserve-status")
        .bin_name("coreserve status");
    let source = format!("coreserve {}", cmd.get_version().unwrap_or_default());
    let mut buf = Vec::new();
    Man::new(status)
        .section(SECTION)
        .source(source)
        .render(&mut buf)?;
    Ok(buf)
}

fn section(roff: &mut Roff, title: &str) {
    roff.control("SH", [title]);
}

/// A tagged paragraph: `term` in bold, then its explanation.
fn item(roff: &mut Roff, term: &str, text: &str) {
    roff.control("TP", []);
    roff.text([bold(term)]);
    roff.text([roman(text)]);
}

fn operator_sections() -> Roff {
    let mut r = Roff::new();

    section(&mut r, "CONFIGURATION");
    r.text([
        roman("The configuration is a TOML file: "),
        bold("[server]"),
        roman(", "),
        bold("[limits]"),
        roman(", "),
        bold("[log]"),
        roman(", "),
        bold("[metrics]"),
        roman(", "),
        bold("[tls]"),
        roman(" (HTTPS, with "),
        bold("[[tls.certificate]]"),
        roman(" tables) and any number of "),
        bold("[[route]]"),
        roman(" tables (fixed responses, static files, redirects and the reverse proxy; the longest matching path prefix wins), "),
        bold("[[upstream]]"),
        roman(" groups of servers to proxy to, and "),
        bold("[[app]]"),
        roman(" programs coreserve starts, supervises, reloads one instance at a time and proxies to, as Node's cluster module and PM2 do. The installed file documents every key. Flags override the file and have the keys' names. "),
        roman("${VAR} and ${VAR:-default} are replaced from the environment before parsing. Errors are reported as "),
        italic("file:line: key: rule"),
        roman("; "),
        bold("coreserve --check"),
        roman(" finds them all without starting anything."),
    ]);

    section(&mut r, "FILES");
    item(
        &mut r,
        "/etc/coreserve/coreserve.toml",
        "The configuration read when --config is not given (if it exists; otherwise built-in defaults answer every request with 200 Hello World).",
    );
    item(
        &mut r,
        "/usr/share/coreserve/www",
        "The default site of the Debian package: its welcome page.",
    );
    item(
        &mut r,
        "/usr/lib/systemd/system/coreserve.service, coreserve.socket",
        "The service (Type=notify, hardened; systemctl reload checks the file, then sends SIGHUP) and its socket activation, shipped disabled.",
    );
    item(
        &mut r,
        "/var/log/coreserve/access.log",
        "The access log of the packaged configuration, reopened on SIGUSR1; /etc/logrotate.d/coreserve rotates it daily.",
    );

    section(&mut r, "SIGNALS");
    item(
        &mut r,
        "SIGTERM, SIGINT, SIGQUIT",
        "Graceful shutdown (SIGQUIT as nginx's quit): stop accepting, let requests in flight finish within drain-timeout, close idle connections, exit 0. A second signal exits at once.",
    );
    item(
        &mut r,
        "SIGHUP",
        "Reload the configuration. A valid file replaces routes and limits on every shard without dropping a connection; an invalid one is logged and the running configuration kept. Settings that need a restart ([server] but its proxy-protocol, [log], [metrics]) keep their running values and are named in the log.",
    );
    item(&mut r, "SIGUSR1", "Reopen the access log file.");
    item(
        &mut r,
        "SIGUSR2",
        "Binary upgrade, as nginx's: the binary now at this process's path is started with the same arguments on this process's listening sockets; once it serves it becomes the service's main process and this one drains and exits. No connection is refused meanwhile; a new process that fails to start leaves this one serving.",
    );

    section(&mut r, "ENVIRONMENT");
    item(
        &mut r,
        "RUST_LOG",
        "Log level of the server's own messages on stderr: error, warn, info (default) or debug.",
    );
    item(
        &mut r,
        "NOTIFY_SOCKET, WATCHDOG_USEC",
        "Set by systemd for Type=notify units: coreserve reports READY, RELOADING, STOPPING and STATUS, and pings the watchdog while every shard answers.",
    );
    item(
        &mut r,
        "LISTEN_FDS, LISTEN_PID",
        "Socket activation: listening sockets passed by systemd (coreserve.socket) are used instead of the configured listen addresses.",
    );

    section(&mut r, "EXIT STATUS");
    item(
        &mut r,
        "0",
        "Served and shut down cleanly, or --check found no error.",
    );
    item(
        &mut r,
        "1",
        "Could not start or run: a port in use, io_uring unavailable, too little locked memory; or a second SIGTERM/SIGINT ended the drain early.",
    );
    item(
        &mut r,
        "2",
        "The configuration or a flag is invalid; every error is printed.",
    );

    section(&mut r, "SEE ALSO");
    r.text([
        bold("coreserve-status"),
        roman("(8), "),
        bold("systemctl"),
        roman("(1), "),
        bold("systemd.exec"),
        roman("(5), "),
        bold("logrotate"),
        roman("(8)"),
    ]);
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(bytes: Vec<u8>) -> String {
        String::from_utf8(bytes).expect("roff is UTF-8")
    }

    #[test]
    fn man_page_has_every_flag_and_the_operator_sections() {
        let page = text(man_page().unwrap());
        assert!(
            page.starts_with(".ie") || page.contains(".TH coreserve 8"),
            "{page}"
        );
        for arg in Cli::command().get_arguments() {
            if let Some(long) = arg.get_long() {
                // roff escapes the dashes of a flag.
                assert!(
                    page.contains(&format!("\\-\\-{}", long.replace('-', "\\-"))),
                    "--{long} missing"
                );
            }
        }
        for s in [
            "FILES",
            "SIGNALS",
            "EXIT STATUS",
            "SIGHUP",
            "/etc/coreserve/coreserve.toml",
        ] {
            assert!(page.contains(s), "{s} missing");
        }
    }

    #[test]
    fn status_page_is_its_own_command() {
        let page = text(status_page().unwrap());
        assert!(page.contains(".TH coreserve-status 8"), "{page}");
        assert!(page.contains("\\-\\-interval"), "{page}");
    }

    #[test]
    fn writes_every_file() {
        let dir = std::env::temp_dir().join(format!("coreserve-docgen-{}", std::process::id()));
        let files = write_all(&dir).unwrap();
        assert_eq!(files.len(), 5);
        for f in &files {
            assert!(
                fs::metadata(f).unwrap().len() > 100,
                "{} is too small",
                f.display()
            );
        }
        let bash = fs::read_to_string(dir.join("completions/coreserve.bash")).unwrap();
        assert!(bash.contains("--dispatch") && bash.contains("status"));
        fs::remove_dir_all(&dir).unwrap();
    }
}
