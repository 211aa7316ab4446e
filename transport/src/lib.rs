//! How tern processes reach each other: QUIC with mutual TLS.
//!
//! * [`pki`]: the cluster CA and one certificate per host (and one for the
//!   coordinator), made by `tern pki init`.
//! * [`tls`]: rustls configurations that *require* a certificate from the
//!   cluster CA on both sides of every connection.
//! * [`endpoint`]: quinn endpoints tuned for bulk transfer, and `connect`
//!   with errors that say whether the peer is down or untrusted.
//! * [`rpc`]: the Hello exchange and request/response over QUIC streams.

pub mod endpoint;
pub mod error;
pub mod pki;
pub mod rpc;
pub mod timeouts;
pub mod tls;

pub use endpoint::{client_endpoint, connect, peer_name, server_endpoint};
pub use error::TransportError;
pub use tls::TlsFiles;

/// The ALPN protocol both sides insist on.
pub const ALPN: &[u8] = b"tern/1";
