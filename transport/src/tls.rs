//! rustls configurations for both directions of mutual TLS.
//!
//! Every config is built with the ring provider passed explicitly, so no
//! process-wide default provider has to be installed first. Only TLS 1.3
//! (QUIC requires it).

use crate::{TransportError, ALPN};
use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::RootCertStore;
use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Where a process finds the cluster CA and its own certificate and key.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsFiles {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

fn read(what: &'static str, path: &Path) -> Result<Vec<u8>, TransportError> {
    std::fs::read(path).map_err(|io| TransportError::ReadPem { what, path: path.to_path_buf(), io })
}

fn certs(what: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, TransportError> {
    let pem = read(what, path)?;
    let certs: Vec<_> = CertificateDer::pem_slice_iter(&pem).collect::<Result<_, _>>().map_err(|e| pem_error(what, path, e))?;
    if certs.is_empty() {
        return Err(TransportError::EmptyPem { what, path: path.to_path_buf() });
    }
    Ok(certs)
}

fn key(path: &Path) -> Result<PrivateKeyDer<'static>, TransportError> {
    let pem = read("private key", path)?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| pem_error("private key", path, e))
}

fn pem_error(what: &'static str, path: &Path, e: pem::Error) -> TransportError {
    let path = path.to_path_buf();
    match e {
        pem::Error::NoItemsFound => TransportError::EmptyPem { what, path },
        pem::Error::Io(io) => TransportError::ReadPem { what, path, io },
        other => TransportError::BadPem { what, path, detail: other.to_string() },
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
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots(files)?), provider.clone())
        .build()
        .map_err(|e| TransportError::Tls(e.to_string()))?;
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
        .with_root_certificates(roots(files)?)
        .with_client_auth_cert(certs("certificate", &files.cert)?, key(&files.key)?)
        .map_err(tls_err)?;
    cfg.alpn_protocols = vec![ALPN.to_vec()];
    Ok(cfg)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(text: &str) -> tempfile::NamedTempFile {
        let f = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(f.path(), text).unwrap();
        f
    }

    #[test]
    fn pem_files_that_hold_nothing_or_garbage_name_the_file_and_the_fix() {
        let empty = file("");
        assert!(matches!(certs("CA certificate", empty.path()), Err(TransportError::EmptyPem { .. })));
        assert!(matches!(key(empty.path()), Err(TransportError::EmptyPem { .. })));
        let broken = file("-----BEGIN CERTIFICATE-----\nnot base64 at all!\n-----END CERTIFICATE-----\n");
        let e = certs("CA certificate", broken.path()).unwrap_err();
        assert!(matches!(e, TransportError::BadPem { .. }), "{e:?}");
        assert!(e.to_string().contains("tern pki init"), "{e}");
        let missing = read("private key", Path::new("/nonexistent/key.pem")).unwrap_err();
        assert!(matches!(missing, TransportError::ReadPem { .. }));
    }
}
