//! `splicer status --watch`: the table again every interval until interrupted. At a terminal it
//! redraws in place (cursor home, each line cleared to its end, the rest of the screen
//! cleared; the cursor hidden meanwhile and shown again however the watch ends); into a pipe or
//! a file it appends one frame per interval, a blank line between frames, and no escape code.
//!
//! [`Watch`] decides what a frame says from the samples so far (pure, tested without a
//! terminal); [`watch`] is the thin loop that samples, draws, and stops.

use std::future::Future;
use std::io::{self, ErrorKind, Write};
use std::time::{Duration, SystemTime};

use tokio::time::MissedTickBehavior;

use crate::status_doc::Status;

use super::render::{render_at, span};
use super::verdict::Verdict;
use super::{fetch, StatusCmdError, DEFAULT_TIMEOUT};

/// Default interval of `--watch` without a value.
pub const DEFAULT_EVERY: Duration = Duration::from_secs(1);

/// Shortest interval accepted: faster redraws are unreadable and only load the admin API.
pub const MIN_EVERY: Duration = Duration::from_millis(100);

/// Bound on one sample's fetch, never under this: a sub-second interval on a loaded machine
/// must not turn a slow answer into "unreachable".
const MIN_FETCH_TIMEOUT: Duration = Duration::from_secs(2);

/// Hide the cursor, clear the screen, cursor home: before the first frame at a terminal.
const START: &str = "\x1b[?25l\x1b[2J\x1b[H";
/// Cursor home: before every later frame (no full clear, so the screen does not flicker).
const HOME: &str = "\x1b[H";
/// Clear to the end of the line: a shorter line must not leave the previous frame's tail.
const CLEAR_LINE: &str = "\x1b[K";
/// Clear from the cursor to the end of the screen: a shorter frame leaves no old lines below.
const CLEAR_BELOW: &str = "\x1b[J";
/// Show the cursor again: the terminal as it was before the watch.
const RESTORE: &str = "\x1b[?25h";

/// A `--watch` interval from the command line: seconds, fractions allowed (`1`, `0.5`), at
/// least [`MIN_EVERY`].
pub fn parse_every(s: &str) -> Result<Duration, String> {
    let secs: f64 = s
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not a number of seconds (e.g. 1 or 0.5)"))?;
    if !secs.is_finite() || secs < MIN_EVERY.as_secs_f64() {
        return Err(format!(
            "{s:?}: the interval must be at least {} seconds",
            MIN_EVERY.as_secs_f64()
        ));
    }
    // A week is plenty; beyond it `from_secs_f64` could overflow.
    Ok(Duration::from_secs_f64(secs.min(7.0 * 86_400.0)))
}

/// Why the last samples failed, and since when.
#[derive(Debug, Clone)]
struct Outage {
    since: SystemTime,
    unreachable: bool,
    error: String,
}

/// The state of a watch: what the frames say, from the samples seen so far.
#[derive(Debug)]
pub struct Watch {
    url: String,
    every: Duration,
    /// The latest document that arrived, and when.
    last: Option<(Status, SystemTime)>,
    /// Set while samples fail.
    outage: Option<Outage>,
    verdict: Option<Verdict>,
}

impl Watch {
    /// A watch of the admin API at `url` (as messages show it) every `every`.
    pub fn new(url: String, every: Duration) -> Watch {
        Watch {
            url,
            every,
            last: None,
            outage: None,
            verdict: None,
        }
    }

    /// Takes in one sample taken at `now`.
    pub fn observe(&mut self, sample: Result<Status, StatusCmdError>, now: SystemTime) {
        match sample {
            Ok(status) => {
                self.verdict = Some(Verdict::of(&status));
                self.last = Some((status, now));
                self.outage = None;
            }
            Err(e) => {
                self.verdict = Some(Verdict::failed(&e));
                let since = self.outage.as_ref().map_or(now, |o| o.since);
                self.outage = Some(Outage {
                    since,
                    unreachable: e.is_unreachable(),
                    error: e.to_string(),
                });
            }
        }
    }

    /// The verdict of the latest sample (`None` before the first).
    pub fn verdict(&self) -> Option<&Verdict> {
        self.verdict.as_ref()
    }

    /// The frame to show at `now`: a heading, the verdict, then the table (while the API is
    /// down, the last table seen, marked with its time).
    pub fn frame(&self, now: SystemTime) -> String {
        let mut out = format!(
            "splicer status --watch  {}  every {}  {}\n",
            self.url,
            humantime::format_duration(self.every),
            timestamp(now)
        );
        match (&self.outage, &self.verdict) {
            (Some(outage), _) => {
                let down_for = now.duration_since(outage.since).unwrap_or_default();
                let what = if outage.unreachable {
                    "admin API unreachable"
                } else {
                    "no usable answer"
                };
                out.push_str(&format!(
                    "{what} since {} ({}): {}\n",
                    timestamp(outage.since),
                    span(down_for.as_secs()),
                    outage.error
                ));
                if let Some((status, at)) = &self.last {
                    out.push_str(&format!("\nlast status, from {}:\n", timestamp(*at)));
                    out.push_str(&render_at(status, now));
                }
            }
            (None, Some(verdict)) => {
                out.push_str(&verdict.summary());
                out.push('\n');
                if let Some((status, _)) = &self.last {
                    out.push('\n');
                    out.push_str(&render_at(status, now));
                }
            }
            (None, None) => out.push_str("waiting for the first answer\n"),
        }
        out
    }
}

fn timestamp(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

/// Where frames go: at a terminal, drawn over the previous one and the cursor restored on
/// drop (a normal end, an interruption or a panic); elsewhere, appended.
struct Screen<'a> {
    out: &'a mut dyn Write,
    live: bool,
    frames: usize,
}

impl Screen<'_> {
    fn draw(&mut self, frame: &str) -> io::Result<()> {
        let text = if self.live {
            let start = if self.frames == 0 { START } else { HOME };
            let body = frame.replace('\n', &format!("{CLEAR_LINE}\n"));
            format!("{start}{body}{CLEAR_BELOW}")
        } else if self.frames == 0 {
            frame.to_owned()
        } else {
            format!("\n{frame}")
        };
        self.frames += 1;
        self.out.write_all(text.as_bytes())?;
        self.out.flush()
    }
}

impl Drop for Screen<'_> {
    fn drop(&mut self) {
        if self.live && self.frames > 0 {
            // Nothing is left to report a failure to.
            let _ = self.out.write_all(RESTORE.as_bytes());
            let _ = self.out.flush();
        }
    }
}

/// Samples `/status` at `admin` every `every` and draws each frame on `out` (in place when
/// `live`, i.e. `out` is a terminal) until `stop` resolves or the reader of `out` goes away;
/// returns the last sample's verdict. `admin` must already be a valid admin URL (see
/// [`super::admin_url`]); an output failure other than a closed pipe is returned.
pub async fn watch(
    admin: &str,
    every: Duration,
    live: bool,
    out: &mut dyn Write,
    stop: impl Future<Output = ()>,
) -> io::Result<Verdict> {
    let url = super::admin_url(admin).unwrap_or_else(|_| admin.to_owned());
    let mut state = Watch::new(url, every);
    let mut screen = Screen {
        out,
        live,
        frames: 0,
    };
    let fetch_timeout = every.clamp(MIN_FETCH_TIMEOUT, DEFAULT_TIMEOUT);
    let mut ticker = tokio::time::interval(every);
    // After a slow sample, wait a whole interval again rather than sampling in a burst.
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    tokio::pin!(stop);
    loop {
        tokio::select! {
            biased;
            () = &mut stop => break,
            _ = ticker.tick() => {}
        }
        let sample = tokio::select! {
            biased;
            () = &mut stop => break,
            sample = fetch(admin, fetch_timeout) => sample,
        };
        state.observe(sample, SystemTime::now());
        match screen.draw(&state.frame(SystemTime::now())) {
            Ok(()) => {}
            // The reader left (`| head`): stop quietly, as a one-shot `status` does.
            Err(e) if e.kind() == ErrorKind::BrokenPipe => break,
            Err(e) => return Err(e),
        }
    }
    drop(screen);
    Ok(state
        .verdict
        .unwrap_or_else(|| Verdict::Unknown("stopped before the admin API answered once".into())))
}
