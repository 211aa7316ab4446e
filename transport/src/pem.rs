//! Reading the cluster's PEM files (certificates, keys), with errors that
//! name the file: shared by the TLS setup, the identity a `tern` presents
//! and the ticket signer.

use crate::TransportError;
use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::path::Path;

fn read(what: &'static str, path: &Path) -> Result<Vec<u8>, TransportError> {
    std::fs::read(path).map_err(|io| TransportError::ReadPem { what, path: path.to_path_buf(), io })
}

/// Every certificate in a PEM file (at least one).
pub fn certs(what: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, TransportError> {
    let pem = read(what, path)?;
    let certs: Vec<_> = CertificateDer::pem_slice_iter(&pem).collect::<Result<_, _>>().map_err(|e| pem_error(what, path, e))?;
    if certs.is_empty() {
        return Err(TransportError::EmptyPem { what, path: path.to_path_buf() });
    }
    Ok(certs)
}

/// The private key in a PEM file.
pub fn key(path: &Path) -> Result<PrivateKeyDer<'static>, TransportError> {
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
