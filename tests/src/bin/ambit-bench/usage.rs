//! The node agent's resource use, read from `/proc/<pid>`.

use std::io;
use std::time::Instant;

use nix::unistd::{SysconfVar, sysconf};

/// CPU time a process has used (all its threads, user and system) at an
/// instant.
#[derive(Clone, Copy)]
pub struct CpuSample {
    ticks: u64,
    at: Instant,
}

// === impl CpuSample ===

impl CpuSample {
    /// Reads `utime + stime` from `/proc/<pid>/stat`.
    pub fn take(pid: u32) -> io::Result<Self> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
        let at = Instant::now();
        // The command name, in parentheses, may hold spaces; fields after the
        // last `)` start with field 3 (state), so utime (14) and stime (15)
        // are the 12th and 13th.
        let after_name = stat
            .rsplit_once(')')
            .map(|(_, rest)| rest)
            .ok_or_else(|| bad_data(pid, "stat", "no `)` after the command name"))?;
        let mut fields = after_name.split_whitespace().skip(11);
        let mut next_number = |name: &str| -> io::Result<u64> {
            fields
                .next()
                .and_then(|field| field.parse().ok())
                .ok_or_else(|| bad_data(pid, "stat", &format!("no numeric {name}")))
        };
        let utime = next_number("utime")?;
        let stime = next_number("stime")?;
        Ok(Self {
            ticks: utime + stime,
            at,
        })
    }

    /// CPU cores used on average between `self` and `later`: CPU seconds per
    /// wall-clock second.
    #[expect(
        clippy::cast_precision_loss,
        reason = "tick counts and the tick rate are far below 2^52"
    )]
    pub fn cores_until(&self, later: &CpuSample) -> f64 {
        let wall = later.at.duration_since(self.at).as_secs_f64();
        if wall <= 0.0 {
            return 0.0;
        }
        let ticks = later.ticks.saturating_sub(self.ticks);
        ticks as f64 / clock_ticks_per_second() as f64 / wall
    }
}

/// `sysconf(_SC_CLK_TCK)`, the unit of `/proc/<pid>/stat`'s times (100 on
/// Linux unless someone rebuilt the world).
fn clock_ticks_per_second() -> u64 {
    sysconf(SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .and_then(|ticks| u64::try_from(ticks).ok())
        .filter(|&ticks| ticks > 0)
        .unwrap_or(100)
}

/// The resident set size now (`VmRSS`), in MiB.
pub fn rss_mib(pid: u32) -> io::Result<f64> {
    status_mib(pid, "VmRSS")
}

/// The largest resident set size so far (`VmHWM`), in MiB.
pub fn peak_rss_mib(pid: u32) -> io::Result<f64> {
    status_mib(pid, "VmHWM")
}

/// A `kB` line of `/proc/<pid>/status` (`VmRSS`, `RssAnon`, `RssFile`), in
/// MiB.
#[expect(
    clippy::cast_precision_loss,
    reason = "memory sizes in kB are far below 2^52"
)]
pub fn status_mib(pid: u32, key: &str) -> io::Result<f64> {
    let kib: u64 = status_field(pid, key)?
        .strip_suffix("kB")
        .and_then(|number| number.trim().parse().ok())
        .ok_or_else(|| bad_data(pid, "status", &format!("no {key} line in kB")))?;
    Ok(kib as f64 / 1024.0)
}

/// The threads of a process (`Threads` in `/proc/<pid>/status`).
pub fn threads(pid: u32) -> io::Result<u64> {
    status_field(pid, "Threads")?
        .parse()
        .map_err(|_| bad_data(pid, "status", "no numeric Threads line"))
}

/// The open file descriptors of a process (entries of `/proc/<pid>/fd`),
/// for a process that does not count its own.
pub fn open_fds(pid: u32) -> io::Result<u64> {
    let entries = std::fs::read_dir(format!("/proc/{pid}/fd"))?.count();
    Ok(u64::try_from(entries).unwrap_or(u64::MAX))
}

/// The value of a `/proc/<pid>/status` line, trimmed.
fn status_field(pid: u32, key: &str) -> io::Result<String> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|line| line.strip_prefix(key)?.strip_prefix(':'))
        .map(|value| value.trim().to_owned())
        .ok_or_else(|| bad_data(pid, "status", &format!("no {key} line")))
}

fn bad_data(pid: u32, file: &str, what: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("/proc/{pid}/{file}: {what}"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_process() {
        let pid = std::process::id();
        let before = CpuSample::take(pid).expect("stat");
        // Burn a little CPU so the tick count can move.
        let mut x = 0_u64;
        for i in 0..2_000_000_u64 {
            x = x.wrapping_mul(31).wrapping_add(i);
        }
        std::hint::black_box(x);
        let after = CpuSample::take(pid).expect("stat");
        assert!(before.cores_until(&after) >= 0.0);
        assert!(rss_mib(pid).expect("VmRSS") > 0.0);
        assert!(peak_rss_mib(pid).expect("VmHWM") >= rss_mib(pid).expect("VmRSS") - 1.0);
        assert!(threads(pid).expect("Threads") >= 1);
        assert!(open_fds(pid).expect("fds") >= 3, "stdin, stdout, stderr");
    }
}
