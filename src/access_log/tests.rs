//! Tests of the access log: line formats, the queue and its writer thread, drops under
//! pressure.

use super::*;
use std::sync::atomic::AtomicBool;
use std::sync::mpsc::Sender;
use std::time::{Instant, UNIX_EPOCH};

/// 2026-11-27T12:00:00.123Z
fn at() -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(1_795_780_800_123)
}

fn record() -> AccessRecord {
    AccessRecord {
        listener: "https".into(),
        client: "198.51.100.7:51234".parse().unwrap(),
        sni: Some("quay.example.com".into()),
        pool: "quay".into(),
        backend: Some("10.0.0.11:443".parse().unwrap()),
        to_backend: 1832,
        to_client: 904_211,
        duration: Duration::from_micros(412_999),
        end: End::ClientClosed,
    }
}

fn with_sni(sni: &str) -> AccessRecord {
    AccessRecord {
        sni: Some(sni.into()),
        ..record()
    }
}

#[test]
fn text_line_matches_the_design() {
    assert_eq!(
        format_text(&record(), at()),
        "2026-11-27T12:00:00.123Z listener=https client=198.51.100.7:51234 \
         sni=quay.example.com pool=quay backend=10.0.0.11:443 to_backend=1832 \
         to_client=904211 duration_ms=412 end=client_closed"
    );
}

#[test]
fn text_absent_fields_and_ipv6() {
    let r = AccessRecord {
        client: "[2001:db8::7]:51234".parse().unwrap(),
        sni: None,
        backend: None,
        to_backend: 0,
        to_client: 0,
        duration: Duration::ZERO,
        end: End::NoBackend,
        ..record()
    };
    assert_eq!(
        format_text(&r, at()),
        "2026-11-27T12:00:00.123Z listener=https client=[2001:db8::7]:51234 sni=- \
         pool=quay backend=- to_backend=0 to_client=0 duration_ms=0 end=no_backend"
    );
}

#[test]
fn text_escapes_hostile_values() {
    let cases: &[(&str, &str)] = &[
        ("plain.example.com", "sni=plain.example.com "),
        ("", r#"sni="" "#),
        ("-", r#"sni="-" "#),
        ("a b", r#"sni="a b" "#),
        ("a=b", r#"sni="a=b" "#),
        (r#"x" pool=evil"#, r#"sni="x\" pool=evil" "#),
        ("back\\slash", r#"sni="back\\slash" "#),
        ("x\nlistener=forged", r#"sni="x\nlistener=forged" "#),
        ("cr\rtab\t", r#"sni="cr\rtab\t" "#),
        ("esc\u{1b}[31m", r#"sni="esc\u{1b}[31m" "#),
        ("nul\0del\u{7f}", r#"sni="nul\u{0}del\u{7f}" "#),
        ("nel\u{85}ls\u{2028}", r#"sni="nel\u{85}ls\u{2028}" "#),
        ("bidi\u{202e}moc.", r#"sni="bidi\u{202e}moc." "#),
        ("münchen.de", r#"sni="m\u{fc}nchen.de" "#),
    ];
    for (sni, want) in cases {
        let line = format_text(&with_sni(sni), at());
        assert!(line.contains(want), "sni {sni:?}: {line}");
        assert!(
            line.bytes().all(|b| (b' '..=b'~').contains(&b)),
            "sni {sni:?}: not one printable line: {line:?}"
        );
        // Apart from the SNI value, the line is untouched: nothing was forged or cut.
        let baseline = format_text(&record(), at());
        assert_eq!(
            line.replacen(want, "", 1),
            baseline.replacen("sni=quay.example.com ", "", 1),
            "sni {sni:?}"
        );
    }
}

#[test]
fn text_escapes_config_names_too() {
    let r = AccessRecord {
        listener: "my listener".into(),
        pool: "p=q".into(),
        ..record()
    };
    let line = format_text(&r, at());
    assert!(line.contains(r#" listener="my listener" "#), "{line}");
    assert!(line.contains(r#" pool="p=q" "#), "{line}");
}

#[test]
fn json_line_matches_the_design() {
    assert_eq!(
        format_json(&record(), at()),
        r#"{"ts":"2026-11-27T12:00:00.123Z","listener":"https","client":"198.51.100.7:51234","sni":"quay.example.com","pool":"quay","backend":"10.0.0.11:443","to_backend":1832,"to_client":904211,"duration_ms":412,"end":"client_closed"}"#
    );
}

#[test]
fn json_absent_fields_are_null() {
    let r = AccessRecord {
        sni: None,
        backend: None,
        end: End::ConnectFailed,
        ..record()
    };
    let v: serde_json::Value = serde_json::from_str(&format_json(&r, at())).unwrap();
    assert!(v["sni"].is_null());
    assert!(v["backend"].is_null());
    assert_eq!(v["duration_ms"], 412);
    assert_eq!(v["end"], "connect_failed");
}

#[test]
fn json_hostile_sni_round_trips_on_one_line() {
    for sni in [
        "x\nlistener=forged",
        r#"q"uo"te"#,
        "back\\slash",
        "esc\u{1b}\0\r\t",
        "a=b c",
        "ls\u{2028}nel\u{85}",
    ] {
        let line = format_json(&with_sni(sni), at());
        assert!(!line.contains('\n') && !line.contains('\r'), "{line:?}");
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["sni"], sni);
        assert_eq!(v["pool"], "quay");
    }
}

/// A sink whose writes wait until the test opens the gate (or drops the sender).
struct GatedSink {
    gate: Receiver<()>,
    open: bool,
    parked: Arc<AtomicBool>,
    out: Arc<Mutex<Vec<u8>>>,
}

impl Write for GatedSink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if !self.open {
            self.parked.store(true, Ordering::SeqCst);
            // Any message or a dropped sender opens the gate for good.
            let _ = self.gate.recv();
            self.open = true;
        }
        self.out.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

struct Gated {
    open: Sender<()>,
    sink: Box<dyn Write + Send>,
    parked: Arc<AtomicBool>,
    out: Arc<Mutex<Vec<u8>>>,
}

fn gated() -> Gated {
    let (open, gate) = mpsc::channel();
    let out = Arc::new(Mutex::new(Vec::new()));
    let parked = Arc::new(AtomicBool::new(false));
    let sink = GatedSink {
        gate,
        open: false,
        parked: parked.clone(),
        out: out.clone(),
    };
    Gated {
        open,
        sink: Box::new(sink),
        parked,
        out,
    }
}

/// A sink appending to a shared Vec.
struct VecSink(Arc<Mutex<Vec<u8>>>);

impl Write for VecSink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A sink whose every write fails.
struct BrokenSink;

impl Write for BrokenSink {
    fn write(&mut self, _: &[u8]) -> io::Result<usize> {
        Err(io::Error::from(io::ErrorKind::BrokenPipe))
    }

    fn flush(&mut self) -> io::Result<()> {
        Err(io::Error::from(io::ErrorKind::BrokenPipe))
    }
}

fn wait_until(deadline: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + deadline;
    while Instant::now() < end {
        if condition() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    condition()
}

fn lines(out: &Mutex<Vec<u8>>) -> Vec<String> {
    let bytes = out.lock().unwrap().clone();
    let text = String::from_utf8(bytes).unwrap();
    assert!(text.is_empty() || text.ends_with('\n'), "partial line");
    text.lines().map(str::to_owned).collect()
}

#[test]
fn a_stuck_sink_never_blocks_record() {
    let Gated {
        open,
        sink,
        parked,
        out,
    } = gated();
    let log = AccessLog::start(LogFormat::Text, sink, 16).unwrap();
    // The first line reaches the sink and parks the writer inside write() with the queue
    // empty.
    log.record(record());
    assert!(wait_until(Duration::from_secs(5), || parked.load(Ordering::SeqCst)));

    let started = Instant::now();
    for _ in 0..10_000 {
        log.record(record());
    }
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(2),
        "10,000 record() took {took:?}"
    );
    // The queue holds 16 and the writer is parked, so everything else is dropped.
    assert!(
        log.dropped() >= 10_000 - 16 - 1,
        "dropped {}",
        log.dropped()
    );
    assert_eq!(log.dropped(), 10_000 - 16);

    open.send(()).unwrap();
    let expected = 10_001 - log.dropped();
    assert!(wait_until(Duration::from_secs(5), || {
        log.written() == expected && lines(&out).len() as u64 == expected
    }));
    for line in lines(&out) {
        assert!(line.ends_with(" end=client_closed"), "{line}");
    }
    assert!(log.flush_and_stop(Duration::from_secs(5)));
}

#[test]
fn disabled_writes_and_counts_nothing() {
    let log = AccessLog::disabled();
    assert!(!log.is_enabled());
    for _ in 0..100 {
        log.record(record());
    }
    assert_eq!(
        (log.written(), log.dropped(), log.write_errors()),
        (0, 0, 0)
    );
    assert!(log.flush_and_stop(Duration::ZERO));
}

#[test]
fn flush_and_stop_drains_the_queue() {
    let out = Arc::new(Mutex::new(Vec::new()));
    let log = AccessLog::start(LogFormat::Json, Box::new(VecSink(out.clone())), 1024).unwrap();
    let clone = log.clone();
    for i in 0..1000 {
        clone.record(AccessRecord {
            to_backend: i,
            ..record()
        });
    }
    assert!(log.flush_and_stop(Duration::from_secs(5)));
    let lines = lines(&out);
    assert_eq!(lines.len(), 1000);
    assert_eq!(log.written(), 1000);
    for (i, line) in lines.iter().enumerate() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        assert_eq!(v["to_backend"], i as u64);
    }
    // Stopped: further lines are refused, counted, and never block.
    clone.record(record());
    assert_eq!(log.dropped(), 1);
}

#[test]
fn flush_and_stop_gives_up_on_a_stuck_sink() {
    let Gated { open, sink, .. } = gated();
    let log = AccessLog::start(LogFormat::Text, sink, 16).unwrap();
    for _ in 0..10 {
        log.record(record());
    }
    let started = Instant::now();
    assert!(!log.flush_and_stop(Duration::from_millis(200)));
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(200), "{took:?}");
    assert!(took < Duration::from_secs(2), "{took:?}");
    // Released, the writer finishes what was queued and exits.
    drop(open);
    assert!(log.flush_and_stop(Duration::from_secs(5)));
    assert_eq!(log.written(), 10);
}

#[test]
fn write_errors_are_counted_and_the_writer_keeps_going() {
    let log = AccessLog::start(LogFormat::Text, Box::new(BrokenSink), 64).unwrap();
    for _ in 0..3 {
        log.record(record());
    }
    assert!(log.flush_and_stop(Duration::from_secs(5)));
    assert!(log.write_errors() >= 1);
    // Every line whose write failed is lost, and counted as such: none vanishes silently.
    assert_eq!(log.dropped(), 3);
    assert_eq!(log.written(), 0);
}

#[test]
fn dropping_every_handle_ends_the_writer() {
    let out = Arc::new(Mutex::new(Vec::new()));
    let log = AccessLog::start(LogFormat::Text, Box::new(VecSink(out.clone())), 8).unwrap();
    log.record(record());
    drop(log);
    assert!(wait_until(Duration::from_secs(5), || lines(&out).len() == 1));
}
