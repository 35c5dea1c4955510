//! bench/compare (issue 15, item 1): it says how long it will take before
//! starting, and Ctrl-C stops every server it started and removes its
//! scratch and default output directories.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// bench/compare's port for coreserve (PORTS in the script).
const CORESERVE_PORT: u16 = 3210;

/// Processes whose working directory is inside `dir`.
fn processes_in(dir: &Path) -> Vec<String> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        if let Ok(cwd) = std::fs::read_link(entry.path().join("cwd")) {
            if cwd.starts_with(dir) {
                found.push(entry.file_name().to_string_lossy().into_owned());
            }
        }
    }
    found
}

#[test]
fn ctrl_c_stops_the_servers_and_cleans_up() {
    let bin_dir = Path::new(env!("CARGO_BIN_EXE_coreserve-bench"))
        .parent()
        .unwrap()
        .to_path_buf();
    if !bin_dir.join("coreserve").exists() {
        eprintln!(
            "skipped: no coreserve binary beside coreserve-bench (run the workspace's tests)"
        );
        return;
    }
    let scratch: PathBuf =
        std::env::temp_dir().join(format!("coreserve-compare-test-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&scratch);
    std::fs::create_dir_all(&scratch).unwrap();
    let mut child = Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/compare"))
        .args([
            "--servers",
            "coreserve",
            "--workloads",
            "keepalive",
            "--rounds",
            "1",
        ])
        .args(["--duration", "60s", "--warmup", "60s", "--bin-dir"])
        .arg(&bin_dir)
        // The default --out and the scratch directory both go here.
        .env("TMPDIR", &scratch)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut first = String::new();
    out.read_line(&mut first).unwrap();
    assert!(
        first.starts_with(
            "bench/compare: 1 round(s) of 1 runs, each 60 s warm-up + 60 s: about 2 min (120 s)"
        ),
        "{first:?}"
    );
    let mut second = String::new();
    out.read_line(&mut second).unwrap();
    let results = second
        .strip_prefix("bench/compare: results will be written to ")
        .unwrap_or_else(|| panic!("{second:?}"))
        .trim()
        .to_string();
    assert!(Path::new(&results).starts_with(&scratch), "{results}");

    // Interrupted once coreserve serves (the warm-up load is running).
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", CORESERVE_PORT)).is_err() {
        assert!(Instant::now() < deadline, "coreserve never listened");
        assert!(
            child.try_wait().unwrap().is_none(),
            "bench/compare ended early"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        !processes_in(&scratch).is_empty(),
        "the server runs in the scratch directory"
    );
    let sent = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(sent.success());
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "bench/compare did not stop");
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    assert_eq!(status.code(), Some(130), "{err}");
    assert!(err.contains("interrupted"), "{err}");
    assert!(!err.contains("Traceback"), "{err}");
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", CORESERVE_PORT)).is_err(),
        "coreserve is still listening"
    );
    assert_eq!(
        processes_in(&scratch),
        Vec::<String>::new(),
        "processes left behind"
    );
    let left: Vec<_> = std::fs::read_dir(&scratch)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");
    let _ = std::fs::remove_dir_all(&scratch);
}
