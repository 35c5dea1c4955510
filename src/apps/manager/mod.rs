//! The app manager: one thread that owns every instance of every app, for
//! as long as coreserve runs. It starts instances and waits until they
//! accept connections, restarts one that exits (with back-off), replaces
//! them one at a time when their app changes (a rolling reload), and stops
//! them. It tells the master which addresses serve each app (`AppEvent`).

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::time::{Duration, Instant};

use log::{error, info, warn};

mod listening;
mod reload;
mod status;
mod stop;
#[cfg(test)]
mod tests;

use super::process::{self, Process};
use super::{address, proc_table};
use super::{AppError, AppEvent, AppServer, AppServers, Notify};
use crate::child::{Backoff, Child, STABLE_AFTER};
use crate::config::{AppConfig, ServerAddr, StopSignal};
use crate::signals;
pub(super) use status::Board;

/// How soon a start that failed for want of this process's descriptors
/// (or memory) is tried again: a fixed second, not the app's back-off.
const LOCAL_RETRY: Duration = Duration::from_secs(1);

/// How often starting instances are probed.
const PROBE_EVERY: Duration = Duration::from_millis(50);
/// How long an instance taken out of service keeps running at least before
/// it is asked to stop: the shards have stopped sending it requests by
/// then. It is asked once the requests it still has are done (its
/// connections from the shards are closed), or after the server's
/// `drain-timeout` if they are not.
pub const RETIRE_GRACE: Duration = Duration::from_secs(1);
/// How often a retiring instance's open connections are counted.
const RETIRE_POLL: Duration = Duration::from_millis(250);
/// How often the memory of ready instances is read (for `coreserve
/// status`, the metrics and `max-memory`): PM2 looks every 30 s; a leak
/// that grows by a few MiB a second is found before it grows much past
/// the limit. A few small reads of `/proc` per process of an instance.
const MEMORY_EVERY: Duration = Duration::from_secs(2);
/// How often an instance still there after SIGKILL is killed again: its
/// exit is not seen yet (the rest of its output is awaited, or the kernel
/// has not let it go).
const KILL_AGAIN: Duration = Duration::from_secs(5);

/// Messages to the manager's thread.
pub(super) enum Msg {
    /// An instance's process ended.
    Exited { tag: u64, status: ExitStatus },
    /// New settings (a reload); `true`: the reload's own, applied now, so
    /// an app with `reload = "always"` is replaced even if they did not
    /// change (not for the serving settings resent while a reload waits
    /// for new apps, nor for a reload given up).
    Reload(Vec<AppConfig>, bool),
    /// Stop every instance, then answer.
    Stop(Sender<()>),
    /// During a stop: SIGKILL what is left now, not at its stop timeout
    /// (a second stop signal).
    KillNow,
    /// The server drains before it stops: nothing starts any more (no
    /// replacement, no restart), and a replacement still starting leaves;
    /// what serves goes on serving the requests in flight.
    WindDown,
    /// The drain's deadline passed with connections still open: every
    /// instance is asked to stop now, while the shards still relay what it
    /// sends (`Manager::last_call`).
    LastCall,
}

/// One incarnation of an instance.
struct Instance {
    /// Unique per incarnation: what its exit is reported with.
    tag: u64,
    /// The configuration generation it was started with.
    generation: u64,
    addr: ServerAddr,
    process: Process,
    state: State,
    started: Instant,
    /// Started with the settings its slot's last instance served with
    /// (`Slot::restart_as`), a rollout's not having come up: a fallback,
    /// which stays one if it fails before it is ready.
    fallback: bool,
    /// How it is asked to stop: its settings' `stop-signal` and
    /// `stop-timeout`, those of a reload that did not replace it (a
    /// replaced instance keeps the ones its code was started with).
    stop: (StopSignal, Duration),
    /// Its resident memory with its children's at the last look
    /// (`check_memory`), once ready.
    memory: Option<u64>,
    /// Asked to stop for refusing connections past its start-timeout
    /// once ready (`listening`): its exit says so.
    deaf: bool,
}

enum State {
    /// Not accepting connections yet; gives up at the deadline.
    Starting { deadline: Instant },
    /// Serving, since it first accepted a connection; out of service
    /// while `refused` holds when a look first found it refusing
    /// connections (its listener closed while it runs on: `listening`).
    Ready {
        since: Instant,
        refused: Option<Instant>,
    },
    /// Out of service; asked to stop at `stop_at` if it has no connection
    /// left then (else it is looked at again), and at `give_up` at the
    /// latest.
    Retiring {
        stop_at: Instant,
        give_up: Instant,
        /// Its open connections were counted and said so in the log.
        waiting: bool,
        /// The drain it was given (its app's `drain-timeout`, else the
        /// server's), for the log.
        drain: Duration,
    },
    /// Asked to stop; killed at this time.
    Stopping { kill_at: Instant },
}

/// One instance slot of an app: its current incarnation (a supervised
/// child, as a shard thread is) and a replacement being started.
struct Slot {
    current: Child<Instance>,
    next: Option<Instance>,
    /// Replacements that failed to come up in a row (a rolling reload to
    /// a broken command), and when the next may start.
    replace_backoff: Backoff,
    replace_at: Option<Instant>,
    /// A replacement for this slot failed to come up, and none has since:
    /// its instance serves settings a reload replaced (`ready-old`).
    replacement_failed: bool,
    /// The generation the slot's next restart runs: an earlier one when
    /// the instance that exited ran it and the app's settings have not
    /// been ready anywhere yet, so that a rolling reload to a broken
    /// command never takes away the instances that still work; `None`:
    /// the app's.
    restart_as: Option<u64>,
    /// How and when its last process to end (current or replacement)
    /// ended, for `coreserve status`.
    last_exit: Option<(String, Instant)>,
    /// Its instance passed the app's `max-memory`: the roll replaces it
    /// as a rolling reload does, with the settings it runs.
    oversized: bool,
    /// Its instance has refused connections for its start-timeout while
    /// running on (`listening`): the roll replaces it as one past
    /// `max-memory`.
    not_listening: bool,
    /// Instances found past `max-memory` soon after their start, in a row:
    /// an app that needs more than its limit from the start is replaced
    /// after 1 s, doubling to 30 s, not every few seconds for ever.
    memory_backoff: Backoff,
    /// Where its last instance to exit unasked listened: its restart
    /// listens there again when that is free, so that the shards' series
    /// for that server (labelled by address) go on. (`ip-hash` knows the
    /// instance by its slot, `AppServer::slot`, whatever its address.)
    last_addr: Option<ServerAddr>,
}

struct App {
    config: AppConfig,
    /// The generation of `config`: instances of another one are replaced.
    generation: u64,
    /// The highest generation given yet (a new change takes the next).
    issued: u64,
    /// Earlier settings that instances still run (or restart with), with
    /// their generation: a reload back to one of them keeps those
    /// instances.
    earlier: Vec<(u64, AppConfig)>,
    /// An instance of `generation` has been ready: its settings work.
    proven: bool,
    slots: Vec<Slot>,
    /// What the master was last told.
    published: Vec<AppServer>,
    /// Added by a reload that waits for it (the master's held reload):
    /// the reload that then applies is its own, which changes nothing of
    /// it and replaces none of its new instances (`reload = "always"`
    /// too).
    held_start: bool,
    /// An instance was found listening on every interface and the log said
    /// so: once, not at each restart and replacement.
    said_open: bool,
    /// The last generation whose instance was looked at for that: its
    /// instances run the same code, and the look reads `/proc`'s process
    /// and socket tables, so one instance of each is looked at.
    open_looked: Option<u64>,
}

/// An instance out of service, on its way out (replaced, its slot or app
/// removed by a reload).
struct Leaving {
    app: String,
    index: usize,
    inst: Instance,
    /// Its open connections at the last count (`timers`, from the first
    /// pass after it left on); `None` before, or when the kernel's tables
    /// cannot be read.
    open: Option<usize>,
}

impl Leaving {
    /// `inst`, taken out of slot `index` of `app` with its state set.
    fn new(app: &AppConfig, index: usize, inst: Instance) -> Leaving {
        Leaving {
            app: app.name.clone(),
            index,
            inst,
            open: None,
        }
    }

    /// How the log names it.
    fn who(&self) -> String {
        who(&self.app, self.index)
    }
}

/// The manager's state, on its own thread.
pub(super) struct Manager {
    apps: Vec<App>,
    leaving: Vec<Leaving>,
    shards: usize,
    /// How long a retiring instance's requests in flight may take (the
    /// server's `drain-timeout`), unless its app sets its own.
    drain: Duration,
    dir: PathBuf,
    /// Where the kernel's socket tables are read (`address::PROC_NET`).
    proc_net: PathBuf,
    tx: Sender<Msg>,
    notify: Notify,
    /// Where the handles read every instance's status.
    board: Board,
    next_tag: u64,
    /// When the instances' memory is read next (`check_memory`); `None`:
    /// at the next pass.
    memory_at: Option<Instant>,
    /// When the ready instances are looked at next (`check_listening`);
    /// `None`: at the next pass.
    listen_at: Option<Instant>,
    /// The server drains (`Msg::WindDown`): nothing more is started.
    winding_down: bool,
}

impl State {
    /// Taken out of service at `now`; its requests in flight get `drain`.
    fn retiring(now: Instant, drain: Duration) -> State {
        let drain = drain.max(RETIRE_GRACE);
        State::Retiring {
            stop_at: now + RETIRE_GRACE,
            give_up: now + drain,
            waiting: false,
            drain,
        }
    }
}

impl Slot {
    fn new(now: Instant) -> Slot {
        Slot {
            current: Child::new(now),
            next: None,
            replace_backoff: Backoff::new(now),
            replace_at: None,
            replacement_failed: false,
            restart_as: None,
            last_exit: None,
            oversized: false,
            not_listening: false,
            memory_backoff: Backoff::new(now),
            last_addr: None,
        }
    }

    fn instances(&self) -> impl Iterator<Item = &Instance> {
        self.current.get().into_iter().chain(self.next.iter())
    }

    /// Take the slot's instances out of service: they stop after the grace.
    fn retire(
        &mut self,
        app: &AppConfig,
        index: usize,
        now: Instant,
        drain: Duration,
        out: &mut Vec<Leaving>,
    ) {
        for mut inst in self.current.retire().into_iter().chain(self.next.take()) {
            inst.state = State::retiring(now, app.drain(drain));
            out.push(Leaving::new(app, index, inst));
        }
    }
}

impl App {
    /// A new app of `n` slots, each to start at `now`.
    fn new(config: AppConfig, n: usize, now: Instant) -> App {
        App {
            config,
            generation: 0,
            issued: 0,
            earlier: Vec::new(),
            proven: false,
            slots: (0..n).map(|_| Slot::new(now)).collect(),
            published: Vec::new(),
            held_start: false,
            said_open: false,
            open_looked: None,
        }
    }

    /// The settings of `generation`: the app's, or earlier ones instances
    /// still run; None when no longer known.
    fn settings(&self, generation: u64) -> Option<&AppConfig> {
        if generation == self.generation {
            return Some(&self.config);
        }
        self.earlier
            .iter()
            .find_map(|(g, c)| (*g == generation).then_some(c))
    }
}

impl Manager {
    /// A manager with no app yet; it sends itself its instances' exits on
    /// `tx` and posts their status on `board`. A retiring instance gets
    /// `drain` to finish its requests, unless its app sets its own.
    pub(super) fn new(
        shards: usize,
        drain: Duration,
        tx: Sender<Msg>,
        notify: Notify,
        board: Board,
    ) -> Manager {
        Manager {
            apps: Vec::new(),
            leaving: Vec::new(),
            shards,
            drain,
            dir: address::socket_dir(),
            proc_net: PathBuf::from(address::PROC_NET),
            tx,
            notify,
            board,
            next_tag: 0,
            memory_at: None,
            listen_at: None,
            winding_down: false,
        }
    }

    /// Start every app and wait until each instance accepts connections:
    /// the addresses of each app, or the first failure (then everything
    /// started is stopped again).
    pub(super) fn start(
        &mut self,
        configs: Vec<AppConfig>,
        rx: &Receiver<Msg>,
    ) -> Result<AppServers, AppError> {
        let now = Instant::now();
        for config in configs {
            let n = config.instance_count(self.shards);
            self.apps.push(App::new(config, n, now));
        }
        loop {
            if let Err(e) = self.start_due(Instant::now(), true) {
                self.stop_all(rx);
                return Err(e);
            }
            if let Err(e) = self.probe(Instant::now(), true) {
                self.stop_all(rx);
                return Err(e);
            }
            self.post_status();
            let all_ready = self.apps.iter().all(|a| {
                a.slots.iter().all(|s| {
                    matches!(
                        s.current.get(),
                        Some(Instance {
                            state: State::Ready { .. },
                            ..
                        })
                    )
                })
            });
            if all_ready {
                let servers = self
                    .apps
                    .iter_mut()
                    .map(|a| {
                        a.published = servers_of(a);
                        (a.config.name.clone(), a.published.clone())
                    })
                    .collect();
                return Ok(servers);
            }
            match rx.recv_timeout(PROBE_EVERY) {
                Ok(Msg::Exited { tag, status }) => {
                    // Out of its slot first: `stop_all` waits for the exit
                    // of every instance in a slot, and this one's is here.
                    if let Some((app, index, tail)) = self.take_exited(tag) {
                        self.stop_all(rx);
                        return Err(AppError::Exited {
                            app,
                            index,
                            status: status.to_string(),
                            tail,
                        });
                    }
                }
                Ok(Msg::Stop(done)) => {
                    self.stop_all(rx);
                    let _ = done.send(());
                    return Err(AppError::Interrupted);
                }
                Ok(Msg::Reload(..) | Msg::KillNow | Msg::WindDown | Msg::LastCall)
                | Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return Err(AppError::Interrupted),
            }
        }
    }

    /// Serve messages until told to stop.
    pub(super) fn run(&mut self, rx: &Receiver<Msg>) {
        while self.turn(rx, None) {}
    }

    /// One turn of the loop: wait for a message or the next timer, act on
    /// it, then make a pass. `until` cuts the wait short (a test's
    /// deadline; the loop itself waits as long as nothing is due). False
    /// once it has stopped every instance.
    fn turn(&mut self, rx: &Receiver<Msg>, until: Option<Instant>) -> bool {
        let now = Instant::now();
        let wake = self.next_wake(now).map(|d| now + d);
        let wake = match (wake, until) {
            (Some(w), Some(u)) => Some(w.min(u)),
            (w, u) => w.or(u),
        };
        let msg = match wake {
            Some(t) => match rx.recv_timeout(t.saturating_duration_since(now)) {
                Ok(m) => Some(m),
                Err(RecvTimeoutError::Timeout) => None,
                Err(RecvTimeoutError::Disconnected) => {
                    self.stop_all(rx);
                    return false;
                }
            },
            None => match rx.recv() {
                Ok(m) => Some(m),
                Err(_) => {
                    self.stop_all(rx);
                    return false;
                }
            },
        };
        match msg {
            Some(Msg::Exited { tag, status }) => self.on_exit(tag, status, Instant::now()),
            Some(Msg::Reload(configs, renew)) => self.on_reload(configs, renew, Instant::now()),
            Some(Msg::WindDown) => self.wind_down(Instant::now()),
            Some(Msg::LastCall) => self.last_call(Instant::now()),
            Some(Msg::Stop(done)) => {
                self.stop_all(rx);
                let _ = done.send(());
                return false;
            }
            // Only follows a Stop, which `stop_all` serves.
            Some(Msg::KillNow) | None => {}
        }
        self.pass(Instant::now());
        true
    }

    /// Start, probe, retire and replace what is due, then tell the master
    /// what changed and post every instance's status: after each turn, the
    /// master's view is the manager's.
    fn pass(&mut self, now: Instant) {
        if let Err(e) = self.start_due(now, false) {
            error!("{e}");
        }
        let _ = self.probe(now, false);
        self.timers(now);
        self.check_memory(now);
        self.check_listening(now);
        self.roll(now);
        self.count_leaving();
        self.publish();
        self.post_status();
    }

    /// Count the open connections of each instance that has just begun to
    /// leave (`timers` counts again when its grace is over): the status
    /// board shows them while the grace runs, for the instance a roll
    /// retired in this very pass too.
    fn count_leaving(&mut self) {
        let tables = address::SocketTables::new(&self.proc_net);
        for l in &mut self.leaving {
            if l.open.is_none() && matches!(l.inst.state, State::Retiring { .. }) {
                l.open = tables.open_connections(&l.inst.addr);
            }
        }
    }

    /// Start what is due: new slots, restarts after back-off, and (in a
    /// rolling reload) replacements. At start-up, a failure to spawn is the
    /// caller's error; later it is logged and retried.
    fn start_due(&mut self, now: Instant, startup: bool) -> Result<(), AppError> {
        if self.winding_down {
            return Ok(());
        }
        for a in 0..self.apps.len() {
            for i in 0..self.apps[a].slots.len() {
                if !self.apps[a].slots[i].current.is_due(now) {
                    continue;
                }
                let app = &mut self.apps[a];
                let fallback = app.slots[i].restart_as.filter(|_| !app.proven);
                let generation = fallback.unwrap_or(app.generation);
                match self.spawn(a, i, generation, now) {
                    Ok(mut inst) => {
                        inst.fallback = fallback.is_some();
                        let slot = &mut self.apps[a].slots[i];
                        slot.restart_as = None;
                        slot.oversized = false;
                        slot.not_listening = false;
                        slot.current.started(inst, now);
                    }
                    Err(e) if startup => return Err(e),
                    // This process is out of descriptors (or the system
                    // is): no fault of the app's, and gone as connections
                    // close. Tried again in a second, its back-off as it
                    // was, so the app is up as soon as the limit allows.
                    Err(e) if e.is_local() => {
                        self.apps[a].slots[i]
                            .current
                            .start_deferred(now, LOCAL_RETRY);
                        error!(
                            "{e} (a limit of this process, not the app's fault); trying again in {}s",
                            LOCAL_RETRY.as_secs()
                        );
                    }
                    Err(e) => {
                        // `restart_as` kept: the next try falls back too.
                        let delay = self.apps[a].slots[i].current.start_failed(now);
                        error!("{e}; trying again in {}s", delay.as_secs());
                    }
                }
            }
        }
        Ok(())
    }

    /// The TCP ports of every instance that runs, is starting or is on its
    /// way out: none is given to a new one (`address::choose`), even
    /// before its instance binds it.
    fn ports_given(&self) -> HashSet<u16> {
        let slots = self.apps.iter().flat_map(|a| &a.slots);
        let leaving = self.leaving.iter().map(|l| &l.inst);
        slots
            .flat_map(Slot::instances)
            .chain(leaving)
            .filter_map(|i| match i.addr {
                ServerAddr::Tcp(at) => Some(at.port()),
                ServerAddr::Unix(_) => None,
            })
            .collect()
    }

    /// Start an instance for slot `index` of app `a` with the settings of
    /// `generation` (the app's, unless they are no longer known).
    fn spawn(
        &mut self,
        a: usize,
        index: usize,
        generation: u64,
        now: Instant,
    ) -> Result<Instance, AppError> {
        let given = self.ports_given();
        let app = &self.apps[a];
        let (generation, config) = match app.settings(generation) {
            Some(config) => (generation, config),
            None => (app.generation, &app.config),
        };
        self.next_tag += 1;
        let tag = self.next_tag;
        let failed = |err: std::io::Error| AppError::Spawn {
            app: config.name.clone(),
            index,
            err,
        };
        // A restart (no instance in the slot) where its last one listened;
        // a replacement, which runs beside the one it replaces, anew.
        let slot = &app.slots[index];
        let previous = slot
            .last_addr
            .as_ref()
            .filter(|_| slot.current.get().is_none());
        let addr = address::choose_again(
            previous,
            config.listen,
            &self.dir,
            &config.name,
            tag,
            &given,
        )
        .map_err(failed)?;
        let tx = self.tx.clone();
        let replacement = slot.current.get().is_some();
        let process = process::spawn(
            config,
            index,
            &address::env_value(&addr),
            replacement,
            move |status| {
                let _ = tx.send(Msg::Exited { tag, status });
            },
        )
        .map_err(failed)?;
        info!(
            "app {}[{index}] started: pid {}, {} = {}",
            config.name,
            process.pid,
            config.listen_env,
            address::env_value(&addr)
        );
        Ok(Instance {
            tag,
            generation,
            addr,
            process,
            state: State::Starting {
                deadline: now + config.start_timeout,
            },
            started: now,
            fallback: false,
            stop: (config.stop_signal, config.stop_timeout),
            memory: None,
            deaf: false,
        })
    }

    /// Probe starting instances; one that accepts is ready, one past its
    /// start timeout is killed (at start-up: the caller's error).
    fn probe(&mut self, now: Instant, startup: bool) -> Result<(), AppError> {
        for app in &mut self.apps {
            let name = &app.config.name;
            for (index, slot) in app.slots.iter_mut().enumerate() {
                let current = slot.current.get_mut().into_iter();
                for inst in current.chain(slot.next.iter_mut()) {
                    let State::Starting { deadline } = inst.state else {
                        continue;
                    };
                    if let Some(at) = address::accepting(&inst.addr) {
                        inst.state = State::Ready {
                            since: now,
                            refused: None,
                        };
                        info!(
                            "app {name}[{index}] is ready ({:.1}s after start)",
                            now.duration_since(inst.started).as_secs_f64()
                        );
                        if at != inst.addr {
                            info!("app {name}[{index}] listens on {at} (not 127.0.0.1): requests go there");
                            inst.addr = at;
                        }
                        if !app.said_open && app.open_looked != Some(inst.generation) {
                            app.open_looked = Some(inst.generation);
                            if let Some(open) = listens_open(inst, &self.proc_net) {
                                app.said_open = true;
                                warn!(
                                    "app {name}[{index}] listens on {open}, every interface: clients can reach it there around coreserve (its TLS, limits, trusted-proxies and access log); listen on 127.0.0.1 alone (server.listen(process.env.{}, \"127.0.0.1\") in Node)",
                                    app.config.listen_env
                                );
                            }
                        }
                    } else if deadline <= now {
                        let listens =
                            where_it_listens(inst, &app.config.listen_env, &self.proc_net);
                        // Its own: a reload may have changed the setting
                        // since it started (and its deadline with it).
                        let timeout = deadline.saturating_duration_since(inst.started);
                        inst.process.kill();
                        if startup {
                            // Start-up ends with this error: its last output
                            // whole, a line it had not ended too (what it was
                            // doing when it hung: "connecting to the
                            // database... "), which comes at the pipe's end.
                            let until = Instant::now() + START_FAILURE_OUTPUT_WAIT;
                            while !inst.process.ended() && Instant::now() < until {
                                std::thread::sleep(Duration::from_millis(10));
                            }
                            std::thread::sleep(Duration::from_millis(50));
                        }
                        let tail = tail_of(&inst.process);
                        inst.state = State::Stopping {
                            kill_at: now + inst.stop.1,
                        };
                        if startup {
                            return Err(AppError::NotReady {
                                app: name.clone(),
                                index,
                                timeout,
                                listens,
                                tail,
                            });
                        }
                        error!(
                            "app {name}[{index}] did not accept connections within {}s; killed{listens}{tail}",
                            timeout.as_secs_f64()
                        );
                    }
                }
            }
        }
        Ok(())
    }

    /// Retire and kill on time: a leaving instance gets SIGTERM when its
    /// grace is over and its requests are done (or the drain timeout
    /// passed); any instance asked to stop (leaving, or killed in its slot
    /// at its start timeout) gets SIGKILL when its kill time has come and
    /// its exit has not been seen.
    fn timers(&mut self, now: Instant) {
        let tables = address::SocketTables::new(&self.proc_net);
        for l in &mut self.leaving {
            match l.inst.state {
                State::Retiring {
                    stop_at,
                    give_up,
                    waiting,
                    drain,
                } if stop_at <= now => {
                    l.open = tables.open_connections(&l.inst.addr);
                    let pid = l.inst.process.pid;
                    // Uncounted (/proc/net unreadable: a sandbox that hides
                    // it) is taken as busy: the instance keeps its
                    // drain-timeout rather than being cut off after the grace.
                    let open = l.open.unwrap_or(usize::MAX);
                    if open > 0 && give_up > now {
                        if !waiting {
                            let left = give_up.duration_since(now).as_secs_f64();
                            match l.open {
                                Some(open) => info!(
                                    "{} (pid {pid}): out of service; waiting for its {open} open connection(s) to end (at most {left:.1}s more)",
                                    l.who()
                                ),
                                None => warn!(
                                    "{} (pid {pid}): out of service; its connections cannot be counted (/proc/net/tcp, tcp6 or unix unreadable), so it gets all of drain-timeout ({left:.1}s more)",
                                    l.who()
                                ),
                            }
                        }
                        l.inst.state = State::Retiring {
                            stop_at: now + RETIRE_POLL,
                            give_up,
                            waiting: true,
                            drain,
                        };
                        continue;
                    }
                    if let Some(open @ 1..) = l.open {
                        warn!(
                            "{} (pid {pid}): {open} connection(s) still open after drain-timeout ({:.1}s); stopping it",
                            l.who(),
                            drain.as_secs_f64()
                        );
                    }
                    l.inst.ask_to_stop(now);
                }
                _ => {
                    let (app, index) = (&l.app, l.index);
                    kill_overdue(&mut l.inst, now, || who(app, index))
                }
            }
        }
        for app in &mut self.apps {
            let name = &app.config.name;
            for (index, slot) in app.slots.iter_mut().enumerate() {
                let current = slot.current.get_mut().into_iter();
                for inst in current.chain(slot.next.iter_mut()) {
                    kill_overdue(inst, now, || who(name, index));
                }
            }
        }
    }

    /// Every `MEMORY_EVERY`, the resident memory of each ready instance,
    /// its children's included, for the status; of an app with
    /// `max-memory`, one past it is marked for the roll to replace (a
    /// replacement starts, serves, and the instance leaves once its
    /// requests are done), as PM2's `max_memory_restart` restarts it but
    /// without failing a request. A replacement is not read until it
    /// takes its slot, and an instance being replaced is not marked.
    fn check_memory(&mut self, now: Instant) {
        let winding_down = self.winding_down;
        if self.memory_at.is_some_and(|t| t > now) {
            return;
        }
        self.memory_at = Some(now + MEMORY_EVERY);
        for app in &mut self.apps {
            let limit = app.config.max_memory;
            for (index, slot) in app.slots.iter_mut().enumerate() {
                let Some(inst) = slot.current.get_mut() else {
                    continue;
                };
                if !matches!(inst.state, State::Ready { .. }) {
                    continue;
                }
                let pid = inst.process.pid;
                inst.memory = proc_table::resident_bytes(pid);
                if slot.next.is_some() {
                    // Being replaced already (for this, or a reload).
                    continue;
                }
                let over = inst.memory.zip(limit).filter(|(used, limit)| used > limit);
                // Nothing is replaced once the server drains: nor said.
                if let (Some((used, limit)), false) = (over, slot.oversized || winding_down) {
                    let who = who(&app.config.name, index);
                    // To a tenth of a MiB but for whole ones: "80 MiB,
                    // over max-memory (80 MiB)" said nothing of by how much.
                    let mib = |bytes: u64| match bytes % (1 << 20) {
                        0 => (bytes >> 20).to_string(),
                        _ => format!("{:.1}", bytes as f64 / f64::from(1 << 20)),
                    };
                    let (used, limit) = (mib(used), mib(limit));
                    // One that lived a while leaked; one past it from the
                    // start needs more than the limit, and its replacements
                    // will too: they are spaced out as a crash loop is.
                    let lived = now.saturating_duration_since(inst.started);
                    if lived >= STABLE_AFTER {
                        slot.memory_backoff = Backoff::new(now);
                        warn!(
                            "{who} (pid {pid}): {used} MiB resident, over max-memory ({limit} MiB); replacing it"
                        );
                    } else {
                        let delay = slot.memory_backoff.start_failed();
                        slot.replace_at = Some(now + delay);
                        warn!(
                            "{who} (pid {pid}): {used} MiB resident, over max-memory ({limit} MiB) {}s after its start; replacing it in {}s",
                            lived.as_secs(),
                            delay.as_secs()
                        );
                    }
                }
                // Back under it (a reload raised or removed the limit, the
                // heap shrank) while a failed replacement waits: none is
                // needed any more.
                slot.oversized = over.is_some();
            }
        }
    }

    /// Tell the master each app's serving addresses, when they changed.
    /// The grace of an instance taken out counts from then: the pass
    /// that retired it may have spent a while probing and reading the
    /// socket tables since its `now`, and the grace is the shards' time
    /// to stop sending it requests.
    fn publish(&mut self) {
        for app in &mut self.apps {
            let servers = servers_of(app);
            if servers != app.published {
                let old = std::mem::replace(&mut app.published, servers.clone());
                (self.notify)(AppEvent::Servers {
                    app: app.config.name.clone(),
                    servers,
                });
                let now_out = |a: &ServerAddr| {
                    AppServer::listed(&old, a) && !AppServer::listed(&app.published, a)
                };
                grace_from_now(&mut self.leaving, &app.config.name, now_out);
            }
        }
    }

    /// How long the loop may sleep.
    fn next_wake(&self, now: Instant) -> Option<Duration> {
        let mut next: Option<Instant> = None;
        let mut at = |t: Instant| next = Some(next.map_or(t, |n| n.min(t)));
        let states = self
            .apps
            .iter()
            .flat_map(|a| a.slots.iter())
            .flat_map(|s| s.instances())
            .chain(self.leaving.iter().map(|l| &l.inst))
            .map(|i| &i.state);
        for state in states {
            match state {
                State::Starting { .. } => at(now + PROBE_EVERY),
                State::Retiring { stop_at, .. } => at(*stop_at),
                State::Stopping { kill_at } => at(*kill_at),
                State::Ready { .. } => {}
            }
        }
        for t in self
            .apps
            .iter()
            .flat_map(|a| a.slots.iter())
            .filter_map(|s| s.current.due())
        {
            at(t);
        }
        // A replacement serving its min-uptime beside the instance it
        // replaces takes the slot then.
        for app in &self.apps {
            for next in app.slots.iter().filter_map(|s| s.next.as_ref()) {
                if let State::Ready { since, .. } = next.state {
                    at(since + app.config.min_uptime);
                }
            }
        }
        let ready = self
            .apps
            .iter()
            .flat_map(|a| a.slots.iter())
            .filter_map(|s| s.current.get())
            .any(|i| matches!(i.state, State::Ready { .. }));
        if ready {
            at(self.memory_at.unwrap_or(now));
            at(self.listen_at.unwrap_or(now));
        }
        // A past one is spent: the roll started the replacement, or the
        // slot needs none any more.
        for t in self
            .apps
            .iter()
            .flat_map(|a| a.slots.iter())
            .filter_map(|s| s.replace_at)
            .filter(|&t| t > now)
        {
            at(t);
        }
        next.map(|t| t.saturating_duration_since(now))
    }

    /// An instance's process ended.
    fn on_exit(&mut self, tag: u64, status: ExitStatus, now: Instant) {
        if let Some(pos) = self.leaving.iter().position(|l| l.inst.tag == tag) {
            let gone = self.leaving.swap_remove(pos);
            address::release(&gone.inst.addr);
            info!(
                "{} (pid {}) stopped: {status}",
                gone.who(),
                gone.inst.process.pid
            );
            return;
        }
        for app in &mut self.apps {
            let name = app.config.name.clone();
            let (generation, proven) = (app.generation, app.proven);
            for (index, slot) in app.slots.iter_mut().enumerate() {
                if slot.next.as_ref().is_some_and(|i| i.tag == tag) {
                    let gone = slot.next.take().expect("checked above");
                    address::release(&gone.addr);
                    let when = match gone.state {
                        State::Ready { since, .. } => format!(
                            "{:.1}s after it was ready, within min-uptime",
                            now.duration_since(since).as_secs_f64()
                        ),
                        _ if gone.deaf => {
                            "once stopped for refusing connections (its listener closed)"
                                .to_string()
                        }
                        _ => "before it was ready".to_string(),
                    };
                    // Named as the replacement's: the slot's instance,
                    // shown beside it, is the old one, which never exited.
                    slot.last_exit = Some((
                        format!("replacement {}", signals::exit_summary(status)),
                        now,
                    ));
                    // The old instance keeps serving; the roll tries again
                    // after a back-off, as a restart would.
                    let delay = slot.replace_backoff.start_failed();
                    slot.replace_at = Some(now + delay);
                    slot.replacement_failed = true;
                    let again = if self.winding_down {
                        "not tried again: the server is stopping".to_string()
                    } else {
                        format!("trying again in {}s", delay.as_secs())
                    };
                    let tail = tail_of(&gone.process);
                    let holder = self
                        .apps
                        .iter()
                        .find(|a| a.config.name == name)
                        .and_then(|a| port_holder(a, index, &self.proc_net, &tail));
                    error!(
                        "app {name}[{index}]: the replacement (pid {}) exited {when} ({status}); the instance it was to replace serves on; {again}{}{tail}",
                        gone.process.pid,
                        holder.unwrap_or_default(),
                    );
                    return;
                }
                if let Some(inst) = slot.current.get().filter(|i| i.tag == tag) {
                    let since = match inst.state {
                        State::Ready { since, .. } => Some(since),
                        _ => None,
                    };
                    let ready = since.is_some();
                    let (gone, delay) = slot.current.ended(now, since);
                    let gone = gone.expect("checked above");
                    if self.winding_down {
                        // Counted as a restart's back-off would be, but
                        // nothing is due: no start comes during a drain.
                        slot.current.retire();
                    }
                    address::release(&gone.addr);
                    slot.last_addr = Some(gone.addr.clone());
                    slot.last_exit = Some((signals::exit_summary(status), now));
                    // Settings a reload replaced, while the new ones have
                    // not come up anywhere: the ones known to work, if
                    // they served in this slot (this instance, or the one
                    // it fell back for); else the reload may be their fix.
                    let served = ready || gone.fallback;
                    let earlier = served && gone.generation != generation && !proven;
                    slot.restart_as = earlier.then_some(gone.generation);
                    // One line per death: a crash loop's deaths are spaced
                    // by the back-off (or, for an instance that served 2 s
                    // each time, by that and its start), so it logs once
                    // per step.
                    let again = if self.winding_down {
                        "not started again: the server is stopping".to_string()
                    } else {
                        format!("starting it again {}", crate::child::when(delay))
                    };
                    if !ready {
                        (self.notify)(AppEvent::NotStarted {
                            app: name.clone(),
                            why: format!(
                                "app {name}[{index}] (pid {}) exited before it was ready: {status}",
                                gone.process.pid
                            ),
                        });
                    }
                    warn!(
                        "app {name}[{index}] (pid {}) exited{}: {status}; {again}{}{}",
                        gone.process.pid,
                        if ready { "" } else { " before it was ready" },
                        if earlier && !self.winding_down {
                            " with the settings it ran (the reload's have not come up yet)"
                        } else {
                            ""
                        },
                        tail_of(&gone.process)
                    );
                    return;
                }
            }
        }
    }

    /// Take the instance with `tag`, whose process has ended, out of its
    /// slot: its app, index and last output.
    fn take_exited(&mut self, tag: u64) -> Option<(String, usize, String)> {
        for a in &mut self.apps {
            for (i, s) in a.slots.iter_mut().enumerate() {
                let gone = if s.current.get().is_some_and(|inst| inst.tag == tag) {
                    s.current.take()
                } else if s.next.as_ref().is_some_and(|inst| inst.tag == tag) {
                    s.next.take()
                } else {
                    continue;
                };
                let inst = gone.expect("checked above");
                address::release(&inst.addr);
                let tail = tail_of(&inst.process);
                let holder = port_holder(a, i, &self.proc_net, &tail);
                let tail = holder.unwrap_or_default() + &tail;
                return Some((a.config.name.clone(), i, tail));
            }
        }
        None
    }
}

/// How the log names slot `index` of `app`.
fn who(app: &str, index: usize) -> String {
    format!("app {app}[{index}]")
}

/// SIGKILL to an instance asked to stop that is still there at its kill
/// time, and a new kill time: the loop wakes at it, and would spin on a
/// time gone by until the exit is seen.
fn kill_overdue(inst: &mut Instance, now: Instant, who: impl FnOnce() -> String) {
    let State::Stopping { kill_at } = inst.state else {
        return;
    };
    if kill_at > now {
        return;
    }
    // A wrapper that ended at once, its app not: the wait names that. One
    // that exited by itself at that moment was not killed ("killed", then
    // "exit status: 0").
    let ended = inst.process.ended();
    if inst.process.kill() && !ended {
        warn!(
            "{} (pid {}) did not stop in time; killed",
            who(),
            inst.process.pid
        );
    }
    inst.state = State::Stopping {
        kill_at: now + KILL_AGAIN,
    };
}

/// The addresses that serve an app: its ready instances, in slot order
/// (a replacement serving its min-uptime after the one it replaces).
fn servers_of(app: &App) -> Vec<AppServer> {
    app.slots
        .iter()
        .enumerate()
        .flat_map(|(slot, s)| s.instances().map(move |i| (slot, i)))
        .filter(|(_, i)| matches!(i.state, State::Ready { refused: None, .. }))
        .map(|(slot, i)| AppServer {
            addr: i.addr.clone(),
            slot,
        })
        .collect()
}

/// Start again the grace of `app`'s instances whose address is `gone`
/// that are out of service and still in their grace: the master has just
/// been told they left (only those: a later change of the app's servers
/// must not put off the stop of one told before).
fn grace_from_now(leaving: &mut [Leaving], app: &str, gone: impl Fn(&ServerAddr) -> bool) {
    let graced = Instant::now() + RETIRE_GRACE;
    for l in leaving
        .iter_mut()
        .filter(|l| l.app == app && gone(&l.inst.addr))
    {
        if let State::Retiring {
            stop_at,
            give_up,
            waiting: false,
            ..
        } = &mut l.inst.state
        {
            *stop_at = (*stop_at).max(graced);
            *give_up = (*give_up).max(graced);
        }
    }
}

/// Where an instance that did not accept connections where it was told
/// listens, for a message: the usual mistake is an app that ignores
/// `$PORT` (a port written in its code, as in Node cluster's examples).
/// Empty when its sockets cannot be seen (`/proc` hidden, another user's
/// process).
fn where_it_listens(inst: &Instance, env: &str, proc_net: &Path) -> String {
    let given = address::env_value(&inst.addr);
    match listening(inst, proc_net) {
        None => String::new(),
        Some(at) if at.is_empty() => {
            // Not yet, most likely: an app that loads a large bundle or
            // waits for its database (probe B: a 10 s warm-up).
            format!("; it listens on no socket (it was given {env}={given}): one that needs longer to get ready needs a longer start-timeout")
        }
        Some(at) => {
            // The port it was given, on an address coreserve does not
            // connect to (127.0.0.2, the host's own): the port is right.
            // (Not one that reaches it: the address itself, or every
            // address, listened on since the last look.)
            let wanted = match &inst.addr {
                ServerAddr::Tcp(want) => Some(want),
                ServerAddr::Unix(_) => None,
            };
            let elsewhere = wanted.filter(|want| {
                at.iter().any(|a| {
                    matches!(a, ServerAddr::Tcp(a) if a.port() == want.port()
                        && a.ip() != want.ip() && !a.ip().is_unspecified())
                })
            });
            let list: Vec<String> = at.iter().map(ToString::to_string).collect();
            match elsewhere {
                Some(want) => format!(
                    "; it listens on {}, but coreserve connects to {want} ({env}={given}): listen on {}",
                    list.join(", "),
                    want.ip()
                ),
                None => format!(
                    "; it listens on {}, but was given {env}={given}",
                    list.join(", ")
                ),
            }
        }
    }
}

/// The address on every interface (`0.0.0.0:P`, `[::]:P`) where `inst`
/// listens on the port it was given, if it does: Node's
/// `listen(process.env.PORT)` with no host, which the network reaches.
fn listens_open(inst: &Instance, proc_net: &Path) -> Option<SocketAddr> {
    let ServerAddr::Tcp(given) = &inst.addr else {
        return None;
    };
    listening(inst, proc_net)?
        .into_iter()
        .find_map(|a| match a {
            ServerAddr::Tcp(a) if a.port() == given.port() && a.ip().is_unspecified() => Some(a),
            _ => None,
        })
}

/// Where `inst`'s process listens, read from `/proc`; None when that
/// cannot be read.
fn listening(inst: &Instance, proc_net: &Path) -> Option<Vec<ServerAddr>> {
    let inodes = proc_table::socket_inodes(inst.process.pid)?;
    address::SocketTables::new(proc_net).listening(&inodes)
}

/// Where `inst` listens on TCP other than the address it was given (an
/// app that ignores `$PORT`, or opens a port of its own besides), and
/// whether it listens there too; None when it listens there alone, on
/// nothing, or where cannot be read.
fn listens_elsewhere(inst: &Instance, proc_net: &Path) -> Option<(String, bool)> {
    let want = match &inst.addr {
        ServerAddr::Tcp(want) => Some(want.port()),
        ServerAddr::Unix(_) => None,
    };
    let at = listening(inst, proc_net)?;
    let theirs = |a: &ServerAddr| matches!(a, ServerAddr::Tcp(a) if Some(a.port()) == want);
    let others: Vec<String> = at
        .iter()
        .filter(|a| matches!(a, ServerAddr::Tcp(_)) && !theirs(a))
        .map(ToString::to_string)
        .collect();
    if others.is_empty() {
        return None;
    }
    let also_told = want.is_none() || at.iter().any(theirs);
    Some((others.join(", "), also_told))
}

/// Why an instance of `a` in slot `index` that ended with `tail` as its
/// last output most likely could not listen, said of the instance that
/// holds a port the code fixed, when one does: the cluster example's port
/// left in the code (the first instance takes it, every other dies of
/// EADDRINUSE on a port it was never given), or a second server's (a
/// metrics or WebSocket port), which cluster's workers share and processes
/// of their own cannot. The holder may be the very instance a replacement
/// was to replace, which serves beside it until it has come up.
fn port_holder(a: &App, index: usize, proc_net: &Path, tail: &str) -> Option<String> {
    let in_use =
        tail.contains("EADDRINUSE") || tail.to_ascii_lowercase().contains("address already in use");
    a.slots.iter().enumerate().find_map(|(j, s)| {
        let sibling = s.current.get()?;
        let (at, also_told) = listens_elsewhere(sibling, proc_net)?;
        let told = format!(
            "{}={}",
            a.config.listen_env,
            address::env_value(&sibling.addr)
        );
        if !also_told {
            return Some(format!(
                "; app {}[{j}] listens on {at}, not where it was told ({told}): an app that listens on a port of its own leaves its other instances none (listen on process.env.{})",
                a.config.name, a.config.listen_env
            ));
        }
        // Said only of a death by it: a port besides is the app's own
        // business otherwise (one instance may well hold it).
        if !in_use {
            return None;
        }
        let name = &a.config.name;
        Some(if j == index {
            // Its own slot's: the instance a rolling reload's replacement
            // was to replace, whatever port the code derives for the slot.
            format!(
                "; app {name}[{j}], which it was to replace, listens on {at} besides where it was told ({told}): a replacement runs beside the instance it replaces until it has come up, so a port fixed in the code is never free for it (open that port with SO_REUSEPORT, or serve it on the port the app is given)"
            )
        } else {
            format!(
                "; app {name}[{j}] listens on {at} besides where it was told ({told}): the instances are processes of their own, not cluster workers that share a port, so a port fixed in the code (a second server, a metrics port) is held by one instance and the others cannot listen on it (and a rolling reload's replacement, beside the instance it replaces, cannot either: open it with SO_REUSEPORT, or serve it on the port the app is given)"
            )
        })
    })
}

/// An instance's last lines, for a message: empty, or `; its last
/// output:` and the lines, indented.
/// How long a start-up that fails on an instance's start-timeout waits
/// for it to die after SIGKILL, so that its error quotes all it wrote.
const START_FAILURE_OUTPUT_WAIT: Duration = Duration::from_secs(1);

fn tail_of(p: &Process) -> String {
    let tail = p.tail.lock().unwrap_or_else(|e| e.into_inner());
    if tail.is_empty() {
        return String::new();
    }
    let mut s = String::from("; its last output:");
    for line in tail.iter() {
        s.push_str("\n    ");
        s.push_str(line);
    }
    s
}
