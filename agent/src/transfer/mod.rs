//! Bulk data over unidirectional QUIC streams, hashed with blake3 on both
//! sides as the bytes pass, never held whole in memory. Archives (image,
//! hash base, checkpoint) travel as records ([`tern_proto::delta`]): raw or
//! zstd-compressed runs, and page references where the target holds a
//! base. Pre-copy rounds travel as file sets ([`tern_proto::fileset`]).

use crate::faults::ReceiveFaults;
use crate::pages::{PageIndex, PageOffsets, PageStore};
use crate::target::unpack::TarSplit;
use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tern_proto::delta::{compress_run, pack_run, Decoded, DeltaDecoder, DeltaEncoder, DeltaStats, Packer, Segment};
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
) -> Result<Sent, TransferError> {
    send_encoded(conn, header, reader, done, Encoding::Raw, zstd, &CancellationToken::new()).await
}

/// How [`send_encoded`] treats the bytes it reads.
pub enum Encoding {
    /// Every byte is sent (raw or compressed).
    Raw,
    /// Every byte is sent, and the bytes are cut into pages hashed into this
    /// index (the base of content-addressed pre-copy), handed back in [`Sent`].
    Index(PageIndex),
    /// Pages the index holds go as their numbers.
    Delta(Arc<PageIndex>),
}

/// What [`send_encoded`] sent.
pub struct Sent {
    /// Size and blake3 of what the reader yielded (the original archive).
    pub digest: Digest,
    pub stats: DeltaStats,
    /// The index built with [`Encoding::Index`].
    pub index: Option<PageIndex>,
}

/// Buffers in flight between two stages of [`send_encoded`]: enough to
/// keep each stage busy, few enough to keep the agent small (each is up to
/// [`CHUNK`]).
const IN_FLIGHT: usize = 2;

/// [`send`], with an [`Encoding`]. With `Encoding::Delta`, pages the target
/// holds are replaced by their numbers; the digest is still the original
/// archive's, as the target rebuilds it.
///
/// Three stages run at once, so that reading the archive, the CPU work on
/// it and the network overlap instead of taking turns:
///
/// ```text
///  reader (async) ──1 MiB chunks──▶ encoder (a thread: blake3, pages,
///       ▲                            delta, zstd) ──records──▶ sender (async, QUIC)
///       └────────── spent buffers ◀──────┘
/// ```
///
/// Each link holds [`IN_FLIGHT`] buffers, so memory stays bounded whatever
/// the archive's size. When `stop` fires the stream is reset at once and
/// the rest of the reader is drained without sending: Podman finishes
/// writing the checkpoint quickly, and the rollback can begin, instead of
/// waiting for the whole archive to cross a slow link.
pub async fn send_encoded<R: AsyncRead + Unpin>(
    conn: &quinn::Connection,
    header: &DataHeader,
    reader: R,
    done: &AtomicU64,
    encoding: Encoding,
    zstd: Option<i32>,
    stop: &CancellationToken,
) -> Result<Sent, TransferError> {
    let stream = open(conn, header).await;
    let (to_encoder, from_reader) = tokio::sync::mpsc::channel::<(Vec<u8>, usize)>(IN_FLIGHT);
    let (to_sender, from_encoder) = tokio::sync::mpsc::channel::<Vec<u8>>(IN_FLIGHT);
    let (recycle, spare) = std::sync::mpsc::sync_channel::<Vec<u8>>(IN_FLIGHT + 2);
    let started = std::time::Instant::now();
    let encoder = tokio::task::spawn_blocking(move || encode_stage(from_reader, to_sender, recycle, encoding, zstd));
    let (read, (stream, send_wait)) = tokio::join!(read_stage(reader, to_encoder, spare, done, stop), send_stage(stream, from_encoder, stop));
    let encoded = encoder.await.map_err(|e| TransferError::Send(format!("the encoder failed: {e}")))?;
    let (total, read_wait) = read?;
    let fail = |mut stream: Result<quinn::SendStream, String>, e: TransferError| {
        if let Ok(s) = &mut stream {
            let _ = s.reset(1u32.into());
        }
        Err(e)
    };
    if stop.is_cancelled() {
        return fail(stream, TransferError::Send("cancelled; the rest of the archive was drained here, not sent".into()));
    }
    // The network's own reason comes first: the encoder only saw it end.
    let stream = match stream {
        Ok(s) => Ok(s),
        Err(e) => return Err(TransferError::Send(e)),
    };
    let (digest, stats, encoding, busy) = match encoded {
        Ok(x) => x,
        Err(e) => return fail(stream, TransferError::Send(e)),
    };
    tracing::debug!(
        total,
        ms = started.elapsed().as_millis() as u64,
        read_wait_ms = read_wait.as_millis() as u64,
        encode_ms = busy.as_millis() as u64,
        send_wait_ms = send_wait.as_millis() as u64,
        "archive sent"
    );
    debug_assert_eq!(digest.bytes, total);
    close(stream).await?;
    let index = match encoding {
        Encoding::Index(ix) => Some(ix),
        _ => None,
    };
    Ok(Sent { digest, stats, index })
}

/// Reads the whole archive in chunks of [`CHUNK`] and hands them to the
/// encoder, which may be gone (then the rest is drained). Returns the size
/// and the time spent waiting for the reader.
async fn read_stage<R: AsyncRead + Unpin>(
    mut reader: R,
    to_encoder: tokio::sync::mpsc::Sender<(Vec<u8>, usize)>,
    spare: std::sync::mpsc::Receiver<Vec<u8>>,
    done: &AtomicU64,
    stop: &CancellationToken,
) -> Result<(u64, std::time::Duration), TransferError> {
    let mut to_encoder = Some(to_encoder);
    let (mut total, mut waited) = (0u64, std::time::Duration::ZERO);
    loop {
        let mut buf = spare.try_recv().unwrap_or_else(|_| vec![0u8; CHUNK]);
        let t = std::time::Instant::now();
        let mut n = 0;
        while n < CHUNK {
            match reader.read(&mut buf[n..]).await.map_err(TransferError::Read)? {
                0 => break,
                got => n += got,
            }
        }
        waited += t.elapsed();
        if n == 0 {
            return Ok((total, waited));
        }
        total += n as u64;
        done.store(total, Ordering::Relaxed);
        if stop.is_cancelled() {
            to_encoder = None; // drain only
        }
        if let Some(tx) = &to_encoder {
            if tx.send((buf, n)).await.is_err() {
                to_encoder = None;
            }
        }
    }
}

/// The CPU work, on a thread of its own: the archive's digest, page
/// hashes, delta records, compression (on helper threads, [`Batch`]).
/// After a failure (its own, or the sender's) it only drains. Returns the
/// digest, the counts, the encoding (with the index it built) and the time
/// it was busy.
fn encode_stage(
    mut input: tokio::sync::mpsc::Receiver<(Vec<u8>, usize)>,
    output: tokio::sync::mpsc::Sender<Vec<u8>>,
    recycle: std::sync::mpsc::SyncSender<Vec<u8>>,
    mut encoding: Encoding,
    zstd: Option<i32>,
) -> Result<(Digest, DeltaStats, Encoding, std::time::Duration), String> {
    let mut encoder = DeltaEncoder::default();
    let mut batch = Batch::new(zstd.map(Packer::new));
    let mut hasher = blake3::Hasher::new();
    let (mut total, mut busy) = (0u64, std::time::Duration::ZERO);
    let mut failed: Option<String> = None;
    let send = |out: Vec<u8>, failed: &mut Option<String>| {
        if !out.is_empty() && output.blocking_send(out).is_err() {
            *failed = Some("the stream to the target failed".into());
        }
    };
    while let Some((buf, n)) = input.blocking_recv() {
        if failed.is_none() {
            let t = std::time::Instant::now();
            let bytes = &buf[..n];
            hasher.update(bytes);
            total += n as u64;
            let fed = match &mut encoding {
                Encoding::Delta(ix) => encoder.feed(bytes, &mut |page| ix.lookup(page)),
                Encoding::Index(ix) => {
                    ix.add(bytes);
                    encoder.feed(bytes, &mut |_| None)
                }
                Encoding::Raw => encoder.feed(bytes, &mut |_| None),
            };
            let out = fed.map_err(|e| e.to_string()).and_then(|()| {
                batch.add(encoder.take_segments());
                batch.take_if_full().map_err(|e| e.to_string())
            });
            busy += t.elapsed();
            match out {
                Ok(Some(out)) => send(out, &mut failed),
                Ok(None) => {}
                Err(e) => failed = Some(e),
            }
        }
        let _ = recycle.try_send(buf);
    }
    if let Some(e) = failed {
        return Err(e);
    }
    batch.add(encoder.finish_segments().map_err(|e| e.to_string())?);
    let tail = batch.take().map_err(|e| e.to_string())?;
    output.blocking_send(tail).map_err(|_| "the stream to the target failed".to_string())?;
    let mut stats = encoder.stats;
    stats.raw_bytes += batch.stats.raw_bytes;
    stats.zstd_in += batch.stats.zstd_in;
    stats.zstd_out += batch.stats.zstd_out;
    Ok((Digest { bytes: total, blake3: *hasher.finalize().as_bytes() }, stats, encoding, busy))
}

/// Threads that compress raw runs at once: all cores but one (the reader,
/// the sender and Podman need some), at most 8.
pub fn compress_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get().saturating_sub(1)).clamp(1, 8)
}

/// Segments waiting to be packed, in order. Runs the [`Packer`] wants to
/// try are compressed together, on as many threads as there are runs (up to
/// [`compress_threads`]), so that compression never holds the stream to one
/// core: zstd's fastest level packs 300 to 500 MB/s per core, a 10 Gbit/s
/// link carries 1.2 GB/s.
struct Batch {
    packer: Option<Packer>,
    threads: usize,
    items: Vec<Item>,
    /// Runs waiting to be compressed.
    tries: usize,
    stats: DeltaStats,
}

enum Item {
    Ready(Vec<u8>),
    /// A run to send raw.
    Raw(Vec<u8>),
    /// A run to try compressing.
    Try(Vec<u8>),
}

impl Batch {
    fn new(packer: Option<Packer>) -> Self {
        Batch { packer, threads: compress_threads(), items: Vec::new(), tries: 0, stats: DeltaStats::default() }
    }

    fn add(&mut self, segments: Vec<Segment>) {
        for seg in segments {
            self.items.push(match seg {
                Segment::Ready(b) => Item::Ready(b),
                Segment::Run(run) => {
                    if self.packer.as_mut().is_some_and(|p| p.want()) {
                        self.tries += 1;
                        Item::Try(run)
                    } else {
                        Item::Raw(run)
                    }
                }
            });
        }
    }

    /// The packed output, once there is a run for every thread to try (or
    /// nothing to compress at all).
    fn take_if_full(&mut self) -> Result<Option<Vec<u8>>, tern_proto::FrameError> {
        if self.tries > 0 && self.tries < self.threads {
            return Ok(None);
        }
        self.take().map(Some)
    }

    /// Packs everything waiting, in order.
    fn take(&mut self) -> Result<Vec<u8>, tern_proto::FrameError> {
        let items = std::mem::take(&mut self.items);
        self.tries = 0;
        let level = self.packer.as_ref().map_or(1, |p| p.level);
        let runs: Vec<&[u8]> = items.iter().filter_map(|i| if let Item::Try(r) = i { Some(r.as_slice()) } else { None }).collect();
        let packed: Vec<Option<Vec<u8>>> = match runs.len() {
            0 => Vec::new(),
            1 => vec![compress_run(runs[0], level)],
            _ => std::thread::scope(|s| {
                let handles: Vec<_> = runs.iter().map(|r| s.spawn(move || compress_run(r, level))).collect();
                handles.into_iter().map(|h| h.join().unwrap_or(None)).collect()
            }),
        };
        let mut packed = packed.into_iter();
        let mut out = Vec::new();
        for item in &items {
            match item {
                Item::Ready(b) => out.extend_from_slice(b),
                Item::Raw(run) => pack_run(run, None, &mut out, &mut self.stats)?,
                Item::Try(run) => {
                    let z = packed.next().flatten();
                    if let Some(p) = &mut self.packer {
                        p.tried(z.is_some());
                    }
                    pack_run(run, z.as_deref(), &mut out, &mut self.stats)?;
                }
            }
        }
        Ok(out)
    }
}

/// Writes the encoder's records to the stream until they end or the stream
/// fails (the encoder then drains). Returns the stream (or why it failed)
/// and the time spent waiting for the network.
async fn send_stage(
    mut stream: Result<quinn::SendStream, String>,
    mut from_encoder: tokio::sync::mpsc::Receiver<Vec<u8>>,
    stop: &CancellationToken,
) -> (Result<quinn::SendStream, String>, std::time::Duration) {
    let mut waited = std::time::Duration::ZERO;
    while let Some(out) = from_encoder.recv().await {
        let Ok(s) = &mut stream else { break };
        let t = std::time::Instant::now();
        let r = tokio::select! {
            r = s.write_all(&out) => r.map_err(|e| e.to_string()),
            _ = stop.cancelled() => Err("stopped".to_string()),
        };
        waited += t.elapsed();
        if let Err(e) = r {
            let _ = s.reset(1u32.into());
            stream = Err(e);
            break;
        }
    }
    (stream, waited)
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

/// Receives a file set ([`tern_proto::fileset`]) into the folder `dir`
/// (created); returns the digest of the stream (what the source hashed as
/// it sent) and the file names in order.
pub async fn receive_fileset(recv: quinn::RecvStream, dir: &Path, done: Arc<AtomicU64>) -> Result<(Digest, Vec<String>), TransferError> {
    std::fs::create_dir_all(dir).map_err(TransferError::Write)?;
    let dir = dir.to_path_buf();
    pump(recv, move |next| {
        let mut sink = FileSink { dir, file: None };
        let mut hasher = blake3::Hasher::new();
        let mut decoder = FileSetDecoder::default();
        let (mut total, mut names) = (0u64, Vec::new());
        while let Some(chunk) = next() {
            hasher.update(&chunk);
            decoder
                .feed(&chunk, &mut |e| {
                    match e {
                        FileEvent::Start { name, .. } => {
                            names.push(name.to_string());
                            sink.start(name)
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
        sink.end_file().map_err(|e| e.to_string())?;
        Ok((digest(&hasher, total), names))
    })
    .await
}

/// Creates the file `path` for writing, buffered: new (never an existing
/// file), never through a link, with `mode` (less the umask). Received
/// files go through here: a name from the source can neither overwrite nor
/// escape.
pub(crate) fn create_new(path: &Path, mode: u32) -> std::io::Result<std::io::BufWriter<std::fs::File>> {
    use std::os::unix::fs::OpenOptionsExt;
    let f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .map_err(|e| std::io::Error::new(e.kind(), format!("creating {}: {e}", path.display())))?;
    Ok(std::io::BufWriter::with_capacity(CHUNK, f))
}

/// Writes a file set's files into a folder as they arrive. Names were
/// checked by the decoder (single path components); files are created new,
/// never through a link.
struct FileSink {
    dir: std::path::PathBuf,
    file: Option<std::io::BufWriter<std::fs::File>>,
}

impl FileSink {
    fn start(&mut self, name: &str) -> std::io::Result<()> {
        self.end_file()?;
        self.file = Some(create_new(&self.dir.join(name), 0o666)?);
        Ok(())
    }

    fn data(&mut self, b: &[u8]) -> std::io::Result<()> {
        match &mut self.file {
            Some(f) => f.write_all(b),
            None => Err(std::io::Error::other("file data before its entry")),
        }
    }

    fn end_file(&mut self) -> std::io::Result<()> {
        match self.file.take() {
            Some(f) => f.into_inner().map_err(|e| e.into_error()).map(drop),
            None => Ok(()),
        }
    }
}

/// Where a received archive goes.
pub enum ArchiveOut {
    /// Written whole to this file.
    File(std::path::PathBuf),
    /// Written whole to this file, and on disk before the transfer counts
    /// as done: content-addressed pre-copy's base arrives while the
    /// container runs, and left dirty its writeback would land in the
    /// freeze (Podman's checkpoint ends by syncing the file system its
    /// overlay sits on; in the lab, where both hosts share one disk, the
    /// source's sync measured 0.85 s of the downtime for a 512 MiB base).
    FileSynced(std::path::PathBuf),
    /// Unpacked as it arrives ([`TarSplit`]): `checkpoint/` members into
    /// `dir`, everything else into the archive `rest`; `spec.dump`
    /// annotated with `annotate` ([`TarSplit::annotating`]).
    Unpack { dir: std::path::PathBuf, rest: std::path::PathBuf, annotate: Option<(std::path::PathBuf, bool)> },
}

/// What [`receive_records`] received.
pub struct Received {
    pub digest: Digest,
    /// Where the pages of the archive sit in the file (when asked).
    pub offsets: Option<Vec<u64>>,
    /// How an [`ArchiveOut::Unpack`] went.
    pub split: Option<crate::target::unpack::SplitStats>,
}

/// The writer behind an [`ArchiveOut`].
enum OutWriter {
    File(std::io::BufWriter<std::fs::File>, bool),
    Split(Box<TarSplit>),
}

impl OutWriter {
    fn open(out: &ArchiveOut) -> std::io::Result<OutWriter> {
        Ok(match out {
            ArchiveOut::File(path) => OutWriter::File(std::io::BufWriter::with_capacity(CHUNK, std::fs::File::create(path)?), false),
            ArchiveOut::FileSynced(path) => OutWriter::File(std::io::BufWriter::with_capacity(CHUNK, std::fs::File::create(path)?), true),
            ArchiveOut::Unpack { dir, rest, annotate } => {
                let mut split = TarSplit::new(dir, rest)?;
                if let Some((conf, add)) = annotate {
                    split = split.annotating(conf.clone(), *add);
                }
                OutWriter::Split(Box::new(split))
            }
        })
    }

    fn write_all(&mut self, b: &[u8]) -> std::io::Result<()> {
        match self {
            OutWriter::File(f, _) => f.write_all(b),
            OutWriter::Split(s) => s.write_all(b),
        }
    }

    fn finish(self) -> std::io::Result<Option<crate::target::unpack::SplitStats>> {
        match self {
            OutWriter::File(f, sync) => {
                let f = f.into_inner().map_err(|e| e.into_error())?;
                if sync {
                    f.sync_data()?;
                }
                Ok(None)
            }
            OutWriter::Split(s) => {
                let stats = s.finish()?;
                tracing::debug!(?stats, "archive unpacked in place");
                Ok(Some(stats))
            }
        }
    }
}

/// Receives an archive sent as records into `out`, rebuilding pages from
/// `base` where the records refer to it; returns the archive's digest and,
/// when `offsets` is asked, where each of its pages sits in the file (the
/// hash base, always an [`ArchiveOut::File`]). Fault injection (tests)
/// applies to the rebuilt bytes.
pub async fn receive_records(
    recv: quinn::RecvStream,
    out: ArchiveOut,
    base: Option<Arc<PageStore>>,
    offsets: bool,
    done: Arc<AtomicU64>,
    faults: ReceiveFaults,
) -> Result<Received, TransferError> {
    let mut writer = OutWriter::open(&out).map_err(TransferError::Write)?;
    pump(recv, move |next| {
        let mut hasher = blake3::Hasher::new();
        let mut decoder = DeltaDecoder::default();
        let mut pages = offsets.then(PageOffsets::default);
        let mut buf = vec![0u8; CHUNK];
        let mut total = 0u64;
        let (mut waited, started) = (std::time::Duration::ZERO, std::time::Instant::now());
        let mut emit = |bytes: &[u8], hasher: &mut blake3::Hasher, total: &mut u64| -> std::io::Result<()> {
            if cfg!(feature = "fault-injection") && faults.corrupt && *total == 0 && !bytes.is_empty() {
                let mut v = bytes.to_vec();
                v[0] ^= 0xff;
                tracing::warn!("fault injection: corrupted the first received byte");
                hasher.update(&v);
                writer.write_all(&v)?;
            } else {
                hasher.update(bytes);
                writer.write_all(bytes)?;
            }
            if let Some(p) = &mut pages {
                p.add(bytes);
            }
            *total += bytes.len() as u64;
            done.store(*total, Ordering::Relaxed);
            if let Some(limit) = faults.exit_after_bytes.filter(|_| cfg!(feature = "fault-injection")) {
                if *total >= limit {
                    crate::faults::die(137, &format!("the agent exits mid-transfer, {} bytes received", *total));
                }
            }
            Ok(())
        };
        loop {
            let t = std::time::Instant::now();
            let Some(chunk) = next() else { break };
            waited += t.elapsed();
            decoder
                .feed(&chunk, &mut |d| match d {
                    Decoded::Raw(b) => emit(b, &mut hasher, &mut total).map_err(|e| e.to_string()),
                    Decoded::Pages { index, count } => match &base {
                        Some(store) => store.copy(index, count, &mut buf, &mut |b| emit(b, &mut hasher, &mut total)).map_err(|e| e.to_string()),
                        None => Err("a record refers to base pages, and this stream has no base".into()),
                    },
                })
                .map_err(|e| e.to_string())?;
        }
        decoder.finish().map_err(|e| e.to_string())?;
        let split = writer.finish().map_err(|e| e.to_string())?;
        // Where the time went: waiting for the network, or writing.
        tracing::debug!(total, waited_ms = waited.as_millis() as u64, ms = started.elapsed().as_millis() as u64, "archive received");
        Ok(Received { digest: digest(&hasher, total), offsets: pages.map(PageOffsets::finish), split })
    })
    .await
}

/// Reads a data stream's header.
pub async fn accept_header(recv: &mut quinn::RecvStream) -> Result<DataHeader, TransferError> {
    expect_frame(recv).await.map_err(|e| TransferError::Receive(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tern_proto::delta::DeltaDecoder;

    fn decode(wire: &[u8]) -> Vec<u8> {
        let mut dec = DeltaDecoder::default();
        let mut out = Vec::new();
        dec.feed(wire, &mut |d| match d {
            Decoded::Raw(b) => {
                out.extend_from_slice(b);
                Ok(())
            }
            Decoded::Pages { .. } => Err("no base here".into()),
        })
        .unwrap();
        dec.finish().unwrap();
        out
    }

    #[test]
    fn a_batch_compresses_on_several_threads_and_keeps_the_order() {
        // Compressible runs and noise, interleaved, packed three at a time.
        let mut seed = 11u64;
        let mut noise = |n: usize| -> Vec<u8> {
            (0..n)
                .map(|_| {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    seed as u8
                })
                .collect()
        };
        let runs: Vec<Vec<u8>> =
            (0..12).map(|i| if i % 3 == 1 { noise(300_000) } else { format!("run {i} ").bytes().cycle().take(500_000).collect() }).collect();
        let mut batch = Batch::new(Some(Packer::new(1)));
        batch.threads = 3;
        let mut wire = Vec::new();
        for r in &runs {
            batch.add(vec![Segment::Run(r.clone())]);
            if let Some(out) = batch.take_if_full().unwrap() {
                wire.extend(out);
            }
        }
        batch.add(vec![Segment::Ready(tern_proto::frame::encode(&tern_proto::delta::DeltaRecord::End).unwrap())]);
        wire.extend(batch.take().unwrap());
        assert_eq!(decode(&wire), runs.concat());
        assert!(batch.stats.zstd_in >= 6 * 500_000, "{:?}", batch.stats);
        assert!(batch.stats.raw_bytes >= 300_000, "noise goes raw: {:?}", batch.stats);
    }

    #[test]
    fn without_compression_nothing_waits() {
        let mut batch = Batch::new(None);
        batch.add(vec![Segment::Run(vec![1; 10]), Segment::Ready(vec![])]);
        let out = batch.take_if_full().unwrap().expect("sent at once");
        assert!(out.ends_with(&[1; 10]));
        assert_eq!(batch.stats.raw_bytes, 10);
    }
}
