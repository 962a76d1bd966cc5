//! The `process_*` families Prometheus's Go client exports and the Thanos mixin's resource
//! panels read (CPU, resident memory, open descriptors, start time), read from `/proc/self` at
//! each scrape. No Go-runtime family is imitated.

use std::sync::atomic::AtomicU64;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// `/proc` reports CPU times and start time in clock ticks of USER_HZ, which Linux fixes at
/// 100 for user space on every architecture it supports.
const TICKS_PER_SECOND: f64 = 100.0;

#[derive(Debug, Default)]
pub(crate) struct ProcessMetrics {
    cpu_seconds: Counter<f64, AtomicU64>,
    resident_memory_bytes: Gauge<f64, AtomicU64>,
    virtual_memory_bytes: Gauge<f64, AtomicU64>,
    open_fds: Gauge<f64, AtomicU64>,
    max_fds: Gauge<f64, AtomicU64>,
    start_time_seconds: Gauge<f64, AtomicU64>,
}

impl ProcessMetrics {
    pub(crate) fn register(&self, r: &mut Registry) {
        r.register(
            "process_cpu_seconds",
            "Total user and system CPU time spent in seconds",
            self.cpu_seconds.clone(),
        );
        r.register(
            "process_resident_memory_bytes",
            "Resident memory size in bytes",
            self.resident_memory_bytes.clone(),
        );
        r.register(
            "process_virtual_memory_bytes",
            "Virtual memory size in bytes",
            self.virtual_memory_bytes.clone(),
        );
        r.register(
            "process_open_fds",
            "Number of open file descriptors",
            self.open_fds.clone(),
        );
        r.register(
            "process_max_fds",
            "Maximum number of open file descriptors",
            self.max_fds.clone(),
        );
        r.register(
            "process_start_time_seconds",
            "Start time of the process since the Unix epoch in seconds",
            self.start_time_seconds.clone(),
        );
    }

    /// Reads `/proc/self` into the families; a value that cannot be read keeps its last one.
    pub(crate) fn refresh(&self) {
        if let Some(stat) = read_small("/proc/self/stat").and_then(|s| Stat::parse(&s)) {
            let cpu = (stat.utime + stat.stime) as f64 / TICKS_PER_SECOND;
            // A counter only goes up: add what was spent since the last scrape.
            let delta = cpu - self.cpu_seconds.get();
            if delta > 0.0 {
                self.cpu_seconds.inc_by(delta);
            }
            self.virtual_memory_bytes.set(stat.vsize as f64);
            if let Some(boot) = read_small("/proc/stat").and_then(|s| boot_time(&s)) {
                self.start_time_seconds
                    .set(boot as f64 + stat.starttime as f64 / TICKS_PER_SECOND);
            }
        }
        if let Some(kb) = read_small("/proc/self/status").and_then(|s| status_kb(&s, "VmRSS:")) {
            self.resident_memory_bytes.set(kb as f64 * 1024.0);
        }
        if let Ok(dir) = std::fs::read_dir("/proc/self/fd") {
            self.open_fds.set(dir.count() as f64);
        }
        if let Ok((soft, _)) = rlimit::Resource::NOFILE.get() {
            self.max_fds.set(soft as f64);
        }
    }
}

/// A `/proc` file, at most 64 KiB of it.
fn read_small(path: &str) -> Option<String> {
    use std::io::Read;
    let mut s = String::new();
    std::fs::File::open(path)
        .ok()?
        .take(64 * 1024)
        .read_to_string(&mut s)
        .ok()?;
    Some(s)
}

/// The fields of `/proc/self/stat` used here (proc(5) numbering).
#[derive(Debug, PartialEq)]
struct Stat {
    utime: u64,
    stime: u64,
    starttime: u64,
    vsize: u64,
}

impl Stat {
    fn parse(s: &str) -> Option<Self> {
        // Field 2, the command, is in parentheses and may hold spaces and ')': the fields that
        // follow start after its last ')'.
        let rest = &s[s.rfind(')')? + 1..];
        let f: Vec<&str> = rest.split_whitespace().collect();
        // f[0] is field 3 (state), so field n is f[n - 3].
        let field = |n: usize| f.get(n - 3)?.parse::<u64>().ok();
        Some(Self {
            utime: field(14)?,
            stime: field(15)?,
            starttime: field(22)?,
            vsize: field(23)?,
        })
    }
}

/// `btime` of `/proc/stat`: boot time in seconds since the epoch.
fn boot_time(s: &str) -> Option<u64> {
    s.lines()
        .find_map(|l| l.strip_prefix("btime "))
        .and_then(|v| v.trim().parse().ok())
}

/// A `<key> <n> kB` line of `/proc/self/status`.
fn status_kb(s: &str, key: &str) -> Option<u64> {
    s.lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_found_after_a_command_with_spaces_and_parentheses() {
        let line = "42 (a b) c)) S 1 42 42 0 -1 4194560 100 0 0 0 250 70 0 0 20 0 9 0 12345 \
                    8388608 300 18446744073709551615";
        assert_eq!(
            Stat::parse(line),
            Some(Stat {
                utime: 250,
                stime: 70,
                starttime: 12345,
                vsize: 8388608
            })
        );
        assert_eq!(Stat::parse("42 (x) S 1"), None);
        assert_eq!(Stat::parse("no parenthesis"), None);
    }

    #[test]
    fn this_process_reads_as_running_with_memory_and_descriptors() {
        let m = ProcessMetrics::default();
        m.refresh();
        assert!(m.resident_memory_bytes.get() > 0.0);
        assert!(m.open_fds.get() >= 1.0);
        assert!(m.max_fds.get() >= m.open_fds.get());
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        let start = m.start_time_seconds.get();
        assert!(
            start > now - 86_400.0 * 365.0 && start <= now + 1.0,
            "{start}"
        );
        assert_eq!(
            boot_time("cpu 1 2\nbtime 1700000000\n"),
            Some(1_700_000_000)
        );
        assert_eq!(
            status_kb("VmPeak:\t 10 kB\nVmRSS:\t  2048 kB\n", "VmRSS:"),
            Some(2048)
        );
    }
}
