//! How tern processes reach each other: QUIC with mutual TLS.
//!
//! * [`pki`]: the cluster CA and one certificate per host (and one for the
//!   coordinator), made by `tern pki init`.
//! * [`tls`]: rustls configurations that *require* a certificate from the
//!   cluster CA on both sides of every connection ([`pem`] reads the files).
//! * [`endpoint`]: quinn endpoints tuned for bulk transfer, and `connect`
//!   with errors that say whether the peer is down or untrusted.
//! * [`rpc`]: the Hello exchange and request/response over QUIC streams.
//! * [`ticket`]: the coordinator's signed permission for one migration.

pub mod endpoint;
pub mod error;
pub mod identity;
pub mod pem;
pub mod pki;
pub mod rpc;
pub mod ticket;
pub mod timeouts;
pub mod tls;

pub use endpoint::{client_endpoint, connect, peer_identity, peer_name, server_endpoint, PeerId};
pub use error::TransportError;
pub use pki::Role;
pub use tls::{TlsFiles, Trust};

/// The ALPN protocol both sides insist on.
pub const ALPN: &[u8] = b"tern/1";
