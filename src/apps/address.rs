//! Where an instance listens: coreserve chooses, the app is told. A free TCP
//! port on 127.0.0.1, or a Unix socket path in a directory of coreserve's.
//! Each incarnation gets a new address, so a replacement can start while
//! the instance it replaces still serves.

use std::io;
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::config::{AppListen, ServerAddr};

/// Longest wait of one readiness probe.
const PROBE_TIMEOUT: Duration = Duration::from_millis(200);

/// The directory for apps' Unix sockets: systemd's `RuntimeDirectory=` when
/// the service has one, else `$XDG_RUNTIME_DIR` or the temporary directory,
/// in a subdirectory of this process's own.
pub fn socket_dir() -> PathBuf {
    let base = std::env::var_os("RUNTIME_DIRECTORY")
        .or_else(|| std::env::var_os("XDG_RUNTIME_DIR"))
        .map(PathBuf::from)
        .filter(|p| p.is_dir())
        .unwrap_or_else(std::env::temp_dir);
    base.join(format!("coreserve-{}", std::process::id()))
}

/// A new address of the kind `listen` asks for; `tag` names the
/// incarnation in a socket's file name.
pub fn choose(listen: AppListen, dir: &Path, app: &str, tag: u64) -> io::Result<ServerAddr> {
    match listen {
        AppListen::Port => {
            // The kernel's choice of a free port; released for the app to
            // take (another process could take it first: the instance then
            // fails to start and is started again with another).
            let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
            Ok(ServerAddr::Tcp(l.local_addr()?))
        }
        AppListen::Unix => {
            std::fs::create_dir_all(dir)?;
            let path = dir.join(format!("{app}.{tag}.sock"));
            let _ = std::fs::remove_file(&path);
            Ok(ServerAddr::Unix(path))
        }
    }
}

/// The value the app finds in its environment variable.
pub fn env_value(addr: &ServerAddr) -> String {
    match addr {
        ServerAddr::Tcp(a) => a.port().to_string(),
        ServerAddr::Unix(p) => p.display().to_string(),
    }
}

/// Whether the instance accepts connections at `addr` yet.
pub fn accepts(addr: &ServerAddr) -> bool {
    match addr {
        ServerAddr::Tcp(a) => TcpStream::connect_timeout(a, PROBE_TIMEOUT).is_ok(),
        ServerAddr::Unix(p) => std::os::unix::net::UnixStream::connect(p).is_ok(),
    }
}

/// Remove what an address left behind (a Unix socket's file).
pub fn release(addr: &ServerAddr) {
    if let ServerAddr::Unix(p) = addr {
        let _ = std::fs::remove_file(p);
    }
}
