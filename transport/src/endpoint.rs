//! quinn endpoints, tuned for moving container checkpoints (hundreds of MiB)
//! between hosts on a LAN, and detecting a dead peer within seconds.

pub use crate::identity::{identity_of, identity_of_file, PeerId};
use crate::timeouts::scaled;
use crate::tls::{client_config, server_config, TlsFiles};
use crate::TransportError;
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use quinn::{Endpoint, EndpointConfig, IdleTimeout, TransportConfig, VarInt};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// Per-stream receive window: one checkpoint stream may have this much in
/// flight. It must cover the bandwidth-delay product, which a shaped link's
/// queue multiplies (its delay adds tens of ms to the RTT at 1 Gbit/s),
/// with room to spare.
///
/// The windows are also the agents' memory bound: after a loss the receiver
/// holds everything past the gap until the retransmission arrives, up to
/// the window. Larger windows cost the agent memory without adding speed.
pub const STREAM_WINDOW: u32 = 8 << 20;
/// Whole-connection receive window (a data stream and control streams).
pub const CONNECTION_WINDOW: u32 = 12 << 20;
/// How much unacknowledged data a sender keeps: memory an agent spends on
/// the network, whatever the container's size.
pub const SEND_WINDOW: u64 = 8 << 20;
/// Kernel UDP buffers asked for; quinn's `perf` tool does the same. Plain
/// requests are capped at net.core.rmem_max/wmem_max (208 KiB on a stock
/// Debian), too little for a burst of a few hundred packets at 1 Gbit/s:
/// the agent runs as root and forces them (SO_RCVBUFFORCE/SO_SNDBUFFORCE).
pub const SOCKET_BUFFER: usize = 8 << 20;
/// A keep-alive every 2 s and an idle timeout of 10 s: a dead peer is
/// noticed within 10 s, a busy-but-alive one never times out.
pub const KEEP_ALIVE: Duration = Duration::from_secs(2);
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a handshake may take before `connect` gives up.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

pub fn transport_config() -> TransportConfig {
    let mut t = TransportConfig::default();
    t.stream_receive_window(VarInt::from_u32(STREAM_WINDOW))
        .receive_window(VarInt::from_u32(CONNECTION_WINDOW))
        .send_window(SEND_WINDOW)
        .keep_alive_interval(Some(KEEP_ALIVE))
        .max_idle_timeout(Some(IdleTimeout::try_from(scaled(IDLE_TIMEOUT)).expect("fits a QUIC varint")))
        .max_concurrent_bidi_streams(VarInt::from_u32(64))
        .max_concurrent_uni_streams(VarInt::from_u32(16));
    t
}

fn socket(addr: SocketAddr) -> Result<std::net::UdpSocket, TransportError> {
    use socket2::{Domain, Protocol, Socket, Type};
    let bind = |e| TransportError::Bind { addr, source: e };
    let s = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP)).map_err(bind)?;
    // Best effort: a smaller buffer is slower, not wrong.
    let _ = s.set_send_buffer_size(SOCKET_BUFFER);
    let _ = s.set_recv_buffer_size(SOCKET_BUFFER);
    force_buffers(&s);
    s.bind(&addr.into()).map_err(bind)?;
    Ok(s.into())
}

/// Raises the socket's buffers past the system's caps where allowed
/// (CAP_NET_ADMIN); silently keeps what it got otherwise.
fn force_buffers(s: &socket2::Socket) {
    use std::os::fd::AsRawFd;
    let size = SOCKET_BUFFER as libc::c_int;
    for opt in [libc::SO_RCVBUFFORCE, libc::SO_SNDBUFFORCE] {
        // SAFETY: a valid socket, an int option of the right size.
        unsafe {
            libc::setsockopt(
                s.as_raw_fd(),
                libc::SOL_SOCKET,
                opt,
                (&size as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            );
        }
    }
}

fn quic_client(files: &TlsFiles) -> Result<quinn::ClientConfig, TransportError> {
    let crypto = QuicClientConfig::try_from(client_config(files)?).map_err(|e| TransportError::Tls(e.to_string()))?;
    let mut c = quinn::ClientConfig::new(Arc::new(crypto));
    c.transport_config(Arc::new(transport_config()));
    Ok(c)
}

fn endpoint(bind: SocketAddr, server: Option<quinn::ServerConfig>, files: &TlsFiles) -> Result<Endpoint, TransportError> {
    // Load every file before binding: a bad config fails without side effects.
    let client = quic_client(files)?;
    let mut ep = Endpoint::new(EndpointConfig::default(), server, socket(bind)?, Arc::new(quinn::TokioRuntime))
        .map_err(|source| TransportError::Bind { addr: bind, source })?;
    ep.set_default_client_config(client);
    Ok(ep)
}

/// An agent's endpoint: accepts peers with a certificate from the CA, and
/// connects to other agents with its own certificate.
pub fn server_endpoint(bind: SocketAddr, files: &TlsFiles) -> Result<Endpoint, TransportError> {
    let crypto = QuicServerConfig::try_from(server_config(files)?).map_err(|e| TransportError::Tls(e.to_string()))?;
    let mut server = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    server.transport_config(Arc::new(transport_config()));
    endpoint(bind, Some(server), files)
}

/// The coordinator's endpoint: outgoing connections only.
pub fn client_endpoint(files: &TlsFiles) -> Result<Endpoint, TransportError> {
    endpoint("0.0.0.0:0".parse().expect("valid"), None, files)
}

/// Connects to `name` at `addr`; the server's certificate must name `name`.
pub async fn connect(endpoint: &Endpoint, addr: SocketAddr, name: &str) -> Result<quinn::Connection, TransportError> {
    let connecting = endpoint.connect(addr, name).map_err(|e| TransportError::Connect { name: name.into(), addr, detail: e.to_string() })?;
    // With TLS 1.3 the server checks the client's certificate after the
    // client considers the handshake done: a rejection of *our* certificate
    // arrives as a close right after this returns. Callers that then fail on
    // their first stream use `classify` on `close_reason()` (rpc does).
    match tokio::time::timeout(scaled(HANDSHAKE_TIMEOUT), connecting).await {
        Err(_) => Err(TransportError::Timeout { name: name.into(), addr, secs: scaled(HANDSHAKE_TIMEOUT).as_secs() }),
        Ok(Err(e)) => Err(classify(name, addr, e)),
        Ok(Ok(c)) => Ok(c),
    }
}

/// Turns a connection error into one that says whether the peer is down,
/// slow, or untrusted.
pub fn classify(name: &str, addr: SocketAddr, e: quinn::ConnectionError) -> TransportError {
    let detail = e.to_string();
    let lower = detail.to_lowercase();
    if lower.contains("certificate") || lower.contains("crypto") || lower.contains("issuer") || lower.contains("tls") {
        TransportError::Certificate { name: name.into(), addr, detail }
    } else if matches!(e, quinn::ConnectionError::TimedOut) {
        TransportError::Timeout { name: name.into(), addr, secs: scaled(HANDSHAKE_TIMEOUT).as_secs() }
    } else {
        TransportError::Connect { name: name.into(), addr, detail }
    }
}

/// How long a new connection may take to send its Hello.
pub const HELLO_TIMEOUT: Duration = Duration::from_secs(5);
/// A connection with no stream open this long is closed by the agent:
/// keep-alives alone do not keep a connection.
pub const IDLE_CONNECTION: Duration = Duration::from_secs(60);
/// Connections an agent keeps at once from one peer, and from everyone.
pub const MAX_CONNECTIONS_PER_PEER: usize = 8;
pub const MAX_CONNECTIONS: usize = 256;
/// Requests an agent serves at once on one connection (quinn's stream
/// limit, 64, bounds what a peer may open; this bounds the work).
pub const MAX_REQUESTS_PER_CONNECTION: usize = 32;

/// The verified peer's name and role, after the handshake.
pub fn peer_identity(conn: &quinn::Connection) -> Result<PeerId, TransportError> {
    let certs = conn
        .peer_identity()
        .and_then(|i| i.downcast::<Vec<rustls::pki_types::CertificateDer<'static>>>().ok())
        .ok_or_else(|| TransportError::Identity("the peer presented no certificate".into()))?;
    let der = certs.first().ok_or_else(|| TransportError::Identity("the peer presented no certificate".into()))?;
    identity_of(der.as_ref())
}

/// The authenticated peer's name: its certificate's common name, else its
/// first DNS subject alternative name.
pub fn peer_name(conn: &quinn::Connection) -> Option<String> {
    peer_identity(conn).ok().map(|p| p.name)
}
