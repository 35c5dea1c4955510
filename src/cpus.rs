//! Which CPUs get a shard: the CPUs this process may run on, narrowed by
//! `--cpus` and `--shards`; where a floating shard may run; starting a
//! thread bound to CPUs.

/// A CPU selection that cannot be honoured.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CpuError {
    /// `--cpus` is not a list like `0,2-3`.
    #[error("must be a CPU list like 0,2-3, got {0:?}")]
    List(String),
    /// `--cpus` names a CPU this process may not run on.
    #[error("CPU {cpu} is not available to this process (allowed: {allowed})")]
    NotAllowed {
        /// The CPU asked for.
        cpu: usize,
        /// The allowed CPUs, as a list.
        allowed: String,
    },
    /// The affinity mask could not be read.
    #[error("cannot read the CPUs this process may run on")]
    Unknown,
    /// `--shards 0`.
    #[error("must be at least 1")]
    NoShards,
    /// Far more shards than the CPUs they may run on: each is a thread
    /// with its own io_uring and locked memory, and that many only compete
    /// (1024 on 2 CPUs took minutes to start, deaf to signals meanwhile).
    #[error("{shards} shards on {cpus} CPU(s) is more than {SHARDS_PER_CPU} a CPU: shards beyond one a CPU only share them")]
    TooManyShards {
        /// Shards asked for.
        shards: usize,
        /// CPUs they may run on.
        cpus: usize,
    },
}

/// Most shards a CPU may be given (`server.shards` over the CPUs it may
/// use): sharing is for tests and small hosts, not a way to scale.
pub const SHARDS_PER_CPU: usize = 8;

/// Parse a CPU list: comma-separated numbers and inclusive ranges (`0,2-3`),
/// as taskset and cgroups write them. Sorted, without duplicates.
pub fn parse_cpu_list(s: &str) -> Result<Vec<usize>, CpuError> {
    let err = || CpuError::List(s.to_string());
    let mut cpus = Vec::new();
    for part in s.split(',').map(str::trim) {
        let (lo, hi) = match part.split_once('-') {
            Some((a, b)) => (a.trim(), b.trim()),
            None => (part, part),
        };
        let lo: usize = lo.parse().map_err(|_| err())?;
        let hi: usize = hi.parse().map_err(|_| err())?;
        if lo > hi || hi > 4095 {
            return Err(err());
        }
        cpus.extend(lo..=hi);
    }
    cpus.sort_unstable();
    cpus.dedup();
    Ok(cpus)
}

/// Format a sorted CPU list compactly (`0-3,6`).
pub fn format_cpu_list(cpus: &[usize]) -> String {
    let mut out = Vec::new();
    let mut i = 0;
    while i < cpus.len() {
        let mut j = i;
        while j + 1 < cpus.len() && cpus[j + 1] == cpus[j] + 1 {
            j += 1;
        }
        out.push(if i == j {
            cpus[i].to_string()
        } else {
            format!("{}-{}", cpus[i], cpus[j])
        });
        i = j + 1;
    }
    out.join(",")
}

/// The CPUs this process may run on (its affinity mask), sorted.
pub fn allowed_cpus() -> Result<Vec<usize>, CpuError> {
    let mut ids: Vec<usize> = core_affinity::get_core_ids()
        .ok_or(CpuError::Unknown)?
        .into_iter()
        .map(|c| c.id)
        .collect();
    ids.sort_unstable();
    if ids.is_empty() {
        return Err(CpuError::Unknown);
    }
    Ok(ids)
}

/// The CPU of each shard, in shard order.
///
/// Without `shards`, one shard per selected CPU. With more shards than CPUs,
/// shards share CPUs round-robin (useful for tests; it costs throughput).
pub fn plan_shards(
    allowed: &[usize],
    cpus: Option<&[usize]>,
    shards: Option<usize>,
) -> Result<Vec<usize>, CpuError> {
    if let Some(&cpu) = cpus
        .unwrap_or_default()
        .iter()
        .find(|c| !allowed.contains(c))
    {
        return Err(CpuError::NotAllowed {
            cpu,
            allowed: format_cpu_list(allowed),
        });
    }
    let selected = selected(allowed, cpus);
    let n = shards.unwrap_or(selected.len());
    if n == 0 {
        return Err(CpuError::NoShards);
    }
    if n > SHARDS_PER_CPU * selected.len() {
        return Err(CpuError::TooManyShards {
            shards: n,
            cpus: selected.len(),
        });
    }
    Ok((0..n).map(|i| selected[i % selected.len()]).collect())
}

/// The CPUs `--cpus` selects (every allowed one without it), sorted.
pub fn selected(allowed: &[usize], cpus: Option<&[usize]>) -> Vec<usize> {
    cpus.unwrap_or(allowed).to_vec()
}

/// The host's NUMA nodes, each as its CPUs (from
/// `/sys/devices/system/node/node*/cpulist`); empty when the host does not
/// say. Read once, by the master, before the shards start.
pub fn numa_nodes() -> Vec<Vec<usize>> {
    let Ok(dir) = std::fs::read_dir("/sys/devices/system/node") else {
        return Vec::new();
    };
    dir.flatten()
        .filter(|e| {
            let name = e.file_name();
            let name = name.to_string_lossy();
            name.strip_prefix("node")
                .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
        })
        .filter_map(|e| std::fs::read_to_string(e.path().join("cpulist")).ok())
        .filter_map(|list| parse_cpu_list(list.trim()).ok())
        .collect()
}

/// Where a floating shard planned on `cpu` may run: the selected CPUs of
/// `cpu`'s NUMA node, so that it never moves away from the memory it
/// allocated (all of `selected` on a host with one node, or none known).
pub fn fence(selected: &[usize], cpu: usize, nodes: &[Vec<usize>]) -> Vec<usize> {
    match nodes.iter().find(|node| node.contains(&cpu)) {
        Some(node) => selected
            .iter()
            .copied()
            .filter(|c| node.contains(c))
            .collect(),
        None => selected.to_vec(),
    }
}

/// The CPU the calling thread runs on at this moment (sched_getcpu).
pub fn current() -> Option<usize> {
    // SAFETY: no arguments; returns a CPU number or -1.
    let cpu = unsafe { libc::sched_getcpu() };
    usize::try_from(cpu).ok()
}

/// Run `f` with the calling thread bound to `cpus`, then give the thread
/// its CPUs back. A thread started meanwhile inherits the binding (Linux
/// threads start with their creator's CPU mask), and so do the threads it
/// starts. CPUs past the kernel's 1024-CPU set are left out.
pub fn while_bound<T>(cpus: &[usize], f: impl FnOnce() -> T) -> std::io::Result<T> {
    let size = std::mem::size_of::<libc::cpu_set_t>();
    // SAFETY: an all-zero cpu_set_t is the empty set.
    let mut before: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: `before` is a cpu_set_t of `size` bytes; pid 0 is this thread.
    if unsafe { libc::sched_getaffinity(0, size, &mut before) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: as above.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    for &cpu in cpus {
        if cpu < libc::CPU_SETSIZE as usize {
            // SAFETY: `cpu` is within the set's bounds.
            unsafe { libc::CPU_SET(cpu, &mut set) };
        }
    }
    // SAFETY: `set` is a valid cpu_set_t of `size` bytes.
    if unsafe { libc::sched_setaffinity(0, size, &set) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let out = f();
    // SAFETY: the mask this thread had, valid as it was read.
    unsafe { libc::sched_setaffinity(0, size, &before) };
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_floating_shard_keeps_to_its_numa_node() {
        let nodes = vec![vec![0, 1, 2, 3], vec![4, 5, 6, 7]];
        let selected = [1, 2, 5, 6];
        assert_eq!(fence(&selected, 2, &nodes), vec![1, 2]);
        assert_eq!(fence(&selected, 6, &nodes), vec![5, 6]);
        // One node, or none known: every selected CPU.
        assert_eq!(fence(&selected, 6, &[]), vec![1, 2, 5, 6]);
        assert_eq!(
            fence(&selected, 1, &[vec![0, 1, 2, 3, 4, 5, 6, 7]]),
            vec![1, 2, 5, 6]
        );
        // `--cpus`, or every allowed CPU.
        assert_eq!(super::selected(&[0, 1, 2], Some(&[2])), vec![2]);
        assert_eq!(super::selected(&[0, 1, 2], None), vec![0, 1, 2]);
    }

    #[test]
    fn a_thread_knows_its_cpu() {
        let cpu = current().unwrap();
        assert!(allowed_cpus().unwrap().contains(&cpu), "{cpu}");
    }

    #[test]
    fn a_thread_started_while_bound_keeps_the_binding() {
        std::thread::spawn(|| {
            let allowed = allowed_cpus().unwrap();
            let one = allowed[..1].to_vec();
            let inner = while_bound(&one, || {
                std::thread::spawn(allowed_cpus).join().unwrap().unwrap()
            })
            .unwrap();
            assert_eq!(inner, one);
            // The binding thread has its CPUs back.
            assert_eq!(allowed_cpus().unwrap(), allowed);
        })
        .join()
        .unwrap();
    }

    #[test]
    fn lists() {
        assert_eq!(parse_cpu_list("0,2-3"), Ok(vec![0, 2, 3]));
        assert_eq!(parse_cpu_list("3,1,1"), Ok(vec![1, 3]));
        for bad in ["", "a", "3-1", "1-", ",", "0-99999"] {
            assert!(parse_cpu_list(bad).is_err(), "{bad}");
        }
        assert_eq!(format_cpu_list(&[0, 1, 2, 3, 6, 8, 9]), "0-3,6,8-9");
    }

    #[test]
    fn plans() {
        let allowed = [0, 1, 2, 3];
        assert_eq!(plan_shards(&allowed, None, None), Ok(vec![0, 1, 2, 3]));
        assert_eq!(plan_shards(&allowed, Some(&[1, 3]), None), Ok(vec![1, 3]));
        assert_eq!(plan_shards(&allowed, None, Some(2)), Ok(vec![0, 1]));
        assert_eq!(plan_shards(&[0, 1], None, Some(3)), Ok(vec![0, 1, 0]));
        assert!(matches!(
            plan_shards(&allowed, Some(&[7]), None),
            Err(CpuError::NotAllowed { cpu: 7, .. })
        ));
        assert_eq!(
            plan_shards(&allowed, None, Some(0)),
            Err(CpuError::NoShards)
        );
        assert_eq!(
            plan_shards(&[0, 1], None, Some(16)).map(|p| p.len()),
            Ok(16)
        );
        assert_eq!(
            plan_shards(&allowed, Some(&[1, 3]), Some(17)),
            Err(CpuError::TooManyShards {
                shards: 17,
                cpus: 2
            })
        );
    }
}
