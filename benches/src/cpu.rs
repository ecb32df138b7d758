//! Where the CPU went during a measured window: the relay processes, PostgreSQL, Redis, this
//! generator, and everything else on the machine.
//!
//! On a 2-core machine the generator, the relays and the databases share the cores, so a
//! throughput figure can only be read beside who used them. [`CpuSample::take`] reads
//! `utime + stime` of each process from `/proc/PID/stat` (threads included) and the machine's
//! busy time from `/proc/stat`; the difference of two samples, divided by the wall time, is
//! the cores each part kept busy. PostgreSQL and Redis are found by process name
//! (`postgres`, `redis-server`), so every backend a relay opened counts, and a backend that
//! exits between the two samples takes its time with it (the pools stay open while measured).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::report::Report;

/// Linux reports process and machine times in `USER_HZ`, which is 100 on every architecture
/// the kernel exports to user space (`sysconf(_SC_CLK_TCK)`).
const TICKS_PER_SECOND: f64 = 100.0;

/// The parts CPU time is attributed to, in report order.
pub const PARTS: [&str; 5] = ["relays", "PostgreSQL", "Redis", "generator", "other"];

/// CPU ticks used so far by each part, at one instant.
#[derive(Clone, Debug)]
pub struct CpuSample {
    at: Instant,
    /// Ticks per process id (relays, databases, this process).
    processes: HashMap<u32, (Part, u64)>,
    /// Busy ticks of the whole machine (all but idle and iowait).
    machine_busy: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Part {
    Relays,
    Postgres,
    Redis,
    Generator,
}

/// Cores kept busy by each part between two samples.
#[derive(Clone, Debug, PartialEq)]
pub struct CpuUse {
    /// The wall time between the samples.
    pub wall: Duration,
    /// `(part, cores)` in [`PARTS`] order; `other` is the machine's busy time less the rest.
    pub cores: Vec<(&'static str, f64)>,
}

impl CpuSample {
    /// Reads the counters now; `relays` are the relay processes' ids (empty when the relay
    /// runs inside this process, whose time then counts as the generator's).
    pub fn take(relays: &[u32]) -> Self {
        let mut processes = HashMap::new();
        let me = std::process::id();
        for pid in relays {
            if let Some(ticks) = process_ticks(*pid) {
                processes.insert(*pid, (Part::Relays, ticks));
            }
        }
        if let Some(ticks) = process_ticks(me) {
            processes.entry(me).or_insert((Part::Generator, ticks));
        }
        for (pid, name) in all_processes() {
            let part = match name.as_str() {
                "postgres" => Part::Postgres,
                "redis-server" => Part::Redis,
                _ => continue,
            };
            if let Some(ticks) = process_ticks(pid) {
                processes.insert(pid, (part, ticks));
            }
        }
        Self {
            at: Instant::now(),
            processes,
            machine_busy: machine_busy_ticks().unwrap_or(0),
        }
    }

    /// What each part used from `self` to `later`.
    pub fn until(&self, later: &Self) -> CpuUse {
        let wall = later.at.saturating_duration_since(self.at);
        let seconds = wall.as_secs_f64().max(1e-9);
        let mut used = [0u64; 4];
        for (pid, (part, ticks)) in &later.processes {
            // A process that started during the window counts from zero.
            let before = self.processes.get(pid).map_or(0, |(_, t)| *t);
            used[*part as usize] += ticks.saturating_sub(before);
        }
        let busy = later.machine_busy.saturating_sub(self.machine_busy);
        let known: u64 = used.iter().sum();
        let mut cores: Vec<(&'static str, f64)> = PARTS[..4]
            .iter()
            .zip(used)
            .map(|(name, ticks)| (*name, ticks as f64 / TICKS_PER_SECOND / seconds))
            .collect();
        cores.push((
            PARTS[4],
            busy.saturating_sub(known) as f64 / TICKS_PER_SECOND / seconds,
        ));
        CpuUse { wall, cores }
    }
}

impl CpuUse {
    /// Adds one `CPU: <part>` figure per part, in cores, to `report`.
    pub fn add_to(&self, report: &mut Report, scenario: &str, prefix: &str) {
        for (part, cores) in &self.cores {
            report.add(scenario, format!("{prefix}CPU: {part}"), *cores, "cores");
        }
    }

    /// Cores used by `part` (0 when unknown).
    pub fn of(&self, part: &str) -> f64 {
        self.cores
            .iter()
            .find(|(name, _)| *name == part)
            .map_or(0.0, |(_, cores)| *cores)
    }
}

/// CPU time used by this process so far (user + system, all threads), in seconds, with the
/// ticks' resolution of 10 ms. `None` where there is no `/proc`.
pub fn process_cpu_seconds() -> Option<f64> {
    process_ticks(std::process::id()).map(|ticks| ticks as f64 / TICKS_PER_SECOND)
}

/// CPU time the calling thread has run so far, to the nanosecond: the first field of
/// `/proc/thread-self/schedstat`. Time other threads and processes of the machine ran is not
/// in it, as it is in a wall clock; on a VM, time the host took may still be.
pub fn thread_cpu_time() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    let nanos: u64 = stat.split_whitespace().next()?.parse().ok()?;
    Some(Duration::from_nanos(nanos))
}

/// `utime + stime` of a process, in ticks (`/proc/PID/stat` fields 14 and 15).
fn process_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_process_ticks(&stat)
}

fn parse_process_ticks(stat: &str) -> Option<u64> {
    // The command name (field 2) is in parentheses and may hold spaces: count from its end.
    let (_, after_name) = stat.rsplit_once(')')?;
    let mut fields = after_name.split_whitespace();
    // After the name come state (3), ppid (4), … utime is field 14: the 12th from here.
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

/// Every process id with its command name (`/proc/PID/comm`).
fn all_processes() -> Vec<(u32, String)> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|entry| {
            let pid: u32 = entry.ok()?.file_name().to_str()?.parse().ok()?;
            let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
            Some((pid, comm.trim().to_owned()))
        })
        .collect()
}

/// Busy ticks of all CPUs since boot (`/proc/stat`'s `cpu` line less idle and iowait).
fn machine_busy_ticks() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    parse_machine_busy(&stat)
}

fn parse_machine_busy(stat: &str) -> Option<u64> {
    let line = stat.lines().find(|line| line.starts_with("cpu "))?;
    let values: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|v| v.parse().ok())
        .collect::<Option<_>>()?;
    // user nice system idle iowait irq softirq steal [guest guest_nice, already in user]
    let total: u64 = values.iter().take(8).sum();
    let idle = values.get(3)? + values.get(4).copied().unwrap_or(0);
    Some(total.saturating_sub(idle))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_process_stat_line() {
        // A name with spaces and a parenthesis, then fields 3…; utime 1234, stime 56.
        let line = "42 (tokio (rt) x) S 1 42 42 0 -1 4194304 100 0 0 0 1234 56 0 0 20 0 8 0 1 2 3";
        assert_eq!(parse_process_ticks(line), Some(1290));
    }

    #[test]
    fn reads_machine_busy_time() {
        let stat = "cpu  100 5 50 1000 20 1 2 3 0 0\ncpu0 50 2 25 500 10 0 1 1 0 0\n";
        assert_eq!(parse_machine_busy(stat), Some(161));
    }

    #[test]
    fn counts_this_thread_s_cpu_time() {
        let before = thread_cpu_time().expect("Linux has /proc/thread-self/schedstat");
        let process_before = process_cpu_seconds().expect("and /proc/self/stat");
        let start = Instant::now();
        let mut x = 0u64;
        while start.elapsed() < Duration::from_millis(100) {
            x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(7));
        }
        let spun = thread_cpu_time().expect("still there") - before;
        // Busy the whole time, less what others took of the core; sleeping would not count.
        assert!(spun >= Duration::from_millis(30), "{spun:?}");
        assert!(spun <= start.elapsed(), "{spun:?}");
        assert!(process_cpu_seconds().expect("still there") >= process_before);
        let before = thread_cpu_time().expect("still there");
        std::thread::sleep(Duration::from_millis(100));
        let slept = thread_cpu_time().expect("still there") - before;
        assert!(slept < Duration::from_millis(20), "{slept:?}");
    }

    #[test]
    fn attributes_this_process_as_the_generator() {
        let before = CpuSample::take(&[]);
        // Burn some CPU in this process.
        let start = Instant::now();
        let mut x = 0u64;
        while start.elapsed() < Duration::from_millis(300) {
            x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(7));
        }
        let used = before.until(&CpuSample::take(&[]));
        assert!(used.of("generator") > 0.3, "{used:?}");
        assert_eq!(used.of("relays"), 0.0);
        assert_eq!(used.cores.len(), PARTS.len());
    }
}
