//! Where a received archive goes: rebuilt from its records into a file,
//! or unpacked in place as it arrives ([`TarSplit`]), with the
//! fault-injection hooks the tests use on the rebuilt bytes.

use super::unpack::{SplitStats, TarSplit};
use crate::faults::ReceiveFaults;
use crate::pages::{PageOffsets, PageStore};
use crate::transfer::{digest, pump, StoreError, StreamLimits, TransferError, CHUNK};
use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tern_proto::delta::{Decoded, DeltaDecoder, DeltaLimits};
use tern_proto::Digest;

/// What the data streams of one migration may take ([`StreamLimits`]):
/// from the `[limits]` of the agent's config and the size the source
/// announced. Every stream but the image is bounded by the announced
/// memory and files (the checkpoint, the hash base and the delta rebuilt
/// from it, each pre-copy round); the image, whose size the source does
/// not announce, by `image_max_mib`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub data: StreamLimits,
    pub image: StreamLimits,
}

impl Limits {
    pub fn of(cfg: &crate::config::LimitsConfig, c: &tern_proto::facts::ContainerInfo) -> Limits {
        let stall = cfg.receive_stall(c.memory_bytes);
        Limits {
            data: StreamLimits { stall, max_bytes: cfg.stream_max(c.memory_bytes, c.files_bytes) },
            image: StreamLimits { stall, max_bytes: cfg.image_max() },
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
    /// overlay sits on, and the base's dirty pages would be synced then).
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
    pub split: Option<SplitStats>,
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

    fn finish(self) -> std::io::Result<Option<SplitStats>> {
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
/// applies to the rebuilt bytes. `limits` bound both the stream and the
/// archive rebuilt from it (page references and compressed runs make the
/// second larger than the first, by any factor a peer likes).
pub async fn receive_records(
    recv: quinn::RecvStream,
    out: ArchiveOut,
    base: Option<Arc<PageStore>>,
    offsets: bool,
    done: Arc<AtomicU64>,
    faults: ReceiveFaults,
    limits: StreamLimits,
) -> Result<Received, TransferError> {
    let mut writer = OutWriter::open(&out).map_err(TransferError::Write)?;
    // Page references only into the base this migration holds, and no more
    // output than the stream may make.
    let delta_limits = DeltaLimits::new(base.as_ref().map_or(0, |b| b.pages()), limits.max_bytes);
    let exceeded = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let over = exceeded.clone();
    let r = pump(recv, limits, move |next| {
        let mut hasher = blake3::Hasher::new();
        let mut decoder = DeltaDecoder::with_limits(delta_limits);
        let mut pages = offsets.then(PageOffsets::default);
        let mut buf = vec![0u8; CHUNK];
        let mut total = 0u64;
        let (mut waited, started) = (std::time::Duration::ZERO, std::time::Instant::now());
        let mut emit = |bytes: &[u8], hasher: &mut blake3::Hasher, total: &mut u64| -> std::io::Result<()> {
            if total.saturating_add(bytes.len() as u64) > limits.max_bytes {
                over.store(true, Ordering::Relaxed);
                return Err(std::io::Error::other(TransferError::TooLarge { limit: limits.max_bytes }));
            }
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
            *total = total.saturating_add(bytes.len() as u64);
            done.store(*total, Ordering::Relaxed);
            if let Some(limit) = faults.exit_after_bytes.filter(|_| cfg!(feature = "fault-injection")) {
                if *total >= limit {
                    crate::faults::die(137, &format!("the agent exits mid-transfer, {} bytes received", *total));
                }
            }
            Ok(())
        };
        let mut failed = None;
        loop {
            let t = std::time::Instant::now();
            let Some(chunk) = next() else { break };
            waited += t.elapsed();
            let fed = decoder.feed(&chunk, &mut |d| {
                match d {
                    Decoded::Raw(b) => emit(b, &mut hasher, &mut total).map_err(StoreError::Io),
                    Decoded::Pages { index, count } => match &base {
                        Some(store) => store.copy(index, count, &mut buf, &mut |b| emit(b, &mut hasher, &mut total)).map_err(StoreError::Io),
                        None => Err(StoreError::NoBase),
                    },
                }
                .map_err(|e| StoreError::keep(&mut failed, e))
            });
            fed.map_err(|e| failed.take().unwrap_or(StoreError::Records(e)))?;
        }
        decoder.finish().map_err(StoreError::Records)?;
        let split = writer.finish()?;
        // Where the time went: waiting for the network, or writing.
        tracing::debug!(total, waited_ms = waited.as_millis() as u64, ms = started.elapsed().as_millis() as u64, "archive received");
        Ok(Received { digest: digest(&hasher, total), offsets: pages.map(PageOffsets::finish), split })
    })
    .await;
    match r {
        Err(TransferError::Receive(_) | TransferError::Store(_)) if exceeded.load(Ordering::Relaxed) => {
            Err(TransferError::TooLarge { limit: limits.max_bytes })
        }
        other => other,
    }
}
