//! The data streams themselves: opened with their header, finished, and
//! read to their end into a blocking worker.

use super::{Pace, ReceiveError, SendError, StoreError, TransferError, CHUNK};
use std::time::Duration;
use tern_proto::frame::{expect_frame, write_frame};
use tern_proto::{DataHeader, Digest};

/// Opens a data stream and writes its header, within the send deadline
/// (a peer that grants no stream is as stuck as one that stopped reading).
pub(super) async fn open(conn: &quinn::Connection, header: &DataHeader) -> Result<quinn::SendStream, TransferError> {
    let stall = super::send_stall();
    let opened = async {
        let mut s = conn.open_uni().await.map_err(SendError::from)?;
        write_frame(&mut s, header).await.map_err(SendError::from)?;
        Ok(s)
    };
    tokio::time::timeout(stall, opened).await.map_err(|_| TransferError::SendStalled(stall))?
}

/// Writes all of `bytes`, failing with [`TransferError::SendStalled`] once
/// the peer has taken none of them for `stall`: each write returns as soon
/// as flow control lets some bytes go, so a slow peer makes progress and a
/// stopped one is found out.
pub(super) async fn write_progressing(s: &mut quinn::SendStream, bytes: &[u8], stall: Duration) -> Result<(), TransferError> {
    let mut at = 0;
    while at < bytes.len() {
        match tokio::time::timeout(stall, s.write(&bytes[at..])).await {
            Ok(Ok(n)) => at += n,
            Ok(Err(e)) => return Err(SendError::from(e).into()),
            Err(_) => return Err(TransferError::SendStalled(stall)),
        }
    }
    Ok(())
}

/// [`write_progressing`], in pieces, each once the host's bandwidth cap
/// lets it go ([`Pace`]): what is counted is what goes on the stream.
pub(super) async fn write_paced(s: &mut quinn::SendStream, bytes: &[u8], stall: Duration, pace: &Pace<'_>) -> Result<(), TransferError> {
    for piece in pace.pieces(bytes) {
        pace.wait_for(piece.len()).await;
        write_progressing(s, piece, stall).await?;
    }
    Ok(())
}

/// Finishes a data stream and waits until the peer has every byte (or the
/// connection dies): at most [`CLOSE_STALLS`] send deadlines, as what is
/// still in flight (the send window, a few MiB) may cross a slow link.
pub(super) async fn close(s: Result<quinn::SendStream, TransferError>) -> Result<(), TransferError> {
    let mut s = s?;
    s.finish().map_err(SendError::from)?;
    let limit = super::send_stall() * CLOSE_STALLS;
    if tokio::time::timeout(limit, s.stopped()).await.is_err() {
        let _ = s.reset(1u32.into());
        return Err(TransferError::SendStalled(limit));
    }
    Ok(())
}

/// How many send deadlines the end of a stream may take to be acknowledged.
const CLOSE_STALLS: u32 = 4;

/// What a receiver allows a stream: no byte for `stall` fails it, and so
/// do more than `max_bytes` bytes on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamLimits {
    pub stall: Duration,
    pub max_bytes: u64,
}

impl StreamLimits {
    /// No limits (streams of this agent's own making).
    pub const NONE: StreamLimits = StreamLimits { stall: Duration::MAX, max_bytes: u64::MAX };
}

/// Reads `recv` to its end, handing the chunks to `work` in a blocking
/// thread through a bounded channel (a few chunks in flight: memory stays
/// bounded whatever the size). Disk writes happen there in large buffered
/// blocks, never as one small async write per QUIC chunk. A stream that
/// stalls or grows past `limits` ends with [`TransferError::ReceiveStalled`]
/// or [`TransferError::TooLarge`] (the worker then sees its input end and
/// fails or finishes; its result is dropped); one whose `work` fails, with
/// [`TransferError::Store`].
pub(crate) async fn pump<T: Send + 'static>(
    mut recv: quinn::RecvStream,
    limits: StreamLimits,
    work: impl FnOnce(&mut dyn FnMut() -> Option<bytes::Bytes>) -> Result<T, StoreError> + Send + 'static,
) -> Result<T, TransferError> {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<bytes::Bytes>(16);
    let worker = tokio::task::spawn_blocking(move || work(&mut || rx.blocking_recv()));
    let mut failed = None;
    let mut total = 0u64;
    loop {
        let chunk = match tokio::time::timeout(limits.stall, recv.read_chunk(CHUNK, true)).await {
            Ok(c) => c,
            Err(_) => {
                failed = Some(TransferError::ReceiveStalled(limits.stall));
                break;
            }
        };
        match chunk {
            Ok(Some(c)) => {
                total = total.saturating_add(c.bytes.len() as u64);
                if total > limits.max_bytes {
                    failed = Some(TransferError::TooLarge { limit: limits.max_bytes });
                    break;
                }
                if tx.send(c.bytes).await.is_err() {
                    break; // the worker failed; its error says why
                }
            }
            Ok(None) => break,
            Err(e) => {
                failed = Some(ReceiveError::from(e).into());
                break;
            }
        }
    }
    if failed.is_some() {
        let _ = recv.stop(1u32.into());
    }
    drop(tx);
    let out = worker.await.map_err(|e| TransferError::Write(std::io::Error::other(e)))?;
    if let Some(e) = failed {
        return Err(e);
    }
    out.map_err(TransferError::Store)
}

pub(crate) fn digest(hasher: &blake3::Hasher, bytes: u64) -> Digest {
    Digest { bytes, blake3: *hasher.finalize().as_bytes() }
}

/// Reads a data stream's header.
pub async fn accept_header(recv: &mut quinn::RecvStream) -> Result<DataHeader, TransferError> {
    expect_frame(recv).await.map_err(|e| ReceiveError::from(e).into())
}
