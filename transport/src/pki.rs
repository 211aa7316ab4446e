//! The cluster PKI: one CA, one certificate per host, one for the
//! coordinator. `tern pki init` calls [`init`]; [`issue`] adds a host later.
//!
//! Every certificate is ECDSA P-256, names its holder in the common name
//! and as a DNS subject alternative name (plus the host's IP addresses), and
//! is valid for both server and client authentication: agents are servers
//! to the coordinator and clients of each other.

use rcgen::{BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose, SanType};
use std::net::IpAddr;
use std::path::{Path, PathBuf};

/// The name in the coordinator's certificate.
pub const COORDINATOR: &str = "coordinator";

#[derive(Debug, Clone)]
pub struct HostSpec {
    pub name: String,
    pub addresses: Vec<IpAddr>,
}

#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("{0} already exists; refusing to replace the cluster CA (every certificate it signed would stop working). Pass --force to replace it")]
    Exists(PathBuf),
    #[error("writing {path}: {source}")]
    Write { path: PathBuf, source: std::io::Error },
    #[error("reading {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("certificate generation failed: {0}")]
    Rcgen(#[from] rcgen::Error),
    #[error("invalid host name {0:?}: use letters, digits, '-' and '.'")]
    BadName(String),
}

fn write(path: &Path, contents: &str, secret: bool) -> Result<(), PkiError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let err = |source| PkiError::Write { path: path.to_path_buf(), source };
    let mut f =
        std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(if secret { 0o600 } else { 0o644 }).open(path).map_err(err)?;
    f.write_all(contents.as_bytes()).map_err(err)?;
    // `mode` applies only to new files; make an existing key private too.
    if secret {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(err)?;
    }
    Ok(())
}

fn valid_name(name: &str) -> Result<(), PkiError> {
    let ok = !name.is_empty() && name.len() <= 63 && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.');
    if ok {
        Ok(())
    } else {
        Err(PkiError::BadName(name.to_string()))
    }
}

fn ca_params() -> Result<CertificateParams, PkiError> {
    let mut p = CertificateParams::new(Vec::<String>::new())?;
    p.distinguished_name.push(DnType::CommonName, "tern cluster CA");
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    Ok(p)
}

fn leaf(host: &HostSpec, ca: &rcgen::Certificate, ca_key: &KeyPair) -> Result<(String, String), PkiError> {
    valid_name(&host.name)?;
    let mut p = CertificateParams::new(vec![host.name.clone()])?;
    p.distinguished_name.push(DnType::CommonName, host.name.clone());
    p.subject_alt_names.extend(host.addresses.iter().map(|ip| SanType::IpAddress(*ip)));
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
    let key = KeyPair::generate()?;
    let cert = p.signed_by(&key, ca, ca_key)?;
    Ok((cert.pem(), key.serialize_pem()))
}

fn write_leaf(dir: &Path, host: &HostSpec, ca: &rcgen::Certificate, ca_key: &KeyPair) -> Result<Vec<PathBuf>, PkiError> {
    let (cert, key) = leaf(host, ca, ca_key)?;
    let (c, k) = (dir.join(format!("{}.pem", host.name)), dir.join(format!("{}.key", host.name)));
    write(&c, &cert, false)?;
    write(&k, &key, true)?;
    Ok(vec![c, k])
}

/// Creates `ca.pem`/`ca.key`, `<host>.pem`/`<host>.key` for every host and
/// `coordinator.pem`/`coordinator.key` in `dir`. Refuses to replace an
/// existing CA unless `force`. Returns the files written.
pub fn init(dir: &Path, hosts: &[HostSpec], force: bool) -> Result<Vec<PathBuf>, PkiError> {
    let ca_key_path = dir.join("ca.key");
    if ca_key_path.exists() && !force {
        return Err(PkiError::Exists(ca_key_path));
    }
    std::fs::create_dir_all(dir).map_err(|source| PkiError::Write { path: dir.to_path_buf(), source })?;
    let ca_key = KeyPair::generate()?;
    let ca = ca_params()?.self_signed(&ca_key)?;
    let ca_path = dir.join("ca.pem");
    write(&ca_path, &ca.pem(), false)?;
    write(&ca_key_path, &ca_key.serialize_pem(), true)?;
    let mut files = vec![ca_path, ca_key_path];
    let coordinator = HostSpec { name: COORDINATOR.into(), addresses: vec![] };
    for h in hosts.iter().chain(std::iter::once(&coordinator)) {
        files.extend(write_leaf(dir, h, &ca, &ca_key)?);
    }
    Ok(files)
}

/// Adds one host's certificate, signed by the CA already in `dir`.
pub fn issue(dir: &Path, host: &HostSpec) -> Result<Vec<PathBuf>, PkiError> {
    let read = |p: PathBuf| std::fs::read_to_string(&p).map_err(|source| PkiError::Read { path: p, source });
    let ca_key = KeyPair::from_pem(&read(dir.join("ca.key"))?)?;
    // Rebuild the CA certificate object from its PEM: same name and key, so
    // what it signs chains to the original ca.pem.
    let ca = CertificateParams::from_ca_cert_pem(&read(dir.join("ca.pem"))?)?.self_signed(&ca_key)?;
    write_leaf(dir, host, &ca, &ca_key)
}
