//! What can go wrong on the target's side of a migration. Each failure
//! reaches the source once, as the protocol's [`Failure`] (its text is the
//! `Display` below), in [`TargetError::failure`].

use super::admission::{ImageRefusal, Refusal};
use crate::engine::EngineError;
use crate::netid::NetError;
use crate::transfer::TransferError;
use std::path::PathBuf;
use tern_proto::{DataKind, Digest, Failure, Phase};

#[derive(Debug, thiserror::Error)]
pub enum TargetError {
    /// Post-copy could not set up its restore here.
    #[error("post-copy: {0}")]
    PostCopy(String),
    /// The receiving task ended before a stream of this kind came.
    #[error("the {0:?} data stream never arrived")]
    NeverArrived(DataKind),
    /// Receiving or placing a data stream failed.
    #[error(transparent)]
    Receive(#[from] TransferError),
    #[error("the delta refers to a base that never arrived")]
    NoBase,
    #[error("the base arrived but cannot be opened again: {0}")]
    BaseUnreadable(std::io::Error),
    #[error(
        "the {kind:?} data does not match its digest: received {} bytes with blake3 {}, the source sent {} bytes with blake3 {}",
        got.bytes,
        got.hex(),
        sent.bytes,
        sent.hex()
    )]
    DigestMismatch { kind: DataKind, got: Digest, sent: Digest },
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error("naming the image {image} here: {source}")]
    NameImage { image: String, source: EngineError },
    /// The image name or ID the source announced is not one this host
    /// tags an image with (its words).
    #[error("refused to name the image: {0}")]
    ImageRefused(ImageRefusal),
    /// Admission refused the checkpoint ([`super::admission`]): answered in
    /// phase Verify whatever step found it, nothing of it ran here.
    #[error(transparent)]
    Refused(#[from] Refusal),
    /// The container's folder ([`super::inplace`]) was removed or never made.
    #[error("the container's folder is gone")]
    FolderGone,
    #[error("linking the {rounds} rounds in {}: {source}", dir.display())]
    LinkRounds { rounds: u32, dir: PathBuf, source: std::io::Error },
    #[error("injected failure: this agent is configured with faults.fail_restore")]
    InjectedRestoreFailure,
    /// Writing the container's CRIU options file ([`super::lazy`]).
    #[error("writing {}: {source}", path.display())]
    WriteConf { path: PathBuf, source: std::io::Error },
    /// The operator's network hook failed (its own words).
    #[error(transparent)]
    Hook(NetError),
    /// `restore --import` failed; `kept_log` says where CRIU's log is kept
    /// (empty when it is not).
    #[error("{source}{kept_log}")]
    Restore { source: EngineError, kept_log: String },
    /// The eager restore after a failed lazy one failed too.
    #[error("{source} (after a lazy restore that failed: {lazy}){kept_log}")]
    EagerRestore { source: EngineError, lazy: EngineError, kept_log: String },
    /// The restored container is in this state instead.
    #[error("the restored container is {0}, not running")]
    NotRunning(String),
    #[error("the restored container is not there")]
    Vanished,
    #[error("the restored container was never seen running")]
    NeverSeenRunning,
    /// The lazy-pages daemon did not bring all the memory in.
    #[error(transparent)]
    LazyPages(#[from] crate::criu::CriuError),
    /// Post-copy: the page tunnel can never complete the fill.
    #[error("the page tunnel: {0}")]
    PageTunnel(String),
    /// A `Resolve` from a peer that is not the source of record.
    #[error("migration {id} here is not {peer}'s to settle")]
    NotYours { peer: String, id: tern_proto::MigrationId },
    #[error("the verdict is invalid")]
    InvalidVerdict,
    #[error("removing the marker in {}: {source}", path.display())]
    Marker { path: PathBuf, source: std::io::Error },
}

impl TargetError {
    /// What the source is told.
    pub fn failure(&self, phase: Phase) -> Failure {
        let phase = match self {
            TargetError::Refused(_) => Phase::Verify,
            _ => phase,
        };
        Failure { phase, message: self.to_string() }
    }
}
