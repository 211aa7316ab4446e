//! Framing: a 4-byte big-endian length, then a postcard-encoded message.
//!
//! ```text
//!  0        4                         4+len
//!  +--------+--------------------------+
//!  |  len   |  postcard(message)       |     len <= limit (MAX_FRAME_LEN)
//!  +--------+--------------------------+
//! ```
//!
//! The length is checked against the limit *before* anything is allocated,
//! so a hostile peer's prefix costs at most `limit` bytes of memory.
//!
//! ## Why postcard, not bincode
//! bincode 2 trusts length prefixes inside a message unless every decode
//! is given a limit, and an unlimited decode of a hostile prefix aborts the
//! process on allocation; it is also flagged as unmaintained. postcard
//! decodes from a bounded byte slice: every length inside the message is
//! checked against the bytes actually present, serde's collection visitors
//! cap their pre-allocation, and a short or malformed input is an `Err`,
//! never a panic. With the frame limit above, decoding is bounded twice.

use serde::{de::DeserializeOwned, Serialize};
#[cfg(feature = "io")]
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// The largest control frame any tern process accepts (1 MiB). Control
/// messages are small; bulk data never travels in frames.
pub const MAX_FRAME_LEN: usize = 1 << 20;

/// What can go wrong reading or writing a frame.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The peer announced a frame of {len} bytes, above the limit of {limit}.
    #[error("the peer announced a frame of {len} bytes, above the limit of {limit}; it is not a tern peer of this version or it is misbehaving")]
    TooLarge { len: usize, limit: usize },
    #[error("a frame could not be decoded: {0}; the peer speaks another protocol version or sent garbage")]
    Decode(#[from] postcard::Error),
    #[error("a message is {len} bytes once encoded, above the frame limit of {limit}")]
    EncodeTooLarge { len: usize, limit: usize },
    #[error("the peer sent the reserved value 0 ({0}), which no valid message uses")]
    Invalid(&'static str),
    #[error("{0} bytes follow the message inside its frame; the peer speaks another protocol version")]
    Trailing(usize),
    #[error("the stream ended before a whole frame arrived")]
    Truncated,
    #[error("stream error: {0}")]
    Io(#[from] std::io::Error),
}

/// A wire message that can say whether it is the reserved `Invalid` variant.
pub trait WireMessage: Serialize + DeserializeOwned {
    /// The type's name, for errors.
    const NAME: &'static str;
    fn is_invalid(&self) -> bool;
}

/// Encodes `msg` into one frame (length prefix included).
pub fn encode<M: WireMessage>(msg: &M) -> Result<Vec<u8>, FrameError> {
    // Reserve the prefix, encode after it, then fill the prefix in.
    let mut out = postcard::to_extend(msg, vec![0u8; 4])?;
    let len = out.len() - 4;
    if len > MAX_FRAME_LEN {
        return Err(FrameError::EncodeTooLarge { len, limit: MAX_FRAME_LEN });
    }
    out[..4].copy_from_slice(&(len as u32).to_be_bytes());
    Ok(out)
}

/// Decodes one frame's payload (the bytes after the length prefix).
pub fn decode_payload<M: WireMessage>(payload: &[u8]) -> Result<M, FrameError> {
    if payload.len() > MAX_FRAME_LEN {
        return Err(FrameError::TooLarge { len: payload.len(), limit: MAX_FRAME_LEN });
    }
    let (msg, rest): (M, &[u8]) = postcard::take_from_bytes(payload)?;
    if !rest.is_empty() {
        return Err(FrameError::Trailing(rest.len()));
    }
    if msg.is_invalid() {
        return Err(FrameError::Invalid(M::NAME));
    }
    Ok(msg)
}

/// Decodes a whole frame held in memory; returns the message and the number of
/// bytes consumed, or `Ok(None)` when `buf` does not yet hold a whole frame.
pub fn decode<M: WireMessage>(buf: &[u8]) -> Result<Option<(M, usize)>, FrameError> {
    if buf.len() < 4 {
        return Ok(None);
    }
    let len = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
    if len > MAX_FRAME_LEN {
        return Err(FrameError::TooLarge { len, limit: MAX_FRAME_LEN });
    }
    if buf.len() < 4 + len {
        return Ok(None);
    }
    Ok(Some((decode_payload(&buf[4..4 + len])?, 4 + len)))
}

/// Collects one frame from a stream arriving in arbitrary slices, holding
/// at most `limit` bytes: the streaming decoders of records and file sets
/// take their small headers with it, byte runs in between.
pub struct FrameCollector {
    head: Vec<u8>,
    limit: usize,
}

impl FrameCollector {
    /// Collects frames of at most `limit` bytes (never above [`MAX_FRAME_LEN`]).
    pub fn new(limit: usize) -> Self {
        FrameCollector { head: Vec::new(), limit: limit.min(MAX_FRAME_LEN) }
    }

    /// Takes from `input` what the current frame still needs; returns the
    /// frame once it is whole, `None` when `input` ran out first.
    pub fn push<M: WireMessage>(&mut self, input: &mut &[u8]) -> Result<Option<M>, FrameError> {
        loop {
            let need = if self.head.len() < 4 {
                4 - self.head.len()
            } else {
                let len = u32::from_be_bytes([self.head[0], self.head[1], self.head[2], self.head[3]]) as usize;
                if len > self.limit {
                    return Err(FrameError::TooLarge { len, limit: self.limit });
                }
                4 + len - self.head.len()
            };
            if need == 0 {
                let msg = decode_payload(&self.head[4..]);
                self.head.clear();
                return msg.map(Some);
            }
            if input.is_empty() {
                return Ok(None);
            }
            let take = need.min(input.len());
            self.head.extend_from_slice(&input[..take]);
            *input = &input[take..];
        }
    }
}

/// Writes one frame.
#[cfg(feature = "io")]
pub async fn write_frame<W, M>(w: &mut W, msg: &M) -> Result<(), FrameError>
where
    W: AsyncWrite + Unpin,
    M: WireMessage,
{
    let buf = encode(msg)?;
    w.write_all(&buf).await?;
    Ok(())
}

/// Reads one frame; `Ok(None)` on a clean end of stream before any byte of
/// a new frame.
#[cfg(feature = "io")]
pub async fn read_frame<R, M>(r: &mut R) -> Result<Option<M>, FrameError>
where
    R: AsyncRead + Unpin,
    M: WireMessage,
{
    let mut len_buf = [0u8; 4];
    let mut got = 0;
    while got < 4 {
        let n = r.read(&mut len_buf[got..]).await?;
        if n == 0 {
            return if got == 0 { Ok(None) } else { Err(FrameError::Truncated) };
        }
        got += n;
    }
    let len = u32::from_be_bytes(len_buf) as usize;
    if len > MAX_FRAME_LEN {
        return Err(FrameError::TooLarge { len, limit: MAX_FRAME_LEN });
    }
    let mut payload = vec![0u8; len];
    r.read_exact(&mut payload).await.map_err(|e| match e.kind() {
        std::io::ErrorKind::UnexpectedEof => FrameError::Truncated,
        _ => FrameError::Io(e),
    })?;
    decode_payload(&payload).map(Some)
}

/// Reads one frame and fails with [`FrameError::Truncated`] on end of stream.
#[cfg(feature = "io")]
pub async fn expect_frame<R, M>(r: &mut R) -> Result<M, FrameError>
where
    R: AsyncRead + Unpin,
    M: WireMessage,
{
    read_frame(r).await?.ok_or(FrameError::Truncated)
}
