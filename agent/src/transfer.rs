//! Bulk data: archives streamed over unidirectional QUIC streams, hashed
//! with blake3 on both sides as the bytes pass, never held whole in memory.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use tern_proto::frame::{expect_frame, write_frame};
use tern_proto::{DataHeader, Digest};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};

/// Read size: large enough that per-chunk costs vanish, small enough to
/// keep memory per transfer bounded (one buffer in flight).
const CHUNK: usize = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum TransferError {
    #[error("reading the archive failed: {0}")]
    Read(std::io::Error),
    #[error("sending to the target failed: {0}")]
    Send(String),
    #[error("receiving from the source failed: {0}")]
    Receive(String),
    #[error("writing the staged archive failed: {0}")]
    Write(std::io::Error),
}

/// Streams everything `reader` yields to a new uni stream on `conn`.
///
/// The reader is always drained to its end, even when the stream fails:
/// it may be a FIFO that Podman writes the checkpoint into, and Podman must
/// be able to finish (so the source can restore) whatever the network does.
pub async fn send<R: AsyncRead + Unpin>(
    conn: &quinn::Connection,
    header: &DataHeader,
    mut reader: R,
    done: &AtomicU64,
) -> Result<Digest, TransferError> {
    let mut stream = match conn.open_uni().await {
        Ok(mut s) => match write_frame(&mut s, header).await {
            Ok(()) => Ok(s),
            Err(e) => Err(e.to_string()),
        },
        Err(e) => Err(e.to_string()),
    };
    let mut hasher = blake3::Hasher::new();
    let mut buf = vec![0u8; CHUNK];
    let mut total = 0u64;
    loop {
        let n = reader.read(&mut buf).await.map_err(TransferError::Read)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        total += n as u64;
        if let Ok(s) = &mut stream {
            if let Err(e) = s.write_all(&buf[..n]).await {
                stream = Err(e.to_string());
            }
        }
        done.store(total, Ordering::Relaxed);
    }
    let mut s = stream.map_err(TransferError::Send)?;
    s.finish().map_err(|e| TransferError::Send(e.to_string()))?;
    // Wait until the peer has every byte (or the connection dies).
    let _ = s.stopped().await;
    Ok(Digest { bytes: total, blake3: *hasher.finalize().as_bytes() })
}

/// Reads a data stream's header.
pub async fn accept_header(recv: &mut quinn::RecvStream) -> Result<DataHeader, TransferError> {
    expect_frame(recv).await.map_err(|e| TransferError::Receive(e.to_string()))
}

/// Hooks for injected faults while receiving (tests only).
#[derive(Default, Clone, Copy)]
pub struct ReceiveFaults {
    pub exit_after_bytes: Option<u64>,
    pub corrupt: bool,
}

/// Writes the rest of `recv` into `path`, hashing as it goes.
pub async fn receive(
    mut recv: quinn::RecvStream,
    path: &Path,
    done: &AtomicU64,
    faults: ReceiveFaults,
) -> Result<Digest, TransferError> {
    let mut file = tokio::fs::File::create(path).await.map_err(TransferError::Write)?;
    let mut hasher = blake3::Hasher::new();
    let mut total = 0u64;
    while let Some(chunk) = recv
        .read_chunk(CHUNK, true)
        .await
        .map_err(|e| TransferError::Receive(e.to_string()))?
    {
        let mut bytes = chunk.bytes;
        if faults.corrupt && total == 0 && !bytes.is_empty() {
            let mut v = bytes.to_vec();
            v[0] ^= 0xff;
            bytes = v.into();
            tracing::warn!("fault injection: corrupted the first received byte");
        }
        hasher.update(&bytes);
        file.write_all(&bytes).await.map_err(TransferError::Write)?;
        total += bytes.len() as u64;
        done.store(total, Ordering::Relaxed);
        if let Some(limit) = faults.exit_after_bytes {
            if total >= limit {
                tracing::error!(total, "fault injection: the agent exits now, mid-transfer");
                std::process::exit(137);
            }
        }
    }
    file.flush().await.map_err(TransferError::Write)?;
    Ok(Digest { bytes: total, blake3: *hasher.finalize().as_bytes() })
}
