//! Many connections at once, all answered.

use std::io::Write;

use crate::util::{Reader, Server};

#[test]
fn a_thousand_concurrent_keep_alive_connections() {
    let server = Server::start(&["--shards", "2"]);
    let mut conns: Vec<_> = (0..1000).map(|_| server.connect()).collect();
    for round in 0..2 {
        for s in &mut conns {
            s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        }
        for s in &conns {
            let r = Reader::new(s).next(false);
            assert_eq!(r.status, 200, "round {round}");
        }
    }
    let log = server.stop();
    let stats = crate::util::stopped_stats(&log);
    assert_eq!(stats.iter().map(|s| s.requests).sum::<u64>(), 2000);
}
