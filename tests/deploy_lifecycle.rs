//! The deployment files against the lifecycle contract (docs/architecture.md §8): what systemd, Kubernetes,
//! keepalived, Docker and cloud-init are told about splicer's own stops, restarts and upgrades.
//!
//! Each check runs the real tool where one exists and FAILS when it is missing (scripts/test
//! installs them; the Debian package is named in each message):
//! `systemd-analyze` (systemd), `kubectl` (kubernetes-client), `python3` with PyYAML
//! (python3-yaml), `keepalived` (keepalived), `curl` (curl, the check keepalived runs); the
//! container's health check is `splicer status --ready` itself.
//!
//! Configs are read as TOML here, not through `splicer::config`, so that these checks do not
//! depend on the code that reads the new `runtime` keys; tests/config_files.rs and
//! tests/deploy_files.rs validate the same files with it.

use std::collections::BTreeMap;
use std::fs;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

#[path = "support/literal_block.rs"]
mod support;
use support::literal_block;

const BINARY_PATH: &str = "/usr/local/bin/splicer";
const CLOUD_INIT: &str = "deploy/cloud-init/user-data.yaml";
const CONFIGMAP: &str = "deploy/kubernetes/configmap.yaml";
/// The socket units and the name splicer matches each one's fd by (§8).
const SOCKETS: [(&str, &str); 2] = [
    ("splicer.socket", "https"),
    ("splicer-admin.socket", "admin"),
];
/// Configs meant for the systemd unit: the example it installs, and the NLB variant.
const UNIT_CONFIGS: [&str; 2] = ["config/quay-ha.toml", "config/behind-nlb.toml"];

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(rel: &str) -> String {
    fs::read_to_string(repo().join(rel)).unwrap_or_else(|e| panic!("cannot read {rel}: {e}"))
}

/// Runs `program args`, failing the test with the package to install when it is missing.
fn run(program: &str, args: &[&str], package: &str) -> Output {
    Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| {
            panic!("{program} is needed (Debian package {package}; scripts/test installs it): {e}")
        })
}

fn said(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn duration(value: &str) -> Duration {
    splicer::config::parse_duration(value)
        .unwrap_or_else(|e| panic!("{value:?} is not a duration: {e}"))
}

// ---- the splicer configs ----------------------------------------------------------------------

/// The parts of a config these checks need, read as plain TOML.
struct Lifecycle {
    shutdown_delay: Duration,
    drain_timeout: Duration,
    admin_bind: Option<SocketAddr>,
    has_token_file: bool,
    /// (name, bind) of every listener.
    listeners: Vec<(String, SocketAddr)>,
    tls_verify: Vec<bool>,
    ca_files: Vec<String>,
}

fn lifecycle(toml_text: &str, what: &str) -> Lifecycle {
    let doc: toml::Value = toml::from_str(toml_text).unwrap_or_else(|e| panic!("{what}: {e}"));
    let runtime = doc.get("runtime");
    let runtime_duration = |key: &str, default: &str| {
        runtime
            .and_then(|r| r.get(key))
            .map_or(default, |v| v.as_str().expect("a duration string"))
            .to_string()
    };
    let addr = |v: &toml::Value| -> SocketAddr { v.as_str().unwrap().parse().unwrap() };
    let admin = doc.get("admin");
    let pools = doc.get("pool").and_then(|p| p.as_array()).cloned();
    let health = |key: &str| -> Vec<toml::Value> {
        pools
            .iter()
            .flatten()
            .filter_map(|p| p.get("health").and_then(|h| h.get(key)).cloned())
            .collect()
    };
    Lifecycle {
        shutdown_delay: duration(&runtime_duration("shutdown_delay", "0s")),
        drain_timeout: duration(&runtime_duration("drain_timeout", "30s")),
        admin_bind: admin.and_then(|a| a.get("bind")).map(addr),
        has_token_file: admin
            .and_then(|a| a.get("token_file"))
            .and_then(|t| t.as_str())
            .is_some_and(|t| !t.is_empty()),
        listeners: doc
            .get("listener")
            .and_then(|l| l.as_array())
            .expect("[[listener]]")
            .iter()
            .map(|l| (l["name"].as_str().unwrap().to_string(), addr(&l["bind"])))
            .collect(),
        tls_verify: health("tls_verify")
            .iter()
            .map(|v| v.as_bool().unwrap())
            .collect(),
        ca_files: health("ca_file")
            .iter()
            .map(|v| v.as_str().unwrap().to_string())
            .collect(),
    }
}

fn config_file(rel: &str) -> Lifecycle {
    lifecycle(&read(rel), rel)
}

fn cloud_init_file(path: &str) -> String {
    literal_block(&read(CLOUD_INIT), &format!("path: {path}"), "content")
}

fn configmap_toml() -> String {
    literal_block(&read(CONFIGMAP), "data:", "splicer.toml")
}

/// Every YAML document of `yaml`, as JSON, read by PyYAML.
fn yaml_documents(yaml: &str) -> Vec<serde_json::Value> {
    let script = "import json, sys, yaml\n\
                  print(json.dumps(list(yaml.safe_load_all(sys.stdin))))";
    let mut child = Command::new("python3")
        .args(["-c", script])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("python3 is needed (Debian packages python3, python3-yaml)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(yaml.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "python3 with PyYAML (Debian package python3-yaml) could not read the YAML:\n{}",
        said(&out)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn shipped_configs_keep_serving_while_the_outer_balancer_moves_away() {
    let shipped = [
        ("config/quay-ha.toml", read("config/quay-ha.toml")),
        ("config/behind-nlb.toml", read("config/behind-nlb.toml")),
        (CLOUD_INIT, cloud_init_file("/etc/splicer/splicer.toml")),
        (CONFIGMAP, configmap_toml()),
    ];
    for (what, text) in &shipped {
        let config = lifecycle(text, what);
        assert!(
            config.shutdown_delay >= Duration::from_secs(5),
            "{what}: a shipped config sets a shutdown_delay (§8), got {:?}",
            config.shutdown_delay
        );
    }
}

// ---- systemd ----------------------------------------------------------------------------------

/// An ini file: section → key → every value given.
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

/// The one value of `key` in `section`.
fn value<'a>(unit: &'a Unit, section: &str, key: &str) -> &'a str {
    match unit
        .get(section)
        .and_then(|s| s.get(key))
        .map(Vec::as_slice)
    {
        Some([one]) => one,
        None | Some([]) => panic!("[{section}] lacks {key}="),
        Some(many) => panic!("[{section}] {key}= is given {} times", many.len()),
    }
}

/// The space-separated list values of every `key=` line in `section`, as one sorted list.
fn words(unit: &Unit, section: &str, key: &str) -> Vec<String> {
    let lines = unit
        .get(section)
        .and_then(|s| s.get(key))
        .unwrap_or_else(|| panic!("[{section}] lacks {key}="));
    let mut w: Vec<String> = lines
        .iter()
        .flat_map(|l| l.split_whitespace())
        .map(str::to_string)
        .collect();
    w.sort();
    w
}

fn systemd_file(name: &str) -> String {
    read(&format!("deploy/systemd/{name}"))
}

#[test]
fn systemd_unit_follows_the_lifecycle_contract() {
    let unit = parse_unit(&systemd_file("splicer.service"));
    for (key, expected) in [
        ("Type", "notify"),
        // The upgraded process, a child of the old one, sends MAINPID=.
        ("NotifyAccess", "all"),
        ("KillMode", "mixed"),
        ("KillSignal", "SIGTERM"),
    ] {
        assert_eq!(value(&unit, "Service", key), expected, "{key}=");
    }
    let reload = &unit["Service"]["ExecReload"];
    assert_eq!(
        reload.last().map(String::as_str),
        Some("/bin/kill -HUP $MAINPID")
    );
    let watchdog = duration(value(&unit, "Service", "WatchdogSec"));
    assert!(
        watchdog >= Duration::from_secs(10) && watchdog <= Duration::from_secs(120),
        "WatchdogSec={watchdog:?}"
    );
    // Every socket unit is passed, required and ordered before the service.
    let mut socket_units: Vec<String> = SOCKETS.iter().map(|(u, _)| u.to_string()).collect();
    socket_units.sort();
    assert_eq!(words(&unit, "Service", "Sockets"), socket_units);
    assert_eq!(words(&unit, "Unit", "Requires"), socket_units);
    let after = words(&unit, "Unit", "After");
    assert!(
        socket_units.iter().all(|s| after.contains(s)),
        "After= {after:?}"
    );
    // The stop timeout covers shutdown_delay + drain_timeout of every config meant for the unit.
    let stop = duration(value(&unit, "Service", "TimeoutStopSec"));
    let cloud_init = lifecycle(
        &cloud_init_file("/etc/splicer/splicer.toml"),
        "cloud-init config",
    );
    for (what, config) in UNIT_CONFIGS
        .iter()
        .map(|c| (c.to_string(), config_file(c)))
        .chain([(CLOUD_INIT.to_string(), cloud_init)])
    {
        let needed = config.shutdown_delay + config.drain_timeout;
        assert!(
            stop > needed,
            "TimeoutStopSec={stop:?} must exceed shutdown_delay + drain_timeout = {needed:?} of {what}"
        );
    }
    // The ways to upgrade are documented where an operator reads the unit.
    let text = systemd_file("splicer.service");
    for needle in ["splicer upgrade", "--kill-whom=main --signal=SIGUSR2"] {
        assert!(
            text.contains(needle),
            "splicer.service documents {needle:?}"
        );
    }
    // Hardening stays (tests/deploy_files.rs checks it in full).
    for (key, expected) in [
        ("NoNewPrivileges", "yes"),
        ("ProtectSystem", "strict"),
        ("CapabilityBoundingSet", "CAP_NET_BIND_SERVICE"),
    ] {
        assert_eq!(value(&unit, "Service", key), expected, "{key}=");
    }
}

#[test]
fn systemd_sockets_match_the_configs_listeners() {
    let example = config_file("config/quay-ha.toml");
    let cloud_init = lifecycle(
        &cloud_init_file("/etc/splicer/splicer.toml"),
        "cloud-init config",
    );
    for (file, fd_name) in SOCKETS {
        let unit = parse_unit(&systemd_file(file));
        assert_eq!(value(&unit, "Socket", "FileDescriptorName"), fd_name);
        assert_eq!(value(&unit, "Socket", "Service"), "splicer.service");
        assert_eq!(value(&unit, "Socket", "ReusePort"), "false", "{file}");
        assert_eq!(value(&unit, "Socket", "NoDelay"), "true", "{file}");
        let backlog: u32 = value(&unit, "Socket", "Backlog").parse().unwrap();
        assert!(
            (128..=65535).contains(&backlog),
            "{file}: Backlog={backlog}"
        );
        assert_eq!(value(&unit, "Install", "WantedBy"), "sockets.target");
        let listen: SocketAddr = value(&unit, "Socket", "ListenStream")
            .parse()
            .unwrap_or_else(|e| panic!("{file}: ListenStream= is not ip:port: {e}"));
        // The socket is the one the config would bind: by name and by address (§8).
        for (what, config) in [("config/quay-ha.toml", &example), (CLOUD_INIT, &cloud_init)] {
            let bind = if fd_name == "admin" {
                config.admin_bind.expect("[admin]")
            } else {
                config
                    .listeners
                    .iter()
                    .find(|(name, _)| name == fd_name)
                    .unwrap_or_else(|| panic!("{what} has no listener {fd_name:?}"))
                    .1
            };
            assert_eq!(listen, bind, "{file} listens where {what} binds {fd_name}");
        }
    }
    let https = parse_unit(&systemd_file("splicer.socket"));
    let backlog: u32 = value(&https, "Socket", "Backlog").parse().unwrap();
    assert_eq!(backlog, 4096, "the data socket's backlog is the config's");
}

#[test]
fn systemd_analyze_verifies_the_units() {
    // verify needs the executables to exist: point the unit at the binary under test.
    let dir = tempfile::tempdir().unwrap();
    let mut paths = Vec::new();
    for name in ["splicer.service", "splicer.socket", "splicer-admin.socket"] {
        let path = dir.path().join(name);
        fs::write(
            &path,
            systemd_file(name).replace(BINARY_PATH, env!("CARGO_BIN_EXE_splicer")),
        )
        .unwrap();
        paths.push(path.to_str().unwrap().to_string());
    }
    let mut args = vec!["verify"];
    args.extend(paths.iter().map(String::as_str));
    let out = run("systemd-analyze", &args, "systemd");
    let said = said(&out);
    // Unknown keys are only warned about, so any word about a file is a failure.
    assert!(
        out.status.success() && !said.contains("splicer"),
        "systemd-analyze verify:\n{said}"
    );
}

#[test]
fn cloud_init_installs_the_units_unchanged() {
    let yaml = read(CLOUD_INIT);
    let docs = yaml_documents(&yaml);
    let files = docs[0]["write_files"].as_array().expect("write_files");
    let content = |path: &str| {
        files
            .iter()
            .find(|f| f["path"] == path)
            .and_then(|f| f["content"].as_str())
            .unwrap_or_else(|| panic!("{CLOUD_INIT} does not write {path}"))
            .to_string()
    };
    for name in ["splicer.service", "splicer.socket", "splicer-admin.socket"] {
        let path = format!("/etc/systemd/system/{name}");
        assert_eq!(
            content(&path),
            systemd_file(name),
            "{path} in {CLOUD_INIT} differs from deploy/systemd/{name}"
        );
        assert_eq!(content(&path), cloud_init_file(&path));
    }
    let runcmd = docs[0]["runcmd"].to_string();
    assert!(
        runcmd
            .contains("systemctl enable --now splicer.socket splicer-admin.socket splicer.service"),
        "cloud-init enables the sockets with the service: {runcmd}"
    );
    // The widened ephemeral range must not cover a port this machine listens on, or an outgoing
    // connection can hold it when splicer binds.
    let sysctl = content("/etc/sysctl.d/60-splicer.conf");
    let setting = |key: &str| {
        sysctl
            .lines()
            .find_map(|l| l.trim().strip_prefix(key))
            .map(|v| v.trim().trim_start_matches('=').trim().to_string())
    };
    let range: Vec<u16> = setting("net.ipv4.ip_local_port_range")
        .map(|r| r.split_whitespace().map(|p| p.parse().unwrap()).collect())
        .unwrap_or_else(|| vec![32768, 60999]);
    let reserved: Vec<u16> = setting("net.ipv4.ip_local_reserved_ports")
        .map(|r| r.split(',').map(|p| p.trim().parse().unwrap()).collect())
        .unwrap_or_default();
    let config = lifecycle(
        &cloud_init_file("/etc/splicer/splicer.toml"),
        "cloud-init config",
    );
    let listening = config
        .listeners
        .iter()
        .map(|(_, a)| a.port())
        .chain(config.admin_bind.map(|a| a.port()));
    for port in listening {
        assert!(
            !(range[0]..=range[1]).contains(&port) || reserved.contains(&port),
            "port {port} is in ip_local_port_range {range:?} and not in ip_local_reserved_ports"
        );
    }
    assert!(
        sysctl.contains("ip_local_reserved_ports") && sysctl.contains("address already in use"),
        "the sysctl file says why the admin port is reserved"
    );
}

// ---- Kubernetes -------------------------------------------------------------------------------

/// `kubectl kustomize` of a copy of deploy/kubernetes whose kustomization names `namespace`.
fn kustomize_into(namespace: &str) -> Vec<serde_json::Value> {
    let dir = tempfile::tempdir().unwrap();
    let source = repo().join("deploy/kubernetes");
    for entry in fs::read_dir(&source).unwrap() {
        let entry = entry.unwrap();
        fs::copy(entry.path(), dir.path().join(entry.file_name())).unwrap();
    }
    let kustomization = dir.path().join("kustomization.yaml");
    let text = fs::read_to_string(&kustomization).unwrap();
    let lines: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("namespace:"))
        .collect();
    assert_eq!(
        lines.len(),
        1,
        "kustomization.yaml sets the namespace on one line"
    );
    fs::write(
        &kustomization,
        text.replace(lines[0], &format!("namespace: {namespace}")),
    )
    .unwrap();
    // kustomize gives a Namespace object the kustomization's namespace as its name since v4
    // (kubectl 1.21); the one in Debian 12's kubernetes-client (1.20) is v2.0.3.
    let version = said(&run(
        "kubectl",
        &["version", "--client"],
        "kubernetes-client",
    ));
    let major = version
        .split("Kustomize Version: v")
        .nth(1)
        .and_then(|v| v.split('.').next())
        .and_then(|m| m.parse::<u32>().ok());
    assert!(
        major.is_some_and(|m| m >= 4),
        "kubectl with kustomize v4 or later (kubectl 1.21+) is needed:\n{version}"
    );
    let out = run(
        "kubectl",
        &["kustomize", dir.path().to_str().unwrap()],
        "kubernetes-client",
    );
    assert!(out.status.success(), "kubectl kustomize:\n{}", said(&out));
    yaml_documents(&String::from_utf8(out.stdout).unwrap())
}

#[test]
fn kubernetes_namespace_is_the_users_choice() {
    let objects = kustomize_into("edge-lb");
    assert!(objects.len() >= 5, "{} objects", objects.len());
    for object in &objects {
        let kind = object["kind"].as_str().unwrap();
        let metadata = &object["metadata"];
        let namespace = if kind == "Namespace" {
            &metadata["name"]
        } else {
            &metadata["namespace"]
        };
        assert_eq!(
            namespace, "edge-lb",
            "{kind} {} ignores the kustomization's namespace",
            metadata["name"]
        );
        assert_ne!(
            metadata["name"], "quay-headless",
            "Quay's Service goes into Quay's namespace, not the kustomization's"
        );
    }
    // No manifest names a namespace of its own, so the kustomization's line is the only one.
    for entry in fs::read_dir(repo().join("deploy/kubernetes")).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_str().unwrap().to_string();
        if name == "kustomization.yaml" {
            continue;
        }
        let text = fs::read_to_string(&path).unwrap();
        for doc in yaml_documents(&text) {
            assert!(
                doc["metadata"].get("namespace").is_none(),
                "{name} names namespace {}",
                doc["metadata"]["namespace"]
            );
        }
    }
    let headless = read("deploy/kubernetes/quay-headless-service.yaml");
    assert!(
        headless.contains("kubectl apply -n <Quay's namespace>"),
        "quay-headless-service.yaml says how to apply it"
    );
    let kustomization = read("deploy/kubernetes/kustomization.yaml").replace("\n# ", " ");
    assert!(kustomization.contains("kustomize edit set namespace"));
}

#[test]
fn kubernetes_pods_stop_in_the_contract_order() {
    let objects = kustomize_into("splicer");
    let deployment = objects
        .iter()
        .find(|o| o["kind"] == "Deployment")
        .expect("a Deployment");
    let pod = &deployment["spec"]["template"]["spec"];
    let container = &pod["containers"][0];
    let pre_stop = &container["lifecycle"]["preStop"];
    assert!(
        pre_stop.get("exec").is_none(),
        "the preStop pause is the kubelet's native sleep, not a command: {pre_stop}"
    );
    let sleep = pre_stop["sleep"]["seconds"]
        .as_u64()
        .expect("lifecycle.preStop.sleep.seconds");
    assert!((1..=30).contains(&sleep), "preStop sleep {sleep}s");
    let config = lifecycle(&configmap_toml(), CONFIGMAP);
    let grace = pod["terminationGracePeriodSeconds"].as_u64().unwrap();
    let needed = Duration::from_secs(sleep) + config.shutdown_delay + config.drain_timeout;
    assert!(
        Duration::from_secs(grace) > needed,
        "terminationGracePeriodSeconds {grace} must exceed preStop sleep + shutdown_delay + drain_timeout = {needed:?}"
    );
    let readiness = &container["readinessProbe"]["httpGet"];
    assert_eq!(readiness["path"], "/ready");
    assert_eq!(readiness["port"], "admin");
    // The ConfigMap the Deployment mounts holds the config read above.
    let configmap = objects
        .iter()
        .find(|o| o["kind"] == "ConfigMap")
        .expect("a ConfigMap");
    assert_eq!(configmap["data"]["splicer.toml"], configmap_toml());
}

#[test]
fn kubernetes_checks_verify_quay_certificates() {
    let toml_text = configmap_toml();
    let config = lifecycle(&toml_text, CONFIGMAP);
    assert!(
        !config.tls_verify.is_empty() && config.tls_verify.iter().all(|v| *v),
        "the ConfigMap ships tls_verify = true"
    );
    assert!(
        !toml_text
            .lines()
            .any(|l| l.trim().starts_with("tls_verify = false")),
        "no tls_verify = false in the ConfigMap"
    );
    let [ca_file] = config.ca_files.as_slice() else {
        panic!("one ca_file, got {:?}", config.ca_files)
    };
    // The ca_file is projected next to splicer.toml from a ConfigMap the user creates.
    let objects = kustomize_into("splicer");
    let deployment = objects.iter().find(|o| o["kind"] == "Deployment").unwrap();
    let pod = &deployment["spec"]["template"]["spec"];
    let sources = pod["volumes"][0]["projected"]["sources"]
        .as_array()
        .expect("a projected volume");
    let projected = sources.iter().find_map(|s| {
        let items = s["configMap"]["items"].as_array()?;
        items
            .iter()
            .any(|i| i["path"] == ca_file.as_str())
            .then(|| s["configMap"]["name"].as_str().unwrap().to_string())
    });
    let name = projected.unwrap_or_else(|| panic!("no ConfigMap projects {ca_file}"));
    let kustomization = read("deploy/kubernetes/kustomization.yaml");
    assert!(
        kustomization.contains(&format!("create configmap {name} --from-file={ca_file}=")),
        "kustomization.yaml says how to create the ConfigMap {name}"
    );
}

// ---- keepalived -------------------------------------------------------------------------------

const KEEPALIVED: &str = "deploy/keepalived/keepalived.conf";

/// The value of `key` inside the `vrrp_script` block.
fn vrrp_script_setting(conf: &str, key: &str) -> String {
    let block = &conf[conf.find("vrrp_script").expect("a vrrp_script")..];
    let block = &block[..block.find("\n}").unwrap()];
    block
        .lines()
        .map(|l| l.split('#').next().unwrap().trim())
        .find_map(|l| l.strip_prefix(key).filter(|r| r.starts_with([' ', '\t'])))
        .map(|v| v.trim().to_string())
        .unwrap_or_else(|| panic!("vrrp_script has no {key}"))
}

/// `keepalived -t` on `conf` with the interface replaced by one this machine has (keepalived
/// refuses an unknown interface, and loopback); the diagnostics it printed, or a panic when it
/// did not finish its check.
fn keepalived_test(conf: &str) -> (Output, String) {
    let interface = fs::read_dir("/sys/class/net")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .find(|n| n != "lo")
        .expect("keepalived -t needs a non-loopback network interface");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("keepalived.conf");
    fs::write(
        &path,
        conf.replace("interface eth0", &format!("interface {interface}")),
    )
    .unwrap();
    let out = run(
        "keepalived",
        &["--config-test", "--use-file", path.to_str().unwrap()],
        "keepalived",
    );
    // keepalived before 2.2.8 (Debian 12's 2.2.7) ends a config test that checked a script
    // under script security by killing itself with SIGTERM, after parsing everything
    // (acassen/keepalived#2587, fixed by #2182's follow-up in 2.2.8); its diagnostics are
    // printed before that.
    use std::os::unix::process::ExitStatusExt;
    let finished = out.status.code().is_some() || out.status.signal() == Some(15);
    assert!(finished, "keepalived -t: {:?}\n{}", out.status, said(&out));
    let text = said(&out);
    (out, text)
}

#[test]
fn keepalived_moves_the_address_while_splicer_still_serves() {
    let conf = read(KEEPALIVED);
    let (out, diagnostics) = keepalived_test(&conf);
    assert!(
        diagnostics.trim().is_empty() && out.status.code().unwrap_or(0) == 0,
        "keepalived -t {KEEPALIVED}: {:?}\n{diagnostics}",
        out.status
    );
    // The check has teeth: a misspelt keyword is reported. (A script that does not exist is
    // not: keepalived -t says nothing about it, hence the check for curl below.)
    let broken = conf.replace("interval 2", "intervall 2");
    let (_, complaint) = keepalived_test(&broken);
    assert!(
        complaint.contains("intervall"),
        "keepalived -t must report an unknown keyword:\n{complaint}"
    );

    // The check is /ready on the admin API of the config the machines run.
    let config = config_file("config/quay-ha.toml");
    let admin = config.admin_bind.expect("[admin]");
    let script = vrrp_script_setting(&conf, "script");
    let script = script.trim_matches('"');
    assert!(
        script.starts_with("/usr/bin/curl ") && script.contains("--fail"),
        "{script}"
    );
    assert!(
        script.ends_with(&format!(" http://{admin}/ready")),
        "{script}"
    );
    assert!(
        Path::new("/usr/bin/curl").exists(),
        "the check runs /usr/bin/curl (Debian package curl)"
    );
    // The address moves within interval x fall (+ a check's timeout) of SIGTERM; splicer must
    // still be accepting then.
    let seconds = |key: &str| -> u64 { vrrp_script_setting(&conf, key).parse().unwrap() };
    let moved = Duration::from_secs(seconds("interval") * seconds("fall") + seconds("timeout"));
    assert!(
        config.shutdown_delay > moved,
        "shutdown_delay {:?} must exceed interval x fall + timeout = {moved:?}",
        config.shutdown_delay
    );
    assert!(conf.contains("track_script") && conf.contains("splicer_ready"));
    // The rule is written down where operators read it.
    for (file, needle) in [
        (KEEPALIVED, "shutdown_delay must exceed interval x fall"),
        ("README.md", "shutdown_delay"),
        ("docs/quay-ha.md", "deploy/keepalived/keepalived.conf"),
    ] {
        let text = read(file).replace('\n', " ").replace("  ", " ");
        assert!(text.contains(needle), "{file} lacks {needle:?}");
    }
}

// ---- container image --------------------------------------------------------------------------

/// The runtime stage's HEALTHCHECK command, in exec form.
fn healthcheck() -> Vec<String> {
    let dockerfile = read("Dockerfile");
    let start = dockerfile
        .find("\nHEALTHCHECK ")
        .expect("a HEALTHCHECK instruction");
    // The instruction and its continuation lines.
    let mut logical = Vec::new();
    for line in dockerfile[start + 1..].lines() {
        let line = line.trim();
        logical.push(line.trim_end_matches('\\').trim());
        if !line.ends_with('\\') {
            break;
        }
    }
    let logical = logical.join(" ");
    let cmd = logical.split_once("CMD ").expect("HEALTHCHECK ... CMD").1;
    serde_json::from_str(cmd).unwrap_or_else(|e| panic!("not exec form ({e}): {cmd}"))
}

/// An admin API stand-in on loopback that answers every request with `answer` (None: accept
/// and never answer).
fn fake_admin(answer: Option<&'static str>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            let mut request = Vec::new();
            let mut buf = [0u8; 1024];
            while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                match stream.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => request.extend_from_slice(&buf[..n]),
                }
            }
            assert!(request.starts_with(b"GET /ready HTTP/1."), "asks /ready");
            match answer {
                Some(answer) => {
                    let _ = stream.write_all(answer.as_bytes());
                }
                None => std::thread::sleep(Duration::from_secs(30)),
            }
        }
    });
    addr
}

#[test]
fn container_health_check_is_readiness_and_exits_0_or_1() {
    let cmd = healthcheck();
    assert_eq!(
        cmd,
        ["splicer", "status", "--ready"],
        "the image has no curl: splicer checks itself"
    );
    let check = |admin: &str| -> (Option<i32>, Duration) {
        let started = Instant::now();
        let out = Command::new(env!("CARGO_BIN_EXE_splicer"))
            .args(&cmd[1..])
            .env_clear()
            .env("SPLICER_ADMIN", admin)
            .output()
            .expect("splicer runs");
        (out.status.code(), started.elapsed())
    };
    let ready = fake_admin(Some("HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\nok\n"));
    assert_eq!(
        check(&format!("http://{ready}")).0,
        Some(0),
        "200 is healthy"
    );
    let bare = fake_admin(Some("HTTP/1.1 200\r\n\r\n"));
    assert_eq!(
        check(&format!("http://{bare}")).0,
        Some(0),
        "200 without a reason phrase"
    );
    let stopping = fake_admin(Some(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\n\r\n",
    ));
    assert_eq!(
        check(&format!("http://{stopping}")).0,
        Some(1),
        "503 is unhealthy"
    );
    let closed = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    assert_eq!(check(&format!("http://{closed}")).0, Some(1), "refused");
    assert_eq!(
        check("not a url").0,
        Some(1),
        "a bad SPLICER_ADMIN is not exit 2"
    );
    let hung = fake_admin(None);
    let (code, took) = check(&format!("http://{hung}"));
    assert_eq!(code, Some(1), "no answer is unhealthy");
    assert!(
        took < Duration::from_secs(5),
        "the check gives up before Docker's --timeout=5s: {took:?}"
    );
    let dockerfile = read("Dockerfile");
    assert!(dockerfile.contains("--timeout=5s"));
    // Debian's stable release, named as such.
    assert!(dockerfile.contains("FROM rust:1.95.0-slim-trixie AS build"));
    assert!(dockerfile.contains("FROM debian:trixie-slim"));
    assert!(!dockerfile.contains("bookworm\" is stable") && dockerfile.contains("13 \"trixie\""));
}

// ---- behind a cloud balancer, and the docs ----------------------------------------------------

#[test]
fn the_cloud_balancer_checks_ready_not_the_data_port() {
    let text = read("config/behind-nlb.toml");
    let config = lifecycle(&text, "config/behind-nlb.toml");
    let admin = config.admin_bind.expect("[admin]");
    assert!(
        !admin.ip().is_loopback(),
        "the balancer must reach the admin API"
    );
    assert!(
        config.has_token_file,
        "a reachable admin API needs token_file (docs/architecture.md §3)"
    );
    let flat = text.replace("\n#", "").replace("  ", " ");
    assert!(
        flat.contains("path /ready"),
        "behind-nlb.toml tells how to set up the balancer's check"
    );
    assert!(!flat.contains("can stay a plain TCP check"));
}

#[test]
fn docs_describe_the_shutdown_contract() {
    let readme = read("README.md");
    let guide = read("docs/quay-ha.md");
    for (file, text) in [("README.md", &readme), ("docs/quay-ha.md", &guide)] {
        let flat = text.replace('\n', " ");
        // The old description: listeners closed at SIGTERM.
        for stale in [
            "SIGTERM or SIGINT: stop accepting (",
            "it stopped accepting on SIGTERM, as it should",
            "SIGTERM makes it fail at once",
        ] {
            assert!(!flat.contains(stale), "{file} still says {stale:?}");
        }
        assert!(
            flat.contains("shutdown_delay"),
            "{file} names shutdown_delay"
        );
    }
    let flat = guide.replace('\n', " ");
    assert!(
        !flat.contains("reported but by default not counted"),
        "Quay's /health/instance skips redis and storage: they are not in its body"
    );
    assert!(!flat.contains("45-second grace period"));
}
