//! Every message on the wire.
//!
//! Each request opens its own bidirectional QUIC stream whose first frame is
//! a [`Request`]. Most are answered by one [`Response`]; two open a longer
//! conversation on the same stream:
//!
//! * [`Request::Migrate`] (coordinator to source agent): the agent sends
//!   [`MigrateEvent`]s until `Done`; the coordinator may send one
//!   [`CoordinatorSignal::Cancel`]. Closing the coordinator's side before the
//!   switchover also cancels.
//! * [`Request::Receive`] (source agent to target agent): [`SourceMsg`] and
//!   [`TargetMsg`] alternate as drawn in the crate docs; the target's legal
//!   order is [`crate::state::TargetState`].
//!
//! Variant 0 of every enum is `Invalid`: a zeroed or truncated buffer never
//! decodes into a meaningful command.

use crate::compat::Finding;
use crate::facts::{ContainerInfo, Cordon, HostFacts};
use crate::frame::WireMessage;
use crate::mode::Mode;
use crate::policy::PolicyConfig;
use serde::{Deserialize, Serialize};

/// A migration's identifier, chosen by the coordinator, logged on all sides.
pub type MigrationId = u64;

/// Sent first on every connection by the side that opened it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// The version the sender speaks.
    pub version: u16,
    /// Every version the sender accepts.
    pub supported: Vec<u16>,
    /// The sender's name (host name or `coordinator`).
    pub name: String,
    /// The sender's software and version, for logs.
    pub software: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum HelloReply {
    Invalid,
    Accepted { version: u16, name: String, software: String },
    Refused { reason: String },
}

// As for `Response`: decoded once per request and moved a few times.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    Invalid,
    Hello(Hello),
    /// Answer with [`Response::Facts`].
    Facts,
    /// Answer with [`Response::Containers`]: every container on the host.
    Containers,
    /// Could this container be restored here? Answer with
    /// [`Response::IncomingCheck`]: name and address clashes, image presence.
    CheckIncoming(ContainerInfo),
    /// Migrate one of this host's containers away (to the source agent).
    Migrate(MigrateRequest),
    /// Receive a migrating container (to the target agent, from the source).
    Receive(Begin),
    /// Measure the link from this agent to another (to the source agent):
    /// answer with [`Response::Probe`].
    Probe(ProbeRequest),
    /// `bytes` bytes follow on this stream; read and drop them, answer with
    /// [`Response::Sunk`] (agent to agent, for a probe).
    Sink {
        bytes: u64,
    },
    /// Settle a migration whose switchover the source could not see to
    /// its end (agent to agent, source to target: the source lost the
    /// target after telling it the checkpoint was complete, or its agent
    /// died and a successor found the journal entry). The source decides;
    /// the target carries the decision out and says where the container
    /// runs: [`Response::Resolved`].
    Resolve(ResolveRequest),
    /// Cordon or uncordon this host (coordinator to agent): while cordoned
    /// it refuses every `Receive`, and its facts say so. Answer with
    /// [`Response::Cordon`].
    Cordon(CordonRequest),
    /// What evacuations moved away from this host and has not come back
    /// (coordinator to agent), after forgetting what the request names.
    /// Answer with [`Response::Evacuation`].
    Evacuation(EvacuationRequest),
    /// The memory of a post-copy migration (agent to agent, source to
    /// target): after this request the stream carries the page tunnel
    /// between the target's `criu lazy-pages` and the source's CRIU page
    /// server, in the tunnel's own frames. Opened again on a new
    /// connection after a lost link, and the tunnel resumes where it was.
    Pages {
        id: MigrationId,
    },
    /// The post-copy fills this host serves as a source (coordinator to
    /// agent): say how they stand, or act on one whose link is lost.
    /// Answer with [`Response::PostCopy`]. Never asks Podman, which holds
    /// the container's lock until the fill is over.
    PostCopy(PostCopyRequest),
    /// Checkpoints a user keeps (coordinator to agent,
    /// [`crate::checkpoint`]): answer with [`Response::Checkpoints`], or
    /// [`Response::RestoredAs`] to a restore.
    Checkpoint(crate::checkpoint::CheckpointRequest),
    /// Put a checkpoint into this host's store (agent to agent): the store
    /// answers [`Response::CheckpointReady`] (or an error); the image
    /// follows on this stream if it asked for it, then the archive on a
    /// data stream of its own (`DataKind::Checkpoint`, or
    /// `CheckpointDelta` against the base the store said it holds), which
    /// the store checks against the announced size and digest before it
    /// keeps it. Then answer with [`Response::Checkpoints`] (the
    /// checkpoint as stored here).
    CheckpointPut(Box<crate::checkpoint::PutCheckpoint>),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PostCopyRequest {
    /// The container whose fill to act on (`Status`: `None` for all).
    pub container: Option<String>,
    pub action: PostCopyAction,
}

/// What the operator asks of a post-copy fill.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum PostCopyAction {
    Invalid,
    /// Only say how the fills stand.
    Status,
    /// Try the link to the target again now (a fill whose link is lost).
    Resume,
    /// Give the move up (a fill whose link is lost): the container runs
    /// here again as of its freeze, and the target's copy, paused short of
    /// pages, is removed once the target hears the verdict.
    GiveUp,
}

/// How one post-copy fill stands, on its source.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FillStatus {
    pub id: MigrationId,
    pub container: String,
    /// The host the container runs on, filling its memory from here.
    pub target: String,
    /// When the target restored it (seconds since the epoch).
    pub since_unix: u64,
    /// Bytes of CRIU's page traffic read here so far (pages and headers).
    pub bytes: u64,
    pub link: FillLink,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum FillLink {
    Invalid,
    /// The pages cross.
    Up,
    /// The link to the target is lost: the target holds the container
    /// paused, and this side tries again every second.
    Lost {
        since_unix: u64,
        error: String,
    },
    /// Lost for longer than the agent waits by itself: it still tries
    /// again now and then, and the operator decides (`tern post-copy`).
    Stalled {
        since_unix: u64,
        error: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EvacuationRequest {
    /// Container IDs to drop from the record first (`tern return`: those
    /// that will not come back, or came back); empty: only read it.
    pub forget: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CordonRequest {
    /// `Some(reason)`: cordon (a host already cordoned keeps its reason and
    /// time); `None`: uncordon.
    pub cordon: Option<String>,
}

/// A cordon's state before and after a [`Request::Cordon`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CordonChange {
    pub was: Option<Cordon>,
    pub now: Option<Cordon>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResolveRequest {
    pub id: MigrationId,
    pub container: String,
    pub container_id: String,
    pub verdict: Verdict,
}

/// The source's decision about a migration's switchover.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Verdict {
    Invalid,
    /// The source recorded the commit: the target's copy is the container.
    Commit,
    /// The source never heard `Restored`: the target removes any copy it
    /// made, and the container comes back on the source.
    Abort,
}

/// Where the container runs after the target carried out a verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Resolution {
    Invalid,
    /// A migration of it is still under way here (a restore may still be
    /// running): ask again shortly.
    Busy,
    /// It runs here: the switchover happened (a commit, or a copy this
    /// target had already committed).
    Kept,
    /// Nothing of it is here, and nothing will be: it never was restored,
    /// or the copy was removed by this verdict.
    Absent,
}

/// The most a probe may send (1 GiB).
pub const MAX_PROBE_BYTES: u64 = 1 << 30;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProbeRequest {
    pub target: Peer,
    pub bytes: u64,
}

/// What a probe measured, from the sending agent's side.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProbeReport {
    pub from: String,
    pub to: String,
    /// Payload bytes sent.
    pub bytes: u64,
    /// From the first byte written until the target had them all.
    pub ms: u64,
    /// UDP payload bytes the sender sent (QUIC's own count, headers and
    /// retransmissions included).
    pub bytes_on_wire: u64,
    /// Packets QUIC declared lost and sent again.
    pub lost_packets: u64,
    /// The connection's smoothed round-trip time at the end.
    pub rtt_us: u64,
}

// Decoded once per message and moved a few times: boxing the large
// variant would cost an allocation for nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Response {
    Invalid,
    Hello(HelloReply),
    Facts(HostFacts),
    Containers(Vec<ContainerInfo>),
    IncomingCheck(Vec<Finding>),
    Probe(ProbeReport),
    /// The bytes of a `Sink` request arrived: this many, in this long.
    Sunk {
        bytes: u64,
        ms: u64,
    },
    Resolved(Resolution),
    Error(RemoteError),
    Cordon(CordonChange),
    Evacuation(crate::evacuation::EvacuationRecord),
    /// The post-copy fills a `Request::PostCopy` names, as they stand
    /// after its action.
    PostCopy(Vec<FillStatus>),
    /// Checkpoints of this host's store: all of them (`List`), or the one
    /// an order made, sent or removed.
    Checkpoints(Vec<crate::checkpoint::StoredCheckpoint>),
    /// The containers a checkpoint's restore made, running.
    RestoredAs(Vec<crate::checkpoint::RestoredContainer>),
    /// A store will take the checkpoint a `CheckpointPut` announced. The
    /// sender then writes on the request's stream the image archive's
    /// length (u64, little-endian; 0 for none) and, if the store
    /// `needs_image` (it lacks the container's), the image archive.
    CheckpointReady {
        needs_image: bool,
        /// It holds the base the sender named: delta records may refer to
        /// its pages.
        base_ok: bool,
    },
    /// A host's standby schedules, after the order.
    Standby(Vec<crate::checkpoint::StandbyStatus>),
}

/// An error the remote side reports instead of an answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{message}")]
pub struct RemoteError {
    pub message: String,
}

/// Compression of what crosses the wire (tern's own, per 1 MiB run: Podman
/// always exports uncompressed).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Compression {
    Invalid,
    /// Never.
    None,
    /// zstd (level 3) where it shrinks a run by 10 % or more, with backoff
    /// on incompressible data.
    Zstd,
    /// zstd (level 1) the same way; off on links measured at 2 Gbit/s or
    /// faster per compressing thread, where compressing would cost more
    /// time than it saves.
    Auto,
}

impl Compression {
    pub fn as_str(&self) -> &'static str {
        match self {
            Compression::Invalid => "invalid",
            Compression::None => "none",
            Compression::Zstd => "zstd",
            Compression::Auto => "auto",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MigrateRequest {
    pub id: MigrationId,
    pub container: String,
    /// The target agent, as the coordinator's inventory knows it.
    pub target: Peer,
    pub options: MigrateOptions,
    /// The coordinator's signed permission for this one move; the source
    /// passes it on in [`Begin::ticket`].
    pub ticket: Ticket,
    /// A move of `tern evacuate`: once its switchover is recorded, the
    /// source adds it to its evacuation record, which `tern return` reads
    /// ([`crate::evacuation`]).
    pub evacuation: bool,
}

pub use crate::peer::Peer;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MigrateOptions {
    pub mode: Mode,
    /// How the checkpoint archive is compressed.
    pub compress: Compression,
    /// Checkpoint and restore established TCP connections (CRIU TCP repair).
    pub tcp_established: bool,
    /// Move the container even when some of its connections cannot survive
    /// the move (`tern_proto::network::fate`); otherwise the source checks
    /// again right before the freeze and refuses.
    pub allow_reset: bool,
    /// When to stop pre-copy rounds and freeze (ignored by stop-and-copy).
    pub policy: PolicyConfig,
    /// Restore lazily where the target can: the container resumes before
    /// its memory is copied in (from the target's own copy of the images).
    pub lazy_restore: bool,
    /// A cap on the source host's outgoing migration traffic, in bytes per
    /// second (0: none asked). It may only lower the source agent's own
    /// (`[limits] bandwidth`), never raise it
    /// ([`crate::bandwidth::effective_cap`]).
    pub bandwidth: u64,
    /// Post-copy only: what crosses before the freeze, while the
    /// container runs, so that the fill after the restore carries less:
    /// soft-dirty rounds where both hosts track soft-dirty memory, or
    /// `hash-pre-copy`'s base where the user asks (`--hash-base`).
    pub post_copy_first: crate::mode::PostCopyFirst,
}

/// The phases of a migration, in order. Used for progress and the report.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Phase {
    Invalid,
    /// Connect to the target, check the container can land there.
    Prepare,
    /// Ship the container's image (container still running).
    Image,
    /// Memory rounds shipped while the container runs.
    PreCopy,
    /// The container is frozen and dumped, the archive streamed as written.
    Checkpoint,
    /// The target checks the archive's digest.
    Verify,
    /// The target restores the container and confirms it runs.
    Restore,
    /// The source removes its stopped copy.
    Cleanup,
    /// After a failure: the container is brought back on the source.
    Rollback,
}

impl Phase {
    pub fn as_str(&self) -> &'static str {
        match self {
            Phase::Invalid => "invalid",
            Phase::Prepare => "prepare",
            Phase::Image => "image",
            Phase::PreCopy => "pre-copy",
            Phase::Checkpoint => "checkpoint",
            Phase::Verify => "verify",
            Phase::Restore => "restore",
            Phase::Cleanup => "cleanup",
            Phase::Rollback => "rollback",
        }
    }
}

/// Sent by the source agent to the coordinator during a migration.
// Decoded once per message and moved a few times: boxing the large
// variant would cost an allocation for nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum MigrateEvent {
    Invalid,
    Progress(Progress),
    Done(MigrationReport),
    /// The source agent refused the request before doing anything (the
    /// asker's certificate does not allow it): nothing was touched.
    Refused(RemoteError),
    /// A line the operator must see, on a line of its own even under
    /// `--quiet` (a post-copy fill's link lost, stalled, back).
    Notice(String),
}

/// Sent by the coordinator on an open `Migrate` stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum CoordinatorSignal {
    Invalid,
    /// Stop now. Before the switchover, the container goes back to running on
    /// the source; after it, the migration finishes.
    Cancel,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Progress {
    pub phase: Phase,
    /// Bytes of this phase done so far.
    pub bytes: u64,
    /// Time since the migration started.
    pub elapsed_ms: u64,
    /// A short human note ("frozen", "verifying").
    pub note: String,
}

/// How long one phase took.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PhaseTime {
    pub phase: Phase,
    pub ms: u64,
}

/// A part of the frozen interval, from the freeze until the container
/// runs on the target, in the order they happen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum FrozenStep {
    Invalid,
    /// CRIU's own frozen time during the final dump (its `stats-dump`).
    CriuDump,
    /// The rest of Podman's checkpoint: its work before CRIU runs and
    /// the packing of its archive afterwards.
    PodmanExport,
    /// The archive's tail crossing the wire after Podman finished writing.
    Transfer,
    /// The target receiving the rest and checking the digest.
    Verify,
    /// The target checking what the checkpoint asks of the host.
    Admit,
    /// The operator's network hook on the target.
    Hook,
    /// CRIU's restore itself (its `stats-restore`).
    CriuRestore,
    /// The rest of Podman's restore: the import, the container's record,
    /// the runtime's work around CRIU.
    PodmanRestore,
    /// What no step accounts for: messages between the agents, the
    /// source's bookkeeping.
    Other,
}

impl FrozenStep {
    pub fn as_str(&self) -> &'static str {
        match self {
            FrozenStep::Invalid => "invalid",
            FrozenStep::CriuDump => "criu-dump",
            FrozenStep::PodmanExport => "podman-export",
            FrozenStep::Transfer => "transfer",
            FrozenStep::Verify => "verify",
            FrozenStep::Admit => "admit",
            FrozenStep::Hook => "hook",
            FrozenStep::CriuRestore => "criu-restore",
            FrozenStep::PodmanRestore => "podman-restore",
            FrozenStep::Other => "other",
        }
    }
}

/// How long one step of the frozen interval took.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepTime {
    pub step: FrozenStep,
    pub ms: u64,
}

/// The frozen interval of `downtime_ms`, split: the source's steps, then
/// the target's (`target`), then what is left over as [`FrozenStep::Other`].
/// Steps that took no time are left out; `Other` never goes below zero.
pub fn frozen_steps(source: &[StepTime], target: &[StepTime], downtime_ms: u64) -> Vec<StepTime> {
    let mut steps: Vec<StepTime> = source.iter().chain(target).copied().filter(|s| s.ms > 0).collect();
    let counted: u64 = steps.iter().map(|s| s.ms).sum();
    if downtime_ms > counted {
        steps.push(StepTime { step: FrozenStep::Other, ms: downtime_ms - counted });
    }
    steps
}

/// What failed, and where.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Failure {
    pub phase: Phase,
    pub message: String,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} failed: {}", self.phase.as_str(), self.message)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    Invalid,
    /// The container runs on the target and is gone from the source.
    Completed,
    /// Stopped before the freeze: the container never stopped running on the
    /// source.
    Refused {
        failure: Failure,
    },
    /// The migration failed; the container runs on the source again.
    RolledBack {
        failure: Failure,
    },
    /// The migration failed and the container could not be brought back
    /// running: the checkpoint is kept on the source, the message says how to
    /// restore it by hand.
    Failed {
        failure: Failure,
        rollback_error: String,
    },
    /// The target could not be reached after it may have restored: the
    /// container is kept checkpointed on the source, runs nowhere twice,
    /// and the agents settle it once they reach each other (`detail` says
    /// how this one failed and what happens next).
    Undecided {
        failure: Failure,
        detail: String,
    },
}

/// The final report of a migration, as the source agent measured it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MigrationReport {
    pub id: MigrationId,
    pub container: String,
    pub source: String,
    pub target: String,
    pub mode: Mode,
    pub outcome: Outcome,
    /// From the freeze until the target confirmed the container runs
    /// (or until it ran again on the source, after a rollback).
    pub downtime_ms: Option<u64>,
    pub total_ms: u64,
    /// UDP payload bytes the source sent to the target (QUIC's own count).
    pub bytes_on_wire: u64,
    /// Size of the shipped image archive (0 when the target had it).
    pub image_bytes: u64,
    /// Size of the checkpoint archive (the final dump's, for pre-copy).
    pub checkpoint_bytes: u64,
    /// Pages in the final dump (from CRIU's statistics; 0 when unknown).
    pub final_pages: u64,
    /// CRIU's own frozen time during the final dump, in ms (0 when unknown).
    pub final_frozen_ms: u64,
    /// Bytes of the final checkpoint that did not cross the wire because the
    /// target already held them (content-addressed pre-copy).
    pub saved_bytes: u64,
    /// Bytes sent compressed (all data streams), before and after.
    pub zstd_in: u64,
    pub zstd_out: u64,
    pub phases: Vec<PhaseTime>,
    /// The downtime, step by step ([`frozen_steps`]); empty without a
    /// switchover.
    pub frozen: Vec<StepTime>,
    /// The target restored lazily: from running until all memory was in
    /// place (the container ran during it).
    pub memory_fill_ms: Option<u64>,
    /// Where the images were held during the freeze: RAM (a tmpfs) or disk.
    pub images_in_ram: ImagesInRam,
    /// Pre-copy rounds, in order (empty for stop-and-copy).
    pub rounds: Vec<RoundReport>,
    /// Why pre-copy stopped iterating (None for stop-and-copy).
    pub stop_reason: Option<String>,
    pub warnings: Vec<String>,
    /// The cap on the source's outgoing migration traffic this migration
    /// ran under, in bytes per second (0: none): the lower of the source
    /// agent's and the request's. Other moves under way from the same host
    /// share it, and a lower cap one of them asked holds for all.
    pub bandwidth: u64,
    /// How long its data streams waited for that cap, in all.
    pub throttled_ms: u64,
}

/// Whether each side held the checkpoint images in RAM.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImagesInRam {
    pub source: bool,
    pub target: bool,
}

/// One pre-copy round as the report shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoundReport {
    /// 1 for the first round.
    pub round: u32,
    /// Pages this round's dump wrote: all of memory for the first round,
    /// the pages written since the previous round after that.
    pub pages: u64,
    /// Bytes shipped for this round (images and framing).
    pub bytes: u64,
    /// The dump, while the container ran (runc/CRIU).
    pub dump_ms: u64,
    /// CRIU's frozen time inside that dump: the container paused this long.
    pub frozen_ms: u64,
    /// Shipping the round to the target, verified.
    pub transfer_ms: u64,
    /// Dump and transfer.
    pub duration_ms: u64,
    /// Pages written per second since the previous round's dump began
    /// (0 for the first round, which copies everything).
    pub dirty_pages_per_s: u64,
}

/// The first frame of a `Receive` conversation's content.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Begin {
    pub id: MigrationId,
    /// The source host's name.
    pub source: String,
    pub container: ContainerInfo,
    pub tcp_established: bool,
    /// Decides which messages the target accepts (rounds or not).
    pub mode: Mode,
    /// Restore lazily if this target can ([`MigrateOptions::lazy_restore`]).
    pub lazy_restore: bool,
    /// [`MigrateOptions::post_copy_first`].
    pub post_copy_first: crate::mode::PostCopyFirst,
    /// The coordinator's ticket for this move, as the source received it.
    pub ticket: Ticket,
}

/// What a coordinator allows: one container, from one host to another,
/// for a few minutes. Signed by the coordinator's key (`tern_transport::ticket`);
/// the target checks it before it accepts a `Receive`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TicketBody {
    /// Random, used once: the target remembers it until it expires.
    pub ticket_id: [u8; 16],
    pub migration_id: MigrationId,
    /// Host names, as their certificates say.
    pub source: String,
    pub target: String,
    pub container: String,
    pub container_id: String,
    pub image_id: String,
    /// blake3 of the container's spec as the coordinator checked it
    /// (`tern_transport::ticket::spec_hash`).
    pub spec_hash: [u8; 32],
    /// Seconds since the Unix epoch.
    pub issued_at: u64,
    pub expires_at: u64,
    /// A move of an evacuation (`tern evacuate`): the target remembers
    /// where the container came from, so that the evacuated host's own
    /// evacuator certificate may later bring it back, and nothing else.
    pub evacuation: bool,
}

/// A [`TicketBody`], its ECDSA P-256 signature (ASN.1 DER, SHA-256) and the
/// signer's certificate (DER), which must chain to the cluster CA.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ticket {
    pub body: TicketBody,
    pub signature: Vec<u8>,
    pub cert: Vec<u8>,
}

/// Source to target, on a `Receive` stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum SourceMsg {
    Invalid,
    /// The image archive was sent on a data stream; here is its digest.
    ImageSent(Digest),
    /// Pre-copy round `round` (1, 2, ...) was sent on a data stream as a
    /// file set; store it, answer `RoundStored`.
    RoundSent {
        round: u32,
        digest: Digest,
    },
    /// Pre-copy: `rounds` rounds were sent and the freeze comes next;
    /// prepare them for the restore, answer `RoundsPrepared`. Not downtime:
    /// the container still runs.
    RoundsDone {
        rounds: u32,
    },
    /// The checkpoint archive was sent on a data stream; here is its digest.
    /// Verify, restore, confirm.
    CheckpointSent(Digest),
    /// The source recorded the switchover: the copy restored here is the
    /// container now (until then it is tentative: `Resolve` may still
    /// remove it).
    Commit,
    /// Give up: remove anything restored or staged for this migration.
    Abort {
        reason: String,
    },
}

/// Target to source, on a `Receive` stream.
// Decoded once per message and moved a few times: boxing the large
// variant would cost an allocation for nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum TargetMsg {
    Invalid,
    /// Prepared; ship the image first when `needs_image`.
    Ready {
        needs_image: bool,
    },
    ImageLoaded,
    /// The round is verified and kept for the final restore.
    RoundStored {
        round: u32,
    },
    /// The rounds are ready for the restore (`bytes`: their size here).
    RoundsPrepared {
        bytes: u64,
    },
    /// The container runs here: the switchover point.
    Restored(RestoreInfo),
    Committed,
    Aborted,
    /// Something failed here; the source must roll back.
    Failed(Failure),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestoreInfo {
    pub verify_ms: u64,
    /// Until `podman restore` returned with the container running.
    pub restore_ms: u64,
    /// The check afterwards that it is still running (and, after a lazy
    /// restore, that all its memory is in place); the container runs during
    /// it, so it is not downtime.
    pub confirm_ms: u64,
    /// After a lazy restore: from running until all its memory was in place.
    pub memory_fill_ms: Option<u64>,
    /// The target's steps of the frozen interval, from `CheckpointSent`
    /// until the container ran.
    pub steps: Vec<StepTime>,
    /// The images were held in RAM here, not on disk.
    pub images_in_ram: bool,
    /// Why the restore was not lazy, or the images not in RAM, when so.
    pub notes: Vec<String>,
    pub container: ContainerInfo,
}

/// Size and blake3 hash of a shipped archive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Digest {
    pub bytes: u64,
    pub blake3: [u8; 32],
}

impl Digest {
    pub fn hex(&self) -> String {
        blake3::Hash::from_bytes(self.blake3).to_hex().to_string()
    }
}

/// What a unidirectional data stream carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum DataKind {
    Invalid,
    /// An image archive, as delta records ([`crate::delta`]) without a base.
    Image,
    /// The checkpoint archive, as delta records without a base.
    Checkpoint,
    /// A pre-copy round: a file set ([`crate::fileset`]).
    Round(u32),
    /// The checkpoint archive as delta records ([`crate::delta`]) against
    /// the pages of the base archive, which the target holds.
    CheckpointDelta {
        base: u32,
    },
    /// Content-addressed pre-copy's base: a full checkpoint archive taken
    /// while the container runs, as delta records without a base.
    Base,
}

/// The one frame at the start of a data stream; what follows to the end
/// is the [`DataKind`]'s.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DataHeader {
    pub id: MigrationId,
    pub kind: DataKind,
}

macro_rules! wire_enum {
    ($($t:ident),*) => {$(
        impl WireMessage for $t {
            const NAME: &'static str = stringify!($t);
            fn is_invalid(&self) -> bool {
                matches!(self, $t::Invalid)
            }
        }
    )*};
}
wire_enum!(HelloReply, Request, Response, MigrateEvent, CoordinatorSignal, SourceMsg, TargetMsg);

impl WireMessage for DataHeader {
    const NAME: &'static str = "DataHeader";
    fn is_invalid(&self) -> bool {
        self.kind == DataKind::Invalid
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn st(step: FrozenStep, ms: u64) -> StepTime {
        StepTime { step, ms }
    }

    #[test]
    fn the_frozen_steps_add_up_to_the_downtime() {
        let source = [st(FrozenStep::CriuDump, 120), st(FrozenStep::PodmanExport, 300), st(FrozenStep::Transfer, 0)];
        let target = [st(FrozenStep::Verify, 40), st(FrozenStep::Hook, 0), st(FrozenStep::PodmanRestore, 500)];
        let steps = frozen_steps(&source, &target, 1000);
        let names: Vec<&str> = steps.iter().map(|s| s.step.as_str()).collect();
        assert_eq!(names, ["criu-dump", "podman-export", "verify", "podman-restore", "other"], "steps of 0 ms are left out");
        assert_eq!(steps.iter().map(|s| s.ms).sum::<u64>(), 1000);
        // Clocks of two hosts: the target's steps may exceed what the
        // source saw; nothing is invented to make up for it.
        let over = frozen_steps(&source, &target, 900);
        assert!(over.iter().all(|s| s.step != FrozenStep::Other));
    }
}
