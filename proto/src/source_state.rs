//! The source's side of a migration as a state machine, beside the
//! target's ([`crate::state`]).
//!
//! [`step`] takes the state and what the IO layer reports (an [`Event`]) and
//! answers the next state and what the agent must do now ([`Command`]s, in
//! order). The agent carries the commands out one by one: a command either
//! reports nothing (it cannot fail, or failing is only worth a warning), or
//! it reports the one event that moves the machine on. A command that
//! reports [`Event::Failed`] ends its batch: the machine answers the failure
//! with a batch of its own.
//!
//! ```text
//!  Connect ─▶ Ready ─▶ prepared ─▶ RAM? ─▶ image? ─▶ rounds? (Plan) ─▶ connections
//!     │                   │ failure: Refused          │ failure: Abort the target, Refused
//!     └───────────────────┘ (nothing staged there)    ▼
//!                          cancel check ─▶ journal ─▶ dump ║ stream ─▶ CheckpointSent ─▶ Restored
//!                            │ failure (from the cancel check on): Abort the target,     │ switchover
//!                            └──────────────────────▶ restore here: RolledBack or Failed  ▼
//!                                           record the commit, Commit, remove the source copy: Completed
//! ```
//!
//! ## The switchover
//!
//! The source decides; the target's copy is tentative until it hears the
//! decision. Exactly one copy runs at any time because:
//!
//! * the source removes its copy only after `Restored`, and first records
//!   the commit in its journal, so that the decision survives its agent;
//! * the source runs its copy again only once the target said that no copy
//!   is there and none will be: `Aborted` on the conversation, or
//!   `Resolution::Absent` to a [`Command::Resolve`] on a connection of its
//!   own, made when the conversation died after `CheckpointSent` (the
//!   target may have restored: it keeps a restored copy, marked tentative,
//!   when its source vanishes);
//! * when neither answer comes, nothing is decided: the container stays
//!   checkpointed here ([`End::Undecided`]), the journal entry stays, and
//!   the agent's recovery keeps asking the target until it answers. The
//!   copy the target may run is then the only one.
//!
//! Before `CheckpointSent` the target cannot restore, so a failure there
//! rolls back at once; an unconfirmed commit is settled the same way, by
//! recovery, with the verdict the journal holds.
//!
//! What must be undone is read from the state ([`Made`]), never from
//! elsewhere: it lists what this migration made (the target's staging, the
//! checkpoint folder in RAM, the rounds, the link to them, the journal
//! entry) and whether the container was frozen.

use crate::message::{DataKind, Digest, Failure, Phase, Resolution, RestoreInfo, SourceMsg, TargetMsg};
pub use crate::plan::{Plan, Rounds};
use std::path::PathBuf;

/// Which reply the agent waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    Ready,
    ImageLoaded,
    RoundStored,
    RoundsPrepared,
    /// The target verifies and restores: long, and the user may cancel it.
    Restored,
    Committed,
    Aborted,
}

impl Expect {
    pub fn name(self) -> &'static str {
        match self {
            Expect::Ready => "Ready",
            Expect::ImageLoaded => "ImageLoaded",
            Expect::RoundStored => "RoundStored",
            Expect::RoundsPrepared => "RoundsPrepared",
            Expect::Restored => "Restored",
            Expect::Committed => "Committed",
            Expect::Aborted => "Aborted",
        }
    }
}

/// How a migration ends, for the agent to word into an `Outcome`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum End {
    Completed,
    Refused(Failure),
    RolledBack(Failure),
    /// The local restore failed (`error`): the checkpoint is kept, in RAM
    /// when `ram` is set.
    Failed {
        failure: Failure,
        error: String,
        ram: Option<PathBuf>,
    },
    /// The target could not be reached after `CheckpointSent` (`error`
    /// says how it failed): the container stays checkpointed here, the
    /// journal entry stays, and recovery settles it with the target.
    Undecided {
        failure: Failure,
        error: String,
    },
}

/// What the agent must do. Those marked "→" report that event (or
/// [`Event::Failed`]); the others report nothing, or only a failure.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Look the container up, connect, send `Begin`. → `Done`.
    Connect,
    /// Read the target's next message. → `Reply`.
    Await {
        expect: Expect,
        phase: Phase,
    },
    /// Send a message to the target; a failure is reported in `phase`.
    Tell {
        msg: SourceMsg,
        phase: Phase,
    },
    /// Word an unexpected reply (the transport names the peer). → `Failed`.
    Unexpected {
        phase: Phase,
        expected: Expect,
        got: TargetMsg,
    },
    /// Make the work folder, check for a cancel. → `Done`.
    FinishPrepare,
    /// Open `phase`'s timer, tell the user `note`.
    Enter(Phase, &'static str),
    /// Close `phase`'s timer.
    Leave(Phase),
    /// Fail if the user cancelled. → `Done`.
    CheckCancel(Phase),
    /// Put the checkpoint folder in RAM if the host can. → `RamMounted`.
    MountRam,
    /// Save and send the image. → `Shipped`.
    ShipImage,
    /// Make an empty folder for the soft-dirty rounds. → `RoundsDir`.
    MakeRoundsDir,
    /// Pre-dump round `n` into `dir`'s `n`, send it as `kind`. → `Shipped`.
    DumpRound {
        n: u32,
        dir: PathBuf,
        kind: DataKind,
    },
    /// Account round `n`, ask the policy. → `NextRound`, `RoundsEnough`,
    /// or `Failed` (the policy gives up).
    JudgeRound {
        n: u32,
    },
    /// Checkpoint the running container and send it as `kind`, indexing
    /// its pages; then empty the checkpoint folder (`ram` when it is in RAM).
    /// → `Shipped`.
    ShipBase {
        kind: DataKind,
        ram: Option<PathBuf>,
    },
    /// Account the base round.
    NoteBase,
    /// Point the container's `pre-checkpoint` at round `rounds` in `dir`. → `PreLinked`.
    LinkPreCheckpoint {
        dir: PathBuf,
        rounds: u32,
    },
    /// Refuse if connections opened since the check would not survive. → `Done`.
    CheckConnections,
    /// Write the journal entry that survives this agent. → `Journaled`.
    Journal {
        leftovers: Vec<PathBuf>,
        ram: Option<PathBuf>,
    },
    /// Freeze: dump and stream as `kind`. → `Shipped`.
    Dump {
        kind: DataKind,
        with_previous: bool,
        in_ram: bool,
    },
    /// The switchover: account what the target said.
    Switched(RestoreInfo),
    /// Record in the journal entry that the migration commits. → `Done`.
    RecordCommit,
    /// Remove the stopped source copy and its moved volumes, run the hook. → `Done`.
    RemoveSourceCopy,
    /// The target did not confirm the commit (what it said, if anything):
    /// recovery tells it again.
    WarnUncommitted(Option<TargetMsg>),
    /// Settle with the target on a connection of its own, telling it
    /// `Verdict::Abort`, for as long as it may take to reach it. →
    /// `Resolved` or `Failed` (it could not be reached).
    Resolve,
    /// Add to `failure` that the connection was lost, if it was. → `Described`.
    NameLostConnection(Failure),
    /// Bring the container back here (traffic held meanwhile). →
    /// `RestoredHere` or `RestoreFailed`.
    RestoreHere,
    /// Announce the address from here again.
    Reclaim,
    /// Unmount the checkpoint folder in RAM.
    ReleaseRam(PathBuf),
    RemovePreLink(PathBuf),
    RemoveRounds(PathBuf),
    RemoveWorkDir,
    ForgetJournal(PathBuf),
    /// Leave the journal entry for the agent's recovery, which settles
    /// the migration with the target (`Resolve`) once it can reach it.
    RecoverLater(PathBuf),
    /// The last command: report.
    Finish(End),
}

/// What the agent reports.
// One at a time, moved once: boxing the replies would cost an allocation
// for nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The command's work is done.
    Done,
    /// The target said this.
    Reply(TargetMsg),
    /// The checkpoint folder is in RAM here, or not.
    RamMounted(Option<PathBuf>),
    /// A data stream was sent whole.
    Shipped(Digest),
    /// The soft-dirty rounds go in this (empty) folder.
    RoundsDir(PathBuf),
    /// The policy asks for another round.
    NextRound,
    /// The policy says freeze.
    RoundsEnough,
    /// The `pre-checkpoint` link was made.
    PreLinked(PathBuf),
    /// The journal entry was written.
    Journaled(PathBuf),
    /// The failure, worded with the lost connection.
    Described(Failure),
    /// The target carried out the verdict: where the container runs.
    Resolved(Resolution),
    /// The container runs here again.
    RestoredHere,
    RestoreFailed(String),
    /// The command failed: an error, a timeout, a lost peer, a cancel.
    Failed(Failure),
}

/// What this migration made that may have to be undone.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Made {
    /// The target stages this migration: tell it to drop it on a failure.
    pub target_staged: bool,
    /// The checkpoint folder this migration put in RAM.
    pub ram: Option<PathBuf>,
    /// The soft-dirty rounds' folder.
    pub rounds_dir: Option<PathBuf>,
    /// The container's `pre-checkpoint` link to the last round.
    pub pre_link: Option<PathBuf>,
    /// The journal entry.
    pub journal: Option<PathBuf>,
    /// The dump began: the container may be frozen or checkpointed.
    pub frozen: bool,
    /// `CheckpointSent` was (perhaps) told: the target may restore.
    pub restore_told: bool,
}

/// Where the migration stands: what the machine waits for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stage {
    Idle,
    Connecting,
    AwaitingReady,
    Preparing {
        needs_image: bool,
    },
    MountingRam {
        needs_image: bool,
    },
    ShippingImage,
    AwaitingImage,
    ImageCancelCheck,
    MakingRoundsDir,
    /// Round `n` (or the base) is dumped and sent.
    Shipping {
        round: u32,
    },
    AwaitingRound {
        round: u32,
    },
    Judging {
        round: u32,
    },
    AwaitingRoundsPrepared {
        rounds: u32,
    },
    Linking {
        rounds: u32,
    },
    CheckingConnections {
        rounds: u32,
    },
    /// From here on a failure rolls back.
    FreezeCancelCheck {
        rounds: u32,
    },
    Journaling {
        rounds: u32,
    },
    Checkpointing,
    AwaitingRestore,
    /// The target restored: the decision is being recorded.
    RecordingCommit,
    /// After the switchover: the migration ends on the target.
    AwaitingCommit,
    RemovingSource {
        acked: bool,
    },
    /// Before the freeze: the target was told to abort.
    Refusing(Failure),
    /// After it: the target was told to abort; the container comes back here.
    RollingBack(Failure),
    /// The abort was not confirmed after `CheckpointSent`: settling it on a
    /// connection of its own.
    Resolving(Failure),
    /// The failure is being worded with the lost connection.
    Describing(Failure),
    RestoringHere(Failure),
    Over,
}

impl Stage {
    /// The phase a failure in this stage is reported in.
    fn phase(&self) -> Phase {
        use Stage::*;
        match self {
            Idle | Connecting | AwaitingReady | Preparing { .. } | MountingRam { .. } | CheckingConnections { .. } => Phase::Prepare,
            ShippingImage | AwaitingImage | ImageCancelCheck => Phase::Image,
            MakingRoundsDir | Shipping { .. } | AwaitingRound { .. } | Judging { .. } | AwaitingRoundsPrepared { .. } | Linking { .. } => {
                Phase::PreCopy
            }
            FreezeCancelCheck { .. } | Journaling { .. } | Checkpointing => Phase::Checkpoint,
            AwaitingRestore | RecordingCommit => Phase::Restore,
            RemovingSource { .. } | AwaitingCommit => Phase::Cleanup,
            Refusing(f) | RollingBack(f) | Resolving(f) | Describing(f) | RestoringHere(f) => f.phase,
            Over => Phase::Rollback,
        }
    }

    /// Whether a failure here rolls back (the container may be frozen).
    fn rolls_back(&self) -> bool {
        matches!(
            self,
            Stage::FreezeCancelCheck { .. } | Stage::Journaling { .. } | Stage::Checkpointing | Stage::AwaitingRestore | Stage::RecordingCommit
        )
    }

    /// Whether a failure here is answered with a bare refusal: the target
    /// holds nothing yet that the end of the stream does not drop.
    fn refuses_silently(&self) -> bool {
        matches!(self, Stage::Idle | Stage::Connecting | Stage::AwaitingReady | Stage::Preparing { .. })
    }
}

/// The source's whole state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceState {
    pub stage: Stage,
    pub made: Made,
    /// The target's name, for the words of its failures.
    pub target: String,
}

impl SourceState {
    pub fn new(target: &str) -> Self {
        SourceState { stage: Stage::Idle, made: Made::default(), target: target.to_string() }
    }
}

/// The commands that start a migration.
pub fn start(state: SourceState) -> (SourceState, Vec<Command>) {
    (SourceState { stage: Stage::Connecting, ..state }, vec![Command::Enter(Phase::Prepare, "connecting to the target"), Command::Connect])
}

/// The next state and commands for `event` in `state` of a migration
/// following `plan`.
pub fn step(plan: &Plan, state: SourceState, event: Event) -> (SourceState, Vec<Command>) {
    let SourceState { stage, mut made, target } = state;
    let mut out = Vec::new();
    let next = advance(plan, stage, event, &mut made, &target, &mut out);
    (SourceState { stage: next, made, target }, out)
}

fn advance(plan: &Plan, stage: Stage, event: Event, made: &mut Made, target: &str, out: &mut Vec<Command>) -> Stage {
    use Command as C;
    use Event as E;
    use Stage as S;
    if let E::Failed(f) = event {
        return fail(stage, f, made, out);
    }
    match (stage, event) {
        (S::Connecting, E::Done) => await_reply(out, Expect::Ready, Phase::Prepare, S::AwaitingReady),
        (S::AwaitingReady, E::Reply(TargetMsg::Ready { needs_image })) => {
            out.push(C::FinishPrepare);
            S::Preparing { needs_image }
        }
        (S::Preparing { needs_image }, E::Done) => {
            made.target_staged = true;
            out.push(C::Leave(Phase::Prepare));
            if plan.checkpoint_in_ram() {
                out.push(C::MountRam);
                S::MountingRam { needs_image }
            } else {
                after_ram(plan, needs_image, made, out)
            }
        }
        (S::MountingRam { needs_image }, E::RamMounted(ram)) => {
            made.ram = ram;
            after_ram(plan, needs_image, made, out)
        }
        (S::ShippingImage, E::Shipped(d)) => tell_and_await(out, SourceMsg::ImageSent(d), Expect::ImageLoaded, Phase::Image, S::AwaitingImage),
        (S::AwaitingImage, E::Reply(TargetMsg::ImageLoaded)) => {
            out.push(C::CheckCancel(Phase::Image));
            S::ImageCancelCheck
        }
        (S::ImageCancelCheck, E::Done) => {
            out.push(C::Leave(Phase::Image));
            start_rounds(plan, made, out)
        }
        (S::MakingRoundsDir, E::RoundsDir(dir)) => {
            made.rounds_dir = Some(dir.clone());
            out.push(C::DumpRound { n: 1, dir, kind: plan.round_kind(1) });
            S::Shipping { round: 1 }
        }
        (S::Shipping { round }, E::Shipped(digest)) => {
            tell_and_await(out, SourceMsg::RoundSent { round, digest }, Expect::RoundStored, Phase::PreCopy, S::AwaitingRound { round })
        }
        (S::AwaitingRound { round }, E::Reply(TargetMsg::RoundStored { round: r })) if r == round => match plan.rounds {
            Rounds::Base => {
                out.extend([C::NoteBase, C::Leave(Phase::PreCopy)]);
                check_connections(out, round)
            }
            _ => {
                out.push(C::JudgeRound { n: round });
                S::Judging { round }
            }
        },
        (S::Judging { round }, E::NextRound) => match &made.rounds_dir {
            Some(dir) => {
                let n = round + 1;
                out.push(C::DumpRound { n, dir: dir.clone(), kind: plan.round_kind(n) });
                S::Shipping { round: n }
            }
            None => bug(S::Judging { round }, "another round without a rounds folder", made, out),
        },
        (S::Judging { round }, E::RoundsEnough) => tell_and_await(
            out,
            SourceMsg::RoundsDone { rounds: round },
            Expect::RoundsPrepared,
            Phase::PreCopy,
            S::AwaitingRoundsPrepared { rounds: round },
        ),
        (S::AwaitingRoundsPrepared { rounds }, E::Reply(TargetMsg::RoundsPrepared { .. })) => {
            out.push(C::Leave(Phase::PreCopy));
            match &made.rounds_dir {
                Some(dir) => {
                    out.push(C::LinkPreCheckpoint { dir: dir.clone(), rounds });
                    S::Linking { rounds }
                }
                None => bug(S::Linking { rounds }, "rounds without a rounds folder", made, out),
            }
        }
        (S::Linking { rounds }, E::PreLinked(link)) => {
            made.pre_link = Some(link);
            check_connections(out, rounds)
        }
        (S::CheckingConnections { rounds }, E::Done) => {
            out.push(C::CheckCancel(Phase::Checkpoint));
            S::FreezeCancelCheck { rounds }
        }
        (S::FreezeCancelCheck { rounds }, E::Done) => {
            // Should the agent die from here on, its successor finds the
            // container checkpointed and asks the target what became of it.
            let leftovers = made.pre_link.iter().chain(made.rounds_dir.iter()).cloned().collect();
            out.extend([C::Enter(Phase::Checkpoint, plan.freeze_note()), C::Journal { leftovers, ram: made.ram.clone() }]);
            S::Journaling { rounds }
        }
        (S::Journaling { rounds }, E::Journaled(path)) => {
            made.journal = Some(path);
            made.frozen = true;
            out.push(C::Dump { kind: plan.final_kind(rounds), with_previous: plan.with_previous(), in_ram: made.ram.is_some() });
            S::Checkpointing
        }
        (S::Checkpointing, E::Shipped(d)) => {
            made.restore_told = true;
            out.extend([
                C::Tell { msg: SourceMsg::CheckpointSent(d), phase: Phase::Checkpoint },
                C::Leave(Phase::Checkpoint),
                C::Enter(Phase::Restore, "the target verifies and restores"),
            ]);
            await_reply(out, Expect::Restored, Phase::Restore, S::AwaitingRestore)
        }
        (S::AwaitingRestore, E::Reply(TargetMsg::Restored(r))) => {
            // The container runs there, tentatively until it hears the
            // commit, which is recorded first: should this agent die, its
            // successor knows the decision.
            out.extend([C::Switched(r), C::RecordCommit]);
            S::RecordingCommit
        }
        (S::RecordingCommit, E::Done) => {
            // Nothing from here on rolls back.
            out.push(C::Enter(Phase::Cleanup, "committing and removing the source copy"));
            tell_and_await(out, SourceMsg::Commit, Expect::Committed, Phase::Cleanup, S::AwaitingCommit)
        }
        (S::AwaitingCommit, E::Reply(reply)) => committed(Some(reply), made, out),
        (S::RemovingSource { acked }, E::Done) => advance_removed(acked, made, out),
        // The target finished a restore before it read the Abort: it
        // answers that next.
        (S::RollingBack(f), E::Reply(TargetMsg::Restored(_))) => await_reply(out, Expect::Aborted, f.phase, S::RollingBack(f)),
        (S::RollingBack(f), E::Reply(reply)) => aborted(f, reply == TargetMsg::Aborted, made, out),
        (S::Resolving(f), E::Resolved(Resolution::Absent)) => {
            out.push(C::NameLostConnection(f.clone()));
            S::Describing(f)
        }
        (S::Resolving(_), E::Resolved(Resolution::Kept)) => {
            // The target had the container and keeps it: the switchover
            // happened after all. The report lacks its figures.
            out.push(C::WarnUncommitted(None));
            switched_without_report(made, out)
        }
        (S::Resolving(f), E::Resolved(other)) => {
            let error = format!("{target} answered {other:?} to the abort");
            undecided(f, error, made, out)
        }
        (S::Refusing(f), E::Reply(_)) => finish(End::Refused(f), made, out),
        (S::Describing(_), E::Described(f)) => {
            out.push(C::RestoreHere);
            S::RestoringHere(f)
        }
        (S::RestoringHere(f), E::RestoredHere) => {
            out.extend([C::Reclaim, C::Leave(Phase::Rollback)]);
            finish(End::RolledBack(f), made, out)
        }
        (S::RestoringHere(failure), E::RestoreFailed(error)) => {
            out.push(C::Leave(Phase::Rollback));
            let ram = made.ram.clone();
            finish(End::Failed { failure, error, ram }, made, out)
        }
        // A reply the stage waits for, but not the expected one.
        (stage, E::Reply(got)) if expects(&stage).is_some() => {
            let expected = expects(&stage).unwrap_or(Expect::Ready);
            match got {
                TargetMsg::Failed(f) => {
                    let failure = target_failed(&stage, f, target);
                    fail(stage, failure, made, out)
                }
                got => {
                    let phase = stage.phase();
                    out.push(C::Unexpected { phase, expected, got });
                    stage
                }
            }
        }
        (S::Over, _) => S::Over,
        (stage, event) => {
            let what = format!("{event:?} in stage {stage:?}");
            bug(stage, &what, made, out)
        }
    }
}

/// The reply `stage` waits for.
fn expects(stage: &Stage) -> Option<Expect> {
    match stage {
        Stage::AwaitingReady => Some(Expect::Ready),
        Stage::AwaitingImage => Some(Expect::ImageLoaded),
        Stage::AwaitingRound { .. } => Some(Expect::RoundStored),
        Stage::AwaitingRoundsPrepared { .. } => Some(Expect::RoundsPrepared),
        Stage::AwaitingRestore => Some(Expect::Restored),
        _ => None,
    }
}

/// The target's own failure, in the words of the step that met it.
fn target_failed(stage: &Stage, f: Failure, target: &str) -> Failure {
    match stage {
        Stage::AwaitingReady => Failure { phase: Phase::Prepare, message: format!("the target refused: {}", f.message) },
        Stage::AwaitingImage => Failure { phase: Phase::Image, message: format!("on the target: {}", f.message) },
        // The target knows best where its restore failed (Verify, Restore).
        Stage::AwaitingRestore => Failure { phase: f.phase, message: format!("on {target}: {}", f.message) },
        _ => Failure { phase: stage.phase(), message: format!("on {target}: {}", f.message) },
    }
}

fn await_reply(out: &mut Vec<Command>, expect: Expect, phase: Phase, next: Stage) -> Stage {
    out.push(Command::Await { expect, phase });
    next
}

fn tell_and_await(out: &mut Vec<Command>, msg: SourceMsg, expect: Expect, phase: Phase, next: Stage) -> Stage {
    out.push(Command::Tell { msg, phase });
    await_reply(out, expect, phase, next)
}

fn after_ram(plan: &Plan, needs_image: bool, made: &Made, out: &mut Vec<Command>) -> Stage {
    if needs_image {
        out.extend([Command::Enter(Phase::Image, "the target lacks the image; shipping it"), Command::ShipImage]);
        Stage::ShippingImage
    } else {
        start_rounds(plan, made, out)
    }
}

fn start_rounds(plan: &Plan, made: &Made, out: &mut Vec<Command>) -> Stage {
    match plan.rounds {
        Rounds::None => check_connections(out, 0),
        Rounds::SoftDirty => {
            out.extend([Command::Enter(Phase::PreCopy, "copying memory while the container runs"), Command::MakeRoundsDir]);
            Stage::MakingRoundsDir
        }
        Rounds::Base => {
            out.extend([
                Command::Enter(Phase::PreCopy, "checkpointing while the container runs (the base); it pauses only while CRIU dumps"),
                Command::ShipBase { kind: plan.round_kind(1), ram: made.ram.clone() },
            ]);
            Stage::Shipping { round: 1 }
        }
    }
}

fn check_connections(out: &mut Vec<Command>, rounds: u32) -> Stage {
    out.push(Command::CheckConnections);
    Stage::CheckingConnections { rounds }
}

/// An event the stage has no answer for: the agent's mistake. Handled as
/// a failure of the stage, so that it still ends safely.
fn bug(stage: Stage, what: &str, made: &mut Made, out: &mut Vec<Command>) -> Stage {
    let failure = Failure { phase: stage.phase(), message: format!("tern bug: the source machine got {what}") };
    fail(stage, failure, made, out)
}

/// A failure in `stage`: refuse before the freeze, roll back after it,
/// finish on the target after the switchover.
fn fail(stage: Stage, f: Failure, made: &mut Made, out: &mut Vec<Command>) -> Stage {
    match stage {
        // After the switchover: only the acknowledgement is missing.
        Stage::AwaitingCommit => committed(None, made, out),
        // Removing it only warns; should it report a failure, finish anyway.
        Stage::RemovingSource { acked } => advance_removed(acked, made, out),
        // Telling the target failed: it did not confirm.
        Stage::Refusing(first) => finish(End::Refused(first), made, out),
        Stage::RollingBack(first) => aborted(first, false, made, out),
        // The target could not be reached: nothing is decided.
        Stage::Resolving(first) => undecided(first, f.message, made, out),
        // The failure stays as it was worded.
        Stage::Describing(first) => {
            out.push(Command::RestoreHere);
            Stage::RestoringHere(first)
        }
        Stage::RestoringHere(first) => {
            out.push(Command::Leave(Phase::Rollback));
            let ram = made.ram.clone();
            finish(End::Failed { failure: first, error: f.message, ram }, made, out)
        }
        Stage::Over => Stage::Over,
        s if s.refuses_silently() => finish(End::Refused(f), made, out),
        s if s.rolls_back() => {
            out.push(Command::Enter(Phase::Rollback, "bringing the container back on the source"));
            abort_target(f, made, out, Stage::RollingBack)
        }
        _ => abort_target(f, made, out, Stage::Refusing),
    }
}

/// Tells the target to drop what it staged, when it stages something.
fn abort_target(f: Failure, made: &mut Made, out: &mut Vec<Command>, next: fn(Failure) -> Stage) -> Stage {
    if !made.target_staged {
        return match next(f) {
            Stage::RollingBack(f) => aborted(f, true, made, out),
            Stage::Refusing(f) => finish(End::Refused(f), made, out),
            other => other,
        };
    }
    let phase = f.phase;
    out.push(Command::Tell { msg: SourceMsg::Abort { reason: f.message.clone() }, phase });
    out.push(Command::Await { expect: Expect::Aborted, phase });
    next(f)
}

/// The target answered the abort (`acked`) or not. Confirmed, or before
/// the target could restore: bring the container back here. Otherwise the
/// target may run a copy: settle with it first.
fn aborted(f: Failure, acked: bool, made: &Made, out: &mut Vec<Command>) -> Stage {
    if !acked && made.restore_told {
        out.push(Command::Resolve);
        return Stage::Resolving(f);
    }
    out.push(Command::NameLostConnection(f.clone()));
    Stage::Describing(f)
}

/// The commit is recorded; the target confirmed it or not. Either way the
/// container is the target's: the source copy goes.
fn committed(reply: Option<TargetMsg>, made: &mut Made, out: &mut Vec<Command>) -> Stage {
    let acked = reply == Some(TargetMsg::Committed);
    if !acked {
        out.push(Command::WarnUncommitted(reply));
    }
    remove_source(acked, made, out)
}

fn remove_source(acked: bool, made: &mut Made, out: &mut Vec<Command>) -> Stage {
    // A mount inside the container's folder would make Podman fail.
    if let Some(dir) = made.ram.take() {
        out.push(Command::ReleaseRam(dir));
    }
    out.push(Command::RemoveSourceCopy);
    Stage::RemovingSource { acked }
}

/// The source copy is gone (or its removal only warned). Unconfirmed, the
/// target may still hold its copy as tentative: recovery tells it the
/// verdict the journal holds.
fn advance_removed(acked: bool, made: &mut Made, out: &mut Vec<Command>) -> Stage {
    out.push(Command::Leave(Phase::Cleanup));
    if !acked {
        out.extend(made.journal.take().map(Command::RecoverLater));
    }
    finish(End::Completed, made, out)
}

/// The target kept the container though its `Restored` never arrived here.
fn switched_without_report(made: &mut Made, out: &mut Vec<Command>) -> Stage {
    out.push(Command::Enter(Phase::Cleanup, "the target kept the container; removing the source copy"));
    // Settled with the target: nothing for recovery to tell it.
    remove_source(true, made, out)
}

/// Nothing could be settled with the target: keep everything the
/// container needs here, and the journal entry for recovery.
fn undecided(failure: Failure, error: String, made: &mut Made, out: &mut Vec<Command>) -> Stage {
    out.extend(made.journal.take().map(Command::RecoverLater));
    finish(End::Undecided { failure, error }, made, out)
}

/// Undoes what is left to undo for `end`, then reports it.
fn finish(end: End, made: &mut Made, out: &mut Vec<Command>) -> Stage {
    // Undecided: the checkpoint may yet be restored here, by recovery.
    let failed = matches!(end, End::Failed { .. } | End::Undecided { .. });
    // A checkpoint kept after a failed rollback sits on top of the rounds:
    // keep them for the manual restore. Otherwise the container runs (here
    // or there) and neither the rounds nor the link to them are needed.
    if !(failed && made.pre_link.is_some()) {
        out.extend(made.pre_link.take().map(Command::RemovePreLink));
        out.extend(made.rounds_dir.take().map(Command::RemoveRounds));
    }
    // The images in RAM are needed no more, but after a failed rollback:
    // then they are the container's only state, kept for a manual restore.
    if !failed {
        out.extend(made.ram.take().map(Command::ReleaseRam));
    }
    out.push(Command::RemoveWorkDir);
    // Seen to the end (a failed rollback included: its report tells the
    // user how to restore), so nothing is left to recover.
    out.extend(made.journal.take().map(Command::ForgetJournal));
    out.push(Command::Finish(end));
    Stage::Over
}

#[cfg(test)]
mod tests;
