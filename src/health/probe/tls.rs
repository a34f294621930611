//! The probe's rustls client configuration, built once per pool. It never touches the data path,
//! which passes TLS through untouched.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, InvalidDnsNameError, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};

use crate::config::read::{read_regular_file, MAX_CA_FILE_BYTES};
use crate::config::HealthConfig;

/// Why a pool's prober could not be built.
#[derive(Debug, thiserror::Error)]
pub enum ProbeSetupError {
    /// `ca_file` could not be read or is not PEM.
    #[error("cannot read ca_file {}", path.display())]
    CaFile {
        /// The configured file.
        path: PathBuf,
        /// The read or PEM error.
        #[source]
        source: rustls::pki_types::pem::Error,
    },
    /// `ca_file` holds no certificate.
    #[error("ca_file {} holds no PEM certificate", path.display())]
    CaFileEmpty {
        /// The configured file.
        path: PathBuf,
    },
    /// A certificate in `ca_file` cannot serve as a trust anchor.
    #[error("ca_file {} holds an unusable certificate", path.display())]
    CaCert {
        /// The configured file.
        path: PathBuf,
        /// rustls's reason.
        #[source]
        source: rustls::Error,
    },
    /// `tls_verify` without `ca_file`, and no system root certificate could be loaded.
    #[error("no system root certificates could be loaded ({detail})")]
    NoSystemRoots {
        /// What the platform loader reported.
        detail: String,
    },
    /// `host` cannot be a TLS server name.
    #[error("host {host:?} is not a valid TLS server name")]
    ServerName {
        /// The configured host.
        host: String,
        /// rustls's reason.
        #[source]
        source: InvalidDnsNameError,
    },
    /// `host` cannot be an HTTP header value.
    #[error("host {0:?} is not a valid Host header value")]
    HostHeader(String),
    /// `path` is not a valid request target.
    #[error("path {path:?} is not a valid request path")]
    Path {
        /// The configured path.
        path: String,
        /// The URI parse error.
        #[source]
        source: hyper::http::uri::InvalidUri,
    },
    /// rustls rejected the configuration.
    #[error("tls setup failed")]
    Tls(#[source] rustls::Error),
}

/// The client config for `https` checks, with its own ring provider so nothing depends on a
/// process-wide default provider having been installed. Its resumption store is replaced per
/// backend (see `sessions`).
pub(super) fn client_config(health: &HealthConfig) -> Result<ClientConfig, ProbeSetupError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(ProbeSetupError::Tls)?;
    let mut config = if health.tls_verify {
        let roots = match &health.ca_file {
            Some(path) => roots_from_pem(path)?,
            None => system_roots()?,
        };
        builder.with_root_certificates(roots).with_no_client_auth()
    } else {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyCertificate::new(&provider)))
            .with_no_client_auth()
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

fn roots_from_pem(path: &Path) -> Result<RootCertStore, ProbeSetupError> {
    let pem_error = |source| ProbeSetupError::CaFile {
        path: path.to_owned(),
        source,
    };
    // Validation refused FIFOs and devices; reading the same way here means a file swapped for
    // one since then is refused too, instead of blocking the pool's supervisor.
    let bytes = read_regular_file(path, MAX_CA_FILE_BYTES)
        .map_err(|e| pem_error(rustls::pki_types::pem::Error::Io(std::io::Error::other(e))))?;
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&bytes) {
        roots
            .add(cert.map_err(pem_error)?)
            .map_err(|source| ProbeSetupError::CaCert {
                path: path.to_owned(),
                source,
            })?;
    }
    if roots.is_empty() {
        return Err(ProbeSetupError::CaFileEmpty {
            path: path.to_owned(),
        });
    }
    Ok(roots)
}

/// The platform's roots; partial load errors are tolerated (a distro bundle often holds a few
/// certificates webpki rejects) as long as something usable remains.
fn system_roots() -> Result<RootCertStore, ProbeSetupError> {
    let loaded = rustls_native_certs::load_native_certs();
    let mut roots = RootCertStore::empty();
    let (_added, ignored) = roots.add_parsable_certificates(loaded.certs);
    if roots.is_empty() {
        let mut problems: Vec<String> = loaded.errors.iter().map(|e| e.to_string()).collect();
        if ignored > 0 {
            problems.push(format!("{ignored} unparsable certificates"));
        }
        if problems.is_empty() {
            problems.push("none found".to_owned());
        }
        return Err(ProbeSetupError::NoSystemRoots {
            detail: problems.join("; "),
        });
    }
    if !loaded.errors.is_empty() || ignored > 0 {
        tracing::warn!(
            errors = loaded.errors.len(),
            ignored,
            "some system root certificates could not be loaded"
        );
    }
    Ok(roots)
}

/// For `tls_verify = false`: trusts any certificate chain, but still checks the handshake
/// signatures so the probe proves the backend completes a real handshake with its own key.
#[derive(Debug)]
struct AnyCertificate {
    algorithms: WebPkiSupportedAlgorithms,
}

impl AnyCertificate {
    fn new(provider: &CryptoProvider) -> Self {
        AnyCertificate {
            algorithms: provider.signature_verification_algorithms,
        }
    }
}

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}
