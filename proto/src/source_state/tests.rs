//! The source machine alone, per mode; then with the target's machine
//! ([`crate::state`]) through an in-memory queue that can lose or reorder
//! messages.

use super::*;
use crate::facts::ContainerInfo;
use crate::mode::Mode;
use crate::plan::PostCopyFirst;
use crate::state::{self, Action, TargetState};
use std::collections::VecDeque;

fn digest() -> Digest {
    Digest { bytes: 1, blake3: [7; 32] }
}

fn info() -> RestoreInfo {
    RestoreInfo {
        verify_ms: 1,
        restore_ms: 1,
        confirm_ms: 1,
        memory_fill_ms: None,
        steps: Vec::new(),
        images_in_ram: false,
        notes: Vec::new(),
        container: ContainerInfo {
            name: "web".into(),
            id: "id".into(),
            image: "img".into(),
            image_id: "img1".into(),
            state: "running".into(),
            ips: Vec::new(),
            memory_bytes: 0,
            files_bytes: 0,
            volumes: Vec::new(),
            pid: 1,
            networks: Vec::new(),
            ports: Vec::new(),
            connections: Vec::new(),
            process_uids: Vec::new(),
            systemd_unit: None,
            pod: None,
            dependencies: vec![],
        },
    }
}

fn failure(phase: Phase, message: &str) -> Failure {
    Failure { phase, message: message.into() }
}

/// Where each copy of the container is, as the simulated IO leaves it.
#[derive(Debug, Default)]
struct World {
    source_running: bool,
    source_exists: bool,
    target_running: bool,
    /// The target's copy waits for the verdict (it lost the source).
    target_tentative: bool,
    /// A `Resolve` cannot reach the target (the link stays cut).
    target_unreachable: bool,
    /// The journal entry left for recovery.
    recover_later: bool,
    /// The journal records the commit (`RecordCommit` was carried out).
    commit_recorded: bool,
}

/// A command whose IO fails (when the function says so), and its event.
type Fault = (fn(&Command) -> bool, Event);

/// Both machines, a queue each way, and fake IO.
struct Sim {
    plan: Plan,
    src: Option<SourceState>,
    tgt: Option<TargetState>,
    to_target: VecDeque<SourceMsg>,
    to_source: VecDeque<TargetMsg>,
    /// Messages put on the wire so far, both ways.
    wire: usize,
    /// The message (by its number on the wire) that is lost.
    lose: Option<usize>,
    /// The command whose IO fails, and how.
    fail_on: Option<Fault>,
    needs_image: bool,
    rounds_wanted: u32,
    told: Vec<SourceMsg>,
    commands: Vec<Command>,
    world: World,
    end: Option<End>,
}

impl Sim {
    fn new(mode: Mode) -> Sim {
        Sim {
            plan: Plan::for_mode(mode),
            src: Some(SourceState::new("b")),
            tgt: None,
            to_target: VecDeque::new(),
            to_source: VecDeque::new(),
            wire: 0,
            lose: None,
            fail_on: None,
            needs_image: true,
            rounds_wanted: 3,
            told: Vec::new(),
            commands: Vec::new(),
            world: World { source_running: true, source_exists: true, ..Default::default() },
            end: None,
        }
    }

    /// Whether the next message on the wire is lost.
    fn lost(&mut self) -> bool {
        self.wire += 1;
        self.lose == Some(self.wire)
    }

    fn send_to_target(&mut self, msg: SourceMsg) {
        self.told.push(msg.clone());
        if !self.lost() {
            self.to_target.push_back(msg);
        }
    }

    fn send_to_source(&mut self, msg: TargetMsg) {
        if !self.lost() {
            self.to_source.push_back(msg);
        }
    }

    /// The target answers everything that reached it, as target.rs does
    /// with each [`Action`].
    fn target_runs(&mut self) {
        while let Some(msg) = self.to_target.pop_front() {
            let Some(s) = self.tgt else { continue }; // it stopped reading
            let reply = match state::step(self.plan, s, &msg) {
                Err(e) => {
                    self.target_gone();
                    TargetMsg::Failed(failure(Phase::Prepare, &e.to_string()))
                }
                Ok((next, action)) => {
                    self.tgt = Some(next);
                    match action {
                        Action::LoadImage(_) => TargetMsg::ImageLoaded,
                        Action::StoreRound { round, .. } => TargetMsg::RoundStored { round },
                        Action::PrepareRounds { .. } => TargetMsg::RoundsPrepared { bytes: 0 },
                        Action::Restore { .. } => {
                            self.world.target_running = true;
                            TargetMsg::Restored(info())
                        }
                        Action::Commit => {
                            self.tgt = None;
                            self.world.target_tentative = false;
                            TargetMsg::Committed
                        }
                        Action::Abort(_) => {
                            self.world.target_running = false;
                            self.tgt = None;
                            TargetMsg::Aborted
                        }
                    }
                }
            };
            self.send_to_source(reply);
            self.check_copies();
        }
    }

    /// The source's stream ended or was refused: the target keeps a
    /// container it restored, tentatively, and drops anything else
    /// (target.rs, [`state::when_source_lost`]).
    fn target_gone(&mut self) {
        if let Some(s) = self.tgt.take() {
            match state::when_source_lost(s, self.world.target_running) {
                state::SourceLost::KeepTentative => self.world.target_tentative = true,
                state::SourceLost::Undo => self.world.target_running = false,
            }
        }
    }

    /// The target carries out a verdict on a connection of its own.
    fn resolve(&mut self, commit: bool) -> Option<Resolution> {
        if self.world.target_unreachable {
            return None;
        }
        // The old conversation is over by then: what was on its way arrived.
        self.target_runs();
        self.target_gone();
        let w = &mut self.world;
        Some(if !w.target_running {
            Resolution::Absent
        } else if w.target_tentative && !commit {
            w.target_running = false;
            w.target_tentative = false;
            Resolution::Absent
        } else {
            w.target_tentative = false;
            Resolution::Kept
        })
    }

    /// The agent's recovery, once the link is back: the journal's verdict.
    fn recover(&mut self) {
        if !std::mem::take(&mut self.world.recover_later) {
            return;
        }
        self.world.target_unreachable = false;
        match self.resolve(self.world.commit_recorded) {
            Some(Resolution::Absent) if self.world.source_exists => self.world.source_running = true,
            Some(Resolution::Kept) => self.world.source_exists = false,
            other => panic!("recovery got {other:?}: {:?}", self.world),
        }
        self.check_copies();
    }

    fn check_copies(&self) {
        let w = &self.world;
        let copies = (w.source_running as u8) + (w.target_running as u8);
        assert!(copies <= 1, "two copies run: {w:?} after {:?}", self.commands);
    }

    /// Does what `cmd` says; answers its event, if it has one.
    fn carry_out(&mut self, cmd: &Command) -> Option<Event> {
        if let Some((hit, event)) = &self.fail_on {
            if hit(cmd) {
                return Some(event.clone());
            }
        }
        let ok = |e| Some(e);
        match cmd {
            Command::Connect => {
                self.tgt = Some(TargetState::initial(self.needs_image));
                self.send_to_source(TargetMsg::Ready { needs_image: self.needs_image });
                ok(Event::Done)
            }
            Command::Await { phase, .. } => {
                self.target_runs();
                match self.to_source.pop_front() {
                    Some(m) => ok(Event::Reply(m)),
                    None => ok(Event::Failed(failure(*phase, "timed out"))),
                }
            }
            Command::Tell { msg, .. } => {
                self.send_to_target(msg.clone());
                None
            }
            Command::Unexpected { phase, .. } => ok(Event::Failed(failure(*phase, "unexpected"))),
            Command::FinishPrepare | Command::CheckCancel(_) | Command::CheckConnections => ok(Event::Done),
            Command::RemoveSourceCopy => {
                self.world.source_exists = false;
                ok(Event::Done)
            }
            Command::MountRam => ok(Event::RamMounted(Some("/c/checkpoint".into()))),
            Command::ShipImage | Command::DumpRound { .. } | Command::ShipBase { .. } => ok(Event::Shipped(digest())),
            Command::Dump { .. } => {
                self.world.source_running = false;
                ok(Event::Shipped(digest()))
            }
            Command::JudgeRound { n } => ok(if *n < self.rounds_wanted { Event::NextRound } else { Event::RoundsEnough }),
            Command::MakeRoundsDir => ok(Event::RoundsDir("/c/tern-precopy".into())),
            Command::LinkPreCheckpoint { .. } => ok(Event::PreLinked("/c/pre-checkpoint".into())),
            Command::Journal { .. } => ok(Event::Journaled("/j/7.json".into())),
            Command::NameLostConnection(f) => ok(Event::Described(f.clone())),
            Command::RestoreHere => {
                self.world.source_running = true;
                self.check_copies();
                ok(Event::RestoredHere)
            }
            Command::RecordCommit => {
                self.world.commit_recorded = true;
                ok(Event::Done)
            }
            Command::Resolve => ok(match self.resolve(false) {
                Some(r) => Event::Resolved(r),
                None => Event::Failed(failure(Phase::Restore, "unreachable")),
            }),
            Command::RecoverLater(_) => {
                self.world.recover_later = true;
                None
            }
            Command::Finish(end) => {
                self.end = Some(end.clone());
                None
            }
            _ => None,
        }
    }

    /// Runs the migration to its end; returns how it ended.
    fn run(&mut self) -> End {
        let (s, cmds) = start(self.src.take().unwrap());
        self.src = Some(s);
        let mut queue: VecDeque<Command> = cmds.into();
        while let Some(cmd) = queue.pop_front() {
            self.commands.push(cmd.clone());
            if let Some(event) = self.carry_out(&cmd) {
                assert!(!matches!(cmd, Command::Finish(_)), "Finish is last");
                let (s, cmds) = step(&self.plan, self.src.take().unwrap(), event);
                self.src = Some(s);
                queue = cmds.into();
            }
            self.check_copies();
            assert!(self.commands.len() < 1000, "the machine loops: {:?}", &self.commands[..50]);
        }
        // The source's stream ends: what is still on its way arrives first.
        self.target_runs();
        if self.tgt.is_some() {
            self.target_gone();
        }
        self.check_copies();
        let end = self.end.clone().expect("every migration ends with Finish");
        let left = &self.src.as_ref().unwrap().made;
        assert_eq!(self.src.as_ref().unwrap().stage, Stage::Over);
        assert!(left.journal.is_none(), "the journal is forgotten or left to recovery: {left:?}");
        if !matches!(end, End::Undecided { .. }) {
            assert!(left.ram.is_none() && left.rounds_dir.is_none() && left.pre_link.is_none(), "{left:?}");
        }
        end
    }

    fn has(&self, want: impl Fn(&Command) -> bool) -> bool {
        self.commands.iter().any(want)
    }
}

const MODES: [Mode; 3] = [Mode::StopAndCopy, Mode::PreCopy, Mode::HashPreCopy];

fn told_kinds(sim: &Sim) -> Vec<String> {
    sim.told.iter().map(|m| format!("{m:?}").split([' ', '(', '{']).next().unwrap().to_string()).collect()
}

#[test]
fn plans_answer_every_mode_question_in_one_place() {
    let s = Plan::for_mode(Mode::StopAndCopy);
    assert_eq!((s.rounds, s.final_kind(0), s.with_previous(), s.checkpoint_in_ram()), (Rounds::None, DataKind::Checkpoint, false, true));
    let p = Plan::for_mode(Mode::PreCopy);
    assert_eq!(
        (p.rounds, p.round_kind(3), p.final_kind(3), p.with_previous(), p.checkpoint_in_ram()),
        (Rounds::SoftDirty, DataKind::Round(3), DataKind::Checkpoint, true, false)
    );
    let h = Plan::for_mode(Mode::HashPreCopy);
    assert_eq!(
        (h.rounds, h.round_kind(1), h.final_kind(1), h.with_previous()),
        (Rounds::Base, DataKind::Base, DataKind::CheckpointDelta { base: 1 }, false)
    );
    assert_eq!(Plan::for_mode(Mode::Invalid).rounds, Rounds::None);
    assert_eq!(Plan::for_mode(Mode::PostCopy).rounds, Rounds::None);
    let pp = Plan::new(Mode::PostCopy, PostCopyFirst::SoftDirtyRounds);
    assert_eq!((pp.rounds, pp.with_previous(), pp.checkpoint_in_ram()), (Rounds::SoftDirty, true, false));
    // On a base, post-copy's archive holds no pages: no delta against it.
    let pb = Plan::new(Mode::PostCopy, PostCopyFirst::HashBase);
    assert_eq!(
        (pb.rounds, pb.round_kind(1), pb.final_kind(1), pb.with_previous(), pb.checkpoint_in_ram()),
        (Rounds::Base, DataKind::Base, DataKind::Checkpoint, false, true)
    );
    assert!(pb.freeze_note().contains("the base lacks"));
    for first in [PostCopyFirst::SoftDirtyRounds, PostCopyFirst::HashBase] {
        assert_eq!(Plan::new(Mode::HashPreCopy, first), Plan::for_mode(Mode::HashPreCopy), "only post-copy takes it");
        assert_eq!(Plan::new(Mode::StopAndCopy, first), Plan::for_mode(Mode::StopAndCopy), "only post-copy takes it");
    }
    for m in MODES {
        assert_eq!(Plan::for_mode(m).rounds != Rounds::None, m.has_rounds());
    }
}

#[test]
fn stop_and_copy_in_order() {
    let mut sim = Sim::new(Mode::StopAndCopy);
    assert_eq!(sim.run(), End::Completed);
    assert_eq!(told_kinds(&sim), ["ImageSent", "CheckpointSent", "Commit"]);
    assert!(!sim.world.source_exists && sim.world.target_running);
    // The RAM folder is released before the source copy is removed, the
    // journal forgotten at the very end.
    let at = |want: fn(&Command) -> bool| sim.commands.iter().position(want).unwrap();
    assert!(at(|c| matches!(c, Command::ReleaseRam(_))) < at(|c| *c == Command::RemoveSourceCopy));
    assert!(at(|c| matches!(c, Command::Journal { .. })) < at(|c| matches!(c, Command::Dump { .. })));
    assert!(matches!(sim.commands[sim.commands.len() - 2], Command::ForgetJournal(_)));
    assert!(sim.has(|c| *c == Command::Dump { kind: DataKind::Checkpoint, with_previous: false, in_ram: true }));
}

#[test]
fn pre_copy_rounds_then_a_final_dump_on_top_of_them() {
    let mut sim = Sim::new(Mode::PreCopy);
    sim.needs_image = false;
    assert_eq!(sim.run(), End::Completed);
    assert_eq!(told_kinds(&sim), ["RoundSent", "RoundSent", "RoundSent", "RoundsDone", "CheckpointSent", "Commit"]);
    assert!(!sim.has(|c| *c == Command::MountRam), "soft-dirty rounds keep the checkpoint on disk");
    assert!(sim.has(|c| *c == Command::Dump { kind: DataKind::Checkpoint, with_previous: true, in_ram: false }));
    let journal = sim.commands.iter().find_map(|c| match c {
        Command::Journal { leftovers, .. } => Some(leftovers.clone()),
        _ => None,
    });
    assert_eq!(journal.unwrap(), [PathBuf::from("/c/pre-checkpoint"), PathBuf::from("/c/tern-precopy")]);
    assert!(sim.has(|c| matches!(c, Command::RemovePreLink(_))) && sim.has(|c| matches!(c, Command::RemoveRounds(_))));
}

#[test]
fn post_copy_after_soft_dirty_rounds_dumps_lazily_on_top_of_them() {
    let mut sim = Sim::new(Mode::PostCopy);
    sim.plan = Plan::new(Mode::PostCopy, PostCopyFirst::SoftDirtyRounds);
    sim.needs_image = false;
    assert_eq!(sim.run(), End::Completed);
    assert_eq!(told_kinds(&sim), ["RoundSent", "RoundSent", "RoundSent", "RoundsDone", "CheckpointSent", "Commit"]);
    assert!(sim.has(|c| *c == Command::Dump { kind: DataKind::Checkpoint, with_previous: true, in_ram: false }));
    assert!(sim.plan.freeze_note().contains("only the pages written since the last round"));
}

#[test]
fn post_copy_on_a_base_ships_it_then_its_lazy_archive_as_it_is() {
    let mut sim = Sim::new(Mode::PostCopy);
    sim.plan = Plan::new(Mode::PostCopy, PostCopyFirst::HashBase);
    assert_eq!(sim.run(), End::Completed);
    assert_eq!(told_kinds(&sim), ["ImageSent", "RoundSent", "CheckpointSent", "Commit"]);
    assert!(sim.has(|c| matches!(c, Command::ShipBase { kind: DataKind::Base, ram: Some(_) })));
    assert!(sim.has(|c| *c == Command::Dump { kind: DataKind::Checkpoint, with_previous: false, in_ram: true }));
}

#[test]
fn hash_pre_copy_sends_one_base_then_a_delta() {
    let mut sim = Sim::new(Mode::HashPreCopy);
    assert_eq!(sim.run(), End::Completed);
    assert_eq!(told_kinds(&sim), ["ImageSent", "RoundSent", "CheckpointSent", "Commit"]);
    assert!(!sim.has(|c| matches!(c, Command::JudgeRound { .. })));
    assert!(sim.has(|c| matches!(c, Command::ShipBase { kind: DataKind::Base, ram: Some(_) })));
    assert!(sim.has(|c| *c == Command::Dump { kind: DataKind::CheckpointDelta { base: 1 }, with_previous: false, in_ram: true }));
}

#[test]
fn a_failure_before_the_target_stages_anything_is_a_bare_refusal() {
    let mut sim = Sim::new(Mode::StopAndCopy);
    sim.fail_on = Some((|c| *c == Command::FinishPrepare, Event::Failed(failure(Phase::Prepare, "cancelled by the user"))));
    assert_eq!(sim.run(), End::Refused(failure(Phase::Prepare, "cancelled by the user")));
    assert!(sim.told.is_empty(), "no Abort: the end of the stream drops the target's staging");
    assert!(sim.world.source_running && !sim.world.target_running);
}

#[test]
fn a_failure_before_the_freeze_aborts_the_target_and_refuses() {
    for (mode, hit) in [
        (Mode::StopAndCopy, (|c: &Command| *c == Command::ShipImage) as fn(&Command) -> bool),
        (Mode::PreCopy, |c| matches!(c, Command::DumpRound { n: 2, .. })),
        (Mode::PreCopy, |c| matches!(c, Command::LinkPreCheckpoint { .. })),
        (Mode::HashPreCopy, |c| matches!(c, Command::ShipBase { .. })),
        (Mode::HashPreCopy, |c| *c == Command::CheckConnections),
    ] {
        let mut sim = Sim::new(mode);
        sim.fail_on = Some((hit, Event::Failed(failure(Phase::PreCopy, "x"))));
        assert_eq!(sim.run(), End::Refused(failure(Phase::PreCopy, "x")), "{mode:?}");
        assert_eq!(sim.told.last(), Some(&SourceMsg::Abort { reason: "x".into() }));
        assert!(!sim.has(|c| matches!(c, Command::Dump { .. } | Command::Journal { .. } | Command::RestoreHere)), "never frozen");
        assert!(!sim.has(|c| matches!(c, Command::Enter(Phase::Rollback, _))));
        assert!(sim.world.source_running && !sim.world.target_running);
    }
}

#[test]
fn a_failure_after_the_freeze_rolls_back() {
    // A cancel right before the freeze already rolls back
    // (`Stage::FreezeCancelCheck`).
    for hit in [
        (|c: &Command| *c == Command::CheckCancel(Phase::Checkpoint)) as fn(&Command) -> bool,
        |c| matches!(c, Command::Journal { .. }),
        |c| matches!(c, Command::Dump { .. }),
    ] {
        let mut sim = Sim::new(Mode::PreCopy);
        sim.fail_on = Some((hit, Event::Failed(failure(Phase::Checkpoint, "podman checkpoint: no"))));
        assert_eq!(sim.run(), End::RolledBack(failure(Phase::Checkpoint, "podman checkpoint: no")));
        assert!(sim.has(|c| matches!(c, Command::Enter(Phase::Rollback, _))) && sim.has(|c| *c == Command::RestoreHere));
        assert!(!sim.has(|c| *c == Command::Resolve), "the target confirmed the abort");
        assert!(sim.world.source_running && !sim.world.target_running && sim.world.source_exists);
    }
}

#[test]
fn a_failed_restore_there_rolls_back_here_in_the_targets_words() {
    let mut sim = Sim::new(Mode::StopAndCopy);
    sim.fail_on =
        Some((|c| matches!(c, Command::Await { expect: Expect::Restored, .. }), Event::Reply(TargetMsg::Failed(failure(Phase::Verify, "digest")))));
    assert_eq!(sim.run(), End::RolledBack(failure(Phase::Verify, "on b: digest")));
}

#[test]
fn a_failed_local_restore_keeps_the_checkpoint_and_the_rounds_under_it() {
    let plan = Plan::for_mode(Mode::PreCopy);
    let rolling = |made| SourceState { stage: Stage::RestoringHere(failure(Phase::Checkpoint, "x")), made, target: "b".into() };
    let made = Made {
        target_staged: true,
        frozen: true,
        pre_link: Some("/c/pre-checkpoint".into()),
        rounds_dir: Some("/c/tern-precopy".into()),
        journal: Some("/j/7.json".into()),
        ram: None,
        restore_told: true,
    };
    let (s, cmds) = step(&plan, rolling(made), Event::RestoreFailed("criu said no".into()));
    assert_eq!(
        cmds,
        [
            Command::Leave(Phase::Rollback),
            Command::RemoveWorkDir,
            Command::ForgetJournal("/j/7.json".into()),
            Command::Finish(End::Failed { failure: failure(Phase::Checkpoint, "x"), error: "criu said no".into(), ram: None }),
        ]
    );
    assert!(s.made.pre_link.is_some() && s.made.rounds_dir.is_some(), "kept for the manual restore");
    // Without a link the rounds go: nothing needs them. The checkpoint in
    // RAM stays: it is the container's only state.
    let made = Made { rounds_dir: Some("/c/tern-precopy".into()), ram: Some("/ram".into()), ..Made::default() };
    let (s, cmds) = step(&plan, rolling(made), Event::RestoreFailed("no".into()));
    assert!(cmds.contains(&Command::RemoveRounds("/c/tern-precopy".into())));
    assert!(!cmds.iter().any(|c| matches!(c, Command::ReleaseRam(_))));
    assert!(matches!(cmds.last(), Some(Command::Finish(End::Failed { ram: Some(_), .. }))));
    assert_eq!(s.made.ram, Some("/ram".into()));
}

#[test]
fn nothing_after_the_switchover_rolls_back() {
    let mut sim = Sim::new(Mode::StopAndCopy);
    sim.fail_on = Some((|c| matches!(c, Command::Await { expect: Expect::Committed, .. }), Event::Failed(failure(Phase::Cleanup, "gone"))));
    assert_eq!(sim.run(), End::Completed);
    assert!(sim.has(|c| *c == Command::WarnUncommitted(None)));
    assert!(!sim.has(|c| *c == Command::RestoreHere));
    // The unconfirmed commit is left to recovery, which tells the target.
    assert!(sim.world.recover_later && !sim.has(|c| matches!(c, Command::ForgetJournal(_))));
    sim.recover();
    assert!(sim.world.target_running && !sim.world.target_tentative && !sim.world.source_exists);
    // Even an event the machine has no answer for does not bring it back.
    let plan = Plan::for_mode(Mode::StopAndCopy);
    let s = SourceState { stage: Stage::RemovingSource { acked: true }, ..SourceState::new("b") };
    let (s, cmds) = step(&plan, s, Event::Failed(failure(Phase::Cleanup, "?")));
    assert_eq!(s.stage, Stage::Over);
    assert!(matches!(cmds.last(), Some(Command::Finish(End::Completed))));
}

#[test]
fn the_commit_is_recorded_before_it_is_told_and_before_the_source_copy_goes() {
    let mut sim = Sim::new(Mode::StopAndCopy);
    assert_eq!(sim.run(), End::Completed);
    let at = |want: fn(&Command) -> bool| sim.commands.iter().position(want).unwrap();
    let record = at(|c| *c == Command::RecordCommit);
    assert!(at(|c| matches!(c, Command::Switched(_))) < record);
    assert!(record < at(|c| matches!(c, Command::Tell { msg: SourceMsg::Commit, .. })));
    assert!(record < at(|c| *c == Command::RemoveSourceCopy));
    // Should recording fail (a full disk), the migration rolls back: the
    // target is told to drop its copy, which it has not been told to keep.
    let mut sim = Sim::new(Mode::StopAndCopy);
    sim.fail_on = Some((|c| *c == Command::RecordCommit, Event::Failed(failure(Phase::Restore, "No space left on device"))));
    assert_eq!(sim.run(), End::RolledBack(failure(Phase::Restore, "No space left on device")));
    assert!(sim.world.source_running && !sim.world.target_running);
    assert!(!sim.told.contains(&SourceMsg::Commit));
}

#[test]
fn an_unexpected_reply_is_worded_then_failed() {
    let plan = Plan::for_mode(Mode::PreCopy);
    let s = SourceState { stage: Stage::AwaitingRound { round: 2 }, ..SourceState::new("b") };
    let got = TargetMsg::RoundStored { round: 1 };
    let (s, cmds) = step(&plan, s, Event::Reply(got.clone()));
    assert_eq!(cmds, [Command::Unexpected { phase: Phase::PreCopy, expected: Expect::RoundStored, got }]);
    assert_eq!(s.stage, Stage::AwaitingRound { round: 2 });
}

#[test]
fn an_event_out_of_place_fails_safely() {
    let plan = Plan::for_mode(Mode::StopAndCopy);
    let s = SourceState { stage: Stage::AwaitingRestore, ..SourceState::new("b") };
    let (s, cmds) = step(&plan, s, Event::RoundsEnough);
    assert!(matches!(&s.stage, Stage::Describing(f) if f.message.contains("tern bug")), "{s:?}");
    assert!(cmds.iter().any(|c| matches!(c, Command::Enter(Phase::Rollback, _))));
    let s = SourceState { stage: Stage::Over, ..SourceState::new("b") };
    assert_eq!(step(&plan, s, Event::Done).1, []);
}

/// Every message lost in turn, with the target reachable again at once or
/// not until recovery: never two copies, and the end says where it runs.
#[test]
fn a_lost_message_ends_in_a_timeout_never_in_two_copies() {
    for mode in MODES {
        let mut clean = Sim::new(mode);
        clean.run();
        let messages = clean.wire;
        for unreachable in [false, true] {
            for lose in 1..=messages {
                let mut sim = Sim::new(mode);
                sim.lose = Some(lose);
                sim.world.target_unreachable = unreachable;
                let end = sim.run();
                let w = &sim.world;
                let case = format!("{mode:?} lose {lose} unreachable {unreachable}: {end:?} {w:?}");
                match &end {
                    End::Completed => assert!(!w.source_exists && w.target_running, "{case}"),
                    End::Refused(_) | End::RolledBack(_) => assert!(w.source_running && w.source_exists && !w.target_running, "{case}"),
                    // Nothing runs here; the target's copy, if any, is the one.
                    End::Undecided { .. } => assert!(unreachable && !w.source_running && w.source_exists && w.recover_later, "{case}"),
                    End::Failed { .. } => panic!("{case}"),
                }
                // Recovery settles what is left; still one copy, exactly.
                sim.recover();
                let w = &sim.world;
                assert_eq!((w.source_running as u8) + (w.target_running as u8), 1, "{case} then {w:?}");
                assert!(!w.target_tentative, "{case}: the target still waits");
            }
        }
    }
}

#[test]
fn a_lost_restored_rolls_back_only_once_the_target_dropped_its_copy() {
    let mut sim = Sim::new(Mode::StopAndCopy);
    sim.needs_image = false;
    sim.lose = Some(3); // Ready, CheckpointSent, Restored
    assert_eq!(sim.run(), End::RolledBack(failure(Phase::Restore, "timed out")));
    assert_eq!(sim.told.last(), Some(&SourceMsg::Abort { reason: "timed out".into() }));
    assert!(!sim.has(|c| *c == Command::Resolve) && !sim.world.target_running);
}

#[test]
fn an_unconfirmed_abort_during_the_restore_is_settled_before_restoring_here() {
    // Restored and the Abort both lost: the target keeps its copy,
    // tentatively, when the source goes away. The source asks it, on a
    // connection of its own, to drop it before restoring its own.
    let mut sim = Sim::new(Mode::StopAndCopy);
    sim.needs_image = false;
    sim.lose = Some(3);
    sim.fail_on = Some((|c| matches!(c, Command::Tell { msg: SourceMsg::Abort { .. }, .. }), Event::Failed(failure(Phase::Restore, "lost"))));
    assert!(matches!(sim.run(), End::RolledBack(_)));
    assert!(sim.has(|c| *c == Command::Resolve));
    assert!(sim.world.source_running && !sim.world.target_running);
    // The target cannot be reached: nothing is decided, nothing restored
    // here; the copy there runs alone until recovery settles it.
    let mut sim = Sim::new(Mode::StopAndCopy);
    sim.needs_image = false;
    sim.lose = Some(3);
    sim.world.target_unreachable = true;
    sim.fail_on = Some((|c| matches!(c, Command::Tell { msg: SourceMsg::Abort { .. }, .. }), Event::Failed(failure(Phase::Restore, "lost"))));
    assert!(matches!(sim.run(), End::Undecided { .. }));
    assert!(!sim.has(|c| *c == Command::RestoreHere));
    assert!(!sim.world.source_running && sim.world.target_running && sim.world.target_tentative);
    sim.recover();
    assert!(sim.world.source_running && !sim.world.target_running);
}

#[test]
fn a_cancel_during_the_restore_waits_for_the_abort_past_a_late_restored() {
    let plan = Plan::for_mode(Mode::StopAndCopy);
    let made = Made { target_staged: true, restore_told: true, frozen: true, ..Made::default() };
    let s = SourceState { stage: Stage::AwaitingRestore, made, target: "b".into() };
    let (s, cmds) = step(&plan, s, Event::Failed(failure(Phase::Restore, "cancelled by the user")));
    assert!(cmds.contains(&Command::Await { expect: Expect::Aborted, phase: Phase::Restore }));
    // The restore was under way: its Restored comes before the Aborted.
    let (s, cmds) = step(&plan, s, Event::Reply(TargetMsg::Restored(info())));
    assert_eq!(cmds, [Command::Await { expect: Expect::Aborted, phase: Phase::Restore }]);
    let (s, cmds) = step(&plan, s, Event::Reply(TargetMsg::Aborted));
    assert!(!cmds.contains(&Command::Resolve));
    assert!(matches!(s.stage, Stage::Describing(_)));
}

#[test]
fn a_target_that_kept_the_container_completes_the_migration() {
    let plan = Plan::for_mode(Mode::StopAndCopy);
    let made = Made { journal: Some("/j/7.json".into()), ram: Some("/ram".into()), restore_told: true, frozen: true, ..Made::default() };
    let s = SourceState { stage: Stage::Resolving(failure(Phase::Restore, "lost")), made, target: "b".into() };
    let (s, cmds) = step(&plan, s, Event::Resolved(Resolution::Kept));
    assert_eq!(s.stage, Stage::RemovingSource { acked: true });
    assert!(cmds.contains(&Command::ReleaseRam("/ram".into())) && cmds.contains(&Command::RemoveSourceCopy));
    let (_, cmds) = step(&plan, s, Event::Done);
    assert!(cmds.contains(&Command::ForgetJournal("/j/7.json".into())));
    assert_eq!(cmds.last(), Some(&Command::Finish(End::Completed)));
}

#[test]
fn a_reordered_message_is_refused_by_the_target() {
    for mode in MODES {
        let mut clean = Sim::new(mode);
        clean.run();
        let told = clean.told;
        for i in 0..told.len() - 1 {
            let mut order = told.clone();
            order.swap(i, i + 1);
            let mut s = TargetState::initial(true);
            let refused = order.iter().any(|m| match state::step(Plan::for_mode(mode), s, m) {
                Ok((next, _)) => {
                    s = next;
                    false
                }
                Err(_) => true,
            });
            assert!(refused, "{mode:?}: {order:?} accepted");
        }
    }
}

#[test]
fn a_message_delayed_past_an_abort_is_refused() {
    let (s, _) = state::step(Plan::for_mode(Mode::PreCopy), TargetState::initial(false), &SourceMsg::Abort { reason: "timed out".into() }).unwrap();
    assert!(state::step(Plan::for_mode(Mode::PreCopy), s, &SourceMsg::RoundSent { round: 1, digest: digest() }).is_err());
}
