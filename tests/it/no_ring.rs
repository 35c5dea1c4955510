//! Shards without their readiness ring, as on a kernel that cannot set one
//! up (refused here with the fault-injection build's
//! `CORESERVE_FAULT_NO_RING`): connections then wait through glommio's
//! streams. Every kind of route, with either dispatch. HTTPS without the
//! ring is in `tls.rs`.

use std::io::Write;
use std::time::Duration;

use crate::config::Scratch;
use crate::proxy::{contains, group, route};
use crate::upstream::{echo, Upstream};
use crate::util::{command, Reader, Server};

/// A server with `toml`, two shards, `dispatch`, and no readiness ring.
pub fn start_without_ring(dir: &Scratch, toml: &str, dispatch: &str) -> Server {
    let conf = dir.write("coreserve.toml", toml).display().to_string();
    let mut cmd = command();
    cmd.env("CORESERVE_FAULT_NO_RING", "1").args([
        "--config",
        &conf,
        "--listen",
        "127.0.0.1:0",
        "--shards",
        "2",
        "--dispatch",
        dispatch,
    ]);
    let server = Server::spawn(cmd);
    server.wait_for_log("no readiness ring");
    server
}

#[test]
fn without_a_readiness_ring_every_kind_of_route_still_works() {
    let data: Vec<u8> = (0..(1u32 << 20))
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let up = Upstream::start(echo());
    for dispatch in ["master", "reuseport"] {
        let dir = Scratch::new(&format!("no-ring-{dispatch}"));
        dir.write("www/big.bin", &data);
        let toml = format!(
            "[[route]]\npath = \"/files/\"\nhandler = \"static\"\nroot = \"{}\"\n\n\
             [[route]]\npath = \"/\"\nhandler = \"respond\"\nbody = \"hi\"\n\n",
            dir.path("www")
        ) + &group("app", &[up.server()], "")
            + &route("/up/", "app", "");
        let server = start_without_ring(&dir, &toml, dispatch);
        let mut s = server.connect();
        let mut r = Reader::new(&s);

        // Pipelined: two requests in one write, two answers in order.
        s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\nGET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        assert_eq!(r.next(false).text(), "hi");
        assert_eq!(r.next(false).text(), "hi");

        // A head that arrives in two parts: the read waits through glommio.
        s.write_all(b"GET / HTTP/1.1\r\nHo").unwrap();
        std::thread::sleep(Duration::from_millis(100));
        s.write_all(b"st: x\r\n\r\n").unwrap();
        assert_eq!(r.next(false).text(), "hi");

        // A file large enough to fill the socket (sendfile, then waits).
        s.write_all(b"GET /files/big.bin HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        let resp = r.next(false);
        assert_eq!(resp.status, 200, "{dispatch}");
        assert!(
            resp.body == data,
            "{dispatch}: the file came back different"
        );

        // Proxied both ways: 1 MiB up, echoed back down.
        s.write_all(
            format!(
                "POST /up/echo HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n",
                data.len()
            )
            .as_bytes(),
        )
        .unwrap();
        s.write_all(&data).unwrap();
        let resp = r.next(false);
        assert_eq!(resp.status, 200, "{dispatch}");
        assert!(resp.body.starts_with(b"POST /up/echo\n"), "{dispatch}");
        assert!(
            resp.body.ends_with(&data),
            "{dispatch}: the proxied body came back different"
        );

        // Still the same connection, and the shards stop cleanly.
        s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        assert_eq!(r.next(false).text(), "hi");
        drop(s);
        let log = server.stop();
        assert!(!contains(log.as_bytes(), b"panicked"), "{log}");
    }
    assert!(up.errors().is_empty(), "{:?}", up.errors());
}
