//! The `splicer` binary's command line (docs/architecture.md §2): `--version`, `check` on every example,
//! config errors as `PATH:LINE:COL: message` with exit 2 (for `run` too, before anything
//! binds), the config path rules, exit 1 on an address in use, usage errors, JSON logs, and
//! the shell completions and manual page generated from the same definition (§10).
//!
//! Every child is killed when its handle drops, and every wait is bounded.

mod common;

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::TcpStream;
use tokio::process::Command;

use common::process::{output_within, splicer_cli, Proc, Stdout};

/// Longest any one invocation may take; `check` and failing `run`s take milliseconds.
const LIMIT: Duration = Duration::from_secs(20);

/// The binary with a clean environment: no inherited config path or log filter, and a
/// working directory of the caller's choice (so no stray `./splicer.toml` is picked up).
fn splicer(cwd: &Path) -> Command {
    let mut cmd = splicer_cli(&[]);
    cmd.current_dir(cwd).env("RUST_LOG", "info");
    cmd
}

/// Runs `cmd` to completion within [`LIMIT`].
async fn finish(cmd: Command) -> Output {
    output_within(cmd, LIMIT).await
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn code(o: &Output) -> Option<i32> {
    o.status.code()
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write config");
    path
}

/// A valid config whose listener binds `listen` and whose pool needs no health checks.
fn valid_config(listen: SocketAddr) -> String {
    format!(
        "[[listener]]\nname = \"front\"\nbind = \"{listen}\"\npool = \"p\"\n\n\
         [[pool]]\nname = \"p\"\nbackends = [\"127.0.0.1:9\"]\n\n\
         [pool.health]\ncheck = \"none\"\n"
    )
}

/// Three problems (lines 4, 9 and 10); the listener binds `listen`.
fn invalid_config(listen: SocketAddr) -> String {
    format!(
        "[[listener]]\nname = \"front\"\nbind = \"{listen}\"\npool = \"missing\"\n\
         [[pool]]\nname = \"p\"\nbackends = [\"127.0.0.1:9\"]\n\
         [pool.health]\nrise = 0\nfall = 0\n"
    )
}

/// Splits `PATH:LINE:COL: message` for a known `path`.
fn located<'a>(line: &'a str, path: &Path) -> Option<(usize, usize, &'a str)> {
    let rest = line.strip_prefix(&format!("{}:", path.display()))?;
    let (l, rest) = rest.split_once(':')?;
    let (c, message) = rest.split_once(": ")?;
    Some((l.parse().ok()?, c.parse().ok()?, message))
}

fn loopback_any() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

#[tokio::test]
async fn version_prints_name_and_crate_version() {
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = splicer(dir.path());
    cmd.arg("--version");
    let out = finish(cmd).await;
    assert_eq!(code(&out), Some(0), "{}", stderr(&out));
    assert_eq!(stdout(&out).trim_end(), "splicer 0.1.0");
    assert_eq!(
        stdout(&out).trim_end(),
        format!("splicer {}", env!("CARGO_PKG_VERSION"))
    );
}

#[tokio::test]
async fn check_accepts_every_example_and_prints_a_summary() {
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
    // A copy, with the token file behind-nlb.toml names beside it (no token ships).
    let copy = tempfile::tempdir().expect("tempdir");
    let dir = copy.path().to_path_buf();
    for entry in std::fs::read_dir(&source).expect("config/ exists") {
        let path = entry.expect("entry").path();
        if let Some(name) = path.file_name() {
            std::fs::copy(&path, dir.join(name)).expect("copy example");
        }
    }
    std::fs::write(dir.join("admin.token"), "0123456789abcdef\n").expect("token");
    let mut checked = 0;
    for entry in std::fs::read_dir(&dir).expect("the copy exists") {
        let path = entry.expect("entry").path();
        if path.extension().is_none_or(|e| e != "toml") {
            continue;
        }
        let mut cmd = splicer(&dir);
        cmd.arg("check").arg("-c").arg(&path);
        let out = finish(cmd).await;
        let text = stdout(&out);
        assert_eq!(code(&out), Some(0), "{}: {}", path.display(), stderr(&out));
        assert!(
            text.starts_with(&format!("{}: OK\n", path.display())),
            "{}:\n{text}",
            path.display()
        );
        // The summary names every listener, pool and backend of the file.
        let config = splicer::config::load(&path).expect("example loads");
        for l in &config.listeners {
            assert!(
                text.contains(&format!("{}: bind {}", l.name, l.bind)),
                "{text}"
            );
        }
        for p in &config.pools {
            assert!(text.contains(&format!("  {}: balance ", p.name)), "{text}");
            for b in &p.backends {
                assert!(text.contains(&b.address.to_string()), "{text}");
            }
        }
        checked += 1;
    }
    assert!(checked >= 3, "only {checked} example configs found");
}

#[tokio::test]
async fn check_reports_every_problem_as_path_line_col_and_exits_2() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "bad.toml", &invalid_config(loopback_any()));
    let mut cmd = splicer(dir.path());
    cmd.arg("check").arg("-c").arg(&path);
    let out = finish(cmd).await;
    assert_eq!(code(&out), Some(2), "{}", stderr(&out));
    assert_eq!(stdout(&out), "", "nothing on stdout for an invalid file");
    let err = stderr(&out);
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 3, "one line per problem:\n{err}");
    let places: Vec<(usize, usize)> = lines
        .iter()
        .map(|l| {
            let (line, col, message) =
                located(l, &path).unwrap_or_else(|| panic!("not PATH:LINE:COL: message: {l}"));
            assert!(!message.is_empty(), "{l}");
            (line, col)
        })
        .collect();
    assert_eq!(places, [(4, 8), (9, 8), (10, 8)], "{err}");
    assert!(lines[0].contains("\"missing\""), "{err}");
    assert!(lines[1].contains("rise"), "{err}");
    assert!(lines[2].contains("fall"), "{err}");

    // A structural error does not stop reading: it and the problem before it (no pool "p"),
    // in file order.
    let path = write(
        dir.path(),
        "typo.toml",
        "[[listener]]\nname = \"l\"\nbind = \"127.0.0.1:0\"\npool = \"p\"\nbogus = 1\n",
    );
    let mut cmd = splicer(dir.path());
    cmd.arg("check").arg("-c").arg(&path);
    let out = finish(cmd).await;
    assert_eq!(code(&out), Some(2));
    let err = stderr(&out);
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 2, "{err}");
    let (line, col, message) = located(lines[0], &path).expect("PATH:LINE:COL: message");
    assert_eq!((line, col), (4, 8), "{err}");
    assert!(message.contains("pool \"p\""), "{err}");
    let (line, col, message) = located(lines[1], &path).expect("PATH:LINE:COL: message");
    assert_eq!((line, col), (5, 1), "{err}");
    assert!(message.contains("unknown key \"bogus\""), "{err}");
}

#[tokio::test]
async fn run_with_an_invalid_config_exits_2_before_binding() {
    let dir = tempfile::tempdir().unwrap();
    // Hold the listen address: had `run` tried to bind before validating, it would fail with
    // "address in use" (exit 1) instead of the config problems (exit 2).
    let held = TcpListener::bind(loopback_any()).expect("bind");
    let listen = held.local_addr().unwrap();
    let path = write(dir.path(), "bad.toml", &invalid_config(listen));
    let mut cmd = splicer(dir.path());
    cmd.arg("run").arg("-c").arg(&path);
    let started = Instant::now();
    let out = finish(cmd).await;
    assert_eq!(code(&out), Some(2), "{}", stderr(&out));
    assert!(started.elapsed() < Duration::from_secs(5), "run lingered");
    let err = stderr(&out);
    let places: Vec<(usize, usize)> = err
        .lines()
        .map(|l| {
            let (line, col, _) =
                located(l, &path).unwrap_or_else(|| panic!("not PATH:LINE:COL: message: {l}"));
            (line, col)
        })
        .collect();
    assert_eq!(
        places,
        [(4, 8), (9, 8), (10, 8)],
        "the same lines as check:\n{err}"
    );
    assert!(
        !err.contains("listening") && !err.contains("cannot listen"),
        "{err}"
    );
    drop(held);
}

#[tokio::test]
async fn config_path_comes_from_flag_then_env_then_current_dir() {
    let dir = tempfile::tempdir().unwrap();
    let cwd = dir.path();
    let good = write(cwd, "good.toml", &valid_config(loopback_any()));
    let bad = write(cwd, "bad.toml", &invalid_config(loopback_any()));

    // No flag, no env, no ./splicer.toml: the default name is looked for and reported.
    let mut cmd = splicer(cwd);
    cmd.arg("check");
    let out = finish(cmd).await;
    assert_eq!(code(&out), Some(2));
    assert!(
        stderr(&out).starts_with("splicer.toml: ") && stderr(&out).contains("-c PATH"),
        "{}",
        stderr(&out)
    );

    // ./splicer.toml in the working directory.
    write(cwd, "splicer.toml", &valid_config(loopback_any()));
    let mut cmd = splicer(cwd);
    cmd.arg("check");
    let out = finish(cmd).await;
    assert_eq!(code(&out), Some(0), "{}", stderr(&out));
    assert!(
        stdout(&out).starts_with("splicer.toml: OK\n"),
        "{}",
        stdout(&out)
    );

    // $SPLICER_CONFIG wins over ./splicer.toml.
    let mut cmd = splicer(cwd);
    cmd.arg("check").env("SPLICER_CONFIG", &bad);
    let out = finish(cmd).await;
    assert_eq!(code(&out), Some(2), "{}", stdout(&out));
    assert!(
        stderr(&out).starts_with(&format!("{}:4:8: ", bad.display())),
        "{}",
        stderr(&out)
    );
    let other = tempfile::tempdir().unwrap();
    let mut cmd = splicer(other.path());
    cmd.arg("check").env("SPLICER_CONFIG", &good);
    let out = finish(cmd).await;
    assert_eq!(code(&out), Some(0), "{}", stderr(&out));
    assert!(
        stdout(&out).starts_with(&format!("{}: OK\n", good.display())),
        "{}",
        stdout(&out)
    );

    // -c wins over $SPLICER_CONFIG (and over ./splicer.toml).
    write(cwd, "splicer.toml", &invalid_config(loopback_any()));
    let mut cmd = splicer(cwd);
    cmd.arg("check")
        .arg("-c")
        .arg(&good)
        .env("SPLICER_CONFIG", &bad);
    let out = finish(cmd).await;
    assert_eq!(code(&out), Some(0), "{}", stderr(&out));
    assert!(stdout(&out).starts_with(&format!("{}: OK\n", good.display())));

    // `run` follows the same rules (shown with files it rejects, so nothing starts).
    let mut cmd = splicer(cwd);
    cmd.arg("run");
    let out = finish(cmd).await;
    assert_eq!(code(&out), Some(2));
    assert!(
        stderr(&out).starts_with("splicer.toml:4:8: "),
        "{}",
        stderr(&out)
    );
    let missing = cwd.join("missing.toml");
    let mut cmd = splicer(cwd);
    cmd.arg("run").env("SPLICER_CONFIG", &missing);
    let out = finish(cmd).await;
    assert_eq!(code(&out), Some(2));
    assert!(
        stderr(&out).starts_with(&format!("{}: ", missing.display())),
        "{}",
        stderr(&out)
    );
}

#[tokio::test]
async fn run_on_an_address_in_use_exits_1_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let held = TcpListener::bind(loopback_any()).expect("bind");
    let taken = held.local_addr().unwrap();

    // The listener's address.
    let path = write(dir.path(), "listener.toml", &valid_config(taken));
    // The admin API's address (the listener itself is free).
    let admin = format!(
        "[admin]\nbind = \"{taken}\"\n{}",
        valid_config(loopback_any())
    );
    let admin_path = write(dir.path(), "admin.toml", &admin);

    for path in [path, admin_path] {
        let mut cmd = splicer(dir.path());
        cmd.arg("run").arg("-c").arg(&path);
        let out = finish(cmd).await;
        let err = stderr(&out);
        assert_eq!(code(&out), Some(1), "{}: {err}", path.display());
        let message = err
            .lines()
            .find(|l| l.starts_with("splicer: "))
            .unwrap_or_else(|| panic!("no `splicer: ...` message:\n{err}"));
        assert!(message.contains(&taken.to_string()), "{message}");
        assert!(message.to_ascii_lowercase().contains("in use"), "{message}");
    }
    drop(held);
}

#[tokio::test]
async fn usage_errors_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let cases: &[(&[&str], &str)] = &[
        (&["frobnicate"], "frobnicate"),
        (&["--frobnicate"], "--frobnicate"),
        (&["check", "--frobnicate"], "--frobnicate"),
        (&["run", "-x"], "-x"),
        (&["--log-format", "xml", "check"], "xml"),
        (&[], "Usage"),
    ];
    for (args, mention) in cases {
        let mut cmd = splicer(dir.path());
        cmd.args(*args);
        let out = finish(cmd).await;
        assert_eq!(code(&out), Some(2), "{args:?}: {}", stderr(&out));
        assert!(stderr(&out).contains(mention), "{args:?}: {}", stderr(&out));
    }
}

/// A `run` child, once it logged "listening", with its log lines so far.
struct Serving {
    /// The child; its stdout (the access log) is left piped for [`Serving::access_line`].
    proc: Proc,
    /// Every stderr line up to and including the first "listening" one, in order.
    lines: Vec<String>,
    /// The listener's bound address, from that line.
    listen: SocketAddr,
}

impl Serving {
    /// Starts `run` on `config` with `extra` global flags; returns once it logged "listening".
    async fn start(dir: &Path, config: &str, extra: &[&str]) -> Serving {
        let path = write(dir, "log.toml", config);
        let mut cmd = splicer(dir);
        cmd.args(extra).arg("run").arg("-c").arg(&path);
        let mut proc = Proc::spawn_with(cmd, Stdout::Piped);
        let lines = proc.until_logged("listening").await;
        let last = lines.last().expect("a line");
        // `bind=ADDR` in text, `"bind":"ADDR"` in JSON.
        let listen = last
            .split(|c: char| c.is_whitespace() || c == ',' || c == '{' || c == '}')
            .find_map(|kv| {
                kv.strip_prefix("bind=")
                    .or_else(|| kv.strip_prefix("\"bind\":"))
                    .map(|v| v.trim_matches('"'))
            })
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no bind address in {last}"));
        Serving {
            proc,
            lines,
            listen,
        }
    }

    /// Connects once (the backend refuses, so the connection fails fast) and returns the
    /// access log line it produced on stdout.
    async fn access_line(&mut self) -> String {
        drop(TcpStream::connect(self.listen).await.expect("connect"));
        let stdout = self.proc.child.stdout.take().expect("stdout");
        let line = tokio::time::timeout(LIMIT, BufReader::new(stdout).lines().next_line())
            .await
            .expect("an access log line in time")
            .expect("read stdout")
            .expect("splicer exited early");
        self.proc.child.kill().await.expect("kill");
        line
    }
}

#[tokio::test]
async fn log_format_json_makes_every_log_line_json() {
    let dir = tempfile::tempdir().unwrap();
    let config = valid_config(loopback_any());

    let mut s = Serving::start(dir.path(), &config, &["--log-format", "json"]).await;
    for line in &s.lines {
        let v: serde_json::Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("log line is not JSON ({e}): {line}"));
        assert!(v.is_object(), "{line}");
        assert!(v["level"].is_string(), "{line}");
        assert!(v["timestamp"].is_string(), "{line}");
    }
    let listening: serde_json::Value =
        serde_json::from_str(s.lines.last().expect("a line")).expect("JSON");
    assert_eq!(listening["message"], "listening", "{listening}");
    assert_eq!(listening["level"], "INFO", "{listening}");
    assert_eq!(listening["listener"], "front", "{listening}");
    assert_eq!(listening["bind"], s.listen.to_string(), "{listening}");
    assert_ne!(s.listen.port(), 0, "the bound port is logged");
    // The access log (stdout) follows the flag too.
    let access = s.access_line().await;
    let v: serde_json::Value = serde_json::from_str(&access)
        .unwrap_or_else(|e| panic!("access log line is not JSON ({e}): {access}"));
    assert_eq!(v["listener"], "front", "{access}");
    assert_eq!(v["end"], "connect_failed", "{access}");

    // Without the flag the default is text, without colour codes when not at a terminal...
    let mut s = Serving::start(dir.path(), &config, &[]).await;
    let last = s.lines.last().expect("a line").clone();
    assert!(
        serde_json::from_str::<serde_json::Value>(&last).is_err(),
        "{last}"
    );
    assert!(last.contains("listener=front"), "{last}");
    assert!(!last.contains('\x1b'), "colour codes in {last:?}");
    let access = s.access_line().await;
    assert!(access.contains(" listener=front "), "{access}");
    assert!(access.ends_with(" end=connect_failed"), "{access}");

    // ...and the flag overrides `runtime.log_format` both ways.
    let json_config = format!("[runtime]\nlog_format = \"json\"\n{config}");
    let mut s = Serving::start(dir.path(), &json_config, &[]).await;
    let last = s.lines.last().expect("a line");
    assert!(
        serde_json::from_str::<serde_json::Value>(last).is_ok(),
        "{last}"
    );
    s.proc.child.kill().await.expect("kill");
    let mut s = Serving::start(dir.path(), &json_config, &["--log-format", "text"]).await;
    let last = s.lines.last().expect("a line").clone();
    assert!(
        serde_json::from_str::<serde_json::Value>(&last).is_err(),
        "{last}"
    );
    let access = s.access_line().await;
    assert!(access.ends_with(" end=connect_failed"), "{access}");
}

/// The subcommands `splicer --help` lists: read from the binary, so one added to the clap
/// definition later is checked by the tests below without editing them.
async fn subcommands(dir: &Path) -> Vec<String> {
    let mut cmd = splicer(dir);
    cmd.arg("--help");
    let out = finish(cmd).await;
    assert_eq!(code(&out), Some(0), "{}", stderr(&out));
    let help = stdout(&out);
    let names: Vec<String> = help
        .lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| !l.trim().is_empty())
        .filter_map(|l| l.split_whitespace().next())
        .filter(|name| *name != "help")
        .map(str::to_owned)
        .collect();
    for expected in ["run", "check", "status", "completions", "man"] {
        assert!(names.iter().any(|n| n == expected), "{names:?} in\n{help}");
    }
    names
}

/// The words of a script or page: runs of letters, digits, `-` and `_`.
fn words(text: &str) -> std::collections::HashSet<&str> {
    text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '-' || c == '_'))
        .filter(|w| !w.is_empty())
        .collect()
}

#[tokio::test]
async fn completions_are_valid_and_cover_every_subcommand() {
    let dir = tempfile::tempdir().unwrap();
    let names = subcommands(dir.path()).await;
    for shell in ["bash", "zsh", "fish"] {
        let mut cmd = splicer(dir.path());
        cmd.args(["completions", shell]);
        let out = finish(cmd).await;
        assert_eq!(code(&out), Some(0), "{shell}: {}", stderr(&out));
        let script = stdout(&out);
        assert!(!script.trim().is_empty(), "{shell}: empty script");
        let found = words(&script);
        for name in &names {
            assert!(found.contains(name.as_str()), "{shell} script lacks {name}");
        }
        // Flags of a subcommand, not only the names.
        assert!(
            found.contains("--watch") || found.contains("watch"),
            "{shell} script lacks status --watch"
        );
        let path = dir.path().join(format!("splicer.{shell}"));
        std::fs::write(&path, &script).expect("write the script");
        if shell == "bash" {
            let checked = std::process::Command::new("bash")
                .arg("-n")
                .arg(&path)
                .output()
                .expect("bash runs");
            assert!(
                checked.status.success(),
                "bash -n rejects the script: {}",
                String::from_utf8_lossy(&checked.stderr)
            );
        }
    }

    for args in [&["completions", "tcsh"][..], &["completions"][..]] {
        let mut cmd = splicer(dir.path());
        cmd.args(args);
        let out = finish(cmd).await;
        assert_eq!(code(&out), Some(2), "{args:?}: {}", stderr(&out));
        assert_eq!(stdout(&out), "", "{args:?}");
    }
}

/// Formats a roff page with `man -l -`, as a reader would see it (no pager, no overstrike).
fn formatted(page: &str) -> Option<String> {
    use std::io::Write;
    let mut child = std::process::Command::new("man")
        .args(["-l", "-"])
        .env("MANPAGER", "cat")
        .env("PAGER", "cat")
        .env("MANWIDTH", "100")
        .env("LC_ALL", "C")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .ok()?;
    let mut stdin = child.stdin.take()?;
    stdin.write_all(page.as_bytes()).expect("feed man");
    drop(stdin);
    let out = child.wait_with_output().expect("man finishes");
    assert!(
        out.status.success(),
        "man -l - rejects the page: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Some(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[tokio::test]
async fn man_page_is_roff_and_names_every_subcommand() {
    let dir = tempfile::tempdir().unwrap();
    let names = subcommands(dir.path()).await;
    let mut cmd = splicer(dir.path());
    cmd.arg("man");
    let out = finish(cmd).await;
    assert_eq!(code(&out), Some(0), "{}", stderr(&out));
    let page = stdout(&out);
    let first = page.lines().next().unwrap_or_default();
    assert!(first.starts_with(".TH splicer 1"), "{first}");
    for section in [".SH NAME", ".SH SYNOPSIS", ".SH OPTIONS", ".SH SUBCOMMANDS"] {
        assert!(page.lines().any(|l| l == section), "no {section}:\n{page}");
    }
    assert!(page.contains(".SH \"EXIT STATUS\""), "{page}");
    for name in &names {
        // roff spells a hyphen `\-`.
        assert!(
            page.contains(&format!("splicer\\-{name}(1)")),
            "the page lacks {name}"
        );
    }
    match formatted(&page) {
        Some(text) => {
            assert!(text.contains("SYNOPSIS"), "{text}");
            assert!(text.contains("EXIT STATUS"), "{text}");
            assert!(text.contains("splicer-status(1)"), "{text}");
            assert!(!text.contains('\u{8}'), "overstrike in {text:?}");
        }
        // No man on this machine: the roff structure above is what can be checked.
        None => eprintln!("man is not installed; the page was not formatted"),
    }

    // A subcommand's own page, and an unknown one.
    let mut cmd = splicer(dir.path());
    cmd.args(["man", "status"]);
    let out = finish(cmd).await;
    assert_eq!(code(&out), Some(0), "{}", stderr(&out));
    let page = stdout(&out);
    assert!(page.starts_with(".TH splicer-status 1"), "{page}");
    assert!(page.contains("watch"), "{page}");
    if let Some(text) = formatted(&page) {
        assert!(text.contains("--json"), "{text}");
    }
    let mut cmd = splicer(dir.path());
    cmd.args(["man", "frobnicate"]);
    let out = finish(cmd).await;
    assert_eq!(code(&out), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("frobnicate"), "{}", stderr(&out));
}
