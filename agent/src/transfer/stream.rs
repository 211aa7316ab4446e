//! The data streams themselves: opened with their header, finished, and
//! read to their end into a blocking worker.

use super::{TransferError, CHUNK};
use tern_proto::frame::{expect_frame, write_frame};
use tern_proto::{DataHeader, Digest};

/// Opens a data stream and writes its header.
pub(super) async fn open(conn: &quinn::Connection, header: &DataHeader) -> Result<quinn::SendStream, String> {
    let mut s = conn.open_uni().await.map_err(|e| e.to_string())?;
    write_frame(&mut s, header).await.map_err(|e| e.to_string())?;
    Ok(s)
}

/// Finishes a data stream and waits until the peer has every byte (or the
/// connection dies).
pub(super) async fn close(s: Result<quinn::SendStream, String>) -> Result<(), TransferError> {
    let mut s = s.map_err(TransferError::Send)?;
    s.finish().map_err(|e| TransferError::Send(e.to_string()))?;
    let _ = s.stopped().await;
    Ok(())
}

/// Reads `recv` to its end, handing the chunks to `work` in a blocking
/// thread through a bounded channel (a few chunks in flight: memory stays
/// bounded whatever the size). Disk writes happen there in large buffered
/// blocks, never as one small async write per QUIC chunk.
pub(crate) async fn pump<T: Send + 'static>(
    mut recv: quinn::RecvStream,
    work: impl FnOnce(&mut dyn FnMut() -> Option<bytes::Bytes>) -> Result<T, String> + Send + 'static,
) -> Result<T, TransferError> {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<bytes::Bytes>(16);
    let worker = tokio::task::spawn_blocking(move || work(&mut || rx.blocking_recv()));
    let mut read_err = None;
    loop {
        match recv.read_chunk(CHUNK, true).await {
            Ok(Some(c)) => {
                if tx.send(c.bytes).await.is_err() {
                    break; // the worker failed; its error says why
                }
            }
            Ok(None) => break,
            Err(e) => {
                read_err = Some(e.to_string());
                break;
            }
        }
    }
    drop(tx);
    let out = worker.await.map_err(|e| TransferError::Write(std::io::Error::other(e.to_string())))?;
    if let Some(e) = read_err {
        return Err(TransferError::Receive(e));
    }
    out.map_err(TransferError::Receive)
}

pub(crate) fn digest(hasher: &blake3::Hasher, bytes: u64) -> Digest {
    Digest { bytes, blake3: *hasher.finalize().as_bytes() }
}

/// Reads a data stream's header.
pub async fn accept_header(recv: &mut quinn::RecvStream) -> Result<DataHeader, TransferError> {
    expect_frame(recv).await.map_err(|e| TransferError::Receive(e.to_string()))
}
