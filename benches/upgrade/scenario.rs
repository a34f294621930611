//! The one scenario both balancers go through: client load (short TLS requests and slow long
//! downloads) through the balancer while it is upgraded N times, then the drain; what every
//! client saw is classified and the per-upgrade times are kept.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crate::common::load::{self, Load, Pace, Tally, Target};

/// A balancer that can hand its listening sockets to a new process of itself.
pub trait Balancer {
    /// The column name.
    fn label(&self) -> &'static str;
    /// The data listener the load goes to.
    fn listen(&self) -> SocketAddr;
    /// The pid that serves now, as the balancer itself says (admin API or stats socket).
    async fn serving_pid(&self) -> Option<i32>;
    /// Upgrades (or seamlessly reloads) the process `old`; answers once a new process serves,
    /// with its pid. The clock runs from the signal (or the new process's start) to that answer.
    async fn upgrade(&mut self, old: i32) -> Result<i32, String>;
    /// The balancer's processes still alive (old ones that drain, and the one that serves).
    fn processes(&mut self) -> Vec<i32>;
    /// Log lines worth showing (warnings, errors), at most `max`.
    fn notable_log_lines(&self, max: usize) -> Vec<String>;
}

/// What the run is asked for.
#[derive(Clone, Copy, Debug)]
pub struct Plan {
    /// Upgrades to do.
    pub upgrades: usize,
    /// The upgrades are spread over this long (one every `span / upgrades`, or slower when an
    /// upgrade or the new process's first requests take longer).
    pub span: Duration,
    /// Loops of short requests (each pauses `SHORT_PAUSE` between requests).
    pub loops: usize,
}

/// Pause of each short-request loop between requests: 4 loops give ~250 requests/s here.
pub const SHORT_PAUSE: Duration = Duration::from_millis(12);
/// Long downloads, each one TLS connection read slowly until the last upgrade is done.
const DOWNLOADS: usize = 4;
/// Pause after each read of a download while upgrades go on (a read returns up to 64 KiB).
const DOWNLOAD_PAUSE: Duration = Duration::from_millis(10);
/// Requests each new process must serve before the next upgrade, so every generation is seen
/// to work (as tests/upgrade.rs does).
const SERVED_PER_GENERATION: u64 = 10;
/// Longest wait for any one step (a new process, its first requests, the drain).
const STEP_LIMIT: Duration = Duration::from_secs(60);

/// Bytes of each download: more than the slow reader can take during the upgrades
/// (`DOWNLOAD_PAUSE` per read of at most 64 KiB is at most 6.4 MB/s), so each download is still
/// open after the last upgrade, and it then finishes at full speed.
pub fn download_bytes(span: Duration) -> usize {
    let per_sec: f64 = 64.0 * 1024.0 / DOWNLOAD_PAUSE.as_secs_f64();
    let bytes = (span.as_secs_f64() + 5.0) * per_sec * 1.25;
    (bytes as usize).min(splicer::rig::MAX_BYTES as usize)
}

/// Short-request outcomes.
#[derive(Debug, Default, Clone)]
pub struct Counts {
    pub ok: u64,
    pub refused: u64,
    pub reset: u64,
    pub failed: u64,
    pub first_errors: Vec<String>,
}

impl Counts {
    fn of(t: &Tally) -> Counts {
        Counts {
            ok: t.ok.load(Ordering::Relaxed),
            refused: t.refused.load(Ordering::Relaxed),
            reset: t.reset.load(Ordering::Relaxed),
            failed: t.failed.load(Ordering::Relaxed),
            first_errors: t.errors.lock().map(|e| e.clone()).unwrap_or_default(),
        }
    }

    /// Every request that did not succeed.
    pub fn not_ok(&self) -> u64 {
        self.refused + self.reset + self.failed
    }
}

/// Everything one balancer's run found.
#[derive(Debug, Default)]
pub struct Figures {
    pub label: &'static str,
    pub asked: usize,
    /// Time of each upgrade that succeeded: signal → a new process answers.
    pub times: Vec<Duration>,
    /// From the first upgrade's signal to the last one's new process serving.
    pub upgrades_took: Duration,
    pub short: Counts,
    pub downloads: Counts,
    pub download_bytes: usize,
    /// Downloads that were still open when the last upgrade was done.
    pub downloads_spanning: usize,
    /// Most processes alive at once, counted just before each upgrade.
    pub peak_processes: usize,
    /// Processes alive once the downloads ended and the drain was given `STEP_LIMIT`.
    pub processes_left: usize,
    /// From the end of the downloads to one process left (None: never within the limit).
    pub drain_took: Option<Duration>,
    pub fds_first: usize,
    pub fds_last: usize,
    pub notes: Vec<String>,
}

impl Figures {
    pub fn mean(&self) -> Option<Duration> {
        let n = u32::try_from(self.times.len()).ok().filter(|n| *n > 0)?;
        Some(self.times.iter().sum::<Duration>() / n)
    }

    pub fn max(&self) -> Option<Duration> {
        self.times.iter().max().copied()
    }

    /// The median, the upper one of the middle two.
    pub fn median(&self) -> Option<Duration> {
        let mut t = self.times.clone();
        t.sort_unstable();
        t.get(t.len() / 2).copied()
    }
}

/// Polls `cond` every 5 ms until it holds or `limit` passes; returns whether it held.
pub async fn poll<F, Fut>(limit: Duration, mut cond: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    loop {
        if cond().await {
            return true;
        }
        if start.elapsed() > limit {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// The last `n` lines of `text` on one line, for error messages.
pub fn last_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join(" | ")
}

/// Open fds of `pid`.
pub fn fd_count(pid: i32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

/// Runs the scenario against `b`, printing progress; never panics on the balancer's failures
/// (they end up in the figures).
pub async fn run(b: &mut impl Balancer, plan: Plan) -> Figures {
    let mut f = Figures {
        label: b.label(),
        asked: plan.upgrades,
        download_bytes: download_bytes(plan.span),
        ..Figures::default()
    };
    let Some(first) = b.serving_pid().await else {
        f.notes.push("the first process does not answer".into());
        return f;
    };
    // The fds of the first process while quiet, to compare with the last one's.
    f.fds_first = fd_count(first);

    let listen = b.listen();
    let load = Load::start(
        Target::new(listen),
        plan.loops,
        SHORT_PAUSE,
        plan.span + 3 * STEP_LIMIT,
    );
    let pace = Pace::new(DOWNLOAD_PAUSE);
    let downloads_started = Instant::now();
    let (downloads, download_tasks) =
        load::downloads(listen, DOWNLOADS, f.download_bytes, pace.clone());
    if !poll(STEP_LIMIT, || async { load.tally.ok() >= 20 }).await {
        f.notes.push("the load never got going".into());
    }

    let every = plan.span / u32::try_from(plan.upgrades.max(1)).unwrap_or(u32::MAX);
    let started = Instant::now();
    let mut pid = first;
    for i in 0..plan.upgrades {
        f.peak_processes = f.peak_processes.max(b.processes().len());
        let served = load.tally.ok();
        let signalled = Instant::now();
        match b.upgrade(pid).await {
            Ok(new) if new != pid => {
                f.times.push(signalled.elapsed());
                pid = new;
            }
            Ok(_) => {
                f.notes.push(format!("upgrade {}: no new process", i + 1));
                break;
            }
            Err(e) => {
                f.notes.push(format!("upgrade {} failed: {e}", i + 1));
                break;
            }
        }
        f.upgrades_took = started.elapsed();
        let next_at = every * u32::try_from(i + 1).unwrap_or(u32::MAX);
        let generation_served = poll(STEP_LIMIT, || async {
            load.tally.ok() >= served + SERVED_PER_GENERATION && started.elapsed() >= next_at
        })
        .await;
        if !generation_served {
            let n = i + 1;
            f.notes.push(format!(
                "after upgrade {n}: fewer than {SERVED_PER_GENERATION} requests in {STEP_LIMIT:?}"
            ));
            break;
        }
    }
    let times: Vec<String> = f
        .times
        .iter()
        .map(|t| format!("{:.0}", t.as_secs_f64() * 1e3))
        .collect();
    println!(
        "  {}: {} upgrades, signal → serving (ms): {}",
        f.label,
        f.times.len(),
        times.join(" ")
    );
    let upgrades_done_at = downloads_started.elapsed();
    pace.set(Duration::ZERO);
    f.short = Counts::of(&*load.stop().await);

    let mut download_times = Vec::new();
    for t in download_tasks {
        match tokio::time::timeout(load::DOWNLOAD_LIMIT, t).await {
            Ok(Ok(took)) => download_times.push(took),
            _ => f.notes.push("a download task did not end".into()),
        }
    }
    f.downloads = Counts::of(&downloads);
    f.downloads_spanning = download_times
        .iter()
        .filter(|t| **t > upgrades_done_at)
        .count();

    // The old processes exit once drained: one should be left, the last one.
    let drain_started = Instant::now();
    let mut left = b.processes();
    if poll(STEP_LIMIT, || {
        left = b.processes();
        std::future::ready(left == [pid])
    })
    .await
    {
        f.drain_took = Some(drain_started.elapsed());
    }
    f.processes_left = left.len();
    if b.serving_pid().await != Some(pid) {
        f.notes
            .push(format!("pid {pid} no longer answers at the end"));
    }
    // A health check may hold a socket for a moment: give the count a few seconds to settle.
    let settled = poll(Duration::from_secs(5), || {
        std::future::ready(fd_count(pid) <= f.fds_first)
    })
    .await;
    f.fds_last = fd_count(pid);
    if !settled {
        f.notes.push(format!(
            "the last process holds {} fds, the first held {}",
            f.fds_last, f.fds_first
        ));
    }
    f.notes.extend(b.notable_log_lines(5));
    f
}
