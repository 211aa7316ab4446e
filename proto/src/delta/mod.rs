//! Delta records: a checkpoint archive sent as "bytes you do not have" and
//! "pages you already hold", for content-addressed pre-copy.
//!
//! The target holds an earlier full checkpoint archive of the container,
//! taken while it ran (the base). [`TarPager`] cuts the data of every member
//! of an archive into 4 KiB pages, counted from the start of each member:
//! CRIU's page images, the root file system's changes and the volumes alike.
//! Both sides number the base's pages 0, 1, 2, ... in archive order; the
//! source knows the blake3 hash of each. At the freeze, Podman writes the
//! final archive (uncompressed) and [`DeltaEncoder`] replaces each of its
//! pages that the target holds by its number:
//!
//! ```text
//!  DataHeader{kind: CheckpointDelta{base}}
//!  DeltaRecord::Raw{len}            <len bytes>     bytes the target lacks
//!  DeltaRecord::Zstd{len, raw_len}  <len bytes>     the same, compressed
//!  DeltaRecord::Pages{index, count}                 count pages of the base, from index
//!  ...
//!  DeltaRecord::End
//! ```
//!
//! Every archive stream uses these records, with or without a base: they
//! are also how compression is applied. Each run of raw bytes (up to
//! 1 MiB) is compressed with zstd where that pays, and backed off from
//! where it does not ([`policy`]), by the one [`Compressor`].
//!
//! The target rebuilds the archive byte for byte and checks its blake3 hash
//! against the digest of the original archive, which the source computed
//! as Podman wrote it. Parsing the tar only decides where pages may be
//! found: a member the pager does not understand is sent raw, so a wrong
//! guess costs bytes on the wire, never correctness.
//!
//! The parts, by job:
//!
//! * [`pager`]: where the pages of an archive are ([`TarPager`], on
//!   [`crate::tarwalk`]'s walker);
//! * [`policy`]: when compression pays ([`Packer`], [`compress_run`]);
//! * [`compress`]: runs packed into records, compressed on several threads
//!   ([`Compressor`], [`pack_run`]);
//! * [`codec`]: the encoder and the decoder of the records.

pub mod codec;
pub mod compress;
pub mod pager;
pub mod policy;
#[cfg(test)]
mod tests;

pub use codec::{Decoded, DeltaDecoder, DeltaEncoder, DeltaError, DeltaLimits, MAX_ARCHIVE_BYTES, PAGE_RECORD_BYTES};
pub use compress::{pack_run, Compressor, Segment};
pub use pager::{PageCutter, Piece, TarPager};
pub use policy::{compress_run, Packer};

use crate::frame::WireMessage;
use serde::{Deserialize, Serialize};

/// CRIU's page size on x86_64 (and the unit of deduplication).
pub const PAGE: usize = 4096;
/// The largest raw run in one record.
pub const MAX_RAW: u32 = 1 << 20;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum DeltaRecord {
    Invalid,
    /// `len` (at most [`MAX_RAW`]) raw bytes follow.
    Raw {
        len: u32,
    },
    /// `len` bytes of zstd follow, `raw_len` (at most [`MAX_RAW`]) once
    /// decompressed.
    Zstd {
        len: u32,
        raw_len: u32,
    },
    /// `count` pages of the base, starting at page `index`.
    Pages {
        index: u32,
        count: u32,
    },
    /// The archive is complete.
    End,
}

impl WireMessage for DeltaRecord {
    const NAME: &'static str = "DeltaRecord";
    fn is_invalid(&self) -> bool {
        matches!(self, DeltaRecord::Invalid)
    }
}

/// Byte counts of one encoded archive.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct DeltaStats {
    /// Bytes of the original archive.
    pub archive_bytes: u64,
    /// Pages the target already held: not sent.
    pub pages_reused: u64,
    /// Pages sent raw.
    pub pages_sent: u64,
    /// Bytes sent as they are (pages the target lacked and everything else).
    pub raw_bytes: u64,
    /// Bytes sent compressed, before and after compression.
    pub zstd_in: u64,
    pub zstd_out: u64,
}
