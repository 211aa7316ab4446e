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
//! * [`stream`]: opening, closing and draining the streams themselves;
//! * [`pace`](mod@pace): the host's bandwidth cap, one token bucket every
//!   sender takes tokens from before it writes.
//!
//! Callers use the names re-exported here. Where a received archive goes
//! (a file, or unpacked in place) is the target's: `target/archive.rs`,
//! on `pump` and `digest` from `stream.rs`.

mod fileset;
mod fs;
mod pace;
mod send;
mod stream;

pub use fileset::{receive_fileset, send_fileset};
pub(crate) use fs::create_new;
pub use pace::{Bucket, Limiter, Pace, BURST};
pub use send::{compress_threads, send, send_encoded, Encoding, Sent, Wire};
pub use stream::{accept_header, StreamLimits};
pub(crate) use stream::{digest, pump};

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// The send deadline of this process, in ms (0: the default).
static SEND_STALL_MS: AtomicU64 = AtomicU64::new(0);

/// Sets how long a sender waits for the peer to take any byte before it
/// fails ([`TransferError::SendStalled`]); the agent's `[limits]`.
pub fn set_send_stall(d: Duration) {
    SEND_STALL_MS.store(u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1), Ordering::Relaxed);
}

/// The send deadline: 15 s (scaled by `TERN_TIMEOUT_SCALE`) unless set.
/// The source is frozen while its checkpoint streams: a target that stops
/// reading must cost a rollback, not a container frozen for good.
pub fn send_stall() -> Duration {
    match SEND_STALL_MS.load(Ordering::Relaxed) {
        0 => tern_transport::timeouts::scaled(Duration::from_secs(15)),
        ms => Duration::from_millis(ms),
    }
}

/// Read size: large enough that per-chunk costs vanish, small enough to
/// keep memory per transfer bounded (a few buffers in flight).
pub(crate) const CHUNK: usize = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum TransferError {
    #[error("reading the archive failed: {0}")]
    Read(std::io::Error),
    #[error("sending to the target failed: {0}")]
    Send(#[from] SendError),
    #[error("receiving from the source failed: {0}")]
    Receive(#[from] ReceiveError),
    #[error("writing the staged archive failed: {0}")]
    Write(std::io::Error),
    /// The peer took no byte for this long: it stopped reading.
    #[error("sending to the target failed: it took no data for {} s", .0.as_secs_f64())]
    SendStalled(Duration),
    /// No byte arrived for this long.
    #[error("receiving from the source failed: no data arrived for {} s", .0.as_secs_f64())]
    ReceiveStalled(Duration),
    /// The stream grew past what the source announced allows.
    #[error("receiving from the source failed: the data grew past {limit} bytes, more than the container's announced size allows ([limits] of the target agent's config)")]
    TooLarge { limit: u64 },
    /// What arrived could not be decoded or stored.
    #[error("receiving from the source failed: {0}")]
    Store(#[from] StoreError),
}

/// Why sending a stream failed (besides reading the archive, and the
/// peer's stalling: [`TransferError`]).
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// The stream could not be opened.
    #[error(transparent)]
    Connection(#[from] quinn::ConnectionError),
    #[error(transparent)]
    Write(#[from] quinn::WriteError),
    /// The stream was already closed when it was finished.
    #[error(transparent)]
    Finish(#[from] quinn::ClosedStream),
    /// A header, an entry or a record could not be encoded or written.
    #[error(transparent)]
    Frame(#[from] tern_proto::frame::FrameError),
    /// The encoding thread panicked or was cancelled.
    #[error("the encoder failed: {0}")]
    Encoder(tokio::task::JoinError),
    /// The encoder found the stream gone (its sender failed).
    #[error("the stream to the target failed")]
    StreamClosed,
    /// The send was stopped before the archive ended.
    #[error("cancelled; the rest of the archive was drained here, not sent")]
    Cancelled,
    /// The network stage was stopped mid-write.
    #[error("stopped")]
    Stopped,
}

/// Why receiving a stream failed on the wire (what arrived is judged by
/// [`StoreError`]).
#[derive(Debug, thiserror::Error)]
pub enum ReceiveError {
    #[error(transparent)]
    Read(#[from] quinn::ReadError),
    /// The stream's header.
    #[error(transparent)]
    Frame(#[from] tern_proto::frame::FrameError),
}

/// What goes wrong making files of a stream that arrived (the work of
/// `pump`): its records, or writing what they hold.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The archive's records ([`tern_proto::delta`]) are invalid.
    #[error(transparent)]
    Records(tern_proto::delta::DeltaError),
    /// The file set's entries ([`tern_proto::fileset`]) are invalid.
    #[error(transparent)]
    Files(tern_proto::fileset::FileSetStreamError),
    #[error("a record refers to base pages, and this stream has no base")]
    NoBase,
    /// Writing what arrived, or reading the base's pages it refers to.
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

impl StoreError {
    /// Keeps the error of a decoder's sink in `slot` and hands the decoder
    /// the `String` its sink must answer (tern_proto's decoders speak
    /// strings): once the decoder fails, the error kept is the one to report.
    pub(crate) fn keep(slot: &mut Option<StoreError>, e: impl Into<StoreError>) -> String {
        *slot = Some(e.into());
        String::new()
    }
}
