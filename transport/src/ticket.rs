//! Migration tickets: the coordinator's signed permission for one move.
//!
//! The coordinator signs a [`TicketBody`] with its own TLS key (ECDSA
//! P-256, SHA-256, ASN.1 signature) and sends it to the source in the
//! `MigrateRequest`; the source passes it on in `Begin`; the target
//! accepts the `Receive` only if [`verify`] passes:
//!
//! 1. the certificate in the ticket chains to the cluster CA, is valid now
//!    and not revoked, and has the coordinator role, or is host H's
//!    evacuator certificate and the ticket moves a container away from H
//!    in an evacuation, or back to H ([`evacuator_may_sign`]);
//! 2. the signature over [`signing_bytes`] verifies with its key;
//! 3. [`check`]: not expired (with [`CLOCK_SKEW_SECS`] of slack either
//!    way), not living longer than [`MAX_LIFETIME_SECS`], naming this agent
//!    as target and the connected peer as source, and the migration id,
//!    container name, ID, image ID and [`spec_hash`] of `Begin` equal the
//!    ticket's;
//! 4. its id was not used before ([`ReplayGuard`], in memory until the
//!    ticket expires).
//!
//! Bytes signed: `"tern ticket v1\0"` then the postcard encoding of the
//! body (postcard is deterministic: fields in order, fixed encodings).

use crate::identity::identity_of;
use crate::pki::Role;
use crate::{TlsFiles, TransportError, Trust};
use ring::signature::{EcdsaKeyPair, UnparsedPublicKey, ECDSA_P256_SHA256_ASN1, ECDSA_P256_SHA256_ASN1_SIGNING};
use rustls::pki_types::{PrivateKeyDer, UnixTime};
use serde::Serialize;
use std::collections::HashMap;
use std::time::Duration;
use tern_proto::facts::{Attachment, ContainerInfo, PublishedPort, Volume};
use tern_proto::{Begin, MigrationId, Ticket, TicketBody};

/// How long a ticket is valid after it is issued.
pub const TICKET_LIFETIME: Duration = Duration::from_secs(600);
/// The clocks of the coordinator and the target may differ this much.
pub const CLOCK_SKEW_SECS: u64 = 60;
/// The longest lifetime a target accepts, whatever the coordinator says.
pub const MAX_LIFETIME_SECS: u64 = 3600;

const SIGNING_DOMAIN: &[u8] = b"tern ticket v1\0";
const SPEC_DOMAIN: &[u8] = b"tern spec v1\0";

/// The part of a container's spec a ticket pins: what does not change
/// while it runs (not its state, pid, memory, file sizes, connections or
/// process users, which the source reads again right before it moves it).
#[derive(Serialize)]
struct Spec<'a> {
    name: &'a str,
    id: &'a str,
    image: &'a str,
    image_id: &'a str,
    ips: &'a [std::net::IpAddr],
    volumes: &'a [Volume],
    networks: &'a [Attachment],
    ports: &'a [PublishedPort],
}

/// blake3 of the container's name, ID, image, image ID, addresses, named
/// volumes, networks and published ports, in that order, postcard-encoded
/// after `"tern spec v1\0"`.
pub fn spec_hash(c: &ContainerInfo) -> [u8; 32] {
    let spec = Spec {
        name: &c.name,
        id: &c.id,
        image: &c.image,
        image_id: &c.image_id,
        ips: &c.ips,
        volumes: &c.volumes,
        networks: &c.networks,
        ports: &c.ports,
    };
    let mut h = blake3::Hasher::new();
    h.update(SPEC_DOMAIN);
    h.update(&postcard::to_stdvec(&spec).expect("a spec always encodes"));
    *h.finalize().as_bytes()
}

/// What the coordinator signs.
pub fn signing_bytes(body: &TicketBody) -> Vec<u8> {
    let mut out = SIGNING_DOMAIN.to_vec();
    out.extend(postcard::to_stdvec(body).expect("a ticket always encodes"));
    out
}

/// Why a target refuses a ticket.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TicketError {
    #[error("the migration ticket's signer is not trusted: {0}")]
    Untrusted(String),
    #[error("the migration ticket is signed by {0}, which does not hold the coordinator role")]
    NotCoordinator(String),
    #[error("the migration ticket is signed by {signer}'s evacuator certificate, which may only evacuate {signer} and bring back what left it; not move {container} from {from} to {to}")]
    BeyondEvacuator { signer: String, container: String, from: String, to: String },
    #[error("the migration ticket's signature does not verify")]
    BadSignature,
    #[error("the migration ticket expired {0} s ago; run the migration again from the coordinator")]
    Expired(u64),
    #[error("the migration ticket was issued {0} s in the future; check the clocks of the coordinator and this host (NTP)")]
    NotYetValid(u64),
    #[error("the migration ticket lives {0} s, longer than the {MAX_LIFETIME_SECS} s a target accepts")]
    TooLong(u64),
    #[error("the migration ticket is for target {ticket}, not for this host ({me})")]
    WrongTarget { ticket: String, me: String },
    #[error("the migration ticket names {ticket} as source, but {peer} sent it")]
    WrongSource { ticket: String, peer: String },
    #[error("the migration ticket is for {field} {ticket:?}, the request names {begin:?}")]
    Mismatch { field: &'static str, ticket: String, begin: String },
    #[error("the container's spec differs from what the coordinator checked (its spec hash does not match the ticket's)")]
    SpecChanged,
    #[error("the migration ticket was used already; run the migration again from the coordinator")]
    Replayed,
}

/// The checks on a ticket whose signature is already verified: times,
/// parties and what it moves. `me` is this agent, `peer` the connected
/// source (its certificate's name), `now` seconds since the Unix epoch.
pub fn check(body: &TicketBody, me: &str, peer: &str, begin: &Begin, now: u64) -> Result<(), TicketError> {
    if body.issued_at > now + CLOCK_SKEW_SECS {
        return Err(TicketError::NotYetValid(body.issued_at - now));
    }
    if now > body.expires_at + CLOCK_SKEW_SECS {
        return Err(TicketError::Expired(now - body.expires_at));
    }
    let life = body.expires_at.saturating_sub(body.issued_at);
    if life > MAX_LIFETIME_SECS {
        return Err(TicketError::TooLong(life));
    }
    if body.target != me {
        return Err(TicketError::WrongTarget { ticket: body.target.clone(), me: me.into() });
    }
    if body.source != peer || begin.source != peer {
        return Err(TicketError::WrongSource { ticket: body.source.clone(), peer: peer.into() });
    }
    let pairs: [(&'static str, String, String); 4] = [
        ("migration", body.migration_id.to_string(), begin.id.to_string()),
        ("container", body.container.clone(), begin.container.name.clone()),
        ("container ID", body.container_id.clone(), begin.container.id.clone()),
        ("image ID", body.image_id.clone(), begin.container.image_id.clone()),
    ];
    for (field, ticket, begin) in pairs {
        if ticket != begin {
            return Err(TicketError::Mismatch { field, ticket, begin });
        }
    }
    if body.spec_hash != spec_hash(&begin.container) {
        return Err(TicketError::SpecChanged);
    }
    Ok(())
}

/// What host `host`'s evacuator certificate may sign: a move of an
/// evacuation away from `host`, or a move (not itself an evacuation) back
/// to it. That the container being brought back did leave `host` in an
/// evacuation is for its current host to check (it recorded the arrival).
pub fn evacuator_may_sign(host: &str, body: &TicketBody) -> Result<(), TicketError> {
    let away = body.evacuation && body.source == host && body.target != host;
    let back = !body.evacuation && body.target == host && body.source != host;
    if away || back {
        return Ok(());
    }
    Err(TicketError::BeyondEvacuator { signer: host.into(), container: body.container.clone(), from: body.source.clone(), to: body.target.clone() })
}

/// Checks `sig` over the ticket's bytes with an ECDSA P-256 public key
/// (an uncompressed point, as a certificate's SubjectPublicKeyInfo holds).
pub fn verify_signature(body: &TicketBody, sig: &[u8], public_key: &[u8]) -> Result<(), TicketError> {
    UnparsedPublicKey::new(&ECDSA_P256_SHA256_ASN1, public_key).verify(&signing_bytes(body), sig).map_err(|_| TicketError::BadSignature)
}

/// Everything a target checks but replay (see the module's docs).
pub fn verify(ticket: &Ticket, trust: &Trust, me: &str, peer: &str, begin: &Begin, now: u64) -> Result<(), TicketError> {
    trust.verify_leaf(&ticket.cert, UnixTime::since_unix_epoch(Duration::from_secs(now))).map_err(|e| TicketError::Untrusted(e.to_string()))?;
    let signer = identity_of(&ticket.cert).map_err(|e| TicketError::Untrusted(e.to_string()))?;
    match signer.role {
        Role::Coordinator => {}
        Role::Evacuator => evacuator_may_sign(&signer.name, &ticket.body)?,
        Role::Host => return Err(TicketError::NotCoordinator(signer.name)),
    }
    let (_, cert) = x509_parser::parse_x509_certificate(&ticket.cert).map_err(|e| TicketError::Untrusted(e.to_string()))?;
    verify_signature(&ticket.body, &ticket.signature, &cert.public_key().subject_public_key.data)?;
    check(&ticket.body, me, peer, begin, now)
}

/// Seconds since the Unix epoch.
pub fn now_secs() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// The ids of tickets used, each kept until its ticket expires.
#[derive(Debug, Default)]
pub struct ReplayGuard {
    seen: HashMap<[u8; 16], u64>,
}

impl ReplayGuard {
    /// Accepts `body`'s id once; forgets ids whose tickets have expired.
    pub fn admit(&mut self, body: &TicketBody, now: u64) -> Result<(), TicketError> {
        self.seen.retain(|_, until| *until + CLOCK_SKEW_SECS >= now);
        if self.seen.contains_key(&body.ticket_id) {
            return Err(TicketError::Replayed);
        }
        self.seen.insert(body.ticket_id, body.expires_at);
        Ok(())
    }
}

/// The coordinator's signing key and certificate (its TLS pair).
pub struct Signer {
    key: EcdsaKeyPair,
    cert: Vec<u8>,
    rng: ring::rand::SystemRandom,
}

impl Signer {
    /// Loads the coordinator's certificate and key; the certificate must
    /// hold the coordinator role, or be a host's evacuator certificate
    /// (whose tickets targets accept only within [`evacuator_may_sign`]).
    pub fn load(files: &TlsFiles) -> Result<Signer, TransportError> {
        let bad = |what, path: &std::path::Path, detail: String| TransportError::BadPem { what, path: path.to_path_buf(), detail };
        let cert = crate::pem::certs("certificate", &files.cert)?.swap_remove(0);
        let id = identity_of(cert.as_ref())?;
        if id.role == Role::Host {
            return Err(TransportError::WrongRole { peer: id.name, role: id.role.to_string(), expected: "coordinator certificate" });
        }
        let PrivateKeyDer::Pkcs8(key) = crate::pem::key(&files.key)? else {
            return Err(bad("private key", &files.key, "not a PKCS#8 ECDSA P-256 key".into()));
        };
        let rng = ring::rand::SystemRandom::new();
        let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, key.secret_pkcs8_der(), &rng)
            .map_err(|e| bad("private key", &files.key, format!("not an ECDSA P-256 key: {e}")))?;
        Ok(Signer { key, cert: cert.as_ref().to_vec(), rng })
    }

    /// A ticket for moving `c` (as the coordinator checked it) from
    /// `source` to `target`, valid [`TICKET_LIFETIME`] from `now`.
    pub fn issue(&self, migration_id: MigrationId, source: &str, target: &str, c: &ContainerInfo, now: u64) -> Ticket {
        self.issue_marked(migration_id, source, target, c, now, false)
    }

    /// As [`Signer::issue`], for a move of an evacuation when `evacuation`.
    pub fn issue_marked(&self, migration_id: MigrationId, source: &str, target: &str, c: &ContainerInfo, now: u64, evacuation: bool) -> Ticket {
        use ring::rand::SecureRandom;
        let mut ticket_id = [0u8; 16];
        self.rng.fill(&mut ticket_id).expect("the system's random source works");
        let body = TicketBody {
            ticket_id,
            migration_id,
            source: source.into(),
            target: target.into(),
            container: c.name.clone(),
            container_id: c.id.clone(),
            image_id: c.image_id.clone(),
            spec_hash: spec_hash(c),
            issued_at: now,
            expires_at: now + TICKET_LIFETIME.as_secs(),
            evacuation,
        };
        self.sign(body)
    }

    /// Signs any body (tests make bad ones with it).
    pub fn sign(&self, body: TicketBody) -> Ticket {
        let signature = self.key.sign(&self.rng, &signing_bytes(&body)).expect("signing with a valid key").as_ref().to_vec();
        Ticket { body, signature, cert: self.cert.clone() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::pki_types::{pem::PemObject, CertificateDer};
    use tern_proto::mode::Mode;

    fn container() -> ContainerInfo {
        ContainerInfo {
            name: "web".into(),
            id: "abc123".into(),
            image: "busybox".into(),
            image_id: "img1".into(),
            state: "running".into(),
            ips: vec!["10.0.0.5".parse().unwrap()],
            memory_bytes: 1,
            files_bytes: 2,
            volumes: vec![],
            pid: 3,
            networks: vec![],
            ports: vec![],
            connections: vec![],
            process_uids: vec![],
            systemd_unit: None,
            pod: None,
            dependencies: vec![],
        }
    }

    fn begin() -> Begin {
        Begin {
            id: 7,
            source: "a".into(),
            container: container(),
            tcp_established: false,
            mode: Mode::StopAndCopy,
            lazy_restore: false,
            post_copy_first: Default::default(),
            ticket: Ticket::default(),
        }
    }

    const NOW: u64 = 1_800_000_000;

    fn body() -> TicketBody {
        TicketBody {
            ticket_id: [1; 16],
            migration_id: 7,
            source: "a".into(),
            target: "b".into(),
            container: "web".into(),
            container_id: "abc123".into(),
            image_id: "img1".into(),
            spec_hash: spec_hash(&container()),
            issued_at: NOW,
            expires_at: NOW + 600,
            evacuation: false,
        }
    }

    #[test]
    fn a_matching_ticket_passes_and_every_difference_is_refused() {
        let b = begin();
        assert_eq!(check(&body(), "b", "a", &b, NOW + 1), Ok(()));
        // Within the clock skew on both ends.
        assert_eq!(check(&body(), "b", "a", &b, NOW - 30), Ok(()));
        assert_eq!(check(&body(), "b", "a", &b, NOW + 650), Ok(()));
        assert!(matches!(check(&body(), "b", "a", &b, NOW + 661), Err(TicketError::Expired(61))));
        assert!(matches!(check(&body(), "b", "a", &b, NOW - 61), Err(TicketError::NotYetValid(61))));
        let long = TicketBody { expires_at: NOW + 7200, ..body() };
        assert!(matches!(check(&long, "b", "a", &b, NOW), Err(TicketError::TooLong(7200))));
        assert!(matches!(check(&body(), "c", "a", &b, NOW), Err(TicketError::WrongTarget { .. })));
        assert!(matches!(check(&body(), "b", "c", &b, NOW), Err(TicketError::WrongSource { .. })));
        let lying = Begin { source: "c".into(), ..begin() };
        assert!(matches!(check(&body(), "b", "a", &lying, NOW), Err(TicketError::WrongSource { .. })));
        let other_id = Begin { id: 8, ..begin() };
        assert!(matches!(check(&body(), "b", "a", &other_id, NOW), Err(TicketError::Mismatch { field: "migration", .. })));
        for (field, c) in [
            ("container", ContainerInfo { name: "db".into(), ..container() }),
            ("container ID", ContainerInfo { id: "zzz".into(), ..container() }),
            ("image ID", ContainerInfo { image_id: "img2".into(), ..container() }),
        ] {
            let b = Begin { container: c, ..begin() };
            assert!(matches!(check(&body(), "b", "a", &b, NOW), Err(TicketError::Mismatch { field: f, .. }) if f == field), "{field}");
        }
        let moved = Begin { container: ContainerInfo { ips: vec!["10.0.0.6".parse().unwrap()], ..container() }, ..begin() };
        assert_eq!(check(&body(), "b", "a", &moved, NOW), Err(TicketError::SpecChanged));
        // What changes while a container runs is not pinned.
        let busy = Begin { container: ContainerInfo { memory_bytes: 99, pid: 42, files_bytes: 5, ..container() }, ..begin() };
        assert_eq!(check(&body(), "b", "a", &busy, NOW), Ok(()));
    }

    #[test]
    fn a_ticket_id_is_used_once_and_forgotten_after_it_expires() {
        let mut g = ReplayGuard::default();
        assert_eq!(g.admit(&body(), NOW), Ok(()));
        assert_eq!(g.admit(&body(), NOW + 10), Err(TicketError::Replayed));
        assert_eq!(g.admit(&TicketBody { ticket_id: [2; 16], ..body() }, NOW + 10), Ok(()));
        g.admit(&TicketBody { ticket_id: [3; 16], ..body() }, NOW + 3600).unwrap();
        assert_eq!(g.seen.len(), 1, "expired ids are forgotten");
    }

    #[test]
    fn signed_tickets_verify_and_tampering_or_a_host_signer_does_not() {
        let dir = tempfile::tempdir().unwrap();
        let hosts = ["a", "b"].map(|n| crate::pki::HostSpec { name: n.into(), addresses: vec![] });
        crate::pki::init(dir.path(), &hosts, false).unwrap();
        let signer = Signer::load(&TlsFiles::in_dir(dir.path(), "coordinator")).unwrap();
        let trust = Trust::load(&TlsFiles::in_dir(dir.path(), "b")).unwrap();
        let now = now_secs();
        let t = signer.issue(7, "a", "b", &container(), now);
        assert_eq!(verify(&t, &trust, "b", "a", &begin(), now), Ok(()));
        let mut tampered = t.clone();
        tampered.body.target = "c".into();
        assert_eq!(verify(&tampered, &trust, "c", "a", &begin(), now), Err(TicketError::BadSignature));
        let mut tampered = t.clone();
        tampered.body.spec_hash = [0; 32];
        assert_eq!(verify(&tampered, &trust, "b", "a", &begin(), now), Err(TicketError::BadSignature));
        // A host cannot sign tickets: not with its key, not with a coordinator's certificate.
        assert!(matches!(Signer::load(&TlsFiles::in_dir(dir.path(), "a")), Err(TransportError::WrongRole { .. })));
        let host_cert = std::fs::read(dir.path().join("a.pem")).unwrap();
        let host_cert = CertificateDer::from_pem_slice(&host_cert).unwrap().as_ref().to_vec();
        let forged = Ticket { cert: host_cert, ..t.clone() };
        assert!(matches!(verify(&forged, &trust, "b", "a", &begin(), now), Err(TicketError::NotCoordinator(n)) if n == "a"));
        // A coordinator of another cluster is a stranger.
        let other = tempfile::tempdir().unwrap();
        crate::pki::init(other.path(), &[], false).unwrap();
        let stranger = Signer::load(&TlsFiles::in_dir(other.path(), "coordinator")).unwrap().issue(7, "a", "b", &container(), now);
        assert!(matches!(verify(&stranger, &trust, "b", "a", &begin(), now), Err(TicketError::Untrusted(_))));
        // A revoked coordinator's tickets are refused.
        crate::pki::revoke(dir.path(), "coordinator", None).unwrap();
        assert!(matches!(verify(&t, &trust, "b", "a", &begin(), now), Err(TicketError::Untrusted(_))), "revoked");
    }

    #[test]
    fn an_evacuator_signs_its_own_evacuation_and_the_way_back_only() {
        let dir = tempfile::tempdir().unwrap();
        let hosts = ["a", "b"].map(|n| crate::pki::HostSpec { name: n.into(), addresses: vec![] });
        crate::pki::init(dir.path(), &hosts, false).unwrap();
        crate::pki::issue_evacuator(dir.path(), "a", 30).unwrap();
        let evacuator = Signer::load(&TlsFiles::in_dir(dir.path(), "a.evacuator")).unwrap();
        let trust = Trust::load(&TlsFiles::in_dir(dir.path(), "b")).unwrap();
        let now = now_secs();
        // a evacuates itself onto b.
        let away = evacuator.issue_marked(7, "a", "b", &container(), now, true);
        assert_eq!(verify(&away, &trust, "b", "a", &begin(), now), Ok(()));
        // Not a plain move away from a (only evacuations), nor anything
        // between other hosts, nor an "evacuation" of another host.
        let plain = evacuator.issue(7, "a", "b", &container(), now);
        assert!(matches!(verify(&plain, &trust, "b", "a", &begin(), now), Err(TicketError::BeyondEvacuator { .. })));
        let begin_c = Begin { source: "c".into(), ..begin() };
        for (src, evac) in [("c", true), ("c", false)] {
            let t = evacuator.issue_marked(7, src, "b", &container(), now, evac);
            assert!(matches!(verify(&t, &trust, "b", "c", &begin_c, now), Err(TicketError::BeyondEvacuator { .. })), "{src} {evac}");
        }
        // The way back: b to a, not marked as an evacuation.
        let back_body = TicketBody { source: "b".into(), target: "a".into(), ..body() };
        assert_eq!(evacuator_may_sign("a", &back_body), Ok(()));
        assert!(evacuator_may_sign("a", &TicketBody { evacuation: true, ..back_body.clone() }).is_err());
        assert!(evacuator_may_sign("a", &TicketBody { source: "a".into(), ..back_body }).is_err());
        // Revoking it (alone: the host's own certificate stays) ends it.
        crate::pki::revoke(dir.path(), "a", Some(crate::pki::Role::Evacuator)).unwrap();
        assert!(matches!(verify(&away, &trust, "b", "a", &begin(), now), Err(TicketError::Untrusted(_))));
        let record = crate::pki::read_record(dir.path()).unwrap();
        assert!(record.iter().any(|i| i.name == "a" && i.role == crate::pki::Role::Host && i.revoked_at.is_none()));
    }
}
