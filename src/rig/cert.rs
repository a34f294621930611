//! Each node's self-signed identity, made fresh at rig start so no key material is checked in.

use std::net::IpAddr;
use std::sync::Arc;

use rcgen::{
    CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, KeyPair, SanType,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::ServerConfig;

/// A node's certificate (both encodings) and the TLS server settings that present it.
pub(crate) struct NodeIdentity {
    /// PEM, handed to tests that want to check the balancer passed the node's TLS through.
    pub(crate) cert_pem: String,
    /// DER of the same certificate, usable as a trust anchor by clients.
    pub(crate) cert_der: CertificateDer<'static>,
    /// Server settings with the ring provider, never the process default, so the rig
    /// works inside programs that install another provider (or none).
    pub(crate) tls: Arc<ServerConfig>,
}

/// Why a node's identity could not be made.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    /// rcgen refused the parameters or key generation failed.
    #[error("generating the certificate")]
    Generate(#[source] rcgen::Error),
    /// rustls rejected the generated certificate or key.
    #[error("building the TLS server configuration")]
    Tls(#[source] rustls::Error),
}

/// Makes a certificate for `name` (as CN and SAN DNS) and `ip` (as SAN IP), and a TLS server
/// configuration offering only HTTP/1.1 over ALPN, as a Quay node does.
pub(crate) fn node_identity(name: &str, ip: IpAddr) -> Result<NodeIdentity, CertError> {
    let mut params = CertificateParams::new(vec![name.to_owned()]).map_err(CertError::Generate)?;
    params.subject_alt_names.push(SanType::IpAddress(ip));
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, name);
    params.distinguished_name = dn;
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];

    let key = KeyPair::generate().map_err(CertError::Generate)?;
    let cert = params.self_signed(&key).map_err(CertError::Generate)?;
    let cert_der = cert.der().clone();
    let key_der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));

    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(CertError::Tls)?
        .with_no_client_auth()
        .with_single_cert(vec![cert_der.clone()], key_der)
        .map_err(CertError::Tls)?;
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];

    Ok(NodeIdentity {
        cert_pem: cert.pem(),
        cert_der,
        tls: Arc::new(tls),
    })
}
