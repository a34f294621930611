//! The `splicer` binary: CLI parsing, logging set-up, signals and exit codes; nothing else.

use std::io::IsTerminal;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use tokio::signal::unix::{signal, SignalKind};

use splicer::config::{self, Config, LogFormat};
use splicer::lifecycle::{Executable, Inherited, Notifier, ReadyPipe};
use splicer::rig::{CaOptions, Rig, RigOptions};
use splicer::status_cmd;
use splicer::{app, demo, server};

/// mimalloc instead of glibc's allocator: every connection allocates a tokio task and two socket
/// registrations, all cache-line aligned, and glibc serves aligned allocations on its slow path
/// (about 3,000 instructions per connection, measured with callgrind).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// A line on stderr that never panics (`eprintln!` does when stderr is closed).
macro_rules! say {
    ($($arg:tt)*) => {
        splicer::console::eprint_line(&format!($($arg)*))
    };
}

/// Exit code for usage and configuration errors.
const EXIT_CONFIG: u8 = 2;
/// Exit code for runtime failures (e.g. an address already in use).
const EXIT_RUNTIME: u8 = 1;

#[derive(Parser)]
#[command(
    name = "splicer",
    version,
    about = "Layer-4 TLS-passthrough load balancer with HTTPS health checks"
)]
struct Cli {
    /// Log encoding (overrides runtime.log_format).
    #[arg(long, global = true, value_enum)]
    log_format: Option<LogFormatArg>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormatArg {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Serve: PATH from -c, else $SPLICER_CONFIG, else ./splicer.toml.
    Run {
        /// Config file.
        #[arg(short, long)]
        config: Option<PathBuf>,
    },
    /// Validate the config, print a summary; exit 2 listing every problem.
    Check {
        /// Config file.
        #[arg(short, long)]
        config: Option<PathBuf>,
    },
    /// Table of pools and backends from a running instance's admin API (GET /status). Exit 0
    /// when every backend not draining or disabled is up and every cluster check passes; 1
    /// when degraded or the admin API is unreachable (stderr says which); 2 on usage errors.
    Status {
        /// The instance's admin API: http://host:port or host:port.
        #[arg(long, value_name = "URL", env = "SPLICER_ADMIN", default_value = status_cmd::DEFAULT_ADMIN)]
        admin: String,
        /// Only ask GET /ready: exit 0 when it answers 200, else 1 (never 2, which Docker
        /// reserves); for container health checks and scripts.
        #[arg(long, conflicts_with_all = ["json", "watch"])]
        ready: bool,
        /// Print the /status document as pretty-printed JSON instead of the table (fields
        /// unknown to this version included); `{"error":"..."}` when the admin API gives no
        /// answer. The exit code is the same as without it.
        #[arg(long, conflicts_with = "watch")]
        json: bool,
        /// Redraw the table every SECS seconds (default 1) until interrupted; one table per
        /// interval when stdout is not a terminal. Exits with the last sample's code.
        #[arg(
            long,
            value_name = "SECS",
            num_args = 0..=1,
            default_missing_value = "1",
            value_parser = status_cmd::parse_every
        )]
        watch: Option<Duration>,
    },
    /// Replace the running splicer with the binary now installed at its path, handing over
    /// its listening sockets (POST /upgrade; same as SIGUSR2).
    Upgrade {
        /// The instance's admin API: http://host:port or host:port.
        #[arg(long, value_name = "URL", env = "SPLICER_ADMIN", default_value = status_cmd::DEFAULT_ADMIN)]
        admin: String,
        /// File holding the admin bearer token (admin.token_file), when one is set.
        #[arg(long, value_name = "PATH", env = "SPLICER_TOKEN_FILE")]
        token_file: Option<PathBuf>,
        /// How long to wait for the answer (the new process's start-up included).
        #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
        timeout: Duration,
    },
    /// Add, remove, drain, disable or enable a backend of a running instance (admin API).
    ///
    /// Exit status: 0 done, 1 refused (or --wait ran out of time), 2 usage error.
    Backend(splicer::backend_cmd::BackendArgs),
    /// Shell completions on stdout, e.g. `splicer completions bash > /etc/bash_completion.d/splicer`.
    Completions {
        /// The shell to complete for.
        #[arg(value_enum)]
        shell: CompletionShell,
    },
    /// The manual page (roff) on stdout: `splicer man | man -l -`, or `splicer man > splicer.1`.
    Man {
        /// A subcommand's own page instead (`splicer man status` is splicer-status(1)).
        #[arg(value_name = "COMMAND")]
        command: Vec<String>,
    },
    /// A simulated cluster on loopback with splicer in front, and what to try.
    Demo {
        /// Number of simulated nodes.
        #[arg(long, default_value_t = 3)]
        nodes: usize,
        #[command(flatten)]
        ca: CaArgs,
    },
    /// Simulated cluster nodes and their control API, without a balancer.
    Rig {
        /// Number of nodes.
        #[arg(long, default_value_t = 3)]
        nodes: usize,
        /// Address of node 1; node i gets the i-1'th next one.
        #[arg(long, default_value = "127.0.0.2")]
        first_ip: Ipv4Addr,
        /// Port every node listens on.
        #[arg(long, default_value_t = 8443)]
        port: u16,
        /// Address of the control API.
        #[arg(long, default_value = "127.0.0.1:9101")]
        control: SocketAddr,
        #[command(flatten)]
        ca: CaArgs,
    },
}

/// The shells `splicer completions` writes for (docs/architecture.md §10).
#[derive(Clone, Copy, ValueEnum)]
enum CompletionShell {
    Bash,
    Zsh,
    Fish,
}

/// `--ca-name` and `--ca-out`, shared by `rig` and `demo`.
#[derive(clap::Args)]
struct CaArgs {
    /// Sign every node's certificate with a CA made at start, for this DNS name (as well as
    /// node-i and the node's IP); without it each node's certificate is self-signed.
    #[arg(long, value_name = "NAME")]
    ca_name: Option<String>,
    /// Where to write that CA's certificate (PEM), for `curl --cacert` or a `ca_file`.
    #[arg(
        long,
        value_name = "PATH",
        default_value = "./splicer-rig-ca.pem",
        requires = "ca_name"
    )]
    ca_out: PathBuf,
}

impl CaArgs {
    fn options(self) -> Option<CaOptions> {
        self.ca_name.map(|name| CaOptions {
            name,
            out: self.ca_out,
        })
    }
}

fn config_path(flag: Option<PathBuf>) -> PathBuf {
    flag.or_else(|| std::env::var_os("SPLICER_CONFIG").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from("splicer.toml"))
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colour only for a person at a terminal: escape codes would litter files and journals.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        // A log line that cannot be written (journald restarting, a closed pipe) is lost, not
        // reported with eprintln!, which panics on a broken stderr and kills the task logging.
        .log_internal_errors(false)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let format_override = cli.log_format.map(|f| match f {
        LogFormatArg::Text => LogFormat::Text,
        LogFormatArg::Json => LogFormat::Json,
    });
    match cli.command {
        Command::Check { config } => {
            let named = config.is_some() || std::env::var_os("SPLICER_CONFIG").is_some();
            check(config_path(config), named)
        }
        Command::Status {
            admin, ready: true, ..
        } => status_ready(&admin),
        Command::Status {
            admin,
            watch: Some(every),
            ..
        } => status_watch(&admin, every),
        Command::Status { admin, json, .. } => status(&admin, json),
        Command::Completions { shell } => completions(shell),
        Command::Man { command } => man(&command),
        Command::Upgrade {
            admin,
            token_file,
            timeout,
        } => upgrade(&admin, token_file.as_deref(), timeout),
        Command::Backend(args) => backend(&args),
        Command::Run { config } => {
            // Before any thread exists: these read and clear environment variables.
            let (mut inherited, inherit_warnings) = Inherited::from_env();
            let ready_pipe = ReadyPipe::from_env();
            let executable = Executable::current();
            let path = config_path(config);
            let mut config = match config::load(&path) {
                Ok(c) => c,
                Err(e) => {
                    say!("{e}");
                    return ExitCode::from(EXIT_CONFIG);
                }
            };
            // The flag stands for `runtime.log_format`, so the access log follows it too.
            if let Some(format) = format_override {
                config.runtime.log_format = format;
            }
            init_logging(config.runtime.log_format);
            for w in inherit_warnings {
                tracing::warn!("{w}");
            }
            let executable = match executable {
                Ok(e) => Some(e),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot tell this executable's path: binary upgrades are off");
                    None
                }
            };
            let workers = config.runtime.workers;
            let lifecycle = app::Lifecycle {
                notifier: Some(Notifier::from_env()),
                executable,
                ready_pipe,
            };
            exit_from(
                runtime(workers).and_then(|rt| rt.block_on(run(config, &mut inherited, lifecycle))),
            )
        }
        Command::Demo { nodes, ca } => {
            init_logging(format_override.unwrap_or_default());
            exit_from(runtime(0).and_then(|rt| rt.block_on(demo(nodes, ca.options()))))
        }
        Command::Rig {
            nodes,
            first_ip,
            port,
            control,
            ca,
        } => {
            init_logging(format_override.unwrap_or_default());
            let opts = RigOptions {
                nodes,
                first_ip,
                port,
                control,
                ca: ca.options(),
            };
            exit_from(runtime(0).and_then(|rt| rt.block_on(rig(opts))))
        }
    }
}

fn exit_from(result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One line on stderr, which is also where logs go: no need to say it twice.
            say!("splicer: {e:#}");
            ExitCode::from(EXIT_RUNTIME)
        }
    }
}

/// The async runtime: `workers` threads (0 = one per CPU). One worker gets tokio's
/// single-threaded scheduler on the main thread: the same one thread of work without the
/// multi-thread scheduler's cross-thread bookkeeping (measured with callgrind: 11% fewer
/// user-space instructions per proxied connection).
fn runtime(workers: usize) -> anyhow::Result<tokio::runtime::Runtime> {
    let mut b = if workers == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        tokio::runtime::Builder::new_multi_thread()
    };
    b.enable_all();
    if workers > 1 {
        b.worker_threads(workers);
    }
    b.build().context("cannot start the async runtime")
}

/// `splicer check`; `named`: the path came from `-c` or `$SPLICER_CONFIG`, not the default.
fn check(path: PathBuf, named: bool) -> ExitCode {
    if !named && !path.exists() {
        say!(
            "{}: no such file, and no other was named: give one with `-c PATH` or \
             SPLICER_CONFIG=PATH (examples: config/*.toml)",
            path.display()
        );
        return ExitCode::from(EXIT_CONFIG);
    }
    match config::load(&path) {
        Ok(config) => {
            let text = format!("{}: OK\n{}", path.display(), config.summary());
            stdout(&text).unwrap_or(ExitCode::SUCCESS)
        }
        Err(e) => {
            say!("{e}");
            ExitCode::from(EXIT_CONFIG)
        }
    }
}

/// Writes a command's output; `Some(exit code 1)` after telling why when stdout failed (a
/// reader that closed the pipe is not a failure, see [`splicer::console::print`]).
fn stdout(text: &str) -> Option<ExitCode> {
    match splicer::console::print(text) {
        Ok(()) => None,
        Err(e) => {
            say!("splicer: cannot write to stdout: {e}");
            Some(ExitCode::from(EXIT_RUNTIME))
        }
    }
}

/// The one-thread runtime of a command that talks to a running splicer's admin API; on failure
/// the error is said and the exit code returned.
fn client_runtime() -> Result<tokio::runtime::Runtime, ExitCode> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| {
            say!("splicer: cannot start the async runtime: {e}");
            ExitCode::from(EXIT_RUNTIME)
        })
}

/// Says why `admin` is not an admin URL and returns the usage exit code; `None` when it is one.
fn bad_admin_url(admin: &str) -> Option<ExitCode> {
    let e = status_cmd::admin_url(admin).err()?;
    say!("splicer: {e}");
    Some(ExitCode::from(EXIT_CONFIG))
}

/// `splicer status [--json]`: the table (or the document) on stdout, what is wrong on stderr,
/// and the exit code of docs/architecture.md §10.
fn status(admin: &str, json: bool) -> ExitCode {
    if let Some(code) = bad_admin_url(admin) {
        return code;
    }
    let runtime = match client_runtime() {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    let (text, verdict) = runtime.block_on(status_cmd::once(admin, json));
    if let Some(code) = stdout(&text) {
        return code;
    }
    if verdict != status_cmd::Verdict::Healthy {
        say!("splicer: {}", verdict.summary());
    }
    ExitCode::from(verdict.exit_code())
}

/// `splicer status --watch`: the live table until SIGINT, SIGTERM or SIGHUP; the exit code of
/// the last sample, whose problem (if any) is said on stderr below the last frame.
fn status_watch(admin: &str, every: Duration) -> ExitCode {
    if let Some(code) = bad_admin_url(admin) {
        return code;
    }
    let runtime = match client_runtime() {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    let live = std::io::stdout().is_terminal();
    let watched = runtime.block_on(async {
        let stop = watch_stop_signals()?;
        let mut out = std::io::stdout().lock();
        Ok::<_, anyhow::Error>(status_cmd::watch(admin, every, live, &mut out, stop).await)
    });
    match watched {
        Ok(Ok(verdict)) => {
            if verdict != status_cmd::Verdict::Healthy {
                say!("splicer: {}", verdict.summary());
            }
            ExitCode::from(verdict.exit_code())
        }
        Ok(Err(e)) => {
            say!("splicer: cannot write to stdout: {e}");
            ExitCode::from(EXIT_RUNTIME)
        }
        Err(e) => {
            say!("splicer: {e:#}");
            ExitCode::from(EXIT_RUNTIME)
        }
    }
}

/// Resolves on SIGINT (Ctrl-C), SIGTERM or SIGHUP (the terminal closed): each ends a watch
/// the same way, with the terminal restored.
fn watch_stop_signals() -> anyhow::Result<impl std::future::Future<Output = ()>> {
    let mut int = signal(SignalKind::interrupt()).context("cannot handle SIGINT")?;
    let mut term = signal(SignalKind::terminate()).context("cannot handle SIGTERM")?;
    let mut hup = signal(SignalKind::hangup()).context("cannot handle SIGHUP")?;
    Ok(async move {
        tokio::select! {
            _ = int.recv() => {}
            _ = term.recv() => {}
            _ = hup.recv() => {}
        }
    })
}

/// `splicer completions SHELL`: generated from the same clap definition as the parser.
fn completions(shell: CompletionShell) -> ExitCode {
    use clap::CommandFactory;
    let shell = match shell {
        CompletionShell::Bash => clap_complete::Shell::Bash,
        CompletionShell::Zsh => clap_complete::Shell::Zsh,
        CompletionShell::Fish => clap_complete::Shell::Fish,
    };
    let script = splicer::cli_docs::completions(Cli::command(), shell, "splicer");
    stdout(&script).unwrap_or(ExitCode::SUCCESS)
}

/// `splicer man [COMMAND...]`: splicer(1), or a subcommand's page, as roff on stdout.
fn man(path: &[String]) -> ExitCode {
    use clap::CommandFactory;
    match splicer::cli_docs::man_page(Cli::command(), path) {
        Ok(page) => stdout(&page).unwrap_or(ExitCode::SUCCESS),
        Err(e @ splicer::cli_docs::ManError::UnknownCommand { .. }) => {
            say!("splicer: {e}");
            ExitCode::from(EXIT_CONFIG)
        }
        Err(e) => {
            say!("splicer: {:#}", anyhow::Error::new(e));
            ExitCode::from(EXIT_RUNTIME)
        }
    }
}

/// SIGTERM and SIGINT handlers, installed before anything starts so that a signal during
/// start-up is handled rather than killing the process with the default action.
struct StopSignals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl StopSignals {
    fn install() -> anyhow::Result<Self> {
        Ok(StopSignals {
            term: signal(SignalKind::terminate()).context("cannot handle SIGTERM")?,
            int: signal(SignalKind::interrupt()).context("cannot handle SIGINT")?,
        })
    }

    /// Resolves on the first SIGTERM or SIGINT; a second one exits at once with code 1.
    async fn first(mut self) {
        let name = tokio::select! {
            _ = self.term.recv() => "SIGTERM",
            _ = self.int.recv() => "SIGINT",
        };
        tracing::info!(
            signal = name,
            "stop requested; a second signal exits at once"
        );
        tokio::spawn(async move {
            tokio::select! {
                _ = self.term.recv() => {}
                _ = self.int.recv() => {}
            }
            tracing::warn!("second stop signal: exiting now");
            std::process::exit(i32::from(EXIT_RUNTIME));
        });
    }
}

/// Resolves on the first SIGTERM or SIGINT (for the rig and the demo).
async fn first_stop_signal() -> anyhow::Result<()> {
    StopSignals::install()?.first().await;
    Ok(())
}

/// Raises the open-files soft limit to the hard limit: every proxied connection needs two
/// descriptors (four while bytes move through its pipes), and the usual soft default of 1024
/// would cap splicer at a few hundred connections.
fn raise_fd_limit() {
    use rustix::process::{getrlimit, setrlimit, Resource};
    let limit = getrlimit(Resource::Nofile);
    let (soft, hard) = (limit.current, limit.maximum);
    if soft < hard {
        let raised = rustix::process::Rlimit {
            current: hard,
            maximum: hard,
        };
        match setrlimit(Resource::Nofile, raised) {
            Ok(()) => {
                tracing::info!(soft = %limit_text(soft), hard = %limit_text(hard), "raised the open-files limit to the hard limit")
            }
            Err(e) => {
                tracing::warn!(soft = %limit_text(soft), hard = %limit_text(hard), error = %e, "cannot raise the open-files limit")
            }
        }
    } else {
        tracing::info!(soft = %limit_text(soft), hard = %limit_text(hard), "open-files limit");
    }
}

/// An rlimit as a log shows it (`None` is no limit).
fn limit_text(limit: Option<u64>) -> String {
    limit.map_or_else(|| "unlimited".to_string(), |n| n.to_string())
}

async fn run(
    config: Config,
    inherited: &mut Inherited,
    lifecycle: app::Lifecycle,
) -> anyhow::Result<()> {
    raise_fd_limit();
    let mut hup = signal(SignalKind::hangup()).context("cannot handle SIGHUP")?;
    let mut usr2 = signal(SignalKind::user_defined2()).context("cannot handle SIGUSR2")?;
    let stop = StopSignals::install()?.first();
    let bound = app::Bound::acquire(&config, inherited)?;
    let running = server::start_with(config, bound, lifecycle).await?;
    tokio::pin!(stop);
    loop {
        tokio::select! {
            () = &mut stop => break,
            () = running.handed_over() => {
                // The successor accepts on the same sockets; finish what this process holds.
                running.drain().await;
                return Ok(());
            }
            _ = hup.recv() => {
                tracing::info!(signal = "SIGHUP", "reloading the config");
                // The outcome (and every error) is logged by the reload itself.
                let _ = running.reload().await;
            }
            _ = usr2.recv() => {
                tracing::info!(signal = "SIGUSR2", "binary upgrade requested");
                // Off the loop, so stop signals are still heard while the successor starts;
                // the outcome is logged by the upgrade itself.
                let state = running.state().clone();
                tokio::spawn(async move {
                    let _ = state.upgrade().await;
                });
            }
        }
    }
    running.shutdown().await;
    Ok(())
}

/// `splicer status --ready`: 0 when `/ready` answers 200, 1 for anything else.
fn status_ready(admin: &str) -> ExitCode {
    admin_command(async {
        let not_ready = |message| splicer::backend_cmd::Failure {
            code: EXIT_RUNTIME,
            message,
        };
        status_cmd::ready(admin)
            .await
            .map(|()| String::new())
            .map_err(not_ready)
    })
}

/// `splicer upgrade`: the outcome on stdout, a refusal on stderr.
fn upgrade(admin: &str, token_file: Option<&std::path::Path>, timeout: Duration) -> ExitCode {
    admin_command(splicer::upgrade_cmd::run(admin, token_file, timeout))
}

/// `splicer backend ...`: the outcome on stdout, progress and refusals on stderr.
fn backend(args: &splicer::backend_cmd::BackendArgs) -> ExitCode {
    let mut progress = |line: &str| say!("{line}");
    admin_command(splicer::backend_cmd::run(args, &mut progress))
}

/// Runs a command that talks to the admin API: its text on stdout, or its failure on stderr
/// and its exit code.
fn admin_command(
    command: impl std::future::Future<Output = Result<String, splicer::backend_cmd::Failure>>,
) -> ExitCode {
    let runtime = match client_runtime() {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    match runtime.block_on(command) {
        Ok(text) => stdout(&text).unwrap_or(ExitCode::SUCCESS),
        Err(failure) => {
            say!("splicer: {}", failure.message);
            ExitCode::from(failure.code)
        }
    }
}

async fn rig(opts: RigOptions) -> anyhow::Result<()> {
    let ca = opts.ca.clone();
    let rig = Rig::start(opts).await.context("cannot start the rig")?;
    let mut text = String::new();
    if let Some(ca) = &ca {
        text.push_str(&format!(
            "CA certificate {} (every node's certificate names {})\n",
            ca.out.display(),
            ca.name
        ));
    }
    for (i, addr) in rig.node_addrs().iter().enumerate() {
        text.push_str(&format!("node-{} https://{addr}/\n", i + 1));
    }
    text.push_str(&format!(
        "control API http://{}/nodes\n",
        rig.control_addr()
    ));
    splicer::console::print(&text).context("cannot write to stdout")?;
    first_stop_signal().await?;
    rig.shutdown().await;
    Ok(())
}

async fn demo(nodes: usize, ca: Option<CaOptions>) -> anyhow::Result<()> {
    let rig = Rig::start(RigOptions {
        nodes,
        ca: ca.clone(),
        ..RigOptions::default()
    })
    .await
    .context("cannot start the simulated nodes")?;
    let ca_file = match &ca {
        Some(ca) => Some(
            std::path::absolute(&ca.out)
                .with_context(|| format!("cannot make {} an absolute path", ca.out.display()))?,
        ),
        None => None,
    };
    let verified = ca.as_ref().map(|c| c.name.as_str()).zip(ca_file.as_deref());
    let config = demo::config(&rig.node_addrs(), verified)?;
    let bound = app::Bound::bind(&config)?;
    let running = server::start(config, bound).await?;
    let splicer = demo::self_command();
    let text = demo::instructions(&demo::Running {
        nodes: &rig.node_addrs(),
        listener: running
            .listener_addr("https")
            .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 8443))),
        admin: running
            .admin_addr()
            .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 9090))),
        control: rig.control_addr(),
        verified,
        splicer: &splicer,
    });
    splicer::console::print(&text).context("cannot write to stdout")?;
    first_stop_signal().await?;
    running.shutdown().await;
    let _ = tokio::time::timeout(Duration::from_secs(5), rig.shutdown()).await;
    Ok(())
}
