//! Who a certificate names, and in which role (`pki.rs` says how roles
//! are encoded).

use crate::pki::{Role, COORDINATOR};
use crate::TransportError;

/// Who a verified peer is: its certificate's name and role.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerId {
    pub name: String,
    pub role: Role,
}

/// The name and role of a leaf certificate (DER) of the cluster's PKI.
pub fn identity_of(der: &[u8]) -> Result<PeerId, TransportError> {
    let bad = |detail: String| TransportError::Identity(detail);
    let (_, cert) = x509_parser::parse_x509_certificate(der).map_err(|e| bad(format!("an unreadable certificate: {e}")))?;
    let name = match cert.subject().iter_common_name().next().and_then(|cn| cn.as_str().ok()) {
        Some(cn) => cn.to_string(),
        None => cert
            .subject_alternative_name()
            .ok()
            .flatten()
            .and_then(|san| {
                san.value.general_names.iter().find_map(|n| match n {
                    x509_parser::extensions::GeneralName::DNSName(d) => Some(d.to_string()),
                    _ => None,
                })
            })
            .ok_or_else(|| bad("a certificate that names nobody".into()))?,
    };
    let roles: Vec<Role> = cert.subject().iter_organizational_unit().filter_map(|ou| ou.as_str().ok()).filter_map(Role::from_ou).collect();
    let role = match roles.as_slice() {
        [] => return Err(TransportError::NoRole { name }),
        [r] => *r,
        _ => return Err(TransportError::RoleMismatch { name, role: "several".into() }),
    };
    let coordinator_name = name == COORDINATOR;
    if coordinator_name != (role == Role::Coordinator) || (role != Role::Coordinator && crate::pki::valid_host_name(&name).is_err()) {
        return Err(TransportError::RoleMismatch { name, role: role.to_string() });
    }
    Ok(PeerId { name, role })
}

/// The name and role of the certificate in a PEM file (the one a
/// coordinator or an evacuator presents).
pub fn identity_of_file(path: &std::path::Path) -> Result<PeerId, TransportError> {
    identity_of(crate::pem::certs("certificate", path)?[0].as_ref())
}
