//! Bulk data over unidirectional QUIC streams, hashed with blake3 on both
//! sides as the bytes pass, never held whole in memory: raw archives (image,
//! checkpoint), file sets (pre-copy rounds) and delta-encoded archives
//! (content-addressed pre-copy).

use crate::pages::{is_pages_file, PageIndex, PageStore};
use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tern_proto::delta::{DeltaDecoder, DeltaEncoder, DeltaStats, Decoded};
use tern_proto::fileset::{FileEntry, NameCheck};
use tern_proto::frame::{self, expect_frame, write_frame};
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

/// Opens a data stream and writes its header.
async fn open(conn: &quinn::Connection, header: &DataHeader) -> Result<quinn::SendStream, String> {
    let mut s = conn.open_uni().await.map_err(|e| e.to_string())?;
    write_frame(&mut s, header).await.map_err(|e| e.to_string())?;
    Ok(s)
}

/// Finishes a data stream and waits until the peer has every byte (or the
/// connection dies).
async fn close(s: Result<quinn::SendStream, String>) -> Result<(), TransferError> {
    let mut s = s.map_err(TransferError::Send)?;
    s.finish().map_err(|e| TransferError::Send(e.to_string()))?;
    let _ = s.stopped().await;
    Ok(())
}

/// Streams everything `reader` yields to a new uni stream on `conn`.
///
/// The reader is always drained to its end, even when the stream fails:
/// it may be a FIFO that Podman writes the checkpoint into, and Podman must
/// be able to finish (so the source can restore) whatever the network does.
pub async fn send<R: AsyncRead + Unpin>(
    conn: &quinn::Connection,
    header: &DataHeader,
    reader: R,
    done: &AtomicU64,
) -> Result<Digest, TransferError> {
    send_encoded(conn, header, reader, done, None).await.map(|(d, _)| d)
}

/// [`send`], but as delta records against the base pages in `index` when
/// given: pages the target holds are replaced by their numbers. The digest
/// is the original archive's, as the target rebuilds it.
pub async fn send_encoded<R: AsyncRead + Unpin>(
    conn: &quinn::Connection,
    header: &DataHeader,
    mut reader: R,
    done: &AtomicU64,
    index: Option<&PageIndex>,
) -> Result<(Digest, DeltaStats), TransferError> {
    let mut stream = open(conn, header).await;
    let mut encoder = index.map(|ix| (DeltaEncoder::default(), ix));
    let mut hasher = blake3::Hasher::new();
    let mut buf = vec![0u8; CHUNK];
    let mut total = 0u64;
    let write = async |stream: &mut Result<quinn::SendStream, String>, bytes: &[u8]| {
        if let Ok(s) = stream {
            if let Err(e) = s.write_all(bytes).await {
                *stream = Err(e.to_string());
            }
        }
    };
    loop {
        let n = reader.read(&mut buf).await.map_err(TransferError::Read)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        total += n as u64;
        match &mut encoder {
            None => write(&mut stream, &buf[..n]).await,
            Some((enc, ix)) => {
                enc.feed(&buf[..n], &mut |page| ix.lookup(page)).map_err(|e| TransferError::Send(e.to_string()))?;
                let out = enc.take_output();
                write(&mut stream, &out).await;
            }
        }
        done.store(total, Ordering::Relaxed);
    }
    let mut stats = DeltaStats { archive_bytes: total, raw_bytes: total, ..Default::default() };
    if let Some((enc, _)) = &mut encoder {
        let tail = enc.finish().map_err(|e| TransferError::Send(e.to_string()))?;
        write(&mut stream, &tail).await;
        stats = enc.stats;
    }
    close(stream).await?;
    Ok((Digest { bytes: total, blake3: *hasher.finalize().as_bytes() }, stats))
}

/// Sends the regular files `names` of `dir` as a file set
/// ([`tern_proto::fileset`]). With `index`, the pages files are hashed into
/// it as they pass (the base of content-addressed pre-copy).
pub async fn send_fileset(
    conn: &quinn::Connection,
    header: &DataHeader,
    dir: &Path,
    names: &[String],
    done: &AtomicU64,
    mut index: Option<&mut PageIndex>,
) -> Result<Digest, TransferError> {
    let mut stream = open(conn, header).await.map_err(TransferError::Send)?;
    let mut hasher = blake3::Hasher::new();
    let mut total = 0u64;
    let mut buf = vec![0u8; CHUNK];
    let send_err = |e: &dyn std::fmt::Display| TransferError::Send(e.to_string());
    for name in names {
        let mut file = tokio::fs::File::open(dir.join(name)).await.map_err(TransferError::Read)?;
        let len = file.metadata().await.map_err(TransferError::Read)?.len();
        let entry = frame::encode(&FileEntry::File { name: name.clone(), len }).map_err(|e| send_err(&e))?;
        hasher.update(&entry);
        stream.write_all(&entry).await.map_err(|e| send_err(&e))?;
        let pages = index.is_some() && is_pages_file(name);
        let mut left = len;
        while left > 0 {
            let want = (left.min(CHUNK as u64)) as usize;
            let n = file.read(&mut buf[..want]).await.map_err(TransferError::Read)?;
            if n == 0 {
                return Err(TransferError::Read(std::io::Error::other(format!("{name} shrank while it was sent"))));
            }
            hasher.update(&buf[..n]);
            if pages {
                if let Some(ix) = index.as_deref_mut() {
                    ix.add(&buf[..n]);
                }
            }
            stream.write_all(&buf[..n]).await.map_err(|e| send_err(&e))?;
            left -= n as u64;
            total += n as u64;
            done.store(total, Ordering::Relaxed);
        }
        if let Some(ix) = index.as_deref_mut() {
            ix.end_file();
        }
    }
    let end = frame::encode(&FileEntry::End).map_err(|e| send_err(&e))?;
    hasher.update(&end);
    stream.write_all(&end).await.map_err(|e| send_err(&e))?;
    close(Ok(stream)).await?;
    Ok(Digest { bytes: total, blake3: *hasher.finalize().as_bytes() })
}

/// Receives a file set into `dir` (which must exist); returns its digest
/// and the file names in the order they came.
pub async fn receive_fileset(mut recv: quinn::RecvStream, dir: &Path, done: &AtomicU64) -> Result<(Digest, Vec<String>), TransferError> {
    let rx = |e: &dyn std::fmt::Display| TransferError::Receive(e.to_string());
    let mut hasher = blake3::Hasher::new();
    let mut names = NameCheck::default();
    let mut order = Vec::new();
    let mut total = 0u64;
    loop {
        let entry: FileEntry = expect_frame(&mut recv).await.map_err(|e| rx(&e))?;
        // Entries are hashed as the source encoded them (postcard is
        // deterministic), so the digest covers names and sizes too.
        hasher.update(&frame::encode(&entry).map_err(|e| rx(&e))?);
        let (name, len) = match entry {
            FileEntry::File { name, len } => (name, len),
            FileEntry::End => break,
            FileEntry::Invalid => return Err(rx(&"invalid file entry")),
        };
        names.admit(&name).map_err(|e| rx(&e))?;
        let mut file = tokio::fs::File::create(dir.join(&name)).await.map_err(TransferError::Write)?;
        let mut left = len;
        while left > 0 {
            let want = (left.min(CHUNK as u64)) as usize;
            let chunk = recv.read_chunk(want, true).await.map_err(|e| rx(&e))?;
            let Some(chunk) = chunk else {
                return Err(rx(&format!("the stream ended inside {name}")));
            };
            hasher.update(&chunk.bytes);
            file.write_all(&chunk.bytes).await.map_err(TransferError::Write)?;
            left -= chunk.bytes.len() as u64;
            total += chunk.bytes.len() as u64;
            done.store(total, Ordering::Relaxed);
        }
        file.flush().await.map_err(TransferError::Write)?;
        order.push(name);
    }
    if recv.read_chunk(1, true).await.map_err(|e| rx(&e))?.is_some() {
        return Err(rx(&"bytes follow the End of the file set"));
    }
    Ok((Digest { bytes: total, blake3: *hasher.finalize().as_bytes() }, order))
}

/// Rebuilds an archive sent as delta records against `store` into `path`;
/// returns the rebuilt archive's digest. Records are decoded and written in
/// a blocking thread fed through a bounded channel: memory stays at a few
/// chunks whatever the archive's size.
pub async fn receive_delta(
    mut recv: quinn::RecvStream,
    path: &Path,
    store: Arc<PageStore>,
    done: Arc<AtomicU64>,
) -> Result<Digest, TransferError> {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<bytes::Bytes>(8);
    let file = std::fs::File::create(path).map_err(TransferError::Write)?;
    let writer = tokio::task::spawn_blocking(move || -> Result<Digest, String> {
        let mut out = std::io::BufWriter::with_capacity(CHUNK, file);
        let mut hasher = blake3::Hasher::new();
        let mut decoder = DeltaDecoder::default();
        let mut buf = vec![0u8; CHUNK];
        let mut total = 0u64;
        let mut emit = |bytes: &[u8], hasher: &mut blake3::Hasher, total: &mut u64| -> std::io::Result<()> {
            hasher.update(bytes);
            *total += bytes.len() as u64;
            done.store(*total, Ordering::Relaxed);
            out.write_all(bytes)
        };
        while let Some(chunk) = rx.blocking_recv() {
            decoder
                .feed(&chunk, &mut |d| match d {
                    Decoded::Raw(b) => emit(b, &mut hasher, &mut total).map_err(|e| e.to_string()),
                    Decoded::Pages { index, count } => store
                        .copy(index, count, &mut buf, &mut |b| emit(b, &mut hasher, &mut total))
                        .map_err(|e| e.to_string()),
                })
                .map_err(|e| e.to_string())?;
        }
        decoder.finish().map_err(|e| e.to_string())?;
        drop(emit);
        out.flush().map_err(|e| e.to_string())?;
        Ok(Digest { bytes: total, blake3: *hasher.finalize().as_bytes() })
    });
    let mut read_err = None;
    loop {
        match recv.read_chunk(CHUNK, true).await {
            Ok(Some(c)) => {
                if tx.send(c.bytes).await.is_err() {
                    break; // the writer failed; its error says why
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
    let written = writer.await.map_err(|e| TransferError::Write(std::io::Error::other(e.to_string())))?;
    if let Some(e) = read_err {
        return Err(TransferError::Receive(e));
    }
    written.map_err(TransferError::Receive)
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
