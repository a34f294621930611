//! splicer between real programs: nginx as the HTTPS backend, curl and `openssl s_client` as
//! clients. They verify the certificate by name against a CA file, so a byte out of place in
//! the handshake, or a certificate that is not nginx's, fails them. The programs come from
//! Debian packages that `scripts/test` installs.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair};
use tempfile::TempDir;

use common::peer::{find_program, Daemon};
use common::{backend_state, backends_toml, free_addr, start_splicer};

/// The name the certificate is issued to and clients ask for.
const HOST: &str = "backend.test";
/// The certificate's subject CN, looked for in `openssl s_client`'s output.
const CN: &str = "splicer-interop-nginx";
/// What nginx answers on `/`.
const BODY: &str = "nginx-backend\n";
/// Longest a client program may run.
const PROGRAM_WAIT: Duration = Duration::from_secs(20);

/// A self-signed certificate for `HOST` with subject `CN`, written as `cert.pem`/`key.pem`.
fn write_identity(dir: &Path) -> (PathBuf, PathBuf, String) {
    let mut params = CertificateParams::new(vec![HOST.to_owned()]).expect("params");
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, CN);
    params.distinguished_name = dn;
    let key = KeyPair::generate().expect("key");
    let cert = params.self_signed(&key).expect("cert");
    let cert_path = dir.join("cert.pem");
    let key_path = dir.join("key.pem");
    std::fs::write(&cert_path, cert.pem()).expect("write cert");
    std::fs::write(&key_path, key.serialize_pem()).expect("write key");
    (cert_path, key_path, cert.pem())
}

/// nginx in the foreground, as a single process (no workers left behind), with everything it
/// writes in its own temporary prefix. Dropping it kills it.
struct Nginx {
    daemon: Daemon,
    addr: SocketAddr,
    dir: PathBuf,
}

impl Nginx {
    fn error_log(&self) -> String {
        let errors = std::fs::read_to_string(self.dir.join("error.log")).unwrap_or_default();
        format!("{}{errors}", self.daemon.log())
    }
}

/// Starts nginx serving HTTPS (HTTP/1.1 and h2) with `cert`/`key` on a free loopback port and
/// waits until it accepts connections.
async fn start_nginx(dir: &Path, cert: &Path, key: &Path) -> Nginx {
    let binary = find_program("nginx", "nginx-light");
    let addr = free_addr();
    let d = dir.display();
    let conf = format!(
        r#"
daemon off;
master_process off;
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/error.log info;
events {{ worker_connections 64; }}
http {{
    access_log off;
    client_body_temp_path {d}/body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    server {{
        listen {addr} ssl http2;
        server_name {HOST};
        ssl_certificate {cert};
        ssl_certificate_key {key};
        location / {{
            default_type text/plain;
            return 200 "nginx-backend\n";
        }}
    }}
}}
"#,
        cert = cert.display(),
        key = key.display(),
    );
    let conf_path = dir.join("nginx.conf");
    std::fs::write(&conf_path, conf).expect("write nginx.conf");
    let mut daemon = Daemon::spawn(
        "nginx",
        &binary,
        &[
            "-p".as_ref(),
            dir.as_os_str(),
            "-e".as_ref(),
            dir.join("error.log").as_os_str(),
            "-c".as_ref(),
            conf_path.as_os_str(),
        ],
        dir.join("nginx.out"),
    );
    daemon.wait_listening(addr).await;
    Nginx {
        daemon,
        addr,
        dir: dir.to_path_buf(),
    }
}

/// Runs a client program to completion within `PROGRAM_WAIT`: (success, stdout, stderr).
async fn run(program: &Path, args: &[String]) -> (bool, String, String) {
    let output = tokio::process::Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(PROGRAM_WAIT, output)
        .await
        .unwrap_or_else(|_| {
            panic!(
                "{} {args:?} ran longer than {PROGRAM_WAIT:?}",
                program.display()
            )
        })
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", program.display()));
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// The first PEM certificate block in `text`, whitespace removed.
fn first_pem_block(text: &str) -> Option<String> {
    let begin = text.find("-----BEGIN CERTIFICATE-----")?;
    let end_marker = "-----END CERTIFICATE-----";
    let end = text[begin..].find(end_marker)? + begin + end_marker.len();
    Some(text[begin..end].split_whitespace().collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_and_openssl_reach_nginx_through_splicer() {
    let curl = find_program("curl", "curl");
    let openssl = find_program("openssl", "openssl");
    let dir = TempDir::new().expect("tempdir");
    let (cert, key, cert_pem) = write_identity(dir.path());
    let nginx = start_nginx(dir.path(), &cert, &key).await;

    let splicer = start_splicer(&format!(
        r#"
[[listener]]
name = "https"
bind = "127.0.0.1:0"
pool = "nginx"

[[pool]]
name = "nginx"
backends = {}

[pool.health]
check = "https"
path = "/"
host = "{HOST}"
interval = "1s"
timeout = "500ms"
"#,
        backends_toml(&[nginx.addr])
    ))
    .await;
    // splicer's own HTTPS check against a real server.
    assert_eq!(
        backend_state(splicer.admin, "nginx", nginx.addr).await,
        "up",
        "nginx's error log:\n{}",
        nginx.error_log()
    );
    let port = splicer.addr.port();
    let url = format!("https://{HOST}:{port}/");
    let cacert = cert.display().to_string();

    for (version_flag, expect_version) in [("--http1.1", "1.1"), ("--http2", "2")] {
        let (ok, out, err) = run(
            &curl,
            &[
                "--silent".into(),
                "--show-error".into(),
                "--max-time".into(),
                "10".into(),
                version_flag.into(),
                "--cacert".into(),
                cacert.clone(),
                "--resolve".into(),
                format!("{HOST}:{port}:127.0.0.1"),
                "--write-out".into(),
                "\n%{ssl_verify_result} %{http_version}".into(),
                url.clone(),
            ],
        )
        .await;
        assert!(ok, "curl {version_flag} failed: {err}\n{out}");
        let (body, trailer) = out.rsplit_once('\n').expect("curl's --write-out line");
        assert_eq!(body, BODY, "curl {version_flag}: body");
        assert_eq!(
            trailer,
            format!("0 {expect_version}"),
            "curl {version_flag}: ssl_verify_result and HTTP version (ALPN through splicer)"
        );
    }

    let (ok, out, err) = run(
        &openssl,
        &[
            "s_client".into(),
            "-connect".into(),
            splicer.addr.to_string(),
            "-servername".into(),
            HOST.into(),
            "-CAfile".into(),
            cacert.clone(),
            "-verify_return_error".into(),
        ],
    )
    .await;
    assert!(ok, "openssl s_client failed: {err}\n{out}");
    let subject = out
        .lines()
        .find(|l| l.starts_with("subject="))
        .unwrap_or_else(|| panic!("no subject line in s_client output:\n{out}"));
    assert!(subject.contains(CN), "subject {subject:?} is not nginx's");
    assert!(
        out.contains("Verify return code: 0 (ok)"),
        "s_client did not verify nginx's certificate:\n{out}"
    );
    assert_eq!(
        first_pem_block(&out),
        first_pem_block(&cert_pem),
        "the certificate s_client saw is not the one nginx serves"
    );

    drop(nginx);
}
