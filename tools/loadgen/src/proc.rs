//! What the server costs, read from `/proc`: memory (RSS from
//! `/proc/PID/status`, Pss from `/proc/PID/smaps_rollup`) and CPU time (every
//! thread's `/proc/PID/task/TID/schedstat`), summed over the pids given.

use serde::Serialize;

/// A memory reading of the server processes, KiB.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub(crate) struct Memory {
    pub(crate) rss_kib: u64,
    pub(crate) pss_kib: u64,
}

/// Sums RSS and Pss over `pids`; `None` without pids or when one is unreadable.
pub(crate) fn read_memory(pids: &[u32]) -> Option<Memory> {
    if pids.is_empty() {
        return None;
    }
    let field = |text: &str, name: &str| -> Option<u64> {
        text.lines()
            .find_map(|line| line.strip_prefix(name))
            .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
    };
    let mut total = Memory::default();
    for pid in pids {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        let rollup = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok()?;
        total.rss_kib += field(&status, "VmRSS:")?;
        total.pss_kib += field(&rollup, "Pss:")?;
    }
    Some(total)
}

/// CPU time the server processes have used so far, in nanoseconds: the sum
/// over every thread of `/proc/PID/task/TID/schedstat`'s first field.
pub(crate) fn read_cpu_ns(pids: &[u32]) -> Option<u64> {
    if pids.is_empty() {
        return None;
    }
    let mut total = 0;
    for pid in pids {
        // A thread that ends between the listing and the read is skipped.
        for task in std::fs::read_dir(format!("/proc/{pid}/task"))
            .ok()?
            .flatten()
        {
            let stat = std::fs::read_to_string(task.path().join("schedstat")).unwrap_or_default();
            let ns = stat
                .split_whitespace()
                .next()
                .and_then(|n| n.parse::<u64>().ok());
            total += ns.unwrap_or(0);
        }
    }
    Some(total)
}
