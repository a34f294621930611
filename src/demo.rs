//! `splicer demo`'s pieces: the embedded config/rig.toml pointed at the rig's nodes, and the
//! text that tells a new user what to try. The binary starts the rig and splicer and prints it.

use std::net::SocketAddr;
use std::path::Path;

use crate::config::{self, Config, ConfigError};

/// config/rig.toml, as the demo runs it.
const RIG_TOML: &str = include_str!("../config/rig.toml");

/// Why the demo's config could not be made.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    /// The embedded config/rig.toml lacks what the demo fills in.
    #[error("config/rig.toml: {0}")]
    Template(String),
    /// The filled-in config does not validate (e.g. the CA file cannot be read).
    #[error(transparent)]
    Config(#[from] ConfigError),
}

/// The demo's balancer: `config/rig.toml`, embedded, with `nodes` as backends. With the rig's
/// CA (`ca`: the service name and the CA file's absolute path), the checks verify the nodes'
/// certificates for that name, as docs/quay-ha.md sets them up.
pub fn config(nodes: &[SocketAddr], ca: Option<(&str, &Path)>) -> Result<Config, DemoError> {
    let template = |why: &str| DemoError::Template(why.to_string());
    let mut doc: toml::Table = RIG_TOML.parse().map_err(|e| template(&format!("{e}")))?;
    let pool = doc
        .get_mut("pool")
        .and_then(|p| p.as_array_mut())
        .and_then(|p| p.first_mut())
        .and_then(|p| p.as_table_mut())
        .ok_or_else(|| template("no [[pool]]"))?;
    let backends = nodes.iter().map(|a| a.to_string().into()).collect();
    pool.insert("backends".into(), toml::Value::Array(backends));
    if let Some((name, file)) = ca {
        let health = pool
            .get_mut("health")
            .and_then(|h| h.as_table_mut())
            .ok_or_else(|| template("no [pool.health]"))?;
        health.insert("host".into(), name.into());
        health.insert("tls_verify".into(), true.into());
        health.insert("ca_file".into(), file.display().to_string().into());
    }
    let text = toml::to_string(&doc).map_err(|e| template(&format!("cannot write it: {e}")))?;
    Ok(config::parse(Path::new("config/rig.toml (demo)"), &text)?)
}

/// How to run this same binary from the user's shell: `splicer` when that is what PATH finds,
/// else its path, relative when under the working directory (`./target/release/splicer` after
/// `cargo run --release -- demo`, which puts nothing on PATH).
pub fn self_command() -> String {
    let Ok(exe) = std::env::current_exe().and_then(std::fs::canonicalize) else {
        return "splicer".to_string();
    };
    let on_path = std::env::var_os("PATH").is_some_and(|path| {
        std::env::split_paths(&path)
            .filter_map(|dir| std::fs::canonicalize(dir.join("splicer")).ok())
            .any(|found| found == exe)
    });
    if on_path {
        return "splicer".to_string();
    }
    let relative = std::env::current_dir().ok().and_then(|cwd| {
        exe.strip_prefix(cwd)
            .ok()
            .map(|r| format!("./{}", r.display()))
    });
    relative.unwrap_or_else(|| exe.display().to_string())
}

/// Where the running demo's parts are, for [`instructions`].
#[derive(Debug, Clone)]
pub struct Running<'a> {
    /// The simulated nodes.
    pub nodes: &'a [SocketAddr],
    /// splicer's listener.
    pub listener: SocketAddr,
    /// splicer's admin API.
    pub admin: SocketAddr,
    /// The rig's control API.
    pub control: SocketAddr,
    /// The service name and CA file when the nodes' certificates come from the rig's CA.
    pub verified: Option<(&'a str, &'a Path)>,
    /// How the user runs this binary ([`self_command`]).
    pub splicer: &'a str,
}

/// What the demo prints: its parts, then commands to try, each with what it shows.
pub fn instructions(d: &Running<'_>) -> String {
    let (lb, admin, control, splicer) = (d.listener, d.admin, d.control, d.splicer);
    let mut text = format!(
        "\nsplicer demo: {} simulated nodes behind splicer on https://{lb}/\n",
        d.nodes.len()
    );
    let certificate = match d.verified {
        Some((name, file)) => format!(
            "a certificate for {name} signed by the rig's CA, {}",
            file.display()
        ),
        None => "its own self-signed certificate".to_string(),
    };
    for (i, addr) in d.nodes.iter().enumerate() {
        text.push_str(&format!(
            "  node-{}  {addr}  ({certificate}; TLS ends at the node)\n",
            i + 1
        ));
    }
    let verified_curl = match d.verified {
        Some((name, file)) => format!(
            "  # the same, verified as a client of {name} would (splicer's checks verify it too)\n  \
             curl --cacert {} --resolve {name}:{port}:{ip} https://{name}:{port}/\n",
            file.display(),
            port = lb.port(),
            ip = lb.ip()
        ),
        None => String::new(),
    };
    text.push_str(&format!(
        r#"
Try, in another terminal:
  # which node answered (the balancer rotates; -k because the nodes' certificates are self-signed)
  for i in 1 2 3 4 5 6; do curl -sk https://{lb}/; done
{verified_curl}  # the certificate is the node's own: splicer does not terminate TLS
  openssl s_client -connect {lb} </dev/null 2>/dev/null | grep subject=
  # backend states as splicer sees them, or open the dashboard, http://{admin}/, in a browser
  curl -s http://{admin}/status
  # node 2 starts failing its health check: it leaves within ~2.5 s (fall = 2, interval 1 s)
  curl -s -X POST -d 503 http://{control}/nodes/2/health
  for i in 1 2 3 4 5 6; do curl -sk https://{lb}/; done
  # ...and comes back after two passing checks
  curl -s -X POST -d 200 http://{control}/nodes/2/health
  # the shared database fails over: every node answers 503 with database=false, yet all stay
  # in rotation (a shared outage, shown by splicer status), while the cluster check fails
  curl -s -X POST http://{control}/shared/database/down
  {splicer} status --admin {admin}
  curl -s -X POST http://{control}/shared/database/up
  # a machine dying: no client connection fails, the node leaves
  curl -s -X POST http://{control}/nodes/3/stop
  curl -s -X POST http://{control}/nodes/3/start
  # the whole cluster: GET http://{control}/nodes

Ctrl-C stops the demo.{install_hint}
"#,
        install_hint = if splicer == "splicer" {
            ""
        } else {
            "\n(`cargo install --path .` puts `splicer` on your PATH.)"
        }
    ));
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nodes() -> Vec<SocketAddr> {
        (2..7)
            .map(|i| SocketAddr::from(([127, 0, 0, i], 9443)))
            .collect()
    }

    #[test]
    fn the_demo_runs_config_rig_toml_with_the_rigs_nodes() {
        let file = config::load(Path::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/config/rig.toml"
        )))
        .unwrap();
        let nodes = nodes();
        let demo = config(&nodes, None).unwrap();
        let addresses: Vec<SocketAddr> = demo.pools[0].backends.iter().map(|b| b.address).collect();
        assert_eq!(addresses, nodes);
        assert_eq!(demo.pools[0].health, file.pools[0].health);
        assert_eq!(demo.pools[0].cluster_health, file.pools[0].cluster_health);
        assert_eq!(demo.listeners[0].bind, file.listeners[0].bind);
        assert_eq!(demo.runtime.drain_timeout, file.runtime.drain_timeout);

        let ca = Path::new("/tmp/rig-ca.pem");
        let verified = config(&nodes, Some(("quay.example.com", ca)));
        // The CA file does not exist: validation reads it, and says so.
        let e = verified.unwrap_err().to_string();
        assert!(e.contains("rig-ca.pem"), "{e}");
    }

    #[test]
    fn instructions_name_every_part_and_the_verified_curl_only_with_a_ca() {
        let nodes = nodes();
        let mut d = Running {
            nodes: &nodes,
            listener: SocketAddr::from(([127, 0, 0, 1], 8443)),
            admin: SocketAddr::from(([127, 0, 0, 1], 9090)),
            control: SocketAddr::from(([127, 0, 0, 1], 9101)),
            verified: None,
            splicer: "./target/release/splicer",
        };
        let plain = instructions(&d);
        assert!(plain.contains("5 simulated nodes behind splicer on https://127.0.0.1:8443/"));
        assert!(plain.contains("node-5  127.0.0.6:9443"), "{plain}");
        assert!(plain.contains("./target/release/splicer status --admin 127.0.0.1:9090"));
        assert!(plain.contains("http://127.0.0.1:9101/nodes/2/health"));
        assert!(plain.contains("cargo install --path ."));
        assert!(!plain.contains("--cacert"));
        d.verified = Some(("quay.example.com", Path::new("/tmp/ca.pem")));
        d.splicer = "splicer";
        let verified = instructions(&d);
        assert!(verified.contains(
            "curl --cacert /tmp/ca.pem --resolve quay.example.com:8443:127.0.0.1 https://quay.example.com:8443/"
        ));
        assert!(!verified.contains("cargo install"));
    }
}
