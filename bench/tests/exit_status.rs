//! The exit status of `coreserve-bench` (issue 15, item 6): 0 when every
//! request was answered and some succeeded, 3 when requests failed or none
//! succeeded, the report printed in every case.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::process::Command;

fn bench(url: &str) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_coreserve-bench"))
        .args([url, "-c", "2", "-d", "300ms", "-w", "0s", "--timeout", "2s"])
        .output()
        .unwrap()
}

/// A server on a thread answering every request on a connection with
/// `status` (keep-alive), until the test ends.
fn answering(status: &'static str) -> String {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        for conn in l.incoming() {
            let Ok(mut c) = conn else { return };
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                let mut pending = Vec::new();
                loop {
                    let n = match c.read(&mut buf) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => n,
                    };
                    pending.extend_from_slice(&buf[..n]);
                    // One answer per complete head (GET, no body).
                    while let Some(end) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
                        pending.drain(..end + 4);
                        let reply = format!("HTTP/1.1 {status}\r\nContent-Length: 2\r\n\r\nok");
                        if c.write_all(reply.as_bytes()).is_err() {
                            return;
                        }
                    }
                }
            });
        }
    });
    format!("http://{addr}/")
}

#[test]
fn a_clean_run_exits_zero() {
    let out = bench(&answering("200 OK"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("errors     0 "), "{stdout}");
}

#[test]
fn connect_errors_exit_three() {
    // A port nobody listens on: every connection is refused.
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let out = bench(&format!("http://127.0.0.1:{port}/"));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(stderr.contains("request(s) failed (connect "), "{stderr}");
    // The report is printed all the same.
    assert!(String::from_utf8_lossy(&out.stdout).contains("errors "));
}

#[test]
fn no_success_exits_three() {
    let out = bench(&answering("503 Service Unavailable"));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(stderr.contains("no request succeeded"), "{stderr}");
}
