//! The cluster PKI: one CA, one certificate per host, one for the
//! coordinator. `tern pki init` calls [`init`]; `tern pki issue` calls
//! [`issue`] to add or renew one host; `tern pki revoke` calls [`revoke`].
//!
//! Every certificate is ECDSA P-256, names its holder in the common name
//! and as a DNS subject alternative name (plus the host's IP addresses), and
//! is valid for both server and client authentication: agents are servers
//! to the coordinator and clients of each other.
//!
//! **Roles.** Each leaf carries its role in the subject's
//! OrganizationalUnit: exactly `tern-coordinator`, `tern-host` or
//! `tern-evacuator` ([`ROLE_OU_COORDINATOR`], [`ROLE_OU_HOST`],
//! [`ROLE_OU_EVACUATOR`]). An evacuator certificate (`tern pki issue NAME
//! --evacuator`, files `NAME.evacuator.pem`/`.key`) lets host NAME's agent
//! drive the evacuation of NAME itself and the way back, and nothing else
//! (`agent/src/server.rs` says what it may ask; `ticket.rs` what tickets it
//! may sign). It is a client certificate only: no subject alternative
//! name, no server authentication, so it cannot stand in for a host. The name `coordinator` is
//! the coordinator's only; host names that clash with it or with the PKI's
//! own files (`ca`, `crl`, `issued`, `localhost`...) are refused. A
//! certificate without a role (made before roles existed) is refused at
//! the handshake's end, with the fix: `tern pki issue NAME`.
//!
//! **Files** in the PKI folder: `ca.pem`/`ca.key` (ten years), `NAME.pem`/
//! `NAME.key` (one year by default), `crl.pem` (the revocation list, signed
//! by the CA, rewritten by every revoke) and `issued.json` (every
//! certificate issued: name, role, serial, expiry, revoked or not), which
//! lets `revoke` find a certificate by its name.

use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyIdMethod, KeyPair,
    KeyUsagePurpose, RevocationReason, RevokedCertParams, SanType, SerialNumber,
};
use serde::{Deserialize, Serialize};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use time::{Duration, OffsetDateTime};

/// The name in the coordinator's certificate.
pub const COORDINATOR: &str = "coordinator";
/// The OrganizationalUnit values that carry a certificate's role.
pub const ROLE_OU_COORDINATOR: &str = "tern-coordinator";
pub const ROLE_OU_HOST: &str = "tern-host";
pub const ROLE_OU_EVACUATOR: &str = "tern-evacuator";
/// Names no host may have: the coordinator's, and names of the PKI's own
/// files or that mean "this machine".
pub const RESERVED: &[&str] = &[COORDINATOR, "ca", "crl", "issued", "localhost", "localhost.localdomain", "root", "tern"];
/// Default leaf lifetime, in days.
pub const LEAF_DAYS: u32 = 365;
/// The CA's lifetime, in days (ten years).
pub const CA_DAYS: u32 = 3650;

/// What a certificate's holder may do (see `agent/src/server.rs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Coordinator,
    Host,
    /// A host's right to evacuate itself, and nothing more.
    Evacuator,
}

impl Role {
    pub fn as_str(&self) -> &'static str {
        match self {
            Role::Coordinator => "coordinator",
            Role::Host => "host",
            Role::Evacuator => "evacuator",
        }
    }
    fn ou(&self) -> &'static str {
        match self {
            Role::Coordinator => ROLE_OU_COORDINATOR,
            Role::Host => ROLE_OU_HOST,
            Role::Evacuator => ROLE_OU_EVACUATOR,
        }
    }
    /// The role an OrganizationalUnit value names.
    pub fn from_ou(ou: &str) -> Option<Role> {
        match ou {
            ROLE_OU_COORDINATOR => Some(Role::Coordinator),
            ROLE_OU_HOST => Some(Role::Host),
            ROLE_OU_EVACUATOR => Some(Role::Evacuator),
            _ => None,
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone)]
pub struct HostSpec {
    pub name: String,
    pub addresses: Vec<IpAddr>,
}

#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("{0} already exists; refusing to replace the cluster CA (every certificate it signed would stop working). Pass --force to replace it, or add hosts with `tern pki issue`")]
    Exists(PathBuf),
    #[error("writing {path}: {source}")]
    Write { path: PathBuf, source: std::io::Error },
    #[error("reading {path}: {source}; is it the folder `tern pki init` wrote?")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("certificate generation failed: {0}")]
    Rcgen(#[from] rcgen::Error),
    #[error("invalid host name {0:?}: use letters, digits, '-' and '.', starting with a letter or digit")]
    BadName(String),
    #[error("{0:?} is reserved (the coordinator's name, or a file of the PKI's own); choose another host name")]
    Reserved(String),
    #[error("{path} is unreadable: {detail}")]
    BadRecord { path: PathBuf, detail: String },
    #[error("no certificate for {0:?} is recorded in issued.json (or every one is revoked already)")]
    UnknownName(String),
    #[error("--days {0}: a certificate lives 1 to {CA_DAYS} days")]
    BadDays(u32),
}

/// One issued certificate, as `issued.json` keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Issued {
    pub name: String,
    pub role: Role,
    /// The serial number, lower-case hex.
    pub serial: String,
    /// RFC 3339.
    pub not_after: String,
    /// RFC 3339, when revoked.
    #[serde(default)]
    pub revoked_at: Option<String>,
}

fn write(path: &Path, contents: &str, secret: bool) -> Result<(), PkiError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let err = |source| PkiError::Write { path: path.to_path_buf(), source };
    // Written aside and renamed: an agent that reads the CRL while it is
    // rewritten sees the old list or the new one, never half of one.
    let tmp = path.with_extension("tmp");
    let mut f =
        std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(if secret { 0o600 } else { 0o644 }).open(&tmp).map_err(err)?;
    f.write_all(contents.as_bytes()).map_err(err)?;
    f.sync_all().map_err(err)?;
    // `mode` applies only to new files; make an existing key private too.
    if secret {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600)).map_err(err)?;
    }
    std::fs::rename(&tmp, path).map_err(err)
}

/// Checks a host name: its syntax, and that it is not reserved.
pub fn valid_host_name(name: &str) -> Result<(), PkiError> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
        && name.starts_with(|c: char| c.is_ascii_alphanumeric());
    if !ok {
        return Err(PkiError::BadName(name.to_string()));
    }
    if RESERVED.iter().any(|r| r.eq_ignore_ascii_case(name)) {
        return Err(PkiError::Reserved(name.to_string()));
    }
    Ok(())
}

fn random_serial() -> Result<SerialNumber, PkiError> {
    use ring::rand::SecureRandom;
    let mut b = [0u8; 16];
    ring::rand::SystemRandom::new().fill(&mut b).map_err(|_| PkiError::Rcgen(rcgen::Error::RingUnspecified))?;
    b[0] &= 0x7f; // positive
    b[0] |= 0x01; // and no leading zero byte to be trimmed
    Ok(SerialNumber::from_slice(&b))
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    (s.len() & 1 == 0).then_some(())?;
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok()).collect()
}

fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339).unwrap_or_default()
}

fn ca_params() -> Result<CertificateParams, PkiError> {
    let mut p = CertificateParams::new(Vec::<String>::new())?;
    p.distinguished_name.push(DnType::CommonName, "tern cluster CA");
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    let now = OffsetDateTime::now_utc();
    p.not_before = now - Duration::hours(1);
    p.not_after = now + Duration::days(CA_DAYS.into());
    p.serial_number = Some(random_serial()?);
    Ok(p)
}

struct Ca {
    cert: rcgen::Certificate,
    key: KeyPair,
}

fn leaf(host: &HostSpec, role: Role, days: u32, ca: &Ca) -> Result<(String, String, Issued), PkiError> {
    let mut p = if role == Role::Evacuator {
        // A client only: without a subject alternative name no TLS client
        // accepts it as the server `host.name`.
        let mut p = CertificateParams::new(Vec::<String>::new())?;
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        p
    } else {
        let mut p = CertificateParams::new(vec![host.name.clone()])?;
        p.subject_alt_names.extend(host.addresses.iter().map(|ip| SanType::IpAddress(*ip)));
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        p
    };
    p.distinguished_name.push(DnType::CommonName, host.name.clone());
    p.distinguished_name.push(DnType::OrganizationalUnitName, role.ou());
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    let now = OffsetDateTime::now_utc();
    p.not_before = now - Duration::hours(1);
    p.not_after = now + Duration::days(days.into());
    let serial = random_serial()?;
    p.serial_number = Some(serial.clone());
    let not_after = rfc3339(p.not_after);
    let key = KeyPair::generate()?;
    let cert = p.signed_by(&key, &ca.cert, &ca.key)?;
    let issued = Issued { name: host.name.clone(), role, serial: hex(serial.as_ref()), not_after, revoked_at: None };
    Ok((cert.pem(), key.serialize_pem(), issued))
}

fn write_leaf(dir: &Path, host: &HostSpec, role: Role, days: u32, ca: &Ca, record: &mut Vec<Issued>) -> Result<Vec<PathBuf>, PkiError> {
    let (cert, key, issued) = leaf(host, role, days, ca)?;
    let stem = leaf_stem(&host.name, role);
    let (c, k) = (dir.join(format!("{stem}.pem")), dir.join(format!("{stem}.key")));
    write(&k, &key, true)?;
    write(&c, &cert, false)?;
    record.push(issued);
    Ok(vec![c, k])
}

/// The files' name without extension: `NAME`, or `NAME.evacuator`.
pub fn leaf_stem(name: &str, role: Role) -> String {
    match role {
        Role::Evacuator => format!("{name}.evacuator"),
        Role::Coordinator | Role::Host => name.to_string(),
    }
}

fn check_days(days: u32) -> Result<(), PkiError> {
    if days == 0 || days > CA_DAYS {
        return Err(PkiError::BadDays(days));
    }
    Ok(())
}

/// Creates `ca.pem`/`ca.key`, `<host>.pem`/`<host>.key` for every host,
/// `coordinator.pem`/`coordinator.key`, an empty `crl.pem` and
/// `issued.json` in `dir`, leaves valid `days` days. Refuses to replace an
/// existing CA unless `force`. Returns the files written.
pub fn init(dir: &Path, hosts: &[HostSpec], force: bool) -> Result<Vec<PathBuf>, PkiError> {
    init_with(dir, hosts, force, LEAF_DAYS)
}

pub fn init_with(dir: &Path, hosts: &[HostSpec], force: bool, days: u32) -> Result<Vec<PathBuf>, PkiError> {
    check_days(days)?;
    // Every name first: nothing is written for a bad one.
    for h in hosts {
        valid_host_name(&h.name)?;
    }
    let ca_key_path = dir.join("ca.key");
    if ca_key_path.exists() && !force {
        return Err(PkiError::Exists(ca_key_path));
    }
    std::fs::create_dir_all(dir).map_err(|source| PkiError::Write { path: dir.to_path_buf(), source })?;
    let key = KeyPair::generate()?;
    let cert = ca_params()?.self_signed(&key)?;
    let ca_path = dir.join("ca.pem");
    write(&ca_key_path, &key.serialize_pem(), true)?;
    write(&ca_path, &cert.pem(), false)?;
    let ca = Ca { cert, key };
    let mut files = vec![ca_path, ca_key_path];
    let mut record = Vec::new();
    for h in hosts {
        files.extend(write_leaf(dir, h, Role::Host, days, &ca, &mut record)?);
    }
    let coordinator = HostSpec { name: COORDINATOR.into(), addresses: vec![] };
    files.extend(write_leaf(dir, &coordinator, Role::Coordinator, days, &ca, &mut record)?);
    files.push(write_record(dir, &record)?);
    files.push(write_crl(dir, &ca, &record)?);
    Ok(files)
}

fn load_ca(dir: &Path) -> Result<Ca, PkiError> {
    let read = |p: PathBuf| std::fs::read_to_string(&p).map_err(|source| PkiError::Read { path: p, source });
    let key = KeyPair::from_pem(&read(dir.join("ca.key"))?)?;
    // Rebuild the CA certificate object from its PEM: same name and key, so
    // what it signs chains to the original ca.pem.
    let cert = CertificateParams::from_ca_cert_pem(&read(dir.join("ca.pem"))?)?.self_signed(&key)?;
    Ok(Ca { cert, key })
}

/// `issued.json`; empty when the folder predates it.
pub fn read_record(dir: &Path) -> Result<Vec<Issued>, PkiError> {
    let path = dir.join("issued.json");
    match std::fs::read(&path) {
        Ok(b) => serde_json::from_slice(&b).map_err(|e| PkiError::BadRecord { path, detail: e.to_string() }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(source) => Err(PkiError::Read { path, source }),
    }
}

fn write_record(dir: &Path, record: &[Issued]) -> Result<PathBuf, PkiError> {
    let path = dir.join("issued.json");
    let text = serde_json::to_string_pretty(record).map_err(|e| PkiError::BadRecord { path: path.clone(), detail: e.to_string() })?;
    write(&path, &(text + "\n"), false)?;
    Ok(path)
}

/// Writes `crl.pem`: every revoked serial of `record`, signed by the CA.
fn write_crl(dir: &Path, ca: &Ca, record: &[Issued]) -> Result<PathBuf, PkiError> {
    let now = OffsetDateTime::now_utc();
    let revoked_certs = record
        .iter()
        .filter(|i| i.revoked_at.is_some())
        .filter_map(|i| unhex(&i.serial))
        .map(|s| RevokedCertParams {
            serial_number: SerialNumber::from_slice(&s),
            revocation_time: now,
            reason_code: Some(RevocationReason::Unspecified),
            invalidity_date: None,
        })
        .collect();
    let params = CertificateRevocationListParams {
        this_update: now - Duration::minutes(5),
        // Agents do not enforce nextUpdate: the list stays in force until
        // the next revoke rewrites it.
        next_update: now + Duration::days(CA_DAYS.into()),
        crl_number: SerialNumber::from(now.unix_timestamp() as u64),
        issuing_distribution_point: None,
        revoked_certs,
        key_identifier_method: KeyIdMethod::Sha256,
    };
    let crl = params.signed_by(&ca.cert, &ca.key)?;
    let path = dir.join("crl.pem");
    write(&path, &crl.pem()?, false)?;
    Ok(path)
}

/// Adds (or renews) one host's certificate, signed by the CA already in
/// `dir`, valid `days` days; the other hosts keep theirs.
pub fn issue(dir: &Path, host: &HostSpec) -> Result<Vec<PathBuf>, PkiError> {
    issue_with(dir, host, LEAF_DAYS)
}

pub fn issue_with(dir: &Path, host: &HostSpec, days: u32) -> Result<Vec<PathBuf>, PkiError> {
    issue_role(dir, host, Role::Host, days)
}

/// Adds (or renews) host `name`'s evacuator certificate
/// (`NAME.evacuator.pem`/`.key`): for its agent to evacuate that host
/// itself, say when the host shuts down.
pub fn issue_evacuator(dir: &Path, name: &str, days: u32) -> Result<Vec<PathBuf>, PkiError> {
    issue_role(dir, &HostSpec { name: name.to_string(), addresses: vec![] }, Role::Evacuator, days)
}

fn issue_role(dir: &Path, host: &HostSpec, role: Role, days: u32) -> Result<Vec<PathBuf>, PkiError> {
    check_days(days)?;
    valid_host_name(&host.name)?;
    let ca = load_ca(dir)?;
    let mut record = read_record(dir)?;
    let mut files = write_leaf(dir, host, role, days, &ca, &mut record)?;
    files.push(write_record(dir, &record)?);
    Ok(files)
}

/// Revokes every certificate issued to `name` (of `role` only, when given)
/// and not revoked yet, and rewrites `crl.pem`. Returns the serials
/// revoked (hex).
pub fn revoke(dir: &Path, name: &str, role: Option<Role>) -> Result<Vec<String>, PkiError> {
    let ca = load_ca(dir)?;
    let mut record = read_record(dir)?;
    let now = rfc3339(OffsetDateTime::now_utc());
    let mut serials = Vec::new();
    for i in record.iter_mut().filter(|i| i.name == name && i.revoked_at.is_none() && role.is_none_or(|r| r == i.role)) {
        i.revoked_at = Some(now.clone());
        serials.push(i.serial.clone());
    }
    if serials.is_empty() {
        return Err(PkiError::UnknownName(name.to_string()));
    }
    write_record(dir, &record)?;
    write_crl(dir, &ca, &record)?;
    Ok(serials)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reserved_and_malformed_names_are_refused() {
        for bad in ["coordinator", "ca", "CA", "crl", "localhost", "issued"] {
            assert!(matches!(valid_host_name(bad), Err(PkiError::Reserved(_))), "{bad}");
        }
        for bad in ["", "-x", ".x", "a b", "a/b"] {
            assert!(matches!(valid_host_name(bad), Err(PkiError::BadName(_))), "{bad}");
        }
        assert!(valid_host_name("client1").is_ok());
    }

    #[test]
    fn a_host_named_ca_does_not_overwrite_the_ca() {
        let dir = tempfile::tempdir().unwrap();
        let ca = HostSpec { name: "ca".into(), addresses: vec![] };
        assert!(matches!(init(dir.path(), std::slice::from_ref(&ca), false), Err(PkiError::Reserved(_))));
        assert!(!dir.path().join("ca.pem").exists());
        init(dir.path(), &[], false).unwrap();
        let before = std::fs::read(dir.path().join("ca.pem")).unwrap();
        assert!(matches!(issue(dir.path(), &ca), Err(PkiError::Reserved(_))));
        assert_eq!(std::fs::read(dir.path().join("ca.pem")).unwrap(), before);
    }

    #[test]
    fn hex_round_trips() {
        assert_eq!(unhex(&hex(&[0, 1, 0xab, 0xff])).unwrap(), vec![0, 1, 0xab, 0xff]);
        assert!(unhex("abc").is_none());
    }
}
