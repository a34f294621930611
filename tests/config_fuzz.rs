//! Random mutations of every example config in config/ through `splicer check`: whatever the
//! bytes, `check` answers 0 (valid) or 2 (each problem named), never a panic, a hang or another
//! exit code. Seeded: a failure prints the seed and the mutated file, and
//! `SPLICER_CONFIG_FUZZ_SEED=<seed>` replays it. CI runs `SPLICER_CONFIG_FUZZ` mutations
//! (default 300); scripts/soak runs more.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Fragments a person (or an attacker) might type into a TOML file.
const TOKENS: &[&str] = &[
    "=",
    "[",
    "]",
    "[[",
    "]]",
    "\"",
    "'",
    "{",
    "}",
    ",",
    "#",
    "\n",
    "0",
    "-1",
    "1e99",
    "99999999999999999999",
    "\"0s\"",
    "\"1.5ms\"",
    "\"0.0000001ms\"",
    "\"10\"",
    "10",
    "true",
    "\"\"",
    "[[pool]]",
    "[[listener]]",
    "[admin]",
    "[runtime]",
    "[pool.health]",
    "name = \"x\"",
    "bind = \"127.0.0.1:0\"",
    "\"[::1]:443\"",
    "\"10.0.0.1:0443\"",
    "\"a\u{0}b\"",
    "\u{feff}",
    "\u{7f}",
    "\\u0000",
    "\"\\uD800\"",
    "inf",
    "nan",
    "1979-05-27T07:32:00Z",
    "\"/dev/zero\"",
    "ca_file = \"/dev/zero\"",
    "token_file = \"/\"",
    "state_file = \"/proc/self/mem\"",
];

fn mutate(text: &str, rng: &mut StdRng) -> Vec<u8> {
    let mut bytes = text.as_bytes().to_vec();
    for _ in 0..rng.gen_range(1..=4) {
        if bytes.is_empty() {
            bytes.extend_from_slice(b"[[");
        }
        let at = rng.gen_range(0..bytes.len());
        match rng.gen_range(0..7) {
            0 => bytes[at] = rng.gen(),
            1 => {
                let token = TOKENS[rng.gen_range(0..TOKENS.len())];
                bytes.splice(at..at, token.bytes());
            }
            2 => bytes.truncate(at),
            3 => {
                // Duplicate a line (a duplicate key or table).
                let (start, end) = line_around(&bytes, at);
                let line = bytes[start..end].to_vec();
                bytes.splice(end..end, line);
            }
            4 => {
                let (start, end) = line_around(&bytes, at);
                bytes.drain(start..end);
            }
            5 => {
                // Replace a run of digits with another number.
                let n: i64 = rng.gen_range(-5..100_000_000);
                let end = bytes[at..]
                    .iter()
                    .position(|b| !b.is_ascii_digit())
                    .map_or(bytes.len(), |p| at + p);
                bytes.splice(at..end, n.to_string().bytes());
            }
            _ => {
                let end = (at + rng.gen_range(1..16)).min(bytes.len());
                bytes.drain(at..end);
            }
        }
    }
    bytes
}

/// The line (with its newline) holding byte `at`.
fn line_around(bytes: &[u8], at: usize) -> (usize, usize) {
    let start = bytes[..at]
        .iter()
        .rposition(|&b| b == b'\n')
        .map_or(0, |p| p + 1);
    let end = bytes[at..]
        .iter()
        .position(|&b| b == b'\n')
        .map_or(bytes.len(), |p| at + p + 1);
    (start, end)
}

fn examples() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("config/")
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    files.sort();
    assert!(files.len() >= 5, "the example configs: {files:?}");
    files
}

/// Runs `splicer check -c path` with a time bound: (exit code, stderr).
fn check(path: &Path) -> (Option<i32>, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_splicer"))
        .arg("check")
        .arg("-c")
        .arg(path)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("splicer check starts");
    let started = Instant::now();
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            let mut err = String::new();
            if let Some(mut e) = child.stderr.take() {
                let _ = std::io::Read::read_to_string(&mut e, &mut err);
            }
            return (status.code(), err);
        }
        if started.elapsed() > Duration::from_secs(10) {
            let _ = child.kill();
            let _ = child.wait();
            return (None, "hung for 10 s".to_string());
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

#[test]
fn mutated_configs_get_exit_0_or_2_and_never_a_panic() {
    let count: usize = std::env::var("SPLICER_CONFIG_FUZZ")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(300);
    let seed: u64 = std::env::var("SPLICER_CONFIG_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    eprintln!(
        "config fuzz: {count} mutations, seed {seed} (SPLICER_CONFIG_FUZZ_SEED={seed} replays)"
    );
    let mut rng = StdRng::seed_from_u64(seed);
    let files = examples();
    let dir = tempfile::tempdir().expect("tempdir");
    // behind-nlb.toml names a token file beside it; give it one so mutations reach further.
    std::fs::write(dir.path().join("admin.token"), "0123456789abcdef\n").expect("token");
    let path = dir.path().join("fuzzed.toml");
    let (mut valid, mut invalid) = (0, 0);
    for i in 0..count {
        let original = &files[i % files.len()];
        let text = std::fs::read_to_string(original).expect("read example");
        let mutated = mutate(&text, &mut rng);
        std::fs::write(&path, &mutated).expect("write");
        let (code, stderr) = check(&path);
        match code {
            Some(0) => valid += 1,
            Some(2) if !stderr.trim().is_empty() => invalid += 1,
            _ => panic!(
                "seed {seed}, mutation {i} of {}: exit {code:?}\nstderr:\n{stderr}\nfile:\n{}",
                original.display(),
                String::from_utf8_lossy(&mutated)
            ),
        }
        assert!(
            !stderr.contains("panicked"),
            "seed {seed}, mutation {i}: a panic:\n{stderr}"
        );
    }
    eprintln!("config fuzz: {valid} still valid, {invalid} refused with a message");
    assert!(
        invalid > 0,
        "no mutation was refused: the mutator does nothing"
    );
}
