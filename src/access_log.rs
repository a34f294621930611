//! The access log: one line per finished connection, written off the data path.
//!
//! A connection hands its [`AccessRecord`] to a bounded queue with a non-blocking `try_send`
//! and moves on; when the queue is full (the sink is slow or stuck) the line is dropped and
//! counted, never waited for. One dedicated OS thread (not a tokio task: writing to a pipe or
//! a file can block the thread doing it) drains the queue, formats each record and writes it
//! through a `BufWriter` flushed whenever the queue is momentarily empty. A stalled sink
//! therefore stalls only that thread, and the loss shows in [`AccessLog::dropped`].
//!
//! The line formats are pure functions ([`format_text`], [`format_json`]); the layout is
//! docs/architecture.md §5 "Access log line".

use std::fmt::Write as _;
use std::io::{self, Write};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TryRecvError, TrySendError};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwapOption;
use serde::Serialize;

use crate::config::LogFormat;
use crate::net::end::End;

/// Queue length of [`AccessLog::stdout`], in lines.
///
/// The queue only has to absorb a burst while stdout is slow (a full pipe, a journald or
/// container-runtime hiccup): 65,536 lines ride out about 6 s of a stuck sink at 10,000
/// connections ending per second before lines are dropped. Each slot is a queued record of
/// about 180 bytes, and std's bounded channel allocates every slot up front, so this costs
/// about 12 MiB; a longer queue would only delay, not prevent, loss behind a sink that stays
/// stuck.
pub const STDOUT_QUEUE_LINES: usize = 65_536;

/// What one finished connection reports; becomes one access log line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessRecord {
    /// Name of the listener that accepted the connection.
    pub listener: Arc<str>,
    /// The client's address as the listener saw it.
    pub client: SocketAddr,
    /// Server name the client asked for in its `ClientHello`, if any (client-controlled text).
    pub sni: Option<Arc<str>>,
    /// Pool the connection was served from.
    pub pool: Arc<str>,
    /// Backend the bytes went to; `None` when no connection to a backend was made.
    pub backend: Option<SocketAddr>,
    /// Bytes moved client → backend.
    pub to_backend: u64,
    /// Bytes moved backend → client.
    pub to_client: u64,
    /// Time from accept to the end of the connection.
    pub duration: Duration,
    /// Why the connection ended (its `end` field; docs/architecture.md §5).
    pub end: End,
}

/// The access log handle: cheap to clone, shared by every listener.
#[derive(Clone)]
pub struct AccessLog {
    /// `None` when the log is disabled: no queue, no thread, nothing counted.
    shared: Option<Arc<Shared>>,
}

/// What the handles share. Only this holds the queue's sender: the writer thread holds just
/// the [`Counters`], so dropping every handle disconnects the queue and lets the thread end.
struct Shared {
    /// The queue's only sender. Taking it out (at stop) disconnects the channel, so the writer
    /// drains what is queued and exits; `record()` reads it lock-free, so connections never
    /// contend on a lock.
    queue: ArcSwapOption<SyncSender<Queued>>,
    /// Shared with the writer thread.
    counters: Arc<Counters>,
}

/// Counters and the end-of-writer signal, shared by the handles and the writer thread.
#[derive(Default)]
struct Counters {
    /// Lines lost: the queue refused them (full, or the log stopped) or their write failed.
    dropped: AtomicU64,
    /// Lines written to the sink.
    written: AtomicU64,
    /// Failed writes to the sink.
    write_errors: AtomicU64,
    /// Set by the writer thread as it exits, however it exits.
    finished: Mutex<bool>,
    /// Signalled with `finished`.
    finished_changed: Condvar,
}

/// A record on its way to the writer, with the wall-clock time the connection ended (taken
/// at record time, so a lagging writer does not skew the timestamps).
struct Queued {
    at: SystemTime,
    record: AccessRecord,
}

impl AccessLog {
    /// Starts the writer thread, writing `format` lines to `sink` behind a queue of
    /// `capacity` lines (at least 1). Fails only when the OS refuses a new thread.
    pub fn start(
        format: LogFormat,
        sink: Box<dyn Write + Send>,
        capacity: usize,
    ) -> io::Result<AccessLog> {
        // A zero-capacity std channel is a rendezvous: try_send would fail unless the writer
        // happened to be waiting, so at least one slot.
        let (tx, rx) = mpsc::sync_channel(capacity.max(1));
        let counters = Arc::new(Counters::default());
        let for_writer = counters.clone();
        std::thread::Builder::new()
            .name("access-log".into())
            .spawn(move || {
                let _finished = FinishedOnDrop(&for_writer);
                write_lines(format, rx, sink, &for_writer);
            })?;
        Ok(AccessLog {
            shared: Some(Arc::new(Shared {
                queue: ArcSwapOption::from_pointee(tx),
                counters,
            })),
        })
    }

    /// An access log to stdout in `format`, behind a queue of [`STDOUT_QUEUE_LINES`]; fails
    /// as [`AccessLog::start`] does.
    pub fn stdout(format: LogFormat) -> io::Result<AccessLog> {
        // Stdout (not a lock on it) because the guard is not Send; the BufWriter in front
        // batches lines, so Stdout's own line buffering costs one syscall per batch.
        AccessLog::start(format, Box::new(io::stdout()), STDOUT_QUEUE_LINES)
    }

    /// A log that writes and counts nothing (`runtime.access_log = false`).
    pub fn disabled() -> AccessLog {
        AccessLog { shared: None }
    }

    /// Whether lines are written at all, for callers that want to skip building a record.
    pub fn is_enabled(&self) -> bool {
        self.shared.is_some()
    }

    /// Queues one line; never blocks. Drops and counts it when the queue is full or stopped.
    pub fn record(&self, record: AccessRecord) {
        let Some(shared) = &self.shared else {
            return;
        };
        let queued = Queued {
            at: SystemTime::now(),
            record,
        };
        let sent = match &*shared.queue.load() {
            Some(tx) => match tx.try_send(queued) {
                Ok(()) => true,
                Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => false,
            },
            None => false,
        };
        if !sent {
            shared.counters.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Lines lost because the queue was full, the log stopped, or their write to the sink
    /// failed (`splicer_access_log_dropped_total`).
    pub fn dropped(&self) -> u64 {
        self.shared
            .as_ref()
            .map_or(0, |s| s.counters.dropped.load(Ordering::Relaxed))
    }

    /// Lines written to the sink.
    pub fn written(&self) -> u64 {
        self.shared
            .as_ref()
            .map_or(0, |s| s.counters.written.load(Ordering::Relaxed))
    }

    /// Failed writes to the sink (each loses its batch of lines, counted in
    /// [`AccessLog::dropped`]).
    pub fn write_errors(&self) -> u64 {
        self.shared
            .as_ref()
            .map_or(0, |s| s.counters.write_errors.load(Ordering::Relaxed))
    }

    /// At shutdown: stops taking lines, lets the writer drain the queue and flush, waiting at
    /// most `timeout`. Returns whether everything queued was written out (false when the sink
    /// is stuck; the rest is then lost with the process).
    pub fn flush_and_stop(&self, timeout: Duration) -> bool {
        let Some(shared) = &self.shared else {
            return true;
        };
        // Dropping the only sender disconnects the channel once in-flight record() calls let
        // go of it; the writer then sees Disconnected only after the queue is empty.
        shared.queue.store(None);
        let counters = &shared.counters;
        let finished = counters
            .finished
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let (finished, _) = counters
            .finished_changed
            .wait_timeout_while(finished, timeout, |done| !*done)
            .unwrap_or_else(PoisonError::into_inner);
        *finished
    }
}

impl std::fmt::Debug for AccessLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccessLog")
            .field("enabled", &self.is_enabled())
            .field("written", &self.written())
            .field("dropped", &self.dropped())
            .finish()
    }
}

/// Marks the writer finished when its thread ends, even by a panic in the sink.
struct FinishedOnDrop<'a>(&'a Counters);

impl Drop for FinishedOnDrop<'_> {
    fn drop(&mut self) {
        *self
            .0
            .finished
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = true;
        self.0.finished_changed.notify_all();
    }
}

/// Bytes gathered before they are written to the sink in one call: few syscalls at high rates.
const BATCH_BYTES: usize = 64 * 1024;

/// The writer thread's loop: drain the queue into a batch, write the batch whenever the queue
/// is momentarily empty or the batch is full, end when the channel is disconnected and empty.
/// A batch whose write fails is lost whole, and its lines count as dropped (a closed stdout or
/// a full disk must show in `splicer_access_log_dropped_total`, not vanish); the first failure
/// and the recovery are logged. Never fatal.
fn write_lines(
    format: LogFormat,
    queue: Receiver<Queued>,
    mut sink: Box<dyn Write + Send>,
    counters: &Counters,
) {
    let mut batch = Batch::default();
    let mut line = String::with_capacity(512);
    loop {
        let queued = match queue.try_recv() {
            Ok(q) => q,
            Err(TryRecvError::Empty) => {
                // Nothing waiting: push out what is gathered before sleeping, so lines reach
                // the sink promptly at low rates and in batches at high ones.
                batch.write_to(&mut sink, counters);
                match queue.recv() {
                    Ok(q) => q,
                    Err(_) => break,
                }
            }
            Err(TryRecvError::Disconnected) => break,
        };
        line.clear();
        match format {
            LogFormat::Text => push_text(&mut line, &queued.record, queued.at),
            LogFormat::Json => push_json(&mut line, &queued.record, queued.at),
        }
        line.push('\n');
        batch.bytes.extend_from_slice(line.as_bytes());
        batch.lines += 1;
        if batch.bytes.len() >= BATCH_BYTES {
            batch.write_to(&mut sink, counters);
        }
    }
    batch.write_to(&mut sink, counters);
}

/// Lines gathered for one write, and whether the sink is failing now.
#[derive(Default)]
struct Batch {
    bytes: Vec<u8>,
    lines: u64,
    /// Lines lost since the sink started failing (reported when it recovers).
    lost_since_failing: Option<u64>,
}

impl Batch {
    fn write_to(&mut self, sink: &mut dyn Write, counters: &Counters) {
        if self.lines == 0 {
            return;
        }
        let result = sink.write_all(&self.bytes).and_then(|()| sink.flush());
        match result {
            Ok(()) => {
                counters.written.fetch_add(self.lines, Ordering::Relaxed);
                if let Some(lost) = self.lost_since_failing.take() {
                    tracing::warn!(
                        lost,
                        "access log: stdout is writable again; lines were lost meanwhile"
                    );
                }
            }
            Err(e) => {
                counters.write_errors.fetch_add(1, Ordering::Relaxed);
                counters.dropped.fetch_add(self.lines, Ordering::Relaxed);
                match &mut self.lost_since_failing {
                    Some(lost) => *lost += self.lines,
                    None => {
                        tracing::error!(error = %e, "access log: cannot write to stdout; its lines are dropped and counted in splicer_access_log_dropped_total until it recovers");
                        self.lost_since_failing = Some(self.lines);
                    }
                }
            }
        }
        self.bytes.clear();
        self.lines = 0;
    }
}

/// The text line, without its newline:
/// `2026-11-27T12:00:00.123Z listener=https client=... end=client_closed`.
pub fn format_text(record: &AccessRecord, at: SystemTime) -> String {
    let mut line = String::with_capacity(256);
    push_text(&mut line, record, at);
    line
}

/// The JSON line, without its newline: the text line's fields plus `ts`, `null` for absent
/// `sni`/`backend`.
pub fn format_json(record: &AccessRecord, at: SystemTime) -> String {
    let mut line = String::with_capacity(320);
    push_json(&mut line, record, at);
    line
}

fn push_text(line: &mut String, r: &AccessRecord, at: SystemTime) {
    // Writing to a String cannot fail; the results are ignored for that reason.
    let _ = write!(line, "{} listener=", humantime::format_rfc3339_millis(at));
    push_text_value(line, &r.listener);
    let _ = write!(line, " client={} sni=", r.client);
    match &r.sni {
        Some(sni) => push_text_value(line, sni),
        None => line.push('-'),
    }
    line.push_str(" pool=");
    push_text_value(line, &r.pool);
    line.push_str(" backend=");
    match r.backend {
        Some(b) => {
            let _ = write!(line, "{b}");
        }
        None => line.push('-'),
    }
    let _ = write!(
        line,
        " to_backend={} to_client={} duration_ms={} end=",
        r.to_backend,
        r.to_client,
        duration_ms(r.duration)
    );
    push_text_value(line, r.end.as_str());
}

/// Appends a text value bare when it is plain, else quoted and escaped.
///
/// Bare values are printable ASCII without space, `"`, `=` or `\`, so `key=value` splits
/// unambiguously. Anything else (notably a client's SNI) is quoted with `\\`, `\"`, `\n`,
/// `\r`, `\t` escapes and `\u{..}` for every other character outside printable ASCII, so a
/// record is always exactly one line of printable ASCII and no input can forge a field or a
/// line. `-` and the empty string are quoted too: bare `-` means "absent".
fn push_text_value(line: &mut String, value: &str) {
    let is_plain = !value.is_empty()
        && value != "-"
        && value
            .bytes()
            .all(|b| b.is_ascii_graphic() && !matches!(b, b'"' | b'=' | b'\\'));
    if is_plain {
        line.push_str(value);
        return;
    }
    line.push('"');
    for c in value.chars() {
        match c {
            '"' => line.push_str("\\\""),
            '\\' => line.push_str("\\\\"),
            '\n' => line.push_str("\\n"),
            '\r' => line.push_str("\\r"),
            '\t' => line.push_str("\\t"),
            ' '..='~' => line.push(c),
            _ => line.extend(c.escape_unicode()),
        }
    }
    line.push('"');
}

/// One JSON line; field order follows the text line.
#[derive(Serialize)]
struct JsonLine<'a> {
    ts: String,
    listener: &'a str,
    client: SocketAddr,
    sni: Option<&'a str>,
    pool: &'a str,
    backend: Option<SocketAddr>,
    to_backend: u64,
    to_client: u64,
    duration_ms: u64,
    end: &'a str,
}

fn push_json(line: &mut String, r: &AccessRecord, at: SystemTime) {
    let ts = humantime::format_rfc3339_millis(at).to_string();
    let json = JsonLine {
        ts,
        listener: &r.listener,
        client: r.client,
        sni: r.sni.as_deref(),
        pool: &r.pool,
        backend: r.backend,
        to_backend: r.to_backend,
        to_client: r.to_client,
        duration_ms: duration_ms(r.duration),
        end: r.end.as_str(),
    };
    // serde_json escapes every control character, so the object never spans lines. Strings,
    // integers and addresses cannot fail to serialize; the fallback only keeps a line valid.
    match serde_json::to_string(&json) {
        Ok(s) => line.push_str(&s),
        Err(_) => {
            let _ = write!(
                line,
                "{{\"ts\":\"{}\",\"error\":\"unserializable\"}}",
                json.ts
            );
        }
    }
}

/// Whole milliseconds, saturating (a connection does not live 584 million years).
fn duration_ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests;
