use std::net::SocketAddr;
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    // `io`, not `source`: the message says it already, and anyhow would say
    // it again as the cause.
    #[error("cannot read {what} {path}: {io}; create the cluster's certificates with `tern pki init`")]
    ReadPem { what: &'static str, path: PathBuf, io: std::io::Error },
    #[error("{path} holds no {what}; it must be a PEM file written by `tern pki init`")]
    EmptyPem { what: &'static str, path: PathBuf },
    #[error("{path} is not a valid PEM file of a {what} ({detail}); write it again with `tern pki init`")]
    BadPem { what: &'static str, path: PathBuf, detail: String },
    #[error("the TLS configuration is invalid: {0}")]
    Tls(String),
    #[error("cannot bind UDP {addr}: {source}; is another agent already listening there?")]
    Bind { addr: SocketAddr, source: std::io::Error },
    #[error("cannot connect to {name} at {addr}: {detail}")]
    Connect { name: String, addr: SocketAddr, detail: String },
    #[error("{name} at {addr} did not answer within {secs} s; is its agent running and UDP port {} reachable?", addr.port())]
    Timeout { name: String, addr: SocketAddr, secs: u64 },
    #[error("{name} at {addr} and this side do not trust each other's certificate ({detail}); both must hold certificates from the same cluster CA (`tern pki init`), and {name}'s certificate must name it")]
    Certificate { name: String, addr: SocketAddr, detail: String },
    #[error("the certificate of {name} carries no tern role (it was made before roles existed); issue it again with `tern pki issue {name}` (the coordinator's with `tern pki init`)")]
    NoRole { name: String },
    #[error("the certificate of {name} claims the {role} role, which that name cannot hold (`coordinator` is the coordinator's name only); issue it again with `tern pki issue {name}`")]
    RoleMismatch { name: String, role: String },
    #[error("the peer's certificate is unusable: {0}")]
    Identity(String),
    #[error("{peer} holds a {role} certificate, where a {expected} was expected")]
    WrongRole { peer: String, role: String, expected: &'static str },
}
