//! Bulk data over unidirectional QUIC streams, hashed with blake3 on both
//! sides as the bytes pass, never held whole in memory. Archives (image,
//! hash base, checkpoint) travel as records ([`tern_proto::delta`]): raw or
//! zstd-compressed runs, and page references where the target holds a
//! base. Pre-copy rounds travel as file sets ([`tern_proto::fileset`]).
//!
//! The parts, by job:
//!
//! * [`send`](mod@send): the three-stage sender of archives (reader,
//!   encoder, network), compressing on several threads
//!   ([`tern_proto::delta::Compressor`]);
//! * [`fileset`]: file sets, sent and received;
//! * [`fs`]: files created for what a peer sends, never over or through
//!   anything;
//! * [`stream`]: opening, closing and draining the streams themselves.
//!
//! Callers use the names re-exported here. Where a received archive goes
//! (a file, or unpacked in place) is the target's: `target/archive.rs`,
//! on `pump` and `digest` from `stream.rs`.

mod fileset;
mod fs;
mod send;
mod stream;

pub use fileset::{receive_fileset, send_fileset};
pub(crate) use fs::create_new;
pub use send::{compress_threads, send, send_encoded, Encoding, Sent};
pub use stream::accept_header;
pub(crate) use stream::{digest, pump};

/// Read size: large enough that per-chunk costs vanish, small enough to
/// keep memory per transfer bounded (one buffer in flight).
pub(crate) const CHUNK: usize = 1 << 20;

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
