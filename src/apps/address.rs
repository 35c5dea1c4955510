//! Where an instance listens: coreserve chooses, the app is told. A free TCP
//! port on 127.0.0.1 (free on ::1 too: an app that listens on `localhost`
//! may take either), or a Unix socket path in a directory of coreserve's.
//! A replacement gets a new address, so that it can start while the
//! instance it replaces still serves; a restart gets its slot's last one
//! again when it is free (`choose_again`: its metrics go on under it).

use std::cell::OnceCell;
use std::collections::HashSet;
use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

use socket2::{Domain, SockAddr, Socket, Type};

use crate::config::{AppListen, ServerAddr, MAX_UNIX_PATH};

/// Longest wait of one readiness probe.
const PROBE_TIMEOUT: Duration = Duration::from_millis(200);
/// Longest wait of one look at a ready instance (`refuses`): a refusal on
/// loopback comes at once, and a look that waits longer tells nothing.
const LOOK_TIMEOUT: Duration = Duration::from_millis(20);

/// The directory for this process's apps' Unix sockets
/// (`config::socket_dir`).
pub fn socket_dir() -> PathBuf {
    crate::config::socket_dir(std::process::id())
}

/// A new address of the kind `listen` asks for; `tag` names the
/// incarnation in a socket's file name. `given`: the ports of instances
/// that run or are starting, never chosen again — a port is free in the
/// kernel's eyes from its choice until its instance binds it, so two
/// instances started together could otherwise be told the same.
pub fn choose(
    listen: AppListen,
    dir: &Path,
    app: &str,
    tag: u64,
    given: &HashSet<u16>,
) -> io::Result<ServerAddr> {
    match listen {
        AppListen::Port => {
            // A free port, released for the app to take. Below the kernel's
            // ephemeral range when it can: every bind to port 0 and every
            // outgoing connection of this host takes its port from that
            // range, so one of them could take the port first (the
            // instance then fails to listen, at start-up fatally); below
            // it, only a program that binds that very number can.
            let clock = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64);
            let seed = clock ^ tag.rotate_left(32) ^ u64::from(std::process::id());
            let l = free_port_below(ephemeral_start(), seed, given)
                .map_or_else(|| any_free_port(given), Ok)?;
            Ok(ServerAddr::Tcp(l.local_addr()?))
        }
        AppListen::Unix => {
            own_dir(dir)?;
            let path = dir.join(crate::config::socket_file(app, tag));
            if path.as_os_str().len() > MAX_UNIX_PATH {
                return Err(io::Error::other(format!(
                    "the socket path {} is longer than the {MAX_UNIX_PATH} bytes a Unix socket address holds: set a shorter RUNTIME_DIRECTORY, XDG_RUNTIME_DIR or TMPDIR",
                    path.display()
                )));
            }
            let _ = std::fs::remove_file(&path);
            Ok(ServerAddr::Unix(path))
        }
    }
}

/// `choose`, but `previous` again when it is of the kind `listen` asks for
/// and free (a port nothing listens on, on 127.0.0.1 and ::1; a socket
/// path in `dir`): a slot's instance restarted after an exit keeps its
/// address, and the shards' series for it (labelled by address) go on.
pub fn choose_again(
    previous: Option<&ServerAddr>,
    listen: AppListen,
    dir: &Path,
    app: &str,
    tag: u64,
    given: &HashSet<u16>,
) -> io::Result<ServerAddr> {
    match (previous, listen) {
        (Some(ServerAddr::Tcp(at)), AppListen::Port)
            if !given.contains(&at.port())
                && TcpListener::bind(at).is_ok()
                && free_on_ipv6_loopback(at.port()) =>
        {
            return Ok(ServerAddr::Tcp(*at));
        }
        (Some(ServerAddr::Unix(path)), AppListen::Unix) if path.parent() == Some(dir) => {
            own_dir(dir)?;
            let _ = std::fs::remove_file(path);
            return Ok(ServerAddr::Unix(path.clone()));
        }
        _ => {}
    }
    choose(listen, dir, app, tag, given)
}

/// Where the kernel says which ports it hands out itself.
const EPHEMERAL_RANGE: &str = "/proc/sys/net/ipv4/ip_local_port_range";

/// The first port of the kernel's ephemeral range (32768, its default,
/// when the setting cannot be read).
fn ephemeral_start() -> u16 {
    let range = std::fs::read_to_string(EPHEMERAL_RANGE).ok();
    range
        .as_deref()
        .and_then(|r| r.split_ascii_whitespace().next()?.parse().ok())
        .unwrap_or(32768)
}

/// The lowest port an app is given: below are the ports services are
/// usually configured on.
const LOWEST_APP_PORT: u16 = 10000;

/// A listener on a free port of 127.0.0.1 from `LOWEST_APP_PORT` up to
/// `below` (the ephemeral range's start) and not `given`, tried at places
/// `seed` spreads at random: `None` when that range is small or no try
/// found one free.
fn free_port_below(below: u16, seed: u64, given: &HashSet<u16>) -> Option<TcpListener> {
    let span = u64::from(below.checked_sub(LOWEST_APP_PORT)?);
    if span < 1000 {
        return None;
    }
    let mut x = seed | 1;
    (0..32).find_map(|_| {
        // xorshift64: spread enough for picking ports.
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let port = LOWEST_APP_PORT + (x % span) as u16;
        if given.contains(&port) {
            return None;
        }
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, port)).ok()?;
        free_on_ipv6_loopback(port).then_some(listener)
    })
}

/// A listener on a port of 127.0.0.1 the kernel chose, not one `given`,
/// free on ::1 too if one of a few tries finds it so.
fn any_free_port(given: &HashSet<u16>) -> io::Result<TcpListener> {
    // Those passed over stay bound until the choice is made, so that the
    // kernel does not offer them again.
    let mut passed = Vec::new();
    loop {
        let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
        let port = l.local_addr()?.port();
        if !given.contains(&port) && (passed.len() >= 8 || free_on_ipv6_loopback(port)) {
            return Ok(l);
        }
        if passed.len() >= 64 {
            return Err(io::Error::other(
                "no free port: the kernel offered only ports given to other instances",
            ));
        }
        passed.push(l);
    }
}

/// Whether nothing listens on `[::1]:port` (true on a host without IPv6):
/// an app told only the port that binds `localhost` may get ::1 (Node 17
/// and later take the resolver's first answer), and must not find it
/// taken, nor its readiness be seen in another program's listener.
fn free_on_ipv6_loopback(port: u16) -> bool {
    match TcpListener::bind((Ipv6Addr::LOCALHOST, port)) {
        Ok(_) => true,
        Err(e) => e.kind() != io::ErrorKind::AddrInUse,
    }
}

/// Make `dir` (its parent exists) readable and writable by this user
/// alone, or check that it already is and belongs to this user: under a
/// shared temporary directory its name is easy to guess, and another user
/// who made it first could swap the apps' sockets.
fn own_dir(dir: &Path) -> io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt};
    match std::fs::DirBuilder::new().mode(0o700).create(dir) {
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            let meta = std::fs::symlink_metadata(dir)?;
            // SAFETY: geteuid(2) cannot fail.
            let me = unsafe { libc::geteuid() };
            if !meta.is_dir() || meta.uid() != me || meta.mode() & 0o077 != 0 {
                return Err(io::Error::other(format!(
                    "{} is not a directory of this user's that only it can use (owner uid {}, mode {:o}); remove it",
                    dir.display(),
                    meta.uid(),
                    meta.mode() & 0o7777
                )));
            }
            Ok(())
        }
        Err(e) => Err(io::Error::new(
            e.kind(),
            format!(
                "cannot make {} for the apps' sockets: {e} (it is made in RUNTIME_DIRECTORY, XDG_RUNTIME_DIR or TMPDIR)",
                dir.display()
            ),
        )),
        Ok(()) => Ok(()),
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

/// Whether nothing listens at `addr` any more: a connection to it is
/// refused (a Unix socket's file gone too). A look that cannot tell — the
/// listener's backlog full under load, where the connect waits (TCP) or
/// would block (Unix) — is no refusal: a busy instance is never taken for
/// one that stopped listening.
pub fn refuses(addr: &ServerAddr) -> bool {
    let refused = |e: io::Error| {
        matches!(
            e.kind(),
            io::ErrorKind::ConnectionRefused | io::ErrorKind::NotFound
        )
    };
    match addr {
        ServerAddr::Tcp(a) => TcpStream::connect_timeout(a, LOOK_TIMEOUT)
            .err()
            .is_some_and(refused),
        ServerAddr::Unix(p) => {
            // Not blocking: a blocking connect to a full backlog waits
            // until the app accepts, and the manager with it.
            let Ok(socket) = Socket::new(Domain::UNIX, Type::STREAM.nonblocking(), None) else {
                return false;
            };
            SockAddr::unix(p)
                .and_then(|to| socket.connect(&to))
                .err()
                .is_some_and(refused)
        }
    }
}

/// Where the instance told `addr` accepts connections, if it does yet:
/// `addr`, or for a port on 127.0.0.1 the same port on ::1, where an app
/// that listens on `localhost` alone may be (`listen(PORT, "localhost")`
/// in Node 17 and later, as the resolver orders ::1 first). nginx in front
/// of such an app gets "connection refused" from 127.0.0.1.
pub fn accepting(addr: &ServerAddr) -> Option<ServerAddr> {
    if accepts(addr) {
        return Some(addr.clone());
    }
    let ServerAddr::Tcp(a) = addr else {
        return None;
    };
    if a.ip() != Ipv4Addr::LOCALHOST {
        return None;
    }
    let v6 = ServerAddr::Tcp(SocketAddr::from((Ipv6Addr::LOCALHOST, a.port())));
    accepts(&v6).then_some(v6)
}

/// Remove what an address left behind (a Unix socket's file).
pub fn release(addr: &ServerAddr) {
    if let ServerAddr::Unix(p) = addr {
        let _ = std::fs::remove_file(p);
    }
}

/// Where the kernel shows its socket tables. A sandbox can hide it
/// (systemd's `ProcSubset=pid`): the tables then cannot be read.
pub const PROC_NET: &str = "/proc/net";

/// The kernel's socket tables, each read at most once: one look serves
/// every retiring instance counted in the same pass.
pub struct SocketTables<'a> {
    /// The directory that holds them: `PROC_NET` but in tests.
    dir: &'a Path,
    tcp: OnceCell<Option<String>>,
    tcp6: OnceCell<Option<String>>,
    unix: OnceCell<Option<String>>,
}

impl<'a> SocketTables<'a> {
    /// The tables in `dir` (`PROC_NET`), none read yet.
    pub fn new(dir: &'a Path) -> SocketTables<'a> {
        SocketTables {
            dir,
            tcp: OnceCell::new(),
            tcp6: OnceCell::new(),
            unix: OnceCell::new(),
        }
    }

    /// How many connections the instance at `addr` has accepted (or has
    /// waiting to be accepted) and not closed: while coreserve proxies to
    /// it, the requests it has in flight, since a shard closes its
    /// connections to a server it no longer lists once their requests end.
    /// Over TCP, a connection coreserve closed stops counting at once (the
    /// instance's end is then in CLOSE_WAIT); over a Unix socket, when the
    /// instance closes its end too, as Node does when it reads the end of
    /// the stream. `None` when the tables cannot be read.
    pub fn open_connections(&self, addr: &ServerAddr) -> Option<usize> {
        match addr {
            ServerAddr::Tcp(a) => {
                let v4 = self.read(&self.tcp, "tcp")?;
                // Node listens on `::` when given only a port: IPv4 clients
                // then appear in the IPv6 table, their address mapped.
                let v6 = self.read(&self.tcp6, "tcp6").unwrap_or_default();
                Some(tcp_connections(v4, a.port()) + tcp_connections(v6, a.port()))
            }
            ServerAddr::Unix(p) => Some(unix_connections(self.read(&self.unix, "unix")?, p)),
        }
    }

    /// Where the sockets among `inodes` listen (TCP and Unix), in the
    /// tables' order; `None` when no table can be read.
    pub fn listening(&self, inodes: &HashSet<u64>) -> Option<Vec<ServerAddr>> {
        let tcp = [self.read(&self.tcp, "tcp"), self.read(&self.tcp6, "tcp6")];
        let unix = self.read(&self.unix, "unix");
        if tcp.iter().all(Option::is_none) && unix.is_none() {
            return None;
        }
        let mut out: Vec<ServerAddr> = tcp
            .into_iter()
            .flatten()
            .flat_map(|t| tcp_listening(t, inodes))
            .map(ServerAddr::Tcp)
            .collect();
        out.extend(unix.into_iter().flat_map(|t| unix_listening(t, inodes)));
        Some(out)
    }

    /// The table `name`, read on the first call.
    fn read<'c>(&self, cell: &'c OnceCell<Option<String>>, name: &str) -> Option<&'c str> {
        cell.get_or_init(|| {
            let bytes = std::fs::read(self.dir.join(name)).ok()?;
            Some(String::from_utf8_lossy(&bytes).into_owned())
        })
        .as_deref()
    }
}

/// `/proc/net/tcp` or `tcp6`: the established connections whose local end
/// is a loopback address at `port` (127.0.0.1, plain or IPv4-mapped, or
/// ::1, where an app on `localhost` may listen).
fn tcp_connections(table: &str, port: u16) -> usize {
    const ESTABLISHED: &str = "01";
    let v4 = format!("0100007F:{port:04X}");
    let mapped = format!("0000000000000000FFFF0000{v4}");
    // ::1, its four words each in the kernel's (little-endian) order.
    let v6 = format!("00000000000000000000000001000000:{port:04X}");
    table
        .lines()
        .skip(1)
        .filter(|line| {
            let mut f = line.split_ascii_whitespace();
            let local = f.nth(1);
            let state = f.nth(1);
            matches!(local, Some(l) if l == v4 || l == mapped || l == v6)
                && state == Some(ESTABLISHED)
        })
        .count()
}

/// `/proc/net/tcp` or `tcp6`: where the listening sockets among `inodes`
/// listen.
fn tcp_listening<'t>(
    table: &'t str,
    inodes: &'t HashSet<u64>,
) -> impl Iterator<Item = SocketAddr> + 't {
    const LISTEN: &str = "0A";
    table.lines().skip(1).filter_map(move |line| {
        // sl, local address, remote address, state, queues, timer,
        // retransmits, uid, timeout, inode.
        let f: Vec<&str> = line.split_ascii_whitespace().take(10).collect();
        let inode: u64 = f.get(9)?.parse().ok()?;
        if f[3] != LISTEN || !inodes.contains(&inode) {
            return None;
        }
        kernel_socket_addr(f[1])
    })
}

/// A socket address as the kernel's tables write it: the address in hex,
/// each 32-bit word printed as the host holds it in memory, then `:` and
/// the port in hex.
fn kernel_socket_addr(field: &str) -> Option<SocketAddr> {
    let (ip, port) = field.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let mut words = [0u32; 4];
    let n = ip.len() / 8;
    if !(n == 1 || n == 4) || ip.len() % 8 != 0 {
        return None;
    }
    for (i, w) in words.iter_mut().take(n).enumerate() {
        *w = u32::from_str_radix(&ip[i * 8..i * 8 + 8], 16).ok()?;
    }
    let ip: std::net::IpAddr = if n == 1 {
        Ipv4Addr::from(words[0].to_ne_bytes()).into()
    } else {
        let mut bytes = [0u8; 16];
        for (chunk, w) in bytes.chunks_exact_mut(4).zip(words) {
            chunk.copy_from_slice(&w.to_ne_bytes());
        }
        Ipv6Addr::from(bytes).into()
    };
    Some(SocketAddr::new(ip, port))
}

/// `/proc/net/unix`: the paths where the listening sockets among `inodes`
/// listen.
fn unix_listening<'t>(
    table: &'t str,
    inodes: &'t HashSet<u64>,
) -> impl Iterator<Item = ServerAddr> + 't {
    const ACCEPTING: &str = "00010000";
    table.lines().skip(1).filter_map(move |line| {
        let (fields, path) = unix_fields(line);
        let inode: u64 = fields[6].parse().ok()?;
        (fields[3] == ACCEPTING && inodes.contains(&inode) && !path.is_empty())
            .then(|| ServerAddr::Unix(PathBuf::from(path)))
    })
}

/// A line of `/proc/net/unix`: Num, RefCount, Protocol, Flags, Type, St,
/// Inode, and the path, which may hold spaces (empty for a socket bound
/// to none).
fn unix_fields(line: &str) -> ([&str; 7], &str) {
    let mut fields = [""; 7];
    let mut rest = line;
    for field in &mut fields {
        rest = rest.trim_start();
        let end = rest
            .find(|c: char| c.is_ascii_whitespace())
            .unwrap_or(rest.len());
        *field = &rest[..end];
        rest = &rest[end..];
    }
    (fields, rest.trim_start())
}

/// `/proc/net/unix`: the sockets bound to `path` that are connected (what
/// accept returned on the instance's listening socket carries its address)
/// or waiting in its backlog to be accepted (shown as connecting).
fn unix_connections(table: &str, path: &Path) -> usize {
    const CONNECTING: &str = "02";
    const CONNECTED: &str = "03";
    let Some(path) = path.to_str() else { return 0 };
    table
        .lines()
        .skip(1)
        .filter(|line| {
            let (fields, bound) = unix_fields(line);
            (fields[5] == CONNECTED || fields[5] == CONNECTING) && bound == path
        })
        .count()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tcp_counts_established_connections_to_the_port_only() {
        // 127.0.0.1:3001 listening, two accepted connections to it (one
        // closed by the peer: CLOSE_WAIT), coreserve's own end of one, and
        // an unrelated connection to 127.0.0.2:3001.
        let v4 = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:0BB9 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 10 1 0000000000000000 100 0 0 10 0
   1: 0100007F:0BB9 0100007F:A2F4 01 00000000:00000000 00:00000000 00000000  1000        0 11 1 0000000000000000 20 4 30 10 -1
   2: 0100007F:0BB9 0100007F:A2F6 08 00000000:00000000 00:00000000 00000000  1000        0 12 1 0000000000000000 20 4 30 10 -1
   3: 0100007F:A2F4 0100007F:0BB9 01 00000000:00000000 00:00000000 00000000  1000        0 13 1 0000000000000000 20 4 30 10 -1
   4: 0200007F:0BB9 0100007F:A2F8 01 00000000:00000000 00:00000000 00000000  1000        0 14 1 0000000000000000 20 4 30 10 -1
";
        assert_eq!(tcp_connections(v4, 3001), 1);
        assert_eq!(tcp_connections(v4, 3002), 0);
        let v6 = "  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000000000000000000000000000:0BB9 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 20 1 0000000000000000 100 0 0 10 0
   1: 0000000000000000FFFF00000100007F:0BB9 0000000000000000FFFF00000100007F:A2FA 01 00000000:00000000 00:00000000 00000000  1000        0 21 1 0000000000000000 20 4 30 10 -1
   2: 0000000000000000FFFF00000100007F:0BB9 0000000000000000FFFF00000100007F:A2FC 01 00000000:00000000 00:00000000 00000000  1000        0 22 1 0000000000000000 20 4 30 10 -1
   3: 00000000000000000000000001000000:0BB9 00000000000000000000000001000000:A2FE 01 00000000:00000000 00:00000000 00000000  1000        0 23 1 0000000000000000 20 4 30 10 -1
   4: 00000000000000000000000001000000:A2FE 00000000000000000000000001000000:0BB9 01 00000000:00000000 00:00000000 00000000  1000        0 24 1 0000000000000000 20 4 30 10 -1
";
        assert_eq!(tcp_connections(v6, 3001), 3);
        assert_eq!(tcp_connections("", 3001), 0);
    }

    #[test]
    fn listening_sockets_are_found_by_their_inodes() {
        let v4 = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:0BB9 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 10 1 0000000000000000 100 0 0 10 0
   1: 00000000:0BB8 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 11 1 0000000000000000 100 0 0 10 0
   2: 0100007F:0BB9 0100007F:A2F4 01 00000000:00000000 00:00000000 00000000  1000        0 12 1 0000000000000000 20 4 30 10 -1
";
        let v6 = "  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000000000000000000001000000:0BB9 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 20 1 0000000000000000 100 0 0 10 0
";
        let unix = "Num       RefCount Protocol Flags    Type St Inode Path
0000000000000000: 00000002 00000000 00010000 0001 01 30 /run/cs dir/web.1.sock
0000000000000000: 00000003 00000000 00000000 0001 03 31 /run/cs dir/web.1.sock
0000000000000000: 00000002 00000000 00010000 0001 01 32
";
        let inodes = HashSet::from([10, 12, 20, 30, 31, 32]);
        let tcp: Vec<String> = tcp_listening(v4, &inodes)
            .chain(tcp_listening(v6, &inodes))
            .map(|a| a.to_string())
            .collect();
        // Not inode 11 (another process's), nor 12 (a connection).
        assert_eq!(tcp, ["127.0.0.1:3001", "[::1]:3001"]);
        let paths: Vec<ServerAddr> = unix_listening(unix, &inodes).collect();
        assert_eq!(paths, [ServerAddr::Unix("/run/cs dir/web.1.sock".into())]);
        assert_eq!(kernel_socket_addr("0100007F"), None);
        assert_eq!(kernel_socket_addr("0100007:0BB9"), None);
    }

    #[test]
    fn unix_counts_connected_sockets_bound_to_the_path() {
        let table = "Num       RefCount Protocol Flags    Type St Inode Path
0000000000000000: 00000002 00000000 00010000 0001 01 30 /run/cs/web.1.sock
0000000000000000: 00000003 00000000 00000000 0001 03 31 /run/cs/web.1.sock
0000000000000000: 00000003 00000000 00000000 0001 03 32
0000000000000000: 00000003 00000000 00000000 0001 03 33 /run/cs/web.1.sock
0000000000000000: 00000003 00000000 00000000 0001 03 34 /run/cs/web.12.sock
0000000000000000: 00000003 00000000 00000000 0001 03  1235 /run/cs dir/web.1.sock
0000000000000000: 00000002 00000000 00000000 0001 02 36 /run/cs/web.1.sock
";
        assert_eq!(unix_connections(table, Path::new("/run/cs/web.1.sock")), 3);
        assert_eq!(
            unix_connections(table, Path::new("/run/cs dir/web.1.sock")),
            1
        );
        assert_eq!(unix_connections(table, Path::new("/run/cs/web.2.sock")), 0);
    }

    #[test]
    fn the_socket_directory_is_this_users_alone() {
        use std::os::unix::fs::PermissionsExt;
        let base = std::env::temp_dir().join(format!("cs-own-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        std::fs::create_dir_all(&base).unwrap();
        let dir = base.join("sockets");
        let at = |dir: &Path| choose(AppListen::Unix, dir, "web", 1, &HashSet::new());
        assert!(at(&dir).is_ok());
        let mode = std::fs::metadata(&dir).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
        // Made before by someone who lets others in: refused.
        let open = base.join("open");
        std::fs::create_dir(&open).unwrap();
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
        let err = at(&open).unwrap_err().to_string();
        assert!(err.contains("remove it"), "{err}");
        // Not a directory at all.
        let file = base.join("file");
        std::fs::write(&file, b"").unwrap();
        assert!(at(&file).is_err());
        // A long app name is cut short in the socket's name, which the
        // tag keeps unique; a directory too deep is said so.
        let long = "a".repeat(120);
        let Ok(ServerAddr::Unix(p)) = choose(AppListen::Unix, &dir, &long, 12, &HashSet::new())
        else {
            panic!("no socket path for a long name");
        };
        assert_eq!(p, dir.join(format!("{}.12.sock", &long[..32])));
        let deep = base.join("d".repeat(100));
        let err = choose(AppListen::Unix, &deep, "web", 1, &HashSet::new())
            .unwrap_err()
            .to_string();
        assert!(err.contains("longer than the 107 bytes"), "{err}");
        let _ = std::fs::remove_dir_all(&base);
    }

    /// A restart gets its last address again when it is free, a new one
    /// when it is taken or of another kind.
    #[test]
    fn a_restart_listens_where_its_slot_did_when_it_can() {
        let dir = std::env::temp_dir().join(format!("cs-again-{}", std::process::id()));
        let none = HashSet::new();
        let again = |previous: &ServerAddr, listen, tag, given: &HashSet<u16>| {
            choose_again(Some(previous), listen, &dir, "web", tag, given).unwrap()
        };
        let free = choose(AppListen::Port, &dir, "web", 1, &none).unwrap();
        assert_eq!(again(&free, AppListen::Port, 2, &none), free);
        let ServerAddr::Tcp(at) = free else {
            panic!("{free:?}")
        };
        // Given to another instance that has not bound it yet.
        let given = HashSet::from([at.port()]);
        assert_ne!(again(&free, AppListen::Port, 2, &given), free);
        let _taken = TcpListener::bind(at).unwrap();
        assert_ne!(again(&free, AppListen::Port, 3, &none), free);
        let unix = again(&free, AppListen::Unix, 4, &none);
        assert!(matches!(unix, ServerAddr::Unix(_)), "{unix:?}");
        assert_eq!(again(&unix, AppListen::Unix, 5, &none), unix);
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A port chosen for an instance that has not bound it yet is free in
    /// the kernel's eyes, and must not be chosen for another.
    #[test]
    fn a_port_given_to_a_starting_instance_is_not_chosen_again() {
        let below = ephemeral_start();
        let port_of = |l: TcpListener| l.local_addr().unwrap().port();
        let Some(first) = free_port_below(below, 42, &HashSet::new()).map(port_of) else {
            return;
        };
        // The same draw, that port now given.
        let again = free_port_below(below, 42, &HashSet::from([first])).map(port_of);
        assert_ne!(again, Some(first));
    }

    #[test]
    fn app_ports_come_from_below_the_ephemeral_range() {
        for tag in 0..20 {
            let ServerAddr::Tcp(a) =
                choose(AppListen::Port, Path::new("/"), "web", tag, &HashSet::new()).unwrap()
            else {
                panic!("not a port");
            };
            let port = a.port();
            let low = ephemeral_start();
            if low >= LOWEST_APP_PORT + 1000 {
                assert!(
                    (LOWEST_APP_PORT..low).contains(&port),
                    "{port} is not below the ephemeral range from {low}"
                );
            }
        }
        // Too small a range below: the kernel's choice.
        assert!(free_port_below(LOWEST_APP_PORT + 10, 1, &HashSet::new()).is_none());
        assert!(free_port_below(LOWEST_APP_PORT - 1, 1, &HashSet::new()).is_none());
    }

    #[test]
    fn this_process_sees_its_own_connections() {
        let count =
            |addr: &ServerAddr| SocketTables::new(Path::new(PROC_NET)).open_connections(addr);
        // A TCP end's new state reaches the tables once the kernel has
        // handled the segment, which on a loaded host may be a moment
        // after the call that sent it (CI saw a close not yet counted).
        let settles = |addr: &ServerAddr, want: usize, what: &str| {
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
            while count(addr) != Some(want) {
                assert!(
                    std::time::Instant::now() < deadline,
                    "{what}: {:?}",
                    count(addr)
                );
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
        };
        // A port where apps get theirs, below the ephemeral range: there no
        // other connection on the host can have it as its local port (one
        // did once, with a port-0 listener, while a probe ran).
        let l = free_port_below(ephemeral_start(), 7, &HashSet::new())
            .unwrap_or_else(|| TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap());
        let addr = ServerAddr::Tcp(l.local_addr().unwrap());
        assert_eq!(count(&addr), Some(0));
        let c = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        settles(&addr, 1, "waiting to be accepted");
        let (s, _) = l.accept().unwrap();
        settles(&addr, 1, "accepted");
        // The client (coreserve) closes its end: done, whatever the
        // instance does with its own.
        drop(c);
        settles(&addr, 0, "closed by the client");
        drop(s);
        let _c = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (s, _) = l.accept().unwrap();
        drop(s);
        settles(&addr, 0, "closed by the instance");

        let dir = std::env::temp_dir().join(format!("cs-addr-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("a.sock");
        let _ = std::fs::remove_file(&path);
        let l = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let addr = ServerAddr::Unix(path.clone());
        let c = std::os::unix::net::UnixStream::connect(&path).unwrap();
        assert_eq!(count(&addr), Some(1), "waiting to be accepted");
        let (s, _) = l.accept().unwrap();
        assert_eq!(count(&addr), Some(1));
        // Over a Unix socket the instance's end counts until it closes it.
        drop(c);
        assert_eq!(count(&addr), Some(1));
        drop(s);
        assert_eq!(count(&addr), Some(0));
        // This process's own listener, found through its descriptors.
        let inodes = crate::apps::proc_table::socket_inodes(std::process::id()).unwrap();
        let listening = SocketTables::new(Path::new(PROC_NET)).listening(&inodes);
        assert!(listening.unwrap().contains(&addr), "{addr} not found");
        // One look at the tables per pass: what changes after it is not seen.
        let tables = SocketTables::new(Path::new(PROC_NET));
        assert_eq!(tables.open_connections(&addr), Some(0));
        let _c = std::os::unix::net::UnixStream::connect(&path).unwrap();
        assert_eq!(tables.open_connections(&addr), Some(0));
        assert_eq!(count(&addr), Some(1));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
