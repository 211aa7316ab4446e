//! The compressor: raw runs packed into records, compressed where the
//! policy ([`super::policy`]) says it pays, on several threads at once when
//! there are several runs, always in stream order.
//!
//! Both ways of encoding an archive go through [`Compressor`]: the agent's
//! sender adds whatever each chunk of the archive produced and packs once
//! there is a run for every thread (one core compressing, even at zstd's
//! fastest level, would hold a fast link's stream back);
//! [`super::DeltaEncoder::take_output`] adds one segment at a time and
//! packs it at once, on the caller's thread.
//!
//! The policy is asked about a run when the run is added, and told how the
//! try went when it is packed: runs added together are all tried or not
//! before any outcome is known. How runs are grouped is therefore part of
//! what goes on the wire; one segment at a time, each try steers the next.

use super::{DeltaRecord, DeltaStats, Packer};
use crate::frame::{encode, FrameError};

/// What the encoder hands on, in stream order.
#[derive(Debug, PartialEq, Eq)]
pub enum Segment {
    /// Records ready for the wire (page references, the end).
    Ready(Vec<u8>),
    /// Raw bytes (at most [`super::MAX_RAW`]) still to be packed as one record,
    /// compressed or not ([`pack_run`]): a [`Compressor`] may
    /// compress several on as many threads, as long as it keeps the order.
    Run(Vec<u8>),
}

/// Appends `run` as one record: `packed` (its zstd form) when given, else
/// raw; counts it in `stats`.
pub fn pack_run(run: &[u8], packed: Option<&[u8]>, out: &mut Vec<u8>, stats: &mut DeltaStats) -> Result<(), FrameError> {
    match packed {
        Some(z) => {
            out.extend(encode(&DeltaRecord::Zstd { len: z.len() as u32, raw_len: run.len() as u32 })?);
            out.extend_from_slice(z);
            stats.zstd_in += run.len() as u64;
            stats.zstd_out += z.len() as u64;
        }
        None => {
            out.extend(encode(&DeltaRecord::Raw { len: run.len() as u32 })?);
            out.extend_from_slice(run);
            stats.raw_bytes += run.len() as u64;
        }
    }
    Ok(())
}

/// Segments waiting to be packed, in order (module docs). Without a
/// [`Packer`] every run goes raw and nothing waits.
#[derive(Debug)]
pub struct Compressor {
    packer: Option<Packer>,
    /// Runs to collect before [`Compressor::take_if_full`] packs them.
    threads: usize,
    items: Vec<Item>,
    /// Runs waiting to be compressed.
    tries: usize,
}

#[derive(Debug)]
enum Item {
    Ready(Vec<u8>),
    /// A run to send raw.
    Raw(Vec<u8>),
    /// A run to try compressing.
    Try(Vec<u8>),
}

impl Default for Compressor {
    /// Sends every run raw.
    fn default() -> Self {
        Compressor::new(None, 1)
    }
}

impl Compressor {
    /// Compresses as `packer` decides (none: never), up to `threads` runs
    /// at once.
    pub fn new(packer: Option<Packer>, threads: usize) -> Self {
        Compressor { packer, threads, items: Vec::new(), tries: 0 }
    }

    /// Queues segments in stream order; asks the policy about each run.
    pub fn add(&mut self, segments: impl IntoIterator<Item = Segment>) {
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
    /// nothing to compress at all); counts it in `stats`.
    pub fn take_if_full(&mut self, stats: &mut DeltaStats) -> Result<Option<Vec<u8>>, FrameError> {
        if self.tries > 0 && self.tries < self.threads {
            return Ok(None);
        }
        self.take(stats).map(Some)
    }

    /// Packs everything waiting, in order; counts it in `stats`.
    pub fn take(&mut self, stats: &mut DeltaStats) -> Result<Vec<u8>, FrameError> {
        let items = std::mem::take(&mut self.items);
        self.tries = 0;
        let level = self.packer.as_ref().map_or(1, |p| p.level);
        let runs: Vec<&[u8]> = items.iter().filter_map(|i| if let Item::Try(r) = i { Some(r.as_slice()) } else { None }).collect();
        let packed: Vec<Option<Vec<u8>>> = match runs.len() {
            0 => Vec::new(),
            1 => vec![super::compress_run(runs[0], level)],
            _ => std::thread::scope(|s| {
                let handles: Vec<_> = runs.iter().map(|r| s.spawn(move || super::compress_run(r, level))).collect();
                handles.into_iter().map(|h| h.join().unwrap_or(None)).collect()
            }),
        };
        let mut packed = packed.into_iter();
        let mut out = Vec::new();
        for item in &items {
            match item {
                Item::Ready(b) => out.extend_from_slice(b),
                Item::Raw(run) => pack_run(run, None, &mut out, stats)?,
                Item::Try(run) => {
                    let z = packed.next().flatten();
                    if let Some(p) = &mut self.packer {
                        p.tried(z.is_some());
                    }
                    pack_run(run, z.as_deref(), &mut out, stats)?;
                }
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_compression_nothing_waits() {
        // However many threads there are (the agent uses up to 8).
        let mut batch = Compressor::new(None, 8);
        let mut stats = DeltaStats::default();
        batch.add(vec![Segment::Run(vec![1; 10]), Segment::Ready(vec![])]);
        let out = batch.take_if_full(&mut stats).unwrap().expect("sent at once");
        assert!(out.ends_with(&[1; 10]));
        assert_eq!(stats.raw_bytes, 10);
    }
}
