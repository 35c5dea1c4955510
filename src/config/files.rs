//! The configuration's checks against the file system: a pre-flight step of
//! their own, kept apart from the pure checks of values (`validate`).
//! `Cli::apply` runs both, so start-up, `--check` and SIGHUP see the same
//! errors. Nothing here creates or changes a file.

use std::fs::OpenOptions;
use std::io;
use std::path::Path;

use super::{route_key, AccessLog, Config, ConfigError, HandlerConfig};

/// Whether what the configuration names on the file system is usable here:
/// every static route's root is a directory, the access log, if it is a
/// file, can be opened for appending (`check_writable`), and each TLS
/// certificate and key loads (`tls_files`; a near expiry is logged as a
/// warning; what loads is kept in `config.tls.loaded` for the shards). Returns every
/// failure, in route order and then the log, each pointed at the line of its
/// key like `validate`'s errors; empty when all is well.
pub fn preflight(config: &mut Config) -> Vec<ConfigError> {
    let mut errors = Vec::new();
    for (i, r) in config.routes.iter().enumerate() {
        if let HandlerConfig::Static(s) = &r.handler {
            let key = format!("{}.root", route_key(i));
            match std::fs::metadata(&s.root) {
                Ok(m) if m.is_dir() => {}
                Ok(_) => errors.push(ConfigError::new(
                    key,
                    format!("{} is not a directory", s.root.display()),
                )),
                Err(e) => errors.push(ConfigError::new(
                    key,
                    format!("cannot use {}: {e}", s.root.display()),
                )),
            }
        }
    }
    if let AccessLog::File(path) = &config.log.access {
        if let Err(e) = check_writable(path) {
            errors.push(ConfigError::new(
                "log.access",
                format!("cannot open {}: {e}", path.display()),
            ));
        }
    }
    for e in &mut errors {
        config.locate(e);
    }
    // Located already, and logged each time: a warning stops nothing.
    let tls = super::load_certificates(config, std::time::SystemTime::now());
    for w in &tls.warnings {
        log::warn!("{w}");
    }
    errors.extend(tls.errors);
    config.tls.loaded = super::LoadedCertificates(std::sync::Arc::new(tls.certificates));
    errors
}

/// Whether the server will be able to open `path` for appending, without
/// creating or changing anything: `coreserve --check` run as root must not
/// leave behind a root-owned log file the service's own user cannot open.
/// An existing file is opened for appending (and closed); for a missing one
/// the directory must exist and be writable.
pub fn check_writable(path: &Path) -> io::Result<()> {
    match OpenOptions::new().append(true).open(path) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            let dir = match path.parent() {
                Some(d) if !d.as_os_str().is_empty() => d,
                _ => Path::new("."),
            };
            if !std::fs::metadata(dir)?.is_dir() {
                return Err(io::Error::other(format!(
                    "{} is not a directory",
                    dir.display()
                )));
            }
            let c = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes())
                .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
            // SAFETY: access(2) on a NUL-terminated path we own.
            if unsafe { libc::access(c.as_ptr(), libc::W_OK | libc::X_OK) } != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        }
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{RouteConfig, StaticConfig};

    fn static_route(path: &str, root: &Path) -> RouteConfig {
        RouteConfig {
            path: path.into(),
            handler: HandlerConfig::Static(StaticConfig::new(root.into())),
            ..RouteConfig::hello_world()
        }
    }

    #[test]
    fn preflight_reports_every_unusable_path_in_order() {
        let dir = std::env::temp_dir().join(format!("coreserve-preflight-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("file"), b"").unwrap();
        let mut c = Config {
            source: Some("conf/x.toml".into()),
            ..Config::default()
        };
        c.routes.push(static_route("/ok/", &dir));
        c.routes.push(static_route("/gone/", &dir.join("missing")));
        c.routes.push(static_route("/file/", &dir.join("file")));
        c.log.access = AccessLog::File(dir.join("no/such/dir/access.log"));
        c.lines.insert("route[3].root".into(), 12);
        c.lines.insert("route[4].root".into(), 14);
        let errs: Vec<String> = preflight(&mut c).iter().map(|e| e.to_string()).collect();
        let d = dir.display();
        assert_eq!(
            errs,
            [
                format!("conf/x.toml:12: route[3].root: cannot use {d}/missing: No such file or directory (os error 2)"),
                format!("conf/x.toml:14: route[4].root: {d}/file is not a directory"),
                format!("conf/x.toml: log.access: cannot open {d}/no/such/dir/access.log: No such file or directory (os error 2)"),
            ]
        );
        c.routes.truncate(2);
        c.log.access = AccessLog::File(dir.join("access.log"));
        assert_eq!(preflight(&mut c), []);
        assert!(
            !dir.join("access.log").exists(),
            "preflight created the log"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn checking_a_log_file_creates_nothing() {
        let dir = std::env::temp_dir().join(format!("coreserve-logcheck-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let missing = dir.join("access.log");
        check_writable(&missing).unwrap();
        assert!(!missing.exists(), "the check created the file");
        std::fs::write(&missing, b"").unwrap();
        check_writable(&missing).unwrap();
        assert!(check_writable(&dir.join("no/such/dir/access.log")).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
