//! Bulk data over unidirectional QUIC streams, hashed with blake3 on both
//! sides as the bytes pass, never held whole in memory. Archives (image,
//! hash base, checkpoint) travel as records ([`tern_proto::delta`]): raw or
//! zstd-compressed runs, and page references where the target holds a
//! base. Pre-copy rounds travel as file sets ([`tern_proto::fileset`]).

use crate::pages::{PageIndex, PageOffsets, PageStore};
use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tern_proto::delta::{DeltaDecoder, DeltaEncoder, DeltaStats, Decoded};
use tern_proto::fileset::{FileEntry, FileEvent, FileSetDecoder};
use tern_proto::frame::{self, expect_frame, write_frame};
use tern_proto::{DataHeader, Digest};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio_util::sync::CancellationToken;

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

/// Streams everything `reader` yields to a new uni stream on `conn`, as
/// records compressed at `zstd` (a level) where that pays.
///
/// The reader is always drained to its end, even when the stream fails:
/// it may be a FIFO that Podman writes the checkpoint into, and Podman must
/// be able to finish (so the source can restore) whatever the network does.
pub async fn send<R: AsyncRead + Unpin>(
    conn: &quinn::Connection,
    header: &DataHeader,
    reader: R,
    done: &AtomicU64,
    zstd: Option<i32>,
) -> Result<(Digest, DeltaStats), TransferError> {
    send_encoded(conn, header, reader, done, Encoding::Raw, zstd, &CancellationToken::new()).await
}

/// How [`send_encoded`] treats the bytes it reads.
pub enum Encoding<'a> {
    /// Every byte is sent (raw or compressed).
    Raw,
    /// Every byte is sent, and the bytes are cut into pages hashed into the
    /// index (the base of content-addressed pre-copy).
    Index(&'a mut PageIndex),
    /// Pages the index holds go as their numbers.
    Delta(&'a PageIndex),
}

/// [`send`], with an [`Encoding`]. With `Encoding::Delta`, pages the target
/// holds are replaced by their numbers; the digest is still the original
/// archive's, as the target rebuilds it.
///
/// When `stop` fires the stream is reset at once and the rest of the reader
/// is drained without sending: Podman finishes writing the checkpoint
/// quickly, and the rollback can begin, instead of waiting for the whole
/// archive to cross a slow link.
pub async fn send_encoded<R: AsyncRead + Unpin>(
    conn: &quinn::Connection,
    header: &DataHeader,
    mut reader: R,
    done: &AtomicU64,
    mut encoding: Encoding<'_>,
    zstd: Option<i32>,
    stop: &CancellationToken,
) -> Result<(Digest, DeltaStats), TransferError> {
    let mut stream = open(conn, header).await;
    let mut encoder = DeltaEncoder::default();
    if let Some(level) = zstd {
        encoder = encoder.compress(level);
    }
    let mut hasher = blake3::Hasher::new();
    let mut buf = vec![0u8; CHUNK];
    let mut total = 0u64;
    let write = async |stream: &mut Result<quinn::SendStream, String>, bytes: &[u8]| {
        if let Ok(s) = stream {
            let r = tokio::select! {
                r = s.write_all(bytes) => r.map_err(|e| e.to_string()),
                _ = stop.cancelled() => Err("stopped".to_string()),
            };
            if let Err(e) = r {
                *stream = Err(e);
            }
        }
    };
    let mut stopped = false;
    loop {
        let n = reader.read(&mut buf).await.map_err(TransferError::Read)?;
        if n == 0 {
            break;
        }
        if stop.is_cancelled() {
            if !stopped {
                stopped = true;
                if let Ok(s) = &mut stream {
                    let _ = s.reset(1u32.into());
                }
                stream = Err("cancelled".into());
            }
            continue; // drain only
        }
        hasher.update(&buf[..n]);
        total += n as u64;
        let fed = match &mut encoding {
            Encoding::Delta(ix) => encoder.feed(&buf[..n], &mut |page| ix.lookup(page)),
            Encoding::Index(ix) => {
                ix.add(&buf[..n]);
                encoder.feed(&buf[..n], &mut |_| None)
            }
            Encoding::Raw => encoder.feed(&buf[..n], &mut |_| None),
        };
        fed.map_err(|e| TransferError::Send(e.to_string()))?;
        let out = encoder.take_output();
        write(&mut stream, &out).await;
        done.store(total, Ordering::Relaxed);
    }
    if stopped {
        return Err(TransferError::Send("cancelled; the rest of the archive was drained here, not sent".into()));
    }
    let tail = encoder.finish().map_err(|e| TransferError::Send(e.to_string()))?;
    write(&mut stream, &tail).await;
    let stats = encoder.stats;
    close(stream).await?;
    Ok((Digest { bytes: total, blake3: *hasher.finalize().as_bytes() }, stats))
}

/// Sends the regular files `names` of `dir` as a file set
/// ([`tern_proto::fileset`]).
pub async fn send_fileset(
    conn: &quinn::Connection,
    header: &DataHeader,
    dir: &Path,
    names: &[String],
    done: &AtomicU64,
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
        let mut left = len;
        while left > 0 {
            let want = (left.min(CHUNK as u64)) as usize;
            let n = file.read(&mut buf[..want]).await.map_err(TransferError::Read)?;
            if n == 0 {
                return Err(TransferError::Read(std::io::Error::other(format!("{name} shrank while it was sent"))));
            }
            hasher.update(&buf[..n]);
            stream.write_all(&buf[..n]).await.map_err(|e| send_err(&e))?;
            left -= n as u64;
            total += n as u64;
            done.store(total, Ordering::Relaxed);
        }
    }
    let end = frame::encode(&FileEntry::End).map_err(|e| send_err(&e))?;
    hasher.update(&end);
    stream.write_all(&end).await.map_err(|e| send_err(&e))?;
    close(Ok(stream)).await?;
    Ok(Digest { bytes: total, blake3: *hasher.finalize().as_bytes() })
}

/// Reads `recv` to its end, handing the chunks to `work` in a blocking
/// thread through a bounded channel (a few chunks in flight: memory stays
/// bounded whatever the size). Disk writes happen there in large buffered
/// blocks, never as one small async write per QUIC chunk.
async fn pump<T: Send + 'static>(
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

fn digest(hasher: &blake3::Hasher, bytes: u64) -> Digest {
    Digest { bytes, blake3: *hasher.finalize().as_bytes() }
}

/// Where a received file set goes.
pub enum FileSetTarget {
    /// Appended as members `<prefix>/<name>` to this tar archive (created if
    /// missing), left open for more members: the pre-copy rounds are packed
    /// for Podman's `--import-previous` as they arrive.
    TarAppend { path: std::path::PathBuf, prefix: String },
}

/// Receives a file set ([`tern_proto::fileset`]); returns the digest of the
/// stream (what the source hashed as it sent) and the file names in order.
pub async fn receive_fileset(recv: quinn::RecvStream, target: FileSetTarget, done: Arc<AtomicU64>) -> Result<(Digest, Vec<String>), TransferError> {
    pump(recv, move |next| {
        let mut sink = FileSink::open(target).map_err(|e| e.to_string())?;
        let mut hasher = blake3::Hasher::new();
        let mut decoder = FileSetDecoder::default();
        let (mut total, mut names) = (0u64, Vec::new());
        while let Some(chunk) = next() {
            hasher.update(&chunk);
            decoder
                .feed(&chunk, &mut |e| {
                    match e {
                        FileEvent::Start { name, len } => {
                            names.push(name.to_string());
                            sink.start(name, len)
                        }
                        FileEvent::Data(b) => {
                            total += b.len() as u64;
                            done.store(total, Ordering::Relaxed);
                            sink.data(b)
                        }
                        FileEvent::EndFile => sink.end_file(),
                    }
                    .map_err(|e| e.to_string())
                })
                .map_err(|e| e.to_string())?;
        }
        decoder.finish().map_err(|e| e.to_string())?;
        sink.finish().map_err(|e| e.to_string())?;
        Ok((digest(&hasher, total), names))
    })
    .await
}

/// Appends a file set's files to a tar archive as they arrive.
struct FileSink {
    out: std::io::BufWriter<std::fs::File>,
    prefix: String,
    len: u64,
}

impl FileSink {
    fn open(target: FileSetTarget) -> std::io::Result<FileSink> {
        let FileSetTarget::TarAppend { path, prefix } = target;
        let f = std::fs::OpenOptions::new().create(true).append(true).open(path)?;
        Ok(FileSink { out: std::io::BufWriter::with_capacity(CHUNK, f), prefix, len: 0 })
    }

    fn start(&mut self, name: &str, len: u64) -> std::io::Result<()> {
        let mut h = tar::Header::new_ustar();
        h.set_path(format!("{}/{name}", self.prefix))?;
        h.set_size(len);
        h.set_mode(0o644);
        h.set_mtime(0);
        h.set_cksum();
        self.out.write_all(h.as_bytes())?;
        self.len = len;
        Ok(())
    }

    fn data(&mut self, b: &[u8]) -> std::io::Result<()> {
        self.out.write_all(b)
    }

    fn end_file(&mut self) -> std::io::Result<()> {
        let pad = (512 - (self.len % 512) as usize) % 512;
        self.out.write_all(&[0u8; 512][..pad])
    }

    fn finish(&mut self) -> std::io::Result<()> {
        self.out.flush()
    }
}

/// Ends a tar archive built by [`FileSetTarget::TarAppend`]: appends the
/// symbolic links `(name, target)` and the end-of-archive blocks.
pub fn finish_tar(path: &Path, links: &[(String, String)]) -> std::io::Result<u64> {
    let f = std::fs::OpenOptions::new().create(true).append(true).open(path)?;
    let mut out = std::io::BufWriter::new(f);
    for (name, target) in links {
        let mut h = tar::Header::new_ustar();
        h.set_path(name)?;
        h.set_link_name(target)?;
        h.set_entry_type(tar::EntryType::Symlink);
        h.set_size(0);
        h.set_mode(0o777);
        h.set_mtime(0);
        h.set_cksum();
        out.write_all(h.as_bytes())?;
    }
    out.write_all(&[0u8; 1024])?;
    let f = out.into_inner().map_err(|e| e.into_error())?;
    Ok(f.metadata()?.len())
}

/// Receives an archive sent as records into `path`, rebuilding pages from
/// `base` where the records refer to it; returns the archive's digest and,
/// when `offsets` is asked, where each of its pages sits in the file (the
/// hash base). Fault injection (tests) applies to the rebuilt bytes.
pub async fn receive_records(
    recv: quinn::RecvStream,
    path: &Path,
    base: Option<Arc<PageStore>>,
    offsets: bool,
    done: Arc<AtomicU64>,
    faults: ReceiveFaults,
) -> Result<(Digest, Option<Vec<u64>>), TransferError> {
    let file = std::fs::File::create(path).map_err(TransferError::Write)?;
    pump(recv, move |next| {
        let mut out = std::io::BufWriter::with_capacity(CHUNK, file);
        let mut hasher = blake3::Hasher::new();
        let mut decoder = DeltaDecoder::default();
        let mut pages = offsets.then(PageOffsets::default);
        let mut buf = vec![0u8; CHUNK];
        let mut total = 0u64;
        let mut emit = |bytes: &[u8], hasher: &mut blake3::Hasher, total: &mut u64| -> std::io::Result<()> {
            if faults.corrupt && *total == 0 && !bytes.is_empty() {
                let mut v = bytes.to_vec();
                v[0] ^= 0xff;
                tracing::warn!("fault injection: corrupted the first received byte");
                hasher.update(&v);
                out.write_all(&v)?;
            } else {
                hasher.update(bytes);
                out.write_all(bytes)?;
            }
            if let Some(p) = &mut pages {
                p.add(bytes);
            }
            *total += bytes.len() as u64;
            done.store(*total, Ordering::Relaxed);
            if let Some(limit) = faults.exit_after_bytes {
                if *total >= limit {
                    tracing::error!(total = *total, "fault injection: the agent exits now, mid-transfer");
                    std::process::exit(137);
                }
            }
            Ok(())
        };
        while let Some(chunk) = next() {
            decoder
                .feed(&chunk, &mut |d| match d {
                    Decoded::Raw(b) => emit(b, &mut hasher, &mut total).map_err(|e| e.to_string()),
                    Decoded::Pages { index, count } => match &base {
                        Some(store) => store
                            .copy(index, count, &mut buf, &mut |b| emit(b, &mut hasher, &mut total))
                            .map_err(|e| e.to_string()),
                        None => Err("a record refers to base pages, and this stream has no base".into()),
                    },
                })
                .map_err(|e| e.to_string())?;
        }
        decoder.finish().map_err(|e| e.to_string())?;
        drop(emit);
        out.flush().map_err(|e| e.to_string())?;
        Ok((digest(&hasher, total), pages.map(PageOffsets::finish)))
    })
    .await
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

