//! docs/architecture.md §8 against the real thing: `splicer run` as a process on loopback talking to a
//! notification socket the test binds (sd_notify, with the sender's pid from SCM_CREDENTIALS),
//! started by `systemd-socket-activate`, restarted ten times on sockets the test holds (the
//! manager's part), and refusing to start next to a running copy.

mod common;

use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::load::{Load, Target};
use common::{
    backends_toml, control, free_addr, status, try_http, wait_until, which_node, ConfigFile, WAIT,
};
use tokio::process::Command;

use common::process::{is_alive, signal, KillOnDrop, Proc};

fn config(listen: SocketAddr, admin: SocketAddr, backends: &[SocketAddr]) -> String {
    format!(
        r#"[admin]
bind = "{admin}"
[runtime]
drain_timeout = "5s"
[[listener]]
name = "https"
bind = "{listen}"
pool = "quay"
[[pool]]
name = "quay"
backends = {}
[pool.health]
check = "https"
interval = "1s"
timeout = "800ms"
"#,
        backends_toml(backends)
    )
}

/// One datagram received on the notification socket, with its sender's pid.
#[derive(Debug, Clone)]
struct Datagram {
    pid: Option<i32>,
    text: String,
    at: Instant,
}

/// A bound `NOTIFY_SOCKET` (SO_PASSCRED on) and a thread recording what arrives; the thread
/// ends within 50 ms of this being dropped (it holds the only other reference to `got`).
struct NotifySocket {
    path: PathBuf,
    got: Arc<Mutex<Vec<Datagram>>>,
    _dir: tempfile::TempDir,
}

impl NotifySocket {
    fn bind() -> NotifySocket {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("notify");
        let socket = UnixDatagram::bind(&path).expect("bind notify socket");
        let on: libc::c_int = 1;
        let size = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        let fd = socket.as_raw_fd();
        // SAFETY: a valid socket and a c_int option value of the size passed.
        let rc = unsafe {
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_PASSCRED,
                (&on as *const i32).cast(),
                size,
            )
        };
        assert_eq!(rc, 0, "SO_PASSCRED: {}", std::io::Error::last_os_error());
        let timeout = Some(Duration::from_millis(50));
        socket.set_read_timeout(timeout).expect("timeout");
        let got = Arc::new(Mutex::new(Vec::new()));
        let sink = got.clone();
        std::thread::spawn(move || {
            let (started, mut buf) = (Instant::now(), [0u8; 4096]);
            while Arc::strong_count(&sink) > 1 && started.elapsed() < Duration::from_secs(300) {
                if let Ok((len, pid)) = recv_with_pid(socket.as_raw_fd(), &mut buf) {
                    let text = String::from_utf8_lossy(&buf[..len]).into_owned();
                    let at = Instant::now();
                    sink.lock()
                        .expect("datagrams")
                        .push(Datagram { pid, text, at });
                }
            }
        });
        NotifySocket {
            path,
            got,
            _dir: dir,
        }
    }

    fn all(&self) -> Vec<Datagram> {
        self.got.lock().expect("datagrams").clone()
    }

    /// Waits (up to `limit`) for the first datagram after index `from` that `pred` accepts.
    async fn wait_for(
        &self,
        from: usize,
        limit: Duration,
        pred: impl Fn(&Datagram) -> bool,
    ) -> (usize, Datagram) {
        let started = Instant::now();
        loop {
            let all = self.all();
            if let Some((i, d)) = all.iter().enumerate().skip(from).find(|(_, d)| pred(d)) {
                return (i, d.clone());
            }
            assert!(started.elapsed() < limit, "not within {limit:?}: {all:#?}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// The first datagram after `from` that contains `text`.
    async fn wait_text(&self, from: usize, text: &str) -> (usize, Datagram) {
        self.wait_for(from, WAIT, |d| d.text.contains(text)).await
    }

    /// Waits for 3 `WATCHDOG=1` from `pid` after index `from`; returns when the third arrived.
    async fn third_watchdog(&self, from: usize, pid: i32) -> Instant {
        let ping = |d: &Datagram| d.text == "WATCHDOG=1" && d.pid == Some(pid);
        let (mut at, mut when) = (from, Instant::now());
        for _ in 0..3 {
            let (i, d) = self.wait_for(at, Duration::from_secs(5), ping).await;
            (at, when) = (i + 1, d.at);
        }
        when
    }
}

/// recvmsg(2) with the sender's credentials (SO_PASSCRED makes the kernel attach them).
fn recv_with_pid(fd: RawFd, buf: &mut [u8]) -> std::io::Result<(usize, Option<i32>)> {
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // 128 bytes, aligned for cmsghdr: room for one SCM_CREDENTIALS.
    let mut control = [0u64; 16];
    // SAFETY: msghdr is plain data; all-zero is a valid empty header.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = std::mem::size_of_val(&control) as _;
    // SAFETY: msg points at live buffers of the sizes it states.
    let n = unsafe { libc::recvmsg(fd, &mut msg, 0) };
    if n < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let mut pid = None;
    // SAFETY: the CMSG macros walk the control buffer the kernel filled, within its length.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(&msg);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_CREDENTIALS {
                let cred: libc::ucred = std::ptr::read_unaligned(libc::CMSG_DATA(c).cast());
                pid = Some(cred.pid);
            }
            c = libc::CMSG_NXTHDR(&msg, c);
        }
    }
    Ok((n as usize, pid))
}

fn monotonic_usec() -> u64 {
    let ts = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    ts.tv_sec as u64 * 1_000_000 + ts.tv_nsec as u64 / 1000
}

fn status_pid(s: &serde_json::Value) -> i64 {
    s["pid"].as_i64().expect("/status has a pid")
}

fn backend_states(s: &serde_json::Value) -> Vec<String> {
    s["pools"][0]["backends"]
        .as_array()
        .expect("backends")
        .iter()
        .map(|b| b["state"].as_str().unwrap_or("").to_string())
        .collect()
}

/// READY after the start-up round, the watchdog, RELOADING around SIGHUP, MAINPID from the
/// successor of a binary upgrade (which feeds the watchdog from then on), STOPPING at the end —
/// each datagram checked against the pid that sent it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sd_notify_ready_watchdog_reload_upgrade_stop() {
    let rig = common::rig(2).await;
    // Every answer (health checks too) takes 300 ms: a READY sent before the start-up round
    // would find both backends still down on /status.
    for i in 1..=2 {
        let (code, body) = control(&rig, &format!("/nodes/{i}/delay"), "300ms").await;
        assert_eq!(code, 200, "{body}");
    }
    let notify = NotifySocket::bind();
    let (listen, admin) = (free_addr(), free_addr());
    let file = ConfigFile::new(&config(listen, admin, &rig.node_addrs()));
    let mut cmd = Proc::command(&file.path);
    cmd.env("NOTIFY_SOCKET", &notify.path)
        .env("WATCHDOG_USEC", "400000");
    let mut first = Proc::spawn(cmd);

    let (ready_i, ready) = notify.wait_text(0, "READY=1").await;
    let s = status(admin).await;
    assert_eq!(
        backend_states(&s),
        ["up", "up"],
        "READY before the start-up round: {s}"
    );
    assert_eq!(ready_i, 0, "datagrams before READY: {:#?}", notify.all());
    assert_eq!(ready.text, "READY=1\nSTATUS=2/2 backends up");
    assert_eq!(ready.pid, Some(first.pid), "READY from another process");
    let node = which_node(listen).await;
    assert!(node.is_ok(), "right after READY: {node:?}\n{}", first.log());
    // WATCHDOG_USEC=400ms: a ping every 200 ms, so at least 3 within 2 s of READY.
    let third = notify.third_watchdog(ready_i, first.pid).await;
    assert!(
        third - ready.at <= Duration::from_secs(2),
        "{:?}",
        third - ready.at
    );

    // SIGHUP: RELOADING=1 with a CLOCK_MONOTONIC time taken during the reload, then READY=1.
    let (before, from) = (monotonic_usec(), notify.all().len());
    first.signal(libc::SIGHUP);
    let (rel_i, reloading) = notify.wait_text(from, "RELOADING=1").await;
    let text = &reloading.text;
    assert!(text.starts_with("RELOADING=1\nMONOTONIC_USEC="), "{text:?}");
    let usec = text.lines().find_map(|l| l.strip_prefix("MONOTONIC_USEC="));
    let usec: u64 = usec
        .and_then(|v| v.parse().ok())
        .expect("MONOTONIC_USEC is a number");
    assert!(
        (before..=monotonic_usec()).contains(&usec),
        "MONOTONIC_USEC={usec}"
    );
    let (_, reloaded) = notify.wait_text(rel_i + 1, "READY=1").await;
    assert_eq!(reloaded.pid, Some(first.pid));

    // SIGUSR2: the successor says MAINPID=<its pid> and READY=1 in one datagram.
    let from = notify.all().len();
    first.signal(libc::SIGUSR2);
    let (main_i, main) = notify.wait_text(from, "MAINPID=").await;
    let new_pid = main
        .text
        .strip_prefix("MAINPID=")
        .and_then(|r| r.split_once('\n'));
    let new_pid: i32 = new_pid
        .and_then(|(p, _)| p.parse().ok())
        .expect("MAINPID=<pid>");
    let _successor = KillOnDrop(new_pid);
    assert_ne!(new_pid, first.pid, "the upgrade kept the pid");
    let head = format!("MAINPID={new_pid}\nREADY=1\nSTATUS=");
    assert!(main.text.starts_with(&head), "{:?}", main.text);
    assert_eq!(
        main.pid,
        Some(new_pid),
        "MAINPID sent by another process than it names"
    );
    wait_until(WAIT, "/status answered by the successor", || async {
        let s = try_http(admin, "GET", "/status").await;
        let s = s.and_then(|(_, b)| serde_json::from_str::<serde_json::Value>(&b).ok());
        s.is_some_and(|s| status_pid(&s) == i64::from(new_pid))
    })
    .await;
    let old_exit = first.exit_handing_over().await.code();
    assert_eq!(old_exit, Some(0), "old process\n{}", first.log());
    let node = which_node(listen).await;
    assert!(
        node.is_ok(),
        "through the successor: {node:?}\n{}",
        first.log()
    );
    // The successor feeds the watchdog (it inherited WATCHDOG_USEC; WATCHDOG_PID was not set).
    let third = notify.third_watchdog(main_i, new_pid).await;
    assert!(
        third - main.at <= Duration::from_secs(2),
        "{:?}",
        third - main.at
    );

    // SIGTERM to the successor: STOPPING=1 from it, and never one from the old process.
    let from = notify.all().len();
    signal(new_pid, libc::SIGTERM);
    let (_, stopping) = notify.wait_text(from, "STOPPING=1").await;
    assert_eq!(stopping.pid, Some(new_pid));
    wait_until(WAIT, "the successor exits", || async { !is_alive(new_pid) }).await;
    let all = notify.all();
    let stops = all.iter().filter(|d| d.text.contains("STOPPING=1")).count();
    assert_eq!(stops, 1, "STOPPING=1 datagrams: {all:#?}");
    // A ping already under way at the hand-over may land after MAINPID; nothing later.
    let late =
        |d: &&Datagram| d.pid == Some(first.pid) && d.at > main.at + Duration::from_millis(500);
    assert_eq!(
        all.iter().filter(late).count(),
        0,
        "old process after the hand-over: {all:#?}"
    );
    assert!(
        all.iter().all(|d| d.pid.is_some()),
        "no credentials: {all:#?}"
    );
}

/// `systemd-socket-activate` binds the port, starts splicer at the first connection (it waits
/// for one before exec) and passes the socket as fd 3 named `https`; the config's own bind is
/// elsewhere, so only the passed socket can answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn systemd_socket_activate_passes_the_listener() {
    let tool = Path::new("/usr/bin/systemd-socket-activate");
    assert!(
        tool.exists(),
        "needs systemd-socket-activate (Debian package systemd)"
    );
    let rig = common::rig(2).await;
    let (passed, own, admin) = (free_addr(), free_addr(), free_addr());
    let file = ConfigFile::new(&config(own, admin, &rig.node_addrs()));
    let mut cmd = Command::new(tool);
    // The tool passes only PATH and TERM to the program, and what -E names.
    cmd.args([
        "-l",
        &passed.to_string(),
        "--fdname=https",
        "-E",
        "RUST_LOG=info",
    ])
    .arg(env!("CARGO_BIN_EXE_splicer"))
    .args(["run", "-c"])
    .arg(&file.path)
    .env_remove("LISTEN_FDS");
    let mut p = Proc::spawn(cmd);
    // It logs "Listening on ADDR as 3." once bound, and execs splicer at the first connection.
    p.until_logged("Listening on").await;
    assert!(!p.log().contains("using a passed socket"), "{}", p.log());
    // This first request is what starts splicer; it waits in the backlog meanwhile.
    let node = which_node(passed).await;
    assert!(node.is_ok(), "{node:?}\n{}", p.log());
    let passed_line = |l: &str| {
        l.contains("using a passed socket")
            && l.contains(&passed.to_string())
            && l.contains("systemd")
    };
    assert!(p.log().lines().any(passed_line), "{}", p.log());
    let s = status(admin).await;
    // The tool execs splicer in its own process: LISTEN_PID matched that pid.
    assert_eq!(status_pid(&s), i64::from(p.pid), "{s}");
    assert_eq!(s["listeners"][0]["bind"], passed.to_string(), "{s}");
    // Read from /proc, not by connecting: `own` is a freed port anybody may take meanwhile.
    let listening = common::sockets::listening(p.pid);
    assert!(listening.contains(&passed), "{listening:?}");
    assert!(
        !listening.contains(&own),
        "splicer bound its config's address too: {listening:?}"
    );
    p.stop_cleanly().await;
}

/// `dup` to an fd ≥ 100 (close-on-exec), so the dup2 onto 3, 4, 5 in the child never
/// overwrites a source.
fn dup_high(fd: RawFd) -> OwnedFd {
    // SAFETY: F_DUPFD_CLOEXEC returns a new descriptor we then own.
    let new = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 100) };
    assert!(
        new >= 100,
        "F_DUPFD_CLOEXEC: {}",
        std::io::Error::last_os_error()
    );
    // SAFETY: `new` is a fresh descriptor nothing else owns.
    unsafe { OwnedFd::from_raw_fd(new) }
}

/// `socket:[inode]` for each socket `pid` holds (`self` for this process).
fn sockets_of(pid: &str) -> Vec<(RawFd, String)> {
    let dir = std::fs::read_dir(format!("/proc/{pid}/fd")).expect("/proc/<pid>/fd");
    dir.filter_map(|e| {
        let e = e.ok()?;
        let fd = e.file_name().to_str()?.parse().ok()?;
        Some((
            fd,
            std::fs::read_link(e.path())
                .ok()?
                .to_string_lossy()
                .into_owned(),
        ))
    })
    .filter(|(_, l)| l.starts_with("socket:"))
    .collect()
}

/// The manager's part of socket activation, played by the test: it holds the data and admin
/// sockets and starts splicer eleven times on them (fd 3 and 4, plus an fd 5 nothing matches),
/// stopping each with SIGTERM, while clients keep coming: none is refused, reset or fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn socket_activation_restarts_lose_no_client() {
    let rig = common::rig(2).await;
    let bind = || std::net::TcpListener::bind(free_addr()).expect("bind");
    let sockets = [bind(), bind(), bind()]; // data, admin, unrelated: dups outlive these
    let addrs: Vec<SocketAddr> = sockets
        .iter()
        .map(|l| l.local_addr().expect("addr"))
        .collect();
    let (data, admin) = (addrs[0], addrs[1]);
    let fds = sockets.map(|l| dup_high(l.as_raw_fd()));
    let raw: Vec<RawFd> = fds.iter().map(AsRawFd::as_raw_fd).collect();
    let mine = sockets_of("self");
    let ids: Vec<String> = raw
        .iter()
        .map(|fd| mine.iter().find(|m| m.0 == *fd).expect("fd").1.clone())
        .collect();
    // The listener's own bind equals the passed socket (matched by name first); the admin
    // API's is elsewhere, so only its name can give it the passed one.
    let file = ConfigFile::new(&config(data, free_addr(), &rig.node_addrs()));

    let every = Duration::from_millis(10);
    let mut load = Some(Load::start(
        Target::new(data),
        4,
        every,
        Duration::from_secs(180),
    ));
    let tally = load.as_ref().expect("load").tally.clone();
    let mut served_before = 0;
    // Ten restarts: eleven processes, the last one serving what queued behind the tenth.
    for cycle in 0..=10 {
        let mut cmd = Command::new("/bin/sh");
        // $$ is the shell's pid, which exec keeps: LISTEN_PID names splicer itself.
        cmd.args(["-c", r#"export LISTEN_PID=$$; exec "$0" "$@""#])
            .arg(env!("CARGO_BIN_EXE_splicer"))
            .args(["run", "-c"])
            .arg(&file.path)
            .env_remove("SPLICER_CONFIG")
            .env_remove("NOTIFY_SOCKET")
            .env("LISTEN_FDS", "3")
            .env("LISTEN_FDNAMES", "https:admin:extra")
            .env("RUST_LOG", "info");
        let sources = raw.clone();
        // SAFETY: only dup2 runs between fork and exec (async-signal-safe); the copies it
        // makes have no FD_CLOEXEC, so they survive both execs.
        unsafe {
            cmd.pre_exec(move || {
                for (i, &fd) in sources.iter().enumerate() {
                    if libc::dup2(fd, 3 + i as RawFd) < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                Ok(())
            });
        }
        let mut p = Proc::spawn(cmd);
        p.until_ready(admin).await;
        let (s, log) = (status(admin).await, p.log());
        assert_eq!(status_pid(&s), i64::from(p.pid), "cycle {cycle}: {s}");
        let passed = log
            .lines()
            .filter(|l| l.contains("using a passed socket"))
            .count();
        assert_eq!(passed, 2, "cycle {cycle}\n{log}");
        let unmatched = |l: &str| l.contains("matches no listener") && l.contains("extra");
        assert!(log.lines().any(unmatched), "cycle {cycle}\n{log}");
        let open: Vec<String> = sockets_of(&p.pid.to_string())
            .into_iter()
            .map(|s| s.1)
            .collect();
        let holds = |i: usize| open.contains(&ids[i]);
        assert!(
            holds(0) && holds(1) && !holds(2),
            "cycle {cycle}: {open:?} vs {ids:?}"
        );
        // This process serves clients before it is told to stop.
        wait_until(WAIT, "requests answered by this process", || {
            let ok = tally.ok();
            async move { ok > served_before }
        })
        .await;
        served_before = tally.ok();
        if cycle == 10 {
            let tally = load.take().expect("load").stop().await;
            assert!(tally.is_clean() && tally.ok() >= 11, "{}", tally.summary());
        }
        p.stop_cleanly().await;
        assert!(
            tally.is_clean(),
            "cycle {cycle}: {}\n{}",
            tally.summary(),
            p.log()
        );
    }
    drop(fds);
}

/// A second `splicer run` on a taken address exits 1 with the contract's message and leaves
/// the first alone: for a listener, and for the admin API.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_instance_exits_1_and_leaves_the_first_alone() {
    let rig = common::rig(2).await;
    let (listen, admin, other_listen) = (free_addr(), free_addr(), free_addr());
    let file = ConfigFile::new(&config(listen, admin, &rig.node_addrs()));
    let admin_taken = ConfigFile::new(&config(other_listen, admin, &rig.node_addrs()));
    let mut first = Proc::spawn(Proc::command(&file.path));
    first.until_ready(admin).await;
    let in_use = "is already in use (is another splicer running?)";
    for (cfg, expected) in [
        (
            &file,
            format!("splicer: listener 'https': {listen} {in_use}"),
        ),
        (
            &admin_taken,
            format!("splicer: admin API: {admin} {in_use}"),
        ),
    ] {
        let mut second = Proc::spawn(Proc::command(&cfg.path));
        // Once the exit is awaited, its log is complete.
        let exit = second.exit().await;
        assert_eq!(exit.code(), Some(1), "{}", second.log());
        assert!(
            second.log().lines().any(|l| l == expected),
            "want `{expected}`\n{}",
            second.log()
        );
        let node = which_node(listen).await;
        assert!(node.is_ok(), "first instance: {node:?}\n{}", first.log());
        let s = status(admin).await;
        assert_eq!(status_pid(&s), i64::from(first.pid), "{s}");
        assert_eq!(
            try_http(admin, "GET", "/ready").await.map(|r| r.0),
            Some(200)
        );
    }
    // The first still holds both of its sockets (read from /proc: a connect could reach
    // whoever else took `other_listen`, a freed port, meanwhile).
    let held = common::sockets::listening(first.pid);
    assert!(held.contains(&listen) && held.contains(&admin), "{held:?}");
    first.stop_cleanly().await;
}

/// The log stream can break under a running service (journald restarted, a log pipe's reader
/// gone): splicer keeps checking backends and still stops cleanly on SIGTERM.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_log_stream_stops_nothing() {
    let rig = common::rig(2).await;
    let (listen, admin) = (free_addr(), free_addr());
    let file = ConfigFile::new(&config(listen, admin, &rig.node_addrs()));
    let mut cmd = Proc::command(&file.path);
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = cmd.spawn().expect("splicer starts");
    let stderr = child.stderr.take().expect("stderr");
    wait_until(WAIT, "ready", || async {
        try_http(admin, "GET", "/ready").await.map(|r| r.0) == Some(200)
    })
    .await;
    drop(stderr); // every log line from now on meets EPIPE
    let (code, body) = control(&rig, "/nodes/2/stop", "").await;
    assert_eq!(code, 200, "{body}");
    // fall = 3 at interval 1s: the state change is logged, and must still happen.
    wait_until(WAIT, "node 2 goes down", || async {
        backend_states(&status(admin).await) == ["up", "down"]
    })
    .await;
    signal(child.id().expect("pid") as i32, libc::SIGTERM);
    let exit = tokio::time::timeout(WAIT, child.wait())
        .await
        .expect("exits");
    assert_eq!(
        exit.expect("wait").code(),
        Some(0),
        "SIGTERM with a broken log stream"
    );
}
