//! The configuration's checks against the filesystem: a pre-flight step of
//! their own, run by `Config::validate` (and so by `--check`), kept apart
//! from the pure checks of values.

use std::fs::OpenOptions;
use std::io;
use std::path::Path;

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
