//! Starting a shard: its channels, its hand-off queue or listeners, its
//! lifeline and access-log file, then its executor, placed by `server.affinity`. Used at start-up
//! and again for a shard that died.

use std::net::SocketAddr;

use glommio::channels::shared_channel;

use super::{MasterError, SHARD_QUEUE};
use crate::access_log;
use crate::bell::Bell;
use crate::config::{AccessLog, Affinity, Config, Dispatch};
use crate::cpus;
use crate::handoff;
use crate::listener;
use crate::shard::{self, Control, Intake, Placement, ShardEvent, ShardSpec};

/// Where a restarted shard's listener comes from, in reuseport mode.
pub(super) enum ListenSource {
    /// A socket from socket activation: every shard accepts on a copy.
    Activated(std::net::TcpListener),
    /// A bound address: a restarted shard binds one more SO_REUSEPORT socket.
    Address(SocketAddr),
}

/// Starts shards, at start-up and again after one dies.
pub(super) struct Launcher {
    pub(super) io_memory: usize,
    /// Reuseport mode: one per listen address.
    pub(super) sources: Vec<ListenSource>,
    /// `server.defer-accept`, for a restarted shard's listeners.
    pub(super) defer_accept: bool,
    /// What each listener speaks, in the order of the listeners (the index
    /// a hand-off carries).
    pub(super) schemes: Vec<crate::listener::Scheme>,
    /// `server.affinity`, for every shard this launcher starts.
    pub(super) affinity: Affinity,
    /// The CPUs `server.cpus` selects, sorted: where floating shards run.
    pub(super) selected: Vec<usize>,
    /// The host's NUMA nodes, as their CPUs (`cpus::numa_nodes`).
    pub(super) nodes: Vec<Vec<usize>>,
}

/// A shard just started, before the master connects its channels.
pub(super) struct Launched {
    pub(super) handle: glommio::ExecutorJoinHandle<()>,
    /// The master's end of the shard's lifeline: end of file when its thread ends.
    pub(super) lifeline: std::os::unix::net::UnixStream,
    /// Reuseport mode: the master's copies of the shard's own listeners, to
    /// take them out of the SO_REUSEPORT group if the shard dies.
    pub(super) listener_copies: Vec<std::net::TcpListener>,
    pub(super) control: shared_channel::SharedSender<Control>,
    /// Rung after each control message (see `ShardSpec::control_bell`).
    pub(super) control_bell: Bell,
    pub(super) events: shared_channel::SharedReceiver<ShardEvent>,
    /// Master dispatch: the sending end of the shard's hand-off queue.
    pub(super) conns: Option<handoff::Sender>,
}

impl Launcher {
    /// Start shard `id` on `cpu` with the current configuration. Reuseport
    /// listeners come from `listeners` at start-up, from `sources` on restart.
    pub(super) fn launch(
        &self,
        id: usize,
        cpu: usize,
        config: &Config,
        listeners: Option<Vec<std::net::TcpListener>>,
    ) -> Result<Launched, MasterError> {
        let (ctl_tx, ctl_rx) = shared_channel::new_bounded(4);
        let (ev_tx, ev_rx) = shared_channel::new_bounded(16);
        let bell_failed = |e: std::io::Error| MasterError::Executor {
            what: format!("shard {id}'s control bell"),
            err: e.to_string(),
        };
        let control_bell = Bell::new().map_err(bell_failed)?;
        let shard_bell = control_bell.try_clone().map_err(bell_failed)?;
        let mut conns = None;
        let mut listener_copies = Vec::new();
        let intake = match config.dispatch {
            Dispatch::Master => {
                let (tx, rx) = handoff::queue(SHARD_QUEUE).map_err(|e| MasterError::Executor {
                    what: format!("shard {id}'s hand-off queue"),
                    err: e.to_string(),
                })?;
                conns = Some(tx);
                Intake::Channel(rx)
            }
            Dispatch::Reuseport => {
                let own = match listeners {
                    Some(l) => l,
                    None => self.reuseport_listeners()?,
                };
                // Only a shard's own SO_REUSEPORT sockets; an activated socket
                // is shared by every shard and must stay open.
                if !self
                    .sources
                    .iter()
                    .any(|s| matches!(s, ListenSource::Activated(_)))
                {
                    for l in &own {
                        listener_copies.push(l.try_clone().map_err(MasterError::Activation)?);
                    }
                }
                Intake::Listeners(own)
            }
        };
        let (lifeline, shard_end) =
            std::os::unix::net::UnixStream::pair().map_err(MasterError::Signals)?;
        let log_file = match &config.log.access {
            AccessLog::File(path) => {
                Some(
                    access_log::open(path).map_err(|err| MasterError::AccessLog {
                        path: path.clone(),
                        err,
                    })?,
                )
            }
            _ => None,
        };
        let spec = ShardSpec {
            id,
            cpu,
            placement: self.placement(cpu),
            intake,
            control: ctl_rx,
            control_bell: shard_bell,
            events: ev_tx,
            limits: config.limits,
            routes: config.routes.clone(),
            upstreams: config.upstreams.clone(),
            proxy_protocol: config.proxy_protocol.clone(),
            schemes: self.schemes.clone(),
            tls: config.tls.clone(),
            log: config.log.clone(),
            log_file,
            drain_timeout: config.drain_timeout,
            idle_wait: config.idle_wait,
            io_memory: self.io_memory,
            lifeline: shard_end,
        };
        let handle = shard::spawn(spec).map_err(|e| MasterError::Executor {
            what: format!("shard {id} on {}", self.place(cpu)),
            err: e.to_string(),
        })?;
        Ok(Launched {
            handle,
            lifeline,
            listener_copies,
            control: ctl_tx,
            control_bell,
            events: ev_rx,
            conns,
        })
    }

    /// Where a shard planned on `cpu` runs.
    fn placement(&self, cpu: usize) -> Placement {
        match self.affinity {
            Affinity::Pinned => Placement::Pinned(cpu),
            Affinity::Floating => {
                Placement::Floating(cpus::fence(&self.selected, cpu, &self.nodes))
            }
        }
    }

    /// Where a shard planned on `cpu` runs, as logs say it ("CPU 1", or
    /// "CPUs 0-3" when floating over more than one).
    pub(super) fn place(&self, cpu: usize) -> String {
        match self.placement(cpu) {
            Placement::Floating(set) if set.len() > 1 => {
                format!("CPUs {}", cpus::format_cpu_list(&set))
            }
            _ => format!("CPU {cpu}"),
        }
    }

    fn reuseport_listeners(&self) -> Result<Vec<std::net::TcpListener>, MasterError> {
        self.sources
            .iter()
            .map(|src| match src {
                ListenSource::Activated(l) => l.try_clone().map_err(MasterError::Activation),
                ListenSource::Address(addr) => {
                    Ok(listener::bind_reuseport_member(*addr, self.defer_accept)?)
                }
            })
            .collect()
    }
}
