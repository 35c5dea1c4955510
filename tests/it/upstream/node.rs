//! The Node app (`tests/it/apps/echo.js`) as an upstream.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};

/// The Node app `apps/echo.js`, killed when dropped.
pub struct NodeApp {
    child: Child,
    /// Its TCP address, or None on a Unix socket.
    pub addr: Option<SocketAddr>,
}

impl NodeApp {
    /// Start it on a free TCP port of 127.0.0.1; None (with a message)
    /// when `node` is not installed.
    pub fn tcp() -> Option<NodeApp> {
        NodeApp::start(&[("PORT", "0")])
    }

    /// Start it on a Unix socket at `path`.
    pub fn unix(path: &str) -> Option<NodeApp> {
        NodeApp::start(&[("SOCKET", path)])
    }

    fn start(env: &[(&str, &str)]) -> Option<NodeApp> {
        if Command::new("node").arg("--version").output().is_err() {
            eprintln!("SKIPPED: `node` is not installed; .ci/run installs nodejs");
            return None;
        }
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/it/apps/echo.js");
        let mut cmd = Command::new("node");
        cmd.arg(script)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("start node");
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        out.read_line(&mut line).expect("read node's first line");
        let rest = line
            .trim()
            .strip_prefix("listening ")
            .unwrap_or_else(|| panic!("node said {line:?}, not `listening ...`"));
        let addr = rest
            .parse::<u16>()
            .ok()
            .map(|port| SocketAddr::from(([127, 0, 0, 1], port)));
        Some(NodeApp { child, addr })
    }

    /// `127.0.0.1:PORT`, as a configuration names it.
    pub fn server(&self) -> String {
        self.addr.expect("a TCP app").to_string()
    }
}

impl Drop for NodeApp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
