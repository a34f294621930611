//! The standard `process_*` metrics (the names every Prometheus client library exports), read
//! from `/proc/self` at scrape time. Each value is read on its own: one that cannot be read
//! (no `/proc`, a kernel that formats a file differently) is left out of the scrape, and the
//! others still appear.

use std::path::Path;

/// What one scrape learned about this process; `None` = could not be read.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct ProcessStats {
    /// Open file descriptors.
    pub open_fds: Option<u64>,
    /// The soft `RLIMIT_NOFILE`: the descriptor count at which accept and connect fail.
    pub max_fds: Option<u64>,
    /// Resident set size in bytes.
    pub resident_memory_bytes: Option<u64>,
    /// User plus system CPU time, in seconds.
    pub cpu_seconds: Option<f64>,
    /// When the process started, in seconds since the Unix epoch.
    pub start_time_seconds: Option<f64>,
}

impl ProcessStats {
    /// Reads this process's figures from `/proc`.
    pub fn read() -> Self {
        Self::read_from(Path::new("/proc"))
    }

    /// Reads from a `/proc` mounted at `proc` (tests point it at a directory of their own).
    fn read_from(proc: &Path) -> Self {
        let me = proc.join("self");
        let stat = std::fs::read_to_string(me.join("stat"))
            .ok()
            .and_then(|s| Stat::parse(&s));
        let ticks = clock_ticks_per_second();
        let page = page_size();
        let boot_time = std::fs::read_to_string(proc.join("stat"))
            .ok()
            .and_then(|s| boot_time(&s));
        ProcessStats {
            open_fds: std::fs::read_dir(me.join("fd"))
                .ok()
                .map(|dir| dir.filter(|e| e.is_ok()).count() as u64),
            max_fds: std::fs::read_to_string(me.join("limits"))
                .ok()
                .and_then(|s| max_open_files(&s)),
            resident_memory_bytes: stat
                .as_ref()
                .zip(page)
                .map(|(s, page)| s.rss_pages.saturating_mul(page)),
            cpu_seconds: stat
                .as_ref()
                .zip(ticks)
                .map(|(s, t)| (s.utime + s.stime) as f64 / t as f64),
            start_time_seconds: stat
                .as_ref()
                .zip(ticks)
                .zip(boot_time)
                .map(|((s, t), boot)| boot as f64 + s.start_ticks as f64 / t as f64),
        }
    }
}

/// The fields of `/proc/self/stat` the metrics need.
#[derive(Debug, PartialEq)]
struct Stat {
    /// User-mode CPU time, in clock ticks.
    utime: u64,
    /// Kernel-mode CPU time, in clock ticks.
    stime: u64,
    /// Start time after boot, in clock ticks.
    start_ticks: u64,
    /// Resident set size, in pages.
    rss_pages: u64,
}

impl Stat {
    /// Parses `/proc/[pid]/stat`: the command name in field 2 is in parentheses and may itself
    /// hold spaces and parentheses, so fields are counted from the last `)`.
    fn parse(text: &str) -> Option<Stat> {
        let (_, rest) = text.rsplit_once(')')?;
        // After the name: field 3 (state) is index 0, so field n is index n - 3.
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let field = |n: usize| fields.get(n - 3)?.parse::<u64>().ok();
        Some(Stat {
            utime: field(14)?,
            stime: field(15)?,
            start_ticks: field(22)?,
            rss_pages: field(24)?,
        })
    }
}

/// The soft limit on the `Max open files` line of `/proc/self/limits`; `None` when unlimited
/// (there is then no ceiling to report) or unreadable.
fn max_open_files(limits: &str) -> Option<u64> {
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.strip_prefix("Max open files")?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// The `btime` line of `/proc/stat`: boot time in seconds since the epoch.
fn boot_time(stat: &str) -> Option<u64> {
    stat.lines()
        .find_map(|l| l.strip_prefix("btime "))?
        .trim()
        .parse()
        .ok()
}

/// `sysconf(_SC_CLK_TCK)`, the unit of the CPU and start times in `/proc/self/stat`.
fn clock_ticks_per_second() -> Option<u64> {
    // SAFETY: sysconf has no memory-safety preconditions.
    let v = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    u64::try_from(v).ok().filter(|&t| t > 0)
}

/// `sysconf(_SC_PAGESIZE)`, the unit of the resident set size in `/proc/self/stat`.
fn page_size() -> Option<u64> {
    // SAFETY: sysconf has no memory-safety preconditions.
    let v = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    u64::try_from(v).ok().filter(|&p| p > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A real line, with a command name holding a space and parentheses.
    const STAT: &str = "4242 (tokio (rt) 1) S 1 4242 4242 0 -1 4194560 2890 0 0 0 \
                        150 37 0 0 20 0 9 0 123456 1234567890 2560 18446744073709551615 \
                        1 1 0 0 0 0 0 4096 17667 0 0 0 17 1 0 0 0 0 0\n";

    #[test]
    fn stat_fields_are_counted_from_the_last_parenthesis() {
        assert_eq!(
            Stat::parse(STAT),
            Some(Stat {
                utime: 150,
                stime: 37,
                start_ticks: 123456,
                rss_pages: 2560,
            })
        );
        assert_eq!(Stat::parse("4242 (cut short) S 1 2"), None);
        assert_eq!(Stat::parse("no parenthesis at all"), None);
    }

    #[test]
    fn limits_give_the_soft_limit_or_nothing_when_unlimited() {
        let limits = "Limit                     Soft Limit           Hard Limit           Units     \n\
                      Max cpu time              unlimited            unlimited            seconds   \n\
                      Max open files            1024                 524288               files     \n";
        assert_eq!(max_open_files(limits), Some(1024));
        assert_eq!(
            max_open_files(
                "Max open files            unlimited            unlimited            files\n"
            ),
            None
        );
        assert_eq!(max_open_files(""), None);
    }

    #[test]
    fn boot_time_is_the_btime_line() {
        assert_eq!(
            boot_time("cpu  1 2 3\nintr 5\nbtime 1764237600\nprocesses 9\n"),
            Some(1_764_237_600)
        );
        assert_eq!(boot_time("cpu  1 2 3\n"), None);
    }

    #[test]
    fn a_missing_proc_leaves_every_value_out() {
        let dir = std::env::temp_dir().join(format!("splicer-no-proc-{}", std::process::id()));
        assert_eq!(ProcessStats::read_from(&dir), ProcessStats::default());
    }

    #[test]
    fn this_process_reads_sensibly() {
        let s = ProcessStats::read();
        assert!(s.open_fds.is_some_and(|n| n >= 3), "{s:?}");
        assert!(s.resident_memory_bytes.is_some_and(|b| b > 0), "{s:?}");
        assert!(s.cpu_seconds.is_some_and(|c| c >= 0.0), "{s:?}");
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or_default();
        assert!(
            s.start_time_seconds
                .is_some_and(|t| t <= now + 1.0 && t > now - 86_400.0 * 365.0),
            "{s:?} now {now}"
        );
    }
}
