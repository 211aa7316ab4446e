//! rustls configurations for both directions of mutual TLS.
//!
//! Every config is built with the ring provider passed explicitly, so no
//! process-wide default provider has to be installed first. Only TLS 1.3
//! (QUIC requires it).
//!
//! Revocation: both sides check the peer's certificate against the CA's
//! revocation list (`crl.pem`, written by `tern pki revoke`; the `crl` path
//! of [`TlsFiles`], else `crl.pem` beside the CA when it exists). The list
//! is looked at again (a `stat`) at every handshake and re-read when the
//! file changed, so a revocation takes effect at the next connection
//! without a restart; connections already open stay open. A list that
//! cannot be read or parsed refuses every handshake (it fails closed) and
//! says why in the log.

use crate::pem::{certs, key};
use crate::{TransportError, ALPN};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::WebPkiClientVerifier;
use rustls::{DigitallySignedStruct, DistinguishedName, RootCertStore, SignatureScheme};
use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// Where a process finds the cluster CA and its own certificate and key.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsFiles {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
    /// The CA's revocation list; by default `crl.pem` beside `ca`, when it
    /// exists.
    #[serde(default)]
    pub crl: Option<PathBuf>,
}

impl TlsFiles {
    /// The CA, certificate and key `dir/ca.pem`, `dir/NAME.pem`, `dir/NAME.key`
    /// as `tern pki init` writes them (the CRL found beside the CA).
    pub fn in_dir(dir: &Path, name: &str) -> TlsFiles {
        TlsFiles { ca: dir.join("ca.pem"), cert: dir.join(format!("{name}.pem")), key: dir.join(format!("{name}.key")), crl: None }
    }

    /// The revocation list to load: the configured one (which must exist),
    /// else `crl.pem` beside the CA.
    pub fn crl_path(&self) -> (PathBuf, bool) {
        match &self.crl {
            Some(p) => (p.clone(), true),
            None => (self.ca.with_file_name("crl.pem"), false),
        }
    }
}

fn roots(files: &TlsFiles) -> Result<RootCertStore, TransportError> {
    let mut roots = RootCertStore::empty();
    for c in certs("CA certificate", &files.ca)? {
        roots.add(c).map_err(|e| TransportError::Tls(format!("{}: {e}", files.ca.display())))?;
    }
    Ok(roots)
}

/// ring, with the TLS 1.3 suites in the order that moves bulk data fastest:
/// AES-128-GCM (10 AES rounds a block, against AES-256's 14: about 30 %
/// less cipher work, on every machine with AES instructions), then
/// AES-256-GCM, then ChaCha20-Poly1305 (faster where AES runs in software).
fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    use rustls::crypto::ring::cipher_suite::{TLS13_AES_128_GCM_SHA256, TLS13_AES_256_GCM_SHA384, TLS13_CHACHA20_POLY1305_SHA256};
    let mut p = rustls::crypto::ring::default_provider();
    p.cipher_suites = vec![TLS13_AES_128_GCM_SHA256, TLS13_AES_256_GCM_SHA384, TLS13_CHACHA20_POLY1305_SHA256];
    Arc::new(p)
}

fn tls_err(e: rustls::Error) -> TransportError {
    TransportError::Tls(e.to_string())
}

/// A server that accepts only clients with a certificate from the CA.
pub fn server_config(files: &TlsFiles) -> Result<rustls::ServerConfig, TransportError> {
    let provider = provider();
    let verifier: Arc<dyn ClientCertVerifier> = Trust::load(files)?;
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(tls_err)?
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs("certificate", &files.cert)?, key(&files.key)?)
        .map_err(tls_err)?;
    cfg.alpn_protocols = vec![ALPN.to_vec()];
    Ok(cfg)
}

/// A client that trusts only servers with a certificate from the CA, and
/// presents its own.
pub fn client_config(files: &TlsFiles) -> Result<rustls::ClientConfig, TransportError> {
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(tls_err)?
        .dangerous()
        .with_custom_certificate_verifier(Trust::load(files)?)
        .with_client_auth_cert(certs("certificate", &files.cert)?, key(&files.key)?)
        .map_err(tls_err)?;
    cfg.alpn_protocols = vec![ALPN.to_vec()];
    Ok(cfg)
}

/// What a file looked like: a change of any of them means "read it again".
type Stamp = Option<(std::time::SystemTime, u64, u64)>;

fn stamp(path: &Path) -> Stamp {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).ok()?;
    Some((m.modified().ok()?, m.ino(), m.len()))
}

struct Verifiers {
    stamp: Stamp,
    client: Arc<dyn ClientCertVerifier>,
    server: Arc<WebPkiServerVerifier>,
}

/// The cluster CA and its revocation list: verifies peers' certificates
/// (as a server, as a client, and a ticket's signer), re-reading the list
/// when its file changes.
pub struct Trust {
    roots: Arc<RootCertStore>,
    provider: Arc<rustls::crypto::CryptoProvider>,
    crl: PathBuf,
    crl_required: bool,
    hints: Vec<DistinguishedName>,
    current: Mutex<Verifiers>,
}

impl std::fmt::Debug for Trust {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Trust").field("crl", &self.crl).finish()
    }
}

fn crl_error(path: &Path, detail: impl std::fmt::Display) -> TransportError {
    TransportError::Tls(format!("the revocation list {} is unusable ({detail}); write it again with `tern pki revoke`", path.display()))
}

impl Trust {
    pub fn load(files: &TlsFiles) -> Result<Arc<Trust>, TransportError> {
        let (crl, crl_required) = files.crl_path();
        let roots = Arc::new(roots(files)?);
        let provider = provider();
        let (client, server, stamp) = build(&roots, &provider, &crl, crl_required)?;
        let hints = client.root_hint_subjects().to_vec();
        Ok(Arc::new(Trust { roots, provider, crl, crl_required, hints, current: Mutex::new(Verifiers { stamp, client, server }) }))
    }

    /// The verifiers for the revocation list as the file is now.
    fn verifiers(&self) -> Result<(Arc<dyn ClientCertVerifier>, Arc<WebPkiServerVerifier>), rustls::Error> {
        let mut cur = self.current.lock().unwrap_or_else(|e| e.into_inner());
        if stamp(&self.crl) != cur.stamp {
            match build(&self.roots, &self.provider, &self.crl, self.crl_required) {
                Ok((client, server, stamp)) => {
                    tracing::info!(crl = %self.crl.display(), "revocation list (re)loaded");
                    *cur = Verifiers { stamp, client, server };
                }
                Err(e) => {
                    tracing::error!("{e}; refusing every peer until it is fixed");
                    return Err(rustls::Error::General(e.to_string()));
                }
            }
        }
        Ok((cur.client.clone(), cur.server.clone()))
    }

    /// Checks that `der` chains to the CA, is not revoked, is valid at `now`
    /// and allows client authentication (as every tern leaf does).
    pub fn verify_leaf(&self, der: &[u8], now: UnixTime) -> Result<(), TransportError> {
        let (client, _) = self.verifiers().map_err(|e| TransportError::Tls(e.to_string()))?;
        client.verify_client_cert(&CertificateDer::from(der), &[], now).map(|_| ()).map_err(|e| TransportError::Tls(e.to_string()))
    }
}

type Built = (Arc<dyn ClientCertVerifier>, Arc<WebPkiServerVerifier>, Stamp);

fn build(roots: &Arc<RootCertStore>, provider: &Arc<rustls::crypto::CryptoProvider>, crl: &Path, required: bool) -> Result<Built, TransportError> {
    let before = stamp(crl);
    let crls: Vec<CertificateRevocationListDer<'static>> = match std::fs::read(crl) {
        Ok(pem) => CertificateRevocationListDer::pem_slice_iter(&pem).collect::<Result<_, _>>().map_err(|e| crl_error(crl, e))?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !required => Vec::new(),
        Err(e) => return Err(crl_error(crl, e)),
    };
    let client = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
        .with_crls(crls.clone())
        .only_check_end_entity_revocation()
        .build()
        .map_err(|e| crl_error(crl, e))?;
    let server = WebPkiServerVerifier::builder_with_provider(roots.clone(), provider.clone())
        .with_crls(crls)
        .only_check_end_entity_revocation()
        .build()
        .map_err(|e| crl_error(crl, e))?;
    Ok((client, server, before))
}

/// A tern leaf must carry a role (`pki.rs`); checked at the handshake so
/// the refusal names the fix.
fn require_role(der: &CertificateDer<'_>) -> Result<(), rustls::Error> {
    match crate::identity::identity_of(der.as_ref()) {
        Ok(_) => Ok(()),
        Err(e) => Err(rustls::Error::General(e.to_string())),
    }
}

impl ClientCertVerifier for Trust {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &self.hints
    }
    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let v = self.verifiers()?.0.verify_client_cert(end_entity, intermediates, now)?;
        require_role(end_entity)?;
        Ok(v)
    }
    fn verify_tls12_signature(&self, m: &[u8], c: &CertificateDer<'_>, d: &DigitallySignedStruct) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.verifiers()?.0.verify_tls12_signature(m, c, d)
    }
    fn verify_tls13_signature(&self, m: &[u8], c: &CertificateDer<'_>, d: &DigitallySignedStruct) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.verifiers()?.0.verify_tls13_signature(m, c, d)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

impl ServerCertVerifier for Trust {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let v = self.verifiers()?.1.verify_server_cert(end_entity, intermediates, server_name, ocsp, now)?;
        require_role(end_entity)?;
        Ok(v)
    }
    fn verify_tls12_signature(&self, m: &[u8], c: &CertificateDer<'_>, d: &DigitallySignedStruct) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.verifiers()?.1.verify_tls12_signature(m, c, d)
    }
    fn verify_tls13_signature(&self, m: &[u8], c: &CertificateDer<'_>, d: &DigitallySignedStruct) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.verifiers()?.1.verify_tls13_signature(m, c, d)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}
