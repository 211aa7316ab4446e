//! The sender of archives: three stages (reading, encoding, the network)
//! at once, memory bounded whatever the archive's size.

use super::stream::{close, open, write_paced};
use super::{Pace, SendError, TransferError, CHUNK};
use crate::pages::PageIndex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tern_proto::delta::{Compressor, DeltaEncoder, DeltaStats, Packer};
use tern_proto::{DataHeader, Digest};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio_util::sync::CancellationToken;

/// Streams everything `reader` yields to a new uni stream on `conn`, as
/// records compressed at `zstd` (a level) where that pays, as fast as
/// `pace` lets it.
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
    pace: &Pace<'_>,
) -> Result<Sent, TransferError> {
    send_encoded(conn, header, reader, done, Encoding::Raw, Wire { zstd, pace, stop: &CancellationToken::new() }).await
}

/// How [`send_encoded`] puts an archive on the wire: compressed at `zstd`
/// (a level) where that pays, as fast as `pace` lets it, until `stop`.
#[derive(Clone, Copy)]
pub struct Wire<'a> {
    pub zstd: Option<i32>,
    pub pace: &'a Pace<'a>,
    pub stop: &'a CancellationToken,
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
    /// How long the sender waited for the link to take the data: the
    /// stream's share of the time, where the link is what holds it back.
    pub wire_wait: std::time::Duration,
}

/// Buffers in flight between two stages of [`send_encoded`]: enough to
/// keep each stage busy, few enough to keep the agent small (each is up to
/// [`CHUNK`]).
const IN_FLIGHT: usize = 2;

/// [`send`], with an [`Encoding`] and a [`Wire`]. With `Encoding::Delta`, pages the target
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
/// the archive's size. A peer that takes no byte for the send deadline
/// ([`super::send_stall`]) fails the send with
/// [`TransferError::SendStalled`], the reader drained as on any failure:
/// the source is frozen meanwhile, and rolls back instead of waiting. When `stop` fires the stream is reset at once and
/// the rest of the reader is drained without sending: Podman finishes
/// writing the checkpoint quickly, and the rollback can begin, instead of
/// waiting for the whole archive to cross a slow link.
pub async fn send_encoded<R: AsyncRead + Unpin>(
    conn: &quinn::Connection,
    header: &DataHeader,
    reader: R,
    done: &AtomicU64,
    encoding: Encoding,
    wire: Wire<'_>,
) -> Result<Sent, TransferError> {
    let Wire { zstd, pace, stop } = wire;
    let stream = open(conn, header).await;
    let (to_encoder, from_reader) = tokio::sync::mpsc::channel::<(Vec<u8>, usize)>(IN_FLIGHT);
    let (to_sender, from_encoder) = tokio::sync::mpsc::channel::<Vec<u8>>(IN_FLIGHT);
    let (recycle, spare) = std::sync::mpsc::sync_channel::<Vec<u8>>(IN_FLIGHT + 2);
    let started = std::time::Instant::now();
    let encoder = tokio::task::spawn_blocking(move || encode_stage(from_reader, to_sender, recycle, encoding, zstd));
    let (read, (stream, send_wait)) = tokio::join!(read_stage(reader, to_encoder, spare, done, stop), send_stage(stream, from_encoder, pace, stop));
    let encoded = encoder.await.map_err(SendError::Encoder)?;
    let (total, read_wait) = read?;
    let fail = |mut stream: Result<quinn::SendStream, TransferError>, e: TransferError| {
        if let Ok(s) = &mut stream {
            let _ = s.reset(1u32.into());
        }
        Err(e)
    };
    if stop.is_cancelled() {
        return fail(stream, SendError::Cancelled.into());
    }
    // The network's own reason comes first: the encoder only saw it end.
    let stream = match stream {
        Ok(s) => Ok(s),
        Err(e) => return Err(e),
    };
    let (digest, stats, encoding, busy) = match encoded {
        Ok(x) => x,
        Err(e) => return fail(stream, e.into()),
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
    Ok(Sent { digest, stats, index, wire_wait: send_wait })
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
/// hashes, delta records, compression (on helper threads, a
/// [`Compressor`] packing a run for each of [`compress_threads`] at once).
/// After a failure (its own, or the sender's) it only drains. Returns the
/// digest, the counts, the encoding (with the index it built) and the time
/// it was busy.
fn encode_stage(
    mut input: tokio::sync::mpsc::Receiver<(Vec<u8>, usize)>,
    output: tokio::sync::mpsc::Sender<Vec<u8>>,
    recycle: std::sync::mpsc::SyncSender<Vec<u8>>,
    mut encoding: Encoding,
    zstd: Option<i32>,
) -> Result<(Digest, DeltaStats, Encoding, std::time::Duration), SendError> {
    let mut encoder = DeltaEncoder::default();
    let mut compressor = Compressor::new(zstd.map(Packer::new), compress_threads());
    let mut hasher = blake3::Hasher::new();
    let (mut total, mut busy) = (0u64, std::time::Duration::ZERO);
    let mut failed: Option<SendError> = None;
    let send = |out: Vec<u8>, failed: &mut Option<SendError>| {
        if !out.is_empty() && output.blocking_send(out).is_err() {
            *failed = Some(SendError::StreamClosed);
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
            let out = fed.and_then(|()| {
                compressor.add(encoder.take_segments());
                compressor.take_if_full(&mut encoder.stats)
            });
            busy += t.elapsed();
            match out {
                Ok(Some(out)) => send(out, &mut failed),
                Ok(None) => {}
                Err(e) => failed = Some(e.into()),
            }
        }
        let _ = recycle.try_send(buf);
    }
    if let Some(e) = failed {
        return Err(e);
    }
    compressor.add(encoder.finish_segments()?);
    let tail = compressor.take(&mut encoder.stats)?;
    output.blocking_send(tail).map_err(|_| SendError::StreamClosed)?;
    Ok((Digest { bytes: total, blake3: *hasher.finalize().as_bytes() }, encoder.stats, encoding, busy))
}

/// Threads that compress raw runs at once: all cores but one (the reader,
/// the sender and Podman need some), at most 8.
pub fn compress_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get().saturating_sub(1)).clamp(1, 8)
}

/// Writes the encoder's records to the stream until they end or the stream
/// fails (the encoder then drains), each piece once the host's bandwidth
/// cap lets it go (`pace`). Returns the stream (or why it failed) and the
/// time spent waiting for the network and the cap.
async fn send_stage(
    mut stream: Result<quinn::SendStream, TransferError>,
    mut from_encoder: tokio::sync::mpsc::Receiver<Vec<u8>>,
    pace: &Pace<'_>,
    stop: &CancellationToken,
) -> (Result<quinn::SendStream, TransferError>, std::time::Duration) {
    let mut waited = std::time::Duration::ZERO;
    let stall = super::send_stall();
    while let Some(out) = from_encoder.recv().await {
        let Ok(s) = &mut stream else { break };
        let t = std::time::Instant::now();
        let r = tokio::select! {
            r = write_paced(s, &out, stall, pace) => r,
            _ = stop.cancelled() => Err(SendError::Stopped.into()),
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
