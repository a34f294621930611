//! Each node's identity, made fresh at rig start so no key material is checked in: by default
//! a self-signed certificate for `node-i`; with a [`RigCa`], a certificate signed by one CA the
//! rig makes, so a client can verify the nodes under a real service name (`quay.example.com`)
//! as it would verify Quay's machines.

use std::net::IpAddr;
use std::sync::Arc;

use rcgen::{
    BasicConstraints, Certificate, CertificateParams, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose, SanType,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::ServerConfig;

/// Common name of the rig's CA: says where the certificate came from when someone finds the
/// file later.
const CA_COMMON_NAME: &str = "splicer rig CA";

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

/// The rig's own certificate authority: one per rig, signing every node's certificate, which
/// then also names `service_name`.
pub(crate) struct RigCa {
    cert: Certificate,
    key: KeyPair,
    service_name: String,
}

impl RigCa {
    /// A fresh CA (CN "splicer rig CA", allowed to sign certificates and nothing else) whose
    /// node certificates will carry `service_name` as a DNS name.
    pub(crate) fn new(service_name: &str) -> Result<RigCa, CertError> {
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, CA_COMMON_NAME);
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate().map_err(CertError::Generate)?;
        let cert = params.self_signed(&key).map_err(CertError::Generate)?;
        Ok(RigCa {
            cert,
            key,
            service_name: service_name.to_owned(),
        })
    }

    /// The CA certificate as PEM, what a client puts in `--cacert` or `ca_file`.
    pub(crate) fn cert_pem(&self) -> String {
        self.cert.pem()
    }
}

/// Makes a certificate for `name` (as CN and SAN DNS) and `ip` (as SAN IP), and a TLS server
/// configuration offering only HTTP/1.1 over ALPN, as a Quay node does. Without `ca` the
/// certificate is self-signed; with one it is signed by it and names its service name first.
pub(crate) fn node_identity(
    name: &str,
    ip: IpAddr,
    ca: Option<&RigCa>,
) -> Result<NodeIdentity, CertError> {
    let mut dns_names = Vec::with_capacity(2);
    if let Some(ca) = ca {
        dns_names.push(ca.service_name.clone());
    }
    dns_names.push(name.to_owned());
    let mut params = CertificateParams::new(dns_names).map_err(CertError::Generate)?;
    params.subject_alt_names.push(SanType::IpAddress(ip));
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, name);
    params.distinguished_name = dn;
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];

    let key = KeyPair::generate().map_err(CertError::Generate)?;
    let cert = match ca {
        None => params.self_signed(&key),
        Some(ca) => {
            // Strict verifiers (OpenSSL's X509_STRICT, Python 3.13) want the issuer's key id.
            params.use_authority_key_identifier_extension = true;
            params.key_usages = vec![
                KeyUsagePurpose::DigitalSignature,
                KeyUsagePurpose::KeyEncipherment,
            ];
            params.signed_by(&key, &ca.cert, &ca.key)
        }
    }
    .map_err(CertError::Generate)?;
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
