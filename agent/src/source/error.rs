//! What can go wrong on the source's side of a migration. Each failure is
//! a [`SourceError`] put in the phase it happened in ([`Fail`]), and
//! reaches the machine, the report and the user once, as the protocol's
//! [`Failure`] (its text is the `Display` below), in [`Fail::failure`].

use crate::engine::EngineError;
use crate::netid::NetError;
use crate::transfer::TransferError;
use std::path::PathBuf;
use tern_proto::frame::FrameError;
use tern_proto::policy::StopReason;
use tern_proto::{Failure, Phase};
use tern_transport::rpc::RpcError;

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("cancelled by the user")]
    Cancelled,
    #[error(transparent)]
    Engine(#[from] EngineError),
    /// Talking to the target: connecting, asking, reading its answer.
    #[error(transparent)]
    Rpc(#[from] RpcError),
    /// A task of this agent's (a dump running beside the transfer) died.
    #[error(transparent)]
    Task(#[from] tokio::task::JoinError),
    #[error(transparent)]
    Net(#[from] NetError),
    /// Post-copy (`postcopy.rs`).
    #[error("post-copy: {0}")]
    PostCopy(String),

    // Before anything was frozen.
    #[error("{container} is already being migrated")]
    AlreadyMigrating { container: String },
    #[error("no container named {container} on {host}")]
    NoSuchContainer { container: String, host: String },
    #[error("{container} is {state}, not running; tern migrates running containers")]
    NotRunning { container: String, state: String },
    #[error("bad target address {address}: {source}")]
    BadAddress { address: String, source: std::net::AddrParseError },
    #[error("cannot create {}: {source}", path.display())]
    CreateDir { path: PathBuf, source: std::io::Error },
    /// Connections opened since the coordinator's check that the move
    /// would reset (the first three, described).
    #[error(
        "{} connection(s) would not survive the move: {}; nothing was frozen. Pass --allow-reset to move it anyway",
        lost.len(),
        lost[..lost.len().min(3)].join("; ")
    )]
    ConnectionsLost { lost: Vec<String> },
    /// Opening the image Podman saved.
    #[error("{0}")]
    OpenImage(std::io::Error),
    /// Sending the image.
    #[error(transparent)]
    ShipImage(SendError),

    // Pre-copy, while the container runs.
    #[error("round {n}: the dump failed (the container keeps running): {source}")]
    RoundDump { n: u32, source: EngineError },
    #[error("reading round {n} in {}: {source}", dir.display())]
    ReadRound { n: u32, dir: PathBuf, source: std::io::Error },
    #[error("shipping round {n}: {source}")]
    ShipRound { n: u32, source: SendError },
    #[error("{reason} after {rounds} round(s) ({secs} s); cancelled as asked (--on-timeout cancel); use --on-timeout switchover to freeze instead")]
    PolicyCancelled { reason: StopReason, rounds: u32, secs: u64 },
    /// Making the work folder for the base's FIFO.
    #[error("{0}")]
    WorkDir(std::io::Error),
    #[error("the base checkpoint failed (the container keeps running): {0}")]
    BaseCheckpoint(EngineError),
    #[error("shipping the base: {0}")]
    ShipBase(SendError),
    #[error("emptying {}: {source}", dir.display())]
    EmptyRam { dir: PathBuf, source: std::io::Error },
    /// Removing the container's `pre-checkpoint` link of an earlier attempt.
    #[error("{0}")]
    Unlink(std::io::Error),
    #[error("{container} holds a pre-checkpoint of Podman's own; remove it (`rm -r {}`) and migrate again", link.display())]
    PodmanPreCheckpoint { container: String, link: PathBuf },
    #[error("the last round {} is not inside the container's folder {}", last.display(), dir.display())]
    RoundOutside { last: PathBuf, dir: PathBuf },
    #[error("linking {} to {}: {source}", link.display(), to.display())]
    Link { link: PathBuf, to: PathBuf, source: std::io::Error },

    // The freeze and after.
    #[error("creating the FIFO {}: {source}", path.display())]
    Fifo { path: PathBuf, source: std::io::Error },
    #[error("writing the journal entry in {}: {source}", dir.display())]
    Journal { dir: PathBuf, source: std::io::Error },
    #[error("podman checkpoint: {0}")]
    Checkpoint(EngineError),
    #[error("adding the changed files Podman left out of its archive: {0}; the container stays here")]
    CompleteArchive(std::io::Error),
    #[error("streaming the checkpoint to {target}: {source}")]
    StreamCheckpoint { target: String, source: TransferError },
    #[error("telling {target} the checkpoint is complete: {source}")]
    TellComplete { target: String, source: FrameError },
    /// Writing any other message to the target.
    #[error(transparent)]
    Tell(FrameError),
    #[error("waiting for {target} to restore: {source}")]
    AwaitRestore { target: String, source: RpcError },
    #[error("recording the commit in {}: {source}; the target is told to drop its copy", path.display())]
    RecordCommit { path: PathBuf, source: std::io::Error },
    /// Settling with the target after the conversation died
    /// ([`crate::recovery::settle`]).
    #[error("{target} is still busy with it")]
    TargetBusy { target: String },
    #[error("{0:#}")]
    Settle(anyhow::Error),

    // What the source's own code should never let happen.
    #[error("tern bug: no container before the connect")]
    NoContainer,
    #[error("tern bug: the source machine stopped without an end")]
    NoEnd,
    #[error("tern bug: no stream to the target")]
    NoStream,
    #[error("tern bug: round {0} was never sent")]
    RoundNeverSent(u32),
    #[error("tern bug: no journal entry to record the commit in")]
    NoJournal,
}

/// A transfer the source waits on, which the user may cancel.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    #[error("cancelled by the user")]
    Cancelled,
    #[error(transparent)]
    Transfer(#[from] TransferError),
}

/// A failure, in the phase it happened.
pub struct Fail {
    pub phase: Phase,
    pub error: SourceError,
}

impl Fail {
    /// What the machine, and through it the report, is told.
    pub fn failure(&self) -> Failure {
        Failure { phase: self.phase, message: self.error.to_string() }
    }
}

impl SourceError {
    /// This error, in `phase`.
    pub fn at(self, phase: Phase) -> Fail {
        Fail { phase, error: self }
    }
}

/// Puts a step's error in its phase: `step().await.at(p)?`.
pub trait At<T> {
    fn at(self, phase: Phase) -> Result<T, Fail>;
}

impl<T, E: Into<SourceError>> At<T> for Result<T, E> {
    fn at(self, phase: Phase) -> Result<T, Fail> {
        self.map_err(|e| e.into().at(phase))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Texts users, the coordinator and the tests read, as they were
    /// before the errors were typed.
    #[test]
    fn says_what_it_said_as_text() {
        assert_eq!(SourceError::Cancelled.at(Phase::PreCopy).failure(), Failure { phase: Phase::PreCopy, message: "cancelled by the user".into() });
        let not_running = SourceError::NotRunning { container: "web".into(), state: "exited".into() };
        assert_eq!(not_running.to_string(), "web is exited, not running; tern migrates running containers");
        let dump = SourceError::RoundDump { n: 2, source: EngineError::Timeout { cmd: "runc".into(), secs: 5 } };
        assert_eq!(dump.to_string(), "round 2: the dump failed (the container keeps running): `runc` did not finish within 5 s and was killed");
        let ship = SourceError::ShipRound { n: 3, source: SendError::Cancelled };
        assert_eq!(ship.to_string(), "shipping round 3: cancelled by the user");
        let lost = SourceError::ConnectionsLost { lost: ["a", "b", "c", "d"].map(String::from).to_vec() };
        assert_eq!(lost.to_string(), "4 connection(s) would not survive the move: a; b; c; nothing was frozen. Pass --allow-reset to move it anyway");
        let one = SourceError::ConnectionsLost { lost: vec!["a".into()] };
        assert!(one.to_string().starts_with("1 connection(s) would not survive the move: a; nothing"), "{one}");
        let cancelled = SourceError::PolicyCancelled { reason: StopReason::Timeout, rounds: 4, secs: 30 };
        assert_eq!(
            cancelled.to_string(),
            "the pre-copy timeout expired after 4 round(s) (30 s); cancelled as asked (--on-timeout cancel); use --on-timeout switchover to freeze instead"
        );
        assert_eq!(SourceError::Settle(anyhow::anyhow!("no").context("settling")).to_string(), "settling: no");
    }
}
