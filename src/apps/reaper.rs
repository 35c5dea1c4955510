//! As a container's pid 1 (no `--init`), coreserve is the parent of every
//! orphan in the container: a daemon an app started, a shell's background
//! job (`exec('cmd &')`), the crashpad helper of a headless browser, what a
//! `docker exec` left. Each that ends stays a zombie until its parent
//! reaps it, holding a slot of the process table, and a container's
//! `pids.max` (often a few thousand) then refuses the app's next fork. So,
//! as tini or `docker --init` do, a thread reaps them: every zombie child
//! that is not an app instance. Instances are reaped by their own wait
//! threads (`process::spawn`), whose exit status says how the instance
//! ended; taking one of those here would lose it, so each is registered,
//! under the same lock the reaper holds, from before its fork until its
//! wait thread has reaped it.

use std::io;
use std::process::{Child, Command};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use super::proc_table;

/// How often the reaper looks for zombies: each costs no more than a slot
/// of the process table meanwhile.
const REAP_EVERY: Duration = Duration::from_secs(1);

/// The pids of instances whose wait thread has not reaped them yet.
static WAITED_FOR: Mutex<Vec<u32>> = Mutex::new(Vec::new());

fn waited_for() -> MutexGuard<'static, Vec<u32>> {
    // The list stays whole whatever panicked while it was held.
    WAITED_FOR.lock().unwrap_or_else(|e| e.into_inner())
}

/// Start `cmd`, its pid registered as an instance's before the reaper can
/// see it exit (the lock is held across the fork).
pub fn spawn_instance(cmd: &mut Command) -> io::Result<Child> {
    let mut list = waited_for();
    let child = cmd.spawn()?;
    list.push(child.id());
    Ok(child)
}

/// `pid`, an instance, has been reaped by its wait thread (or its wait
/// failed): the reaper may take a zombie of that pid from now on.
pub fn instance_reaped(pid: u32) {
    waited_for().retain(|&p| p != pid);
}

/// Start the reaper thread if coreserve is its pid namespace's pid 1 (only
/// then are orphans given to it). A thread that cannot start is said, and
/// the server runs on.
pub fn start_if_init() {
    if std::process::id() != 1 {
        return;
    }
    let started = std::thread::Builder::new()
        .name("reaper".into())
        .spawn(|| loop {
            std::thread::sleep(REAP_EVERY);
            reap_orphans();
        });
    if let Err(e) = started {
        log::warn!("as pid 1, cannot start the thread that reaps orphans ({e}): ended orphans stay zombies");
    }
}

/// Reap every zombie child that is not an instance still to be waited for.
fn reap_orphans() {
    let list = waited_for();
    for pid in proc_table::zombie_children() {
        if !list.contains(&pid) {
            proc_table::reap(pid);
        }
    }
}
