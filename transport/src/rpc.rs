//! Request/response over QUIC streams, and the Hello exchange that opens
//! every connection. Shared by the agent (server, and client of other
//! agents) and the coordinator.

use std::net::SocketAddr;
use std::time::Duration;
use tern_proto::frame::{expect_frame, write_frame, FrameError, WireMessage};
use tern_proto::{negotiate, Hello, HelloReply, Request, Response, PROTOCOL_VERSION, SUPPORTED_VERSIONS};

/// How long a peer may take to answer a simple request.
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum RpcError {
    #[error(transparent)]
    Transport(#[from] crate::TransportError),
    #[error("the connection to {peer} broke: {source}")]
    Connection { peer: String, source: quinn::ConnectionError },
    #[error("talking to {peer}: {source}")]
    Frame { peer: String, source: FrameError },
    #[error("{peer} did not answer within {secs} s")]
    Timeout { peer: String, secs: u64 },
    #[error("{peer} refused the connection: {reason}")]
    Refused { peer: String, reason: String },
    #[error("{peer} answered {got} where {expected} was expected")]
    Unexpected { peer: String, expected: &'static str, got: String },
    #[error("{peer}: {message}")]
    Remote { peer: String, message: String },
}

fn hello(my_name: &str) -> Hello {
    Hello {
        version: PROTOCOL_VERSION,
        supported: SUPPORTED_VERSIONS.to_vec(),
        name: my_name.to_string(),
        software: format!("tern {}", env!("CARGO_PKG_VERSION")),
    }
}

/// An authenticated connection to an agent, after a successful Hello.
#[derive(Clone)]
pub struct Session {
    pub conn: quinn::Connection,
    /// The peer's name, as its certificate says.
    pub peer: String,
    pub version: u16,
}

impl Session {
    /// Connects to `name` at `addr`, checks its certificate names it, and
    /// exchanges Hello.
    pub async fn connect(endpoint: &quinn::Endpoint, addr: SocketAddr, name: &str, my_name: &str) -> Result<Session, RpcError> {
        let conn = crate::connect(endpoint, addr, name).await?;
        // Sessions go to agents only: a coordinator's certificate cannot
        // stand in for a host's.
        match crate::peer_identity(&conn) {
            Ok(id) if id.role == crate::Role::Host => {}
            Ok(id) => {
                conn.close(1u32.into(), b"not a host");
                return Err(crate::TransportError::WrongRole { peer: id.name, role: id.role.to_string(), expected: "host certificate" }.into());
            }
            Err(e) => {
                conn.close(1u32.into(), b"no identity");
                return Err(e.into());
            }
        }
        let peer = name.to_string();
        let mut session = Session { conn, peer, version: 0 };
        let reply = match session.request(&Request::Hello(hello(my_name))).await {
            Ok(r) => r,
            // A peer that rejects our certificate closes the connection
            // right after the handshake: report that, not a broken stream.
            Err(e) => match session.conn.close_reason() {
                Some(reason) => return Err(crate::endpoint::classify(name, addr, reason).into()),
                None => return Err(e),
            },
        };
        match reply {
            Response::Hello(HelloReply::Accepted { version, .. }) => session.version = version,
            Response::Hello(HelloReply::Refused { reason }) => return Err(RpcError::Refused { peer: session.peer, reason }),
            other => return Err(session.unexpected("Hello", &other)),
        }
        Ok(session)
    }

    fn frame_err(&self, source: FrameError) -> RpcError {
        RpcError::Frame { peer: self.peer.clone(), source }
    }

    pub fn unexpected(&self, expected: &'static str, got: &impl std::fmt::Debug) -> RpcError {
        let got = clip(format!("{got:?}"), 200);
        RpcError::Unexpected { peer: self.peer.clone(), expected, got }
    }

    /// Opens a stream and sends `req` as its first frame; for conversations.
    pub async fn open(&self, req: &Request) -> Result<(quinn::SendStream, quinn::RecvStream), RpcError> {
        let (mut send, recv) = self.conn.open_bi().await.map_err(|source| RpcError::Connection { peer: self.peer.clone(), source })?;
        write_frame(&mut send, req).await.map_err(|e| self.frame_err(e))?;
        Ok((send, recv))
    }

    /// Reads one frame from a conversation's stream, within `limit`.
    pub async fn read<M: WireMessage>(&self, recv: &mut quinn::RecvStream, limit: Duration) -> Result<M, RpcError> {
        let limit = crate::timeouts::scaled(limit);
        match tokio::time::timeout(limit, expect_frame(recv)).await {
            Ok(r) => r.map_err(|e| self.frame_err(e)),
            Err(_) => Err(RpcError::Timeout { peer: self.peer.clone(), secs: limit.as_secs() }),
        }
    }

    /// One request, one response; a remote error becomes [`RpcError::Remote`].
    pub async fn request(&self, req: &Request) -> Result<Response, RpcError> {
        let (mut send, mut recv) = self.open(req).await?;
        let _ = send.finish();
        match self.read::<Response>(&mut recv, REPLY_TIMEOUT).await? {
            Response::Error(e) => Err(RpcError::Remote { peer: self.peer.clone(), message: e.message }),
            r => Ok(r),
        }
    }
}

/// The server's half of Hello: checks the version and that the claimed name
/// is the certificate's.
pub fn answer_hello(hello: &Hello, cert_name: Option<&str>, my_name: &str) -> HelloReply {
    if cert_name != Some(hello.name.as_str()) {
        return HelloReply::Refused {
            reason: format!("the peer calls itself {:?} but its certificate names {:?}", hello.name, cert_name.unwrap_or("nobody")),
        };
    }
    match negotiate(SUPPORTED_VERSIONS, &hello.supported) {
        Some(version) => HelloReply::Accepted { version, name: my_name.to_string(), software: format!("tern-agent {}", env!("CARGO_PKG_VERSION")) },
        None => HelloReply::Refused {
            reason: format!(
                "no common protocol version: this agent speaks {SUPPORTED_VERSIONS:?}, the peer {:?}; upgrade the older side",
                hello.supported
            ),
        },
    }
}

/// `text` cut to at most `max` bytes at a character boundary: text from a
/// peer may put a multi-byte character anywhere.
fn clip(mut text: String, max: usize) -> String {
    if text.len() > max {
        let mut cut = max;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text.truncate(cut);
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hello_checks_name_and_version() {
        let h = hello("coordinator");
        assert!(matches!(answer_hello(&h, Some("coordinator"), "a"), HelloReply::Accepted { version: PROTOCOL_VERSION, .. }));
        assert!(matches!(answer_hello(&h, Some("client1"), "a"), HelloReply::Refused { .. }));
        assert!(matches!(answer_hello(&h, None, "a"), HelloReply::Refused { .. }));
        let old = Hello { supported: vec![99], ..h };
        match answer_hello(&old, Some("coordinator"), "a") {
            HelloReply::Refused { reason } => assert!(reason.contains("no common protocol version")),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn clipping_peer_text_never_splits_a_character() {
        let text = "é".repeat(150); // 300 bytes, every second byte inside a character
        for max in [0, 1, 199, 200, 201] {
            let c = clip(text.clone(), max);
            assert!(c.len() <= max && c.chars().all(|ch| ch == 'é'), "{max}: {}", c.len());
        }
        assert_eq!(clip("short".into(), 200), "short");
    }
}
