//! A reload's effect on the apps: new ones start, removed ones leave, a
//! changed one is replaced one instance at a time (the rolling reload).

use std::time::Instant;

use log::{error, info};

use super::{grace_from_now, App, Instance, Leaving, Manager, Slot, State};
use crate::apps::{AppEvent, AppServer};
use crate::child::Backoff;
use crate::config::{AppConfig, AppReload, ServerAddr};

impl Manager {
    /// The rolling reload: one slot at a time, start a replacement with
    /// the current settings; once it accepts, it serves beside the old
    /// instance for the app's `min-uptime`, then takes the slot and the old
    /// instance leaves. A replacement that exits before is one that failed
    /// (`on_exit`): the old instance never left.
    pub(super) fn roll(&mut self, now: Instant) {
        for a in 0..self.apps.len() {
            let generation = self.apps[a].generation;
            let app = &mut self.apps[a];
            // Proven by an instance in its slot: a replacement still
            // serving its min-uptime may yet fail.
            app.proven =
                app.proven
                    || app.slots.iter().filter_map(|s| s.current.get()).any(|i| {
                        i.generation == generation && matches!(i.state, State::Ready { .. })
                    });
            let min_uptime = app.config.min_uptime;
            let (name, patience) = (&app.config.name, app.config.start_timeout);
            for (index, slot) in app.slots.iter_mut().enumerate() {
                // A look of its own before it takes the slot: it may have
                // closed its listener since the last (2 s apart, where
                // `min-uptime` may be less).
                if let Some(next) = slot.next.as_mut().filter(|n| {
                    matches!(n.state, State::Ready { since, refused: None } if since + min_uptime <= now)
                }) {
                    super::listening::look(next, now, name, index, patience);
                }
                // Not one that stopped listening in its min-uptime: it
                // would retire the instance that serves (`listening`
                // fails it past its start-timeout).
                if matches!(
                    slot.next,
                    Some(Instance {
                        state: State::Ready { since, refused },
                        ..
                    }) if (refused.is_none() && since + min_uptime <= now) || slot.current.get().is_none()
                ) {
                    // (An old instance that died meanwhile leaves nothing
                    // to serve beside: the replacement takes the slot.)
                    let new = slot.next.take().expect("matched above");
                    new.process.took_slot();
                    let started = new.started;
                    let old = slot.current.replaced(new, started);
                    slot.replace_backoff = Backoff::new(now);
                    slot.replacement_failed = false;
                    slot.restart_as = None;
                    let oversized = std::mem::take(&mut slot.oversized);
                    if std::mem::take(&mut slot.not_listening) || oversized {
                        // Its own restart, as PM2 counts it, and why.
                        slot.current.count_restart();
                        let why = if oversized {
                            "max-memory"
                        } else {
                            "not listening"
                        };
                        slot.last_exit = Some((why.into(), now));
                    }
                    if let Some(mut inst) = old {
                        inst.state = State::retiring(now, app.config.drain(self.drain));
                        self.leaving.push(Leaving::new(&app.config, index, inst));
                    }
                }
            }
            // One replacement at a time: none while one starts, nor while
            // one that failed waits out its back-off (in any slot).
            let busy = self.apps[a]
                .slots
                .iter()
                .any(|s| s.next.is_some() || s.replace_at.is_some_and(|t| t > now));
            if busy || self.winding_down {
                continue;
            }
            // Settings a reload replaced, past `max-memory`, or no longer
            // listening.
            let outdated = self.apps[a].slots.iter().position(|s| {
                let replace = s.oversized || s.not_listening;
                matches!(s.current.get(), Some(i) if (i.generation != generation || replace) && matches!(i.state, State::Ready { .. }))
            });
            let Some(i) = outdated else { continue };
            match self.spawn(a, i, generation, now) {
                Ok(inst) => {
                    let slot = &mut self.apps[a].slots[i];
                    slot.next = Some(inst);
                    slot.replace_at = None;
                }
                Err(e) => {
                    let slot = &mut self.apps[a].slots[i];
                    // A rolling reload's, or one past `max-memory`.
                    let what = if slot.oversized {
                        "the replacement past max-memory"
                    } else if slot.not_listening {
                        "the replacement of the instance not listening"
                    } else {
                        "the rolling reload"
                    };
                    // Out of this process's descriptors: no fault of the
                    // new settings, tried again in a second, the back-off
                    // as it was (as a restart is).
                    if e.is_local() {
                        slot.replace_at = Some(now + super::LOCAL_RETRY);
                        error!(
                            "{e} (a limit of this process, not the app's fault); {what} tries again in {}s",
                            super::LOCAL_RETRY.as_secs()
                        );
                        continue;
                    }
                    let delay = slot.replace_backoff.start_failed();
                    slot.replace_at = Some(now + delay);
                    slot.replacement_failed = true;
                    error!("{e}; {what} tries again in {}s", delay.as_secs());
                }
            }
        }
    }

    /// `app`'s settings change to `config`, which its instances cannot
    /// take running: a generation of their own, or the one of settings
    /// some instances still run (a reload back after a failed rolling
    /// reload replaces none of those). A replacement being started for
    /// other settings leaves, and replacements start at once. `renew`:
    /// the settings are the same but every instance is replaced all the
    /// same (`reload = "always"`), a generation of their own.
    fn change(&mut self, app: &mut App, config: &AppConfig, now: Instant, renew: bool) {
        // The log names the change over `reload = "always"` when both hold.
        let changed = app.config.replaces_instances(config);
        let left = (app.generation, app.config.clone());
        app.earlier.push(left);
        app.proven = false;
        let runs = |g: u64| {
            app.slots.iter().any(|s| {
                s.current.get().is_some_and(|i| i.generation == g) || s.restart_as == Some(g)
            })
        };
        app.earlier.retain(|(g, _)| runs(*g));
        let back = app
            .earlier
            .iter()
            .position(|(_, c)| !renew && !c.replaces_instances(config));
        app.generation = match back {
            Some(at) => app.earlier.swap_remove(at).0,
            None => {
                app.issued += 1;
                app.issued
            }
        };
        for (index, slot) in app.slots.iter_mut().enumerate() {
            if let Some(mut next) = slot.next.take_if(|n| n.generation != app.generation) {
                // `app.config` is still the old one here: the reload's.
                next.state = State::retiring(now, config.drain(self.drain));
                self.leaving.push(Leaving::new(&app.config, index, next));
            }
            slot.replace_backoff = Backoff::new(now);
            slot.replace_at = None;
            slot.replacement_failed = false;
            // An instance that kept failing may start with these at once.
            slot.current.start_afresh(now);
        }
        let outdated = app
            .slots
            .iter()
            .filter(|s| {
                s.current
                    .get()
                    .is_some_and(|i| i.generation != app.generation)
            })
            .count();
        match (back, outdated) {
            (Some(_), 0) => info!(
                "app {}: changed back to the settings its instances run; none is replaced",
                config.name
            ),
            (Some(_), n) => info!(
                "app {}: changed back to the settings some of its instances run; replacing the other {n} one at a time",
                config.name
            ),
            (None, _) if renew && !changed => info!(
                "app {}: reload = \"always\"; replacing its instances one at a time",
                config.name
            ),
            // Said, when nothing in the file changed but where a link led.
            (None, _) if !app.config.replaces_instances(&AppConfig {
                cwd_target: app.config.cwd_target.clone(),
                ..config.clone()
            }) =>
            {
                let shown = |p: &Option<std::path::PathBuf>| {
                    p.as_deref()
                        .map_or_else(|| "-".to_string(), |p| p.display().to_string())
                };
                info!(
                    "app {}: its cwd now leads to {} (was {}); replacing its instances one at a time",
                    config.name,
                    shown(&config.cwd_target),
                    shown(&app.config.cwd_target)
                )
            }
            (None, _) => info!(
                "app {}: changed; replacing its instances one at a time",
                config.name
            ),
        }
    }

    /// New settings: new apps start, removed ones leave, changed ones roll
    /// (with `renew`, those of `reload = "always"` too), and a changed
    /// number of instances adds or retires slots.
    pub(super) fn on_reload(&mut self, configs: Vec<AppConfig>, renew: bool, now: Instant) {
        // The master sends none once it drains; one would start slots.
        if self.winding_down {
            return;
        }
        let mut old = std::mem::take(&mut self.apps);
        for config in configs {
            let n = config.instance_count(self.shards);
            let app = match old.iter().position(|a| a.config.name == config.name) {
                Some(i) => {
                    let mut app = old.swap_remove(i);
                    let changed = app.config.replaces_instances(&config);
                    // The reload that waited for it applies: its instances
                    // are of this very deploy.
                    let own = renew && std::mem::take(&mut app.held_start);
                    let always = renew && !own && config.reload == AppReload::Always;
                    if changed || always {
                        self.change(&mut app, &config, now, always);
                    } else {
                        // Said, for the operator who deployed new code and
                        // reloaded, as `pm2 reload` would have it running.
                        if renew && !own {
                            info!(
                                "app {}: nothing that replaces its instances changed, so they run on (to start new code at every reload, set reload = \"always\", as pm2 reload does)",
                                config.name
                            );
                        }
                        // A reload is the operator's "try again now" (the
                        // cause fixed outside the settings: a database up
                        // again, the app's files deployed): what waits out
                        // a back-off starts at once.
                        for slot in &mut app.slots {
                            slot.current.start_afresh(now);
                            slot.replace_backoff = Backoff::new(now);
                            slot.replace_at = None;
                            // Its processes of these settings run on: the
                            // next stop is the new settings' (a stop-signal
                            // fixed by this very reload). One a roll is
                            // replacing keeps its own (a reload that changes
                            // nothing of the app may come during a roll).
                            let running = slot.current.get_mut().into_iter();
                            for inst in running
                                .chain(slot.next.iter_mut())
                                .filter(|i| i.generation == app.generation)
                            {
                                inst.stop = (config.stop_signal, config.stop_timeout);
                                // A start-timeout raised for an instance
                                // slow to start applies to it too: the
                                // reload is what the operator does about it.
                                if let State::Starting { deadline } = &mut inst.state {
                                    *deadline = inst.started + config.start_timeout;
                                }
                            }
                        }
                    }
                    app.config = config;
                    // Said, beside "run on": scaling is no change of the
                    // instances that stay.
                    let had = app.slots.len();
                    let slots = |from: usize, to: usize| match to - from {
                        0 => format!("instance {from}"),
                        _ => format!("instances {from} to {to}"),
                    };
                    if n < had {
                        info!(
                            "app {}: instances {had} -> {n}; stopping {} once their requests are done",
                            app.config.name,
                            slots(n, had - 1)
                        );
                    } else if n > had {
                        info!(
                            "app {}: instances {had} -> {n}; starting {}",
                            app.config.name,
                            slots(had, n - 1)
                        );
                    }
                    while app.slots.len() > n {
                        let index = app.slots.len() - 1;
                        let mut slot = app.slots.pop().expect("more than n");
                        slot.retire(&app.config, index, now, self.drain, &mut self.leaving);
                    }
                    while app.slots.len() < n {
                        app.slots.push(Slot::new(now));
                    }
                    app
                }
                None => {
                    let s = if n == 1 { "" } else { "s" };
                    info!("app {}: new; starting {n} instance{s}", config.name);
                    let mut app = App::new(config, n, now);
                    app.held_start = !renew;
                    app
                }
            };
            self.apps.push(app);
        }
        for mut gone in old {
            info!("app {}: removed; stopping its instances", gone.config.name);
            for (index, slot) in gone.slots.iter_mut().enumerate() {
                slot.retire(&gone.config, index, now, self.drain, &mut self.leaving);
            }
            (self.notify)(AppEvent::Servers {
                app: gone.config.name.clone(),
                servers: Vec::new(),
            });
            let was = |a: &ServerAddr| AppServer::listed(&gone.published, a);
            grace_from_now(&mut self.leaving, &gone.config.name, was);
        }
    }
}
