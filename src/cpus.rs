//! Which CPUs get a shard: the CPUs this process may run on, narrowed by
//! `--cpus` and `--shards`.

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
}

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
    let selected: Vec<usize> = match cpus {
        Some(list) => {
            for &cpu in list {
                if !allowed.contains(&cpu) {
                    return Err(CpuError::NotAllowed {
                        cpu,
                        allowed: format_cpu_list(allowed),
                    });
                }
            }
            list.to_vec()
        }
        None => allowed.to_vec(),
    };
    let n = shards.unwrap_or(selected.len());
    if n == 0 {
        return Err(CpuError::NoShards);
    }
    Ok((0..n).map(|i| selected[i % selected.len()]).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

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
    }
}
