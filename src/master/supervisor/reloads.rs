//! Which live shards still owe the latest reload an acknowledgement: the
//! master tells systemd READY=1 again once none does; and which settings a
//! reload cannot change.

use std::net::SocketAddr;

use crate::config::Config;

/// A reload under way: which live shards have not applied it yet.
#[derive(Debug, Default)]
pub(super) struct Reloads {
    /// The number of the latest reload sent.
    seq: u64,
    /// Shards that still owe the latest reload an acknowledgement.
    owed: Vec<usize>,
}

impl Reloads {
    /// A reload was sent to `reached`; its number. True in `.1` if nobody
    /// owes anything (no shard was reached).
    pub(super) fn sent(&mut self, reached: Vec<usize>) -> (u64, bool) {
        self.seq += 1;
        self.owed = reached;
        (self.seq, self.owed.is_empty())
    }

    /// The number the next reload will have.
    pub(super) fn next_seq(&self) -> u64 {
        self.seq + 1
    }

    /// Shard `id` applied reload `seq`; whether that completed the latest.
    /// Acknowledgements of a reload a newer one overtook do not count.
    pub(super) fn applied(&mut self, id: usize, seq: u64) -> bool {
        seq == self.seq && self.forget(id)
    }

    /// Shard `id` died: it owes nothing. Whether that completed the latest.
    pub(super) fn forget(&mut self, id: usize) -> bool {
        if self.owed.is_empty() {
            return false;
        }
        self.owed.retain(|&o| o != id);
        self.owed.is_empty()
    }
}

/// Listening addresses `new` has that `old` has not, with the key of the
/// element that names each (`server.listen[1]`, which `Config::locate`
/// finds the line of): a reload cannot open them.
pub(super) fn added_listeners(old: &Config, new: &Config) -> Vec<(String, SocketAddr)> {
    let added = |key: &str, listed: &[SocketAddr], before: &[SocketAddr]| {
        listed
            .iter()
            .enumerate()
            .filter(|(_, a)| !before.contains(a))
            .map(|(i, a)| (crate::config::element_key(key, i), *a))
            .collect::<Vec<_>>()
    };
    let mut all = added("server.listen", &new.listen, &old.listen);
    all.extend(added("tls.listen", &new.tls.listen, &old.tls.listen));
    all
}

/// Settings a running server cannot change, named by key, that differ
/// (listening addresses removed: `added_listeners` refuses new ones).
/// Shards are compared by number: `running`, the shards there are, and
/// `wanted`, what `new` would start (`"auto"` and the number it gives
/// here are the same); CPU lists by the CPUs they name, `"all"` being
/// `allowed` (this process's affinity mask, when known).
pub(super) fn needs_restart(
    old: &Config,
    new: &Config,
    running: usize,
    wanted: usize,
    allowed: Option<&[usize]>,
) -> Vec<&'static str> {
    let cpus = |c: &Config| {
        let mut cpus = c.cpus.as_deref().or(allowed).map(<[usize]>::to_vec);
        if let Some(list) = &mut cpus {
            list.sort_unstable();
            list.dedup();
        }
        cpus
    };
    [
        // Listed in any order: the same addresses are the same sockets.
        ("server.listen", !same_set(&old.listen, &new.listen)),
        ("tls.listen", !same_set(&old.tls.listen, &new.tls.listen)),
        ("server.shards", running != wanted),
        ("server.cpus", cpus(old) != cpus(new)),
        ("server.dispatch", old.dispatch != new.dispatch),
        ("server.affinity", old.affinity != new.affinity),
        ("server.defer-accept", old.defer_accept != new.defer_accept),
        ("server.idle-wait", old.idle_wait != new.idle_wait),
        (
            "server.drain-timeout",
            old.drain_timeout != new.drain_timeout,
        ),
        ("[log]", old.log != new.log),
        (
            "[metrics]",
            old.metrics.listen != new.metrics.listen || old.metrics.path != new.metrics.path,
        ),
    ]
    .into_iter()
    .filter_map(|(key, changed)| changed.then_some(key))
    .collect()
}

/// Whether `a` and `b` hold the same addresses, in whatever order.
fn same_set(a: &[SocketAddr], b: &[SocketAddr]) -> bool {
    a.iter().all(|x| b.contains(x)) && b.iter().all(|x| a.contains(x))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_listening_addresses_are_named() {
        let old = Config::default();
        let mut new = old.clone();
        assert!(added_listeners(&old, &new).is_empty());
        let a: SocketAddr = "127.0.0.1:8443".parse().unwrap();
        let b: SocketAddr = "127.0.0.1:8080".parse().unwrap();
        new.tls.listen.push(a);
        new.listen.push(b);
        let at = new.listen.len() - 1;
        assert_eq!(
            added_listeners(&old, &new),
            [
                (format!("server.listen[{at}]"), b),
                ("tls.listen[0]".into(), a)
            ]
        );
        // Removed ones are not added ones.
        assert!(added_listeners(&new, &old).is_empty());
    }

    #[test]
    fn restart_only_settings_are_named() {
        let old = Config::default();
        let mut new = old.clone();
        assert!(needs_restart(&old, &new, 2, 2, None).is_empty());
        // "auto" and the number it means here are the same.
        new.shards = Some(2);
        assert!(needs_restart(&old, &new, 2, 2, None).is_empty());
        // A number to "auto", which would start more.
        assert_eq!(needs_restart(&new, &old, 2, 8, None), ["server.shards"]);
        // The same addresses in another order are no change.
        let (a, b): (SocketAddr, SocketAddr) = (
            "127.0.0.1:1".parse().unwrap(),
            "127.0.0.1:2".parse().unwrap(),
        );
        let (mut x, mut y) = (old.clone(), old.clone());
        x.listen = vec![a, b];
        y.listen = vec![b, a];
        assert!(needs_restart(&x, &y, 2, 2, None).is_empty());
        y.listen = vec![b];
        assert_eq!(needs_restart(&x, &y, 2, 2, None), ["server.listen"]);
        new.shards = Some(3);
        new.affinity = crate::config::Affinity::Pinned;
        new.drain_timeout = std::time::Duration::from_secs(1);
        new.limits.max_body_bytes += 1;
        assert_eq!(
            needs_restart(&old, &new, 2, 3, None),
            ["server.shards", "server.affinity", "server.drain-timeout"]
        );
        // "all" and the list of every CPU allowed are the same CPUs; a
        // list in another order too.
        let listed = Config {
            cpus: Some(vec![1, 0]),
            ..old.clone()
        };
        let both: &[usize] = &[0, 1];
        assert!(needs_restart(&old, &listed, 2, 2, Some(both)).is_empty());
        assert_eq!(
            needs_restart(&old, &listed, 2, 2, Some(&[0, 1, 2])),
            ["server.cpus"]
        );
        assert_eq!(needs_restart(&old, &listed, 2, 2, None), ["server.cpus"]);
    }

    #[test]
    fn a_reload_completes_when_every_live_shard_applied_it() {
        let mut r = Reloads::default();
        let seq = r.next_seq();
        assert_eq!(r.sent(vec![0, 1, 2]), (seq, false));
        assert!(!r.applied(0, seq));
        // Shard 1 died meanwhile: it owes nothing.
        assert!(!r.forget(1));
        assert!(r.applied(2, seq));
        // Nothing owed any more: a late ack or a death completes nothing.
        assert!(!r.applied(2, seq));
        assert!(!r.forget(0));
    }

    #[test]
    fn an_overtaken_reloads_acks_do_not_count() {
        let mut r = Reloads::default();
        let first = r.next_seq();
        r.sent(vec![0, 1]);
        let second = r.next_seq();
        r.sent(vec![0, 1]);
        assert!(!r.applied(0, first));
        assert!(!r.applied(1, first));
        assert!(!r.applied(0, second));
        assert!(r.applied(1, second));
    }

    #[test]
    fn a_reload_that_reached_nobody_is_complete_at_once() {
        let mut r = Reloads::default();
        assert!(r.sent(Vec::new()).1);
    }
}
