//! The source's side of a migration: the IO for each command of the
//! source's state machine ([`tern_proto::source_state`]).
//!
//! ```text
//!  prepare ─▶ image? ─▶ pre-copy rounds? ─▶ FREEZE: checkpoint ║ stream ─▶ target verifies+restores ─▶ cleanup
//!     │          │              │                       │                         │
//!     └──────────┴──────────────┴── failure: Refused (container never stopped)
//!                                                       └─────────────────────────┴── failure: Abort target,
//!                                                                                     restore locally: RolledBack
//! ```
//!
//! The machine decides the order, what a reply means and what to undo;
//! [`Run::carry_out`] does what each command says and reports the event.
//! The rounds' IO lives in [`precopy`]; what can go wrong, in [`error`].

mod error;
mod postcopy;
mod precopy;

use crate::context::Agent;
use crate::criu_stats;
use crate::engine::CheckpointOpts;
use crate::faults::{SourceExit, StallPoint};
use crate::pages::PageIndex;
use crate::rollback::{reclaim_address, restore_here};
use crate::transfer::{self, Pace, TransferError};
use error::{At, Fail, SendError, SourceError};
use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tern_proto::facts::ContainerInfo;
use tern_proto::frame::write_frame;
use tern_proto::source_state::{self, Command, End, Event, Expect, Plan, SourceState};
use tern_proto::*;
use tern_transport::rpc::{RpcError, Session};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// From this rate on (bytes/s, 2 Gbit/s) per compressing thread
/// ([`transfer::compress_threads`]) `--compress auto` sends raw: zstd's
/// fastest level runs at a few hundred MB/s per core, slower than such a
/// link.
const FAST_LINK: f64 = 250e6;

/// How long the target may take to verify and restore.
const RESTORE_TIMEOUT: Duration = Duration::from_secs(600);
/// How long to wait for the target to confirm an Abort or a Commit.
const ACK_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the source keeps trying to reach a target it lost after
/// telling it the checkpoint was complete, before it leaves the migration
/// undecided (the container checkpointed here) for recovery: a few idle
/// timeouts, time for a restarted agent to come back.
const SETTLE_WINDOW: Duration = Duration::from_secs(30);

/// The source's steps of the frozen interval. `export` runs from the
/// freeze until Podman returned; the archive streams to the target as
/// Podman writes it, so a slow link holds Podman back on its pipe. Of
/// `export`: CRIU's frozen time (`criu_us`), then the time the sender
/// waited for the link (`wire_wait`), the rest is Podman's own; `tail` is
/// the archive still crossing after Podman returned. Where CRIU, Podman
/// and the link worked at once, the split leans towards CRIU, then the link.
fn source_steps(export: Duration, criu_us: u64, wire_wait: Duration, tail: Duration) -> Vec<StepTime> {
    let ms = |d: Duration| d.as_millis() as u64;
    let export_ms = ms(export);
    let criu_ms = (criu_us / 1000).min(export_ms);
    let wire_ms = ms(wire_wait).min(export_ms - criu_ms);
    vec![
        StepTime { step: FrozenStep::CriuDump, ms: criu_ms },
        StepTime { step: FrozenStep::PodmanExport, ms: export_ms - criu_ms - wire_ms },
        StepTime { step: FrozenStep::Transfer, ms: wire_ms + ms(tail) },
    ]
}

/// The event for a step that reports only that it is done.
fn done(r: Result<(), Fail>) -> Option<Event> {
    Some(r.map_or_else(|f| Event::Failed(f.failure()), |()| Event::Done))
}

/// The event for a step that reports a value.
fn event<T>(r: Result<T, Fail>, ok: impl FnOnce(T) -> Event) -> Option<Event> {
    Some(r.map_or_else(|f| Event::Failed(f.failure()), ok))
}

/// The control stream of the `Receive` conversation.
type Streams = (quinn::SendStream, quinn::RecvStream);

/// One migration's bookkeeping, for the report. What must be undone is the
/// machine's ([`source_state::Made`]).
struct Run<'a> {
    agent: &'a Agent,
    req: MigrateRequest,
    events: mpsc::Sender<MigrateEvent>,
    cancel: CancellationToken,
    started: Instant,
    phase_started: Instant,
    phases: Vec<PhaseTime>,
    warnings: Vec<String>,
    image_bytes: u64,
    checkpoint_bytes: u64,
    /// When the final dump began, until the container ran again.
    frozen_at: Option<Instant>,
    /// From the freeze until the container ran again (here or there).
    downtime: Option<Duration>,
    session: Option<Session>,
    wire_base: u64,
    work_dir: PathBuf,
    rounds: Vec<RoundReport>,
    /// The soft-dirty rounds' accounts, for the policy.
    book: precopy::Book,
    /// Content-addressed pre-copy: the base's page hashes.
    base_index: Option<Arc<PageIndex>>,
    stop_reason: Option<String>,
    final_stats: Option<criu_stats::DumpStats>,
    /// The source's steps of the frozen interval ([`source_steps`]).
    frozen_steps: Vec<StepTime>,
    saved_bytes: u64,
    zstd_in: u64,
    zstd_out: u64,
    /// What the target said about its restore.
    restore_info: Option<RestoreInfo>,
    /// The final dump went to RAM.
    checkpoint_in_ram: bool,
    /// The container as the connect saw it.
    container: Option<ContainerInfo>,
    /// Its overlay upper layer, read with it (`Engine::inspect_here`).
    upper_dir: Option<PathBuf>,
    /// The journal entry, once written.
    journal_path: Option<PathBuf>,
    /// Its way through the host's bandwidth cap (`transfer::Pace`).
    pace: Pace<'a>,
    /// Post-copy: the fill under way (`postcopy.rs`).
    fill: Option<postcopy::Fill>,
}

/// Runs one migration to its end and sends the report as the last event.
pub async fn migrate(agent: &Agent, req: MigrateRequest, events: mpsc::Sender<MigrateEvent>, cancel: CancellationToken) {
    let work_dir = agent.cfg.state_dir.join(format!("outgoing-{}", req.id));
    let policy = req.options.policy.clone();
    let pace = agent.bandwidth.join(req.options.bandwidth);
    let mut run = Run {
        agent,
        req,
        events,
        cancel,
        started: Instant::now(),
        phase_started: Instant::now(),
        phases: Vec::new(),
        warnings: Vec::new(),
        image_bytes: 0,
        checkpoint_bytes: 0,
        frozen_at: None,
        downtime: None,
        session: None,
        wire_base: 0,
        work_dir,
        rounds: Vec::new(),
        book: precopy::Book::new(policy),
        base_index: None,
        stop_reason: None,
        final_stats: None,
        frozen_steps: Vec::new(),
        saved_bytes: 0,
        zstd_in: 0,
        zstd_out: 0,
        restore_info: None,
        checkpoint_in_ram: false,
        container: None,
        upper_dir: None,
        journal_path: None,
        pace,
        fill: None,
    };
    tracing::info!(
        id = run.req.id,
        container = %run.req.container,
        target = %run.req.target.name,
        bandwidth = %tern_proto::bandwidth::format_rate(run.pace.cap()),
        "migration starts"
    );
    let outcome = run.execute().await;
    let report = run.report(outcome);
    tracing::info!(id = report.id, outcome = ?report.outcome, downtime_ms = ?report.downtime_ms, "migration ends");
    crate::release_freed_memory();
    let _ = run.events.send(MigrateEvent::Done(report)).await;
}

impl Run<'_> {
    fn progress(&self, phase: Phase, bytes: u64, note: &str) {
        let _ = self.events.try_send(MigrateEvent::Progress(Progress {
            phase,
            bytes,
            elapsed_ms: self.started.elapsed().as_millis() as u64,
            note: note.to_string(),
        }));
    }

    /// Closes the current phase's timer and opens `next`'s.
    fn enter(&mut self, next: Phase, note: &str) {
        self.phase_started = Instant::now();
        self.progress(next, 0, note);
    }

    fn leave(&mut self, phase: Phase) {
        self.phases.push(PhaseTime { phase, ms: self.phase_started.elapsed().as_millis() as u64 });
    }

    fn check_cancel(&self, phase: Phase) -> Result<(), Fail> {
        if self.cancel.is_cancelled() {
            return Err(SourceError::Cancelled.at(phase));
        }
        Ok(())
    }

    /// The zstd level for this migration's streams, or none (see
    /// [`Compression::Auto`]).
    fn zstd_level(&self) -> Option<i32> {
        match self.req.options.compress {
            Compression::None | Compression::Invalid => None,
            Compression::Zstd => Some(3),
            Compression::Auto => match self.link_estimate() {
                Some(rate) if rate >= FAST_LINK * transfer::compress_threads() as f64 => None,
                _ => Some(1),
            },
        }
    }

    /// The rate to the target that estimates assume (bytes/s): the link
    /// as last measured, but no more than the host's bandwidth cap lets
    /// through now.
    fn link_estimate(&self) -> Option<f64> {
        tern_proto::bandwidth::capped_link_rate(self.agent.link_rate(&self.req.target.name), self.pace.rate_now())
    }

    /// Adds a stream's compression to the report and what it taught about
    /// the link to the target: `took` in all, `throttled` of it waiting for
    /// the bandwidth cap (then the cap set the pace, not the link).
    fn count_sent(&mut self, stats: &tern_proto::delta::DeltaStats, took: Duration, throttled: Duration) {
        self.zstd_in += stats.zstd_in;
        self.zstd_out += stats.zstd_out;
        let sent = stats.raw_bytes + stats.zstd_out;
        // Only long transfers say something about the link (and not its
        // slow start); a dump's own pace limits short ones anyway.
        if sent >= 32 << 20 {
            if let Some(rate) = tern_proto::bandwidth::link_sample(sent, took, throttled) {
                self.agent.note_link_rate(&self.req.target.name, rate);
            }
        }
    }

    fn session(&self) -> &Session {
        self.session.as_ref().expect("connected during prepare")
    }

    fn target(&self) -> &str {
        &self.req.target.name
    }

    fn info(&self) -> Result<ContainerInfo, Fail> {
        self.container.clone().ok_or_else(|| SourceError::NoContainer.at(Phase::Prepare))
    }

    /// Feeds the machine the events of its commands, carried out in order,
    /// until it finishes.
    async fn execute(&mut self) -> Outcome {
        let Some(_guard) = self.agent.claim(&self.req.container) else {
            return Outcome::Refused {
                failure: SourceError::AlreadyMigrating { container: self.req.container.clone() }.at(Phase::Prepare).failure(),
            };
        };
        let plan = Plan::new(self.req.options.mode, self.req.options.post_copy_first);
        let (mut state, first) = source_state::start(SourceState::new(self.target()));
        let mut queue = VecDeque::from(first);
        let mut streams = None;
        let mut end = None;
        while let Some(cmd) = queue.pop_front() {
            if let Command::Finish(e) = cmd {
                end = Some(e);
                continue;
            }
            if let Some(ev) = self.carry_out(cmd, &mut streams).await {
                let (next, cmds) = source_state::step(&plan, state, ev);
                state = next;
                queue = cmds.into();
            }
        }
        match end {
            Some(e) => self.outcome(e),
            None => Outcome::Failed {
                failure: SourceError::NoEnd.at(Phase::Rollback).failure(),
                rollback_error: "check the container with `podman ps -a`".into(),
            },
        }
    }

    /// Does what `cmd` says; returns the event it reports, if any.
    async fn carry_out(&mut self, cmd: Command, streams: &mut Option<Streams>) -> Option<Event> {
        match cmd {
            Command::Connect => {
                let r = self.connect().await;
                event(r, |s| {
                    *streams = Some(s);
                    Event::Done
                })
            }
            Command::Await { expect, phase } => Some(self.await_reply(streams, expect, phase).await),
            Command::Tell { msg, phase } => self.tell(streams, msg, phase).await,
            Command::Unexpected { phase, expected, got } => {
                Some(Event::Failed(SourceError::from(self.session().unexpected(expected.name(), &got)).at(phase).failure()))
            }
            Command::FinishPrepare => done(self.finish_prepare().await),
            Command::Enter(phase, note) => {
                self.enter(phase, note);
                None
            }
            Command::Leave(phase) => {
                self.leave(phase);
                None
            }
            Command::CheckCancel(phase) => done(self.check_cancel(phase)),
            Command::MountRam => Some(Event::RamMounted(self.checkpoint_to_ram().await)),
            Command::ShipImage => event(self.ship_image().await, Event::Shipped),
            Command::MakeRoundsDir => event(self.make_rounds_dir().await, Event::RoundsDir),
            Command::DumpRound { n, dir, kind } => event(self.dump_round(n, &dir, kind).await, Event::Shipped),
            Command::JudgeRound { n } => Some(self.judge_round(n)),
            Command::ShipBase { kind, ram } => event(self.ship_base(kind, ram.as_deref()).await, Event::Shipped),
            Command::NoteBase => self.note_base(),
            Command::LinkPreCheckpoint { dir, rounds } => event(self.link_pre_checkpoint(&dir.join(rounds.to_string())).await, Event::PreLinked),
            Command::CheckConnections => {
                self.agent.cfg.faults.exit_at_source(SourceExit::BeforeFreeze);
                if let Some(stall) = self.agent.cfg.faults.stall(StallPoint::BeforeFreeze, &self.agent.cfg.state_dir) {
                    stall.wait().await;
                }
                done(self.connections_survive().await)
            }
            Command::Journal { leftovers, ram } => event(self.journal(leftovers, ram), |path| {
                self.journal_path = Some(path.clone());
                Event::Journaled(path)
            }),
            Command::Dump { in_ram, with_previous, .. } if self.req.options.mode == Mode::PostCopy => {
                event(self.dump_lazy(in_ram, with_previous).await, Event::Shipped)
            }
            Command::Dump { kind, with_previous, in_ram } => event(self.dump(kind, with_previous, in_ram).await, Event::Shipped),
            Command::Switched(r) => self.switched(r),
            Command::RemoveSourceCopy => {
                if let Some(Err(e)) = self.fill_done().await {
                    self.warnings.push(format!("the target has every page, but {e}"));
                }
                self.remove_source_copy().await;
                Some(Event::Done)
            }
            Command::RecordCommit => {
                let r = self.record_commit();
                if let Some(stall) = self.agent.cfg.faults.stall(StallPoint::AfterRestored, &self.agent.cfg.state_dir).filter(|_| r.is_ok()) {
                    stall.wait().await;
                }
                done(r)
            }
            Command::WarnUncommitted(acked) => {
                let w = match acked {
                    None => {
                        format!("{} did not confirm the commit; the container runs there, and this agent tells it again until it does", self.target())
                    }
                    Some(m) => format!(
                        "{} answered {m:?} to the commit; the container runs there, and this agent tells it again until it confirms",
                        self.target()
                    ),
                };
                self.warnings.push(w);
                None
            }
            Command::Resolve => Some(self.resolve().await),
            Command::RecoverLater(path) => {
                tracing::warn!(id = self.req.id, journal = %path.display(), "left for recovery to settle with {}", self.target());
                self.agent.recovery.notify_one();
                None
            }
            Command::NameLostConnection(f) => Some(Event::Described(self.name_lost_connection(f))),
            Command::RestoreHere => Some(self.restore_held().await),
            Command::Reclaim => {
                let problems = reclaim_address(self.agent, &self.req.container, &self.req.target.name, self.req.id).await;
                self.warnings.extend(problems);
                None
            }
            Command::ReleaseRam(dir) => self.release_ram(&dir),
            Command::RemovePreLink(link) => {
                let _ = tokio::fs::remove_file(&link).await;
                None
            }
            Command::RemoveRounds(dir) => {
                let _ = tokio::fs::remove_dir_all(&dir).await;
                None
            }
            Command::RemoveWorkDir => {
                let _ = tokio::fs::remove_dir_all(&self.work_dir).await;
                None
            }
            Command::ForgetJournal(path) => {
                crate::recovery::forget(&path);
                None
            }
            Command::Finish(_) => None,
        }
    }

    /// The report's outcome for how the machine ended.
    fn outcome(&self, end: End) -> Outcome {
        match end {
            End::Completed => Outcome::Completed,
            End::Refused(failure) => Outcome::Refused { failure },
            End::RolledBack(failure) => Outcome::RolledBack { failure },
            End::Undecided { failure, error } => Outcome::Undecided {
                failure,
                detail: format!(
                    "{target} could not be reached to settle whether it restored {name} ({error}). So that it never runs twice, {name} stays checkpointed on {here} and is not restored there; any copy {target} restored runs alone. The two agents settle it by themselves once they reach each other ({here}'s agent keeps trying); `tern ps` then shows where {name} runs",
                    target = self.req.target.name,
                    name = self.req.container,
                    here = self.agent.cfg.name,
                ),
            },
            End::Failed { failure, error, ram } => Outcome::Failed {
                failure,
                rollback_error: format!(
                    "{error}; the checkpoint is kept{}: restore it with `podman container restore --keep {}` on {}",
                    match &ram {
                        Some(d) => format!(" in RAM (a tmpfs on {}, lost at reboot)", d.display()),
                        None => String::new(),
                    },
                    self.req.container,
                    self.agent.cfg.name
                ),
            },
        }
    }

    /// Reads the target's next message, in the time `expect` allows.
    async fn await_reply(&self, streams: &mut Option<Streams>, expect: Expect, phase: Phase) -> Event {
        let Some((_, recv)) = streams.as_mut() else {
            return Event::Failed(SourceError::NoStream.at(phase).failure());
        };
        let limit = match expect {
            Expect::Ready => rpc_timeout(),
            Expect::Committed | Expect::Aborted => ACK_TIMEOUT,
            _ => RESTORE_TIMEOUT,
        };
        let r = if expect == Expect::Restored {
            tokio::select! {
                r = self.read_target(recv, limit) => r.map_err(|source| SourceError::AwaitRestore { target: self.target().to_string(), source }),
                _ = self.cancel.cancelled() => Err(SourceError::Cancelled),
            }
        } else {
            self.read_target(recv, limit).await.map_err(SourceError::Rpc)
        };
        match r {
            Ok(msg) => Event::Reply(msg),
            Err(e) => Event::Failed(e.at(phase).failure()),
        }
    }

    /// Sends `msg` to the target; reports only a failure.
    async fn tell(&self, streams: &mut Option<Streams>, msg: SourceMsg, phase: Phase) -> Option<Event> {
        let Some((send, _)) = streams.as_mut() else {
            return Some(Event::Failed(SourceError::NoStream.at(phase).failure()));
        };
        let sent = write_frame(send, &msg).await;
        if sent.is_ok() && matches!(msg, SourceMsg::CheckpointSent(_)) {
            self.agent.cfg.faults.exit_at_source(SourceExit::AfterCheckpointSent);
        }
        let source = sent.err()?;
        let e = match msg {
            SourceMsg::CheckpointSent(_) => SourceError::TellComplete { target: self.target().to_string(), source },
            _ => SourceError::Tell(source),
        };
        Some(Event::Failed(e.at(phase).failure()))
    }

    /// Looks the container up, connects to the target and asks it to receive.
    async fn connect(&mut self) -> Result<Streams, Fail> {
        let p = Phase::Prepare;
        let here = self
            .agent
            .engine
            .inspect_here(&self.req.container)
            .await
            .at(p)?
            .ok_or_else(|| SourceError::NoSuchContainer { container: self.req.container.clone(), host: self.agent.cfg.name.clone() }.at(p))?;
        let info = here.info;
        self.upper_dir = here.upper_dir;
        if !info.is_running() {
            return Err(SourceError::NotRunning { container: info.name, state: info.state }.at(p));
        }
        let address = &self.req.target.address;
        let addr = address.parse().map_err(|source| SourceError::BadAddress { address: address.clone(), source }.at(p))?;
        let session = Session::connect(&self.agent.endpoint, addr, &self.req.target.name, &self.agent.cfg.name).await.at(p)?;
        self.wire_base = session.conn.stats().udp_tx.bytes;
        self.session = Some(session);
        let begin = Begin {
            id: self.req.id,
            source: self.agent.cfg.name.clone(),
            container: info.clone(),
            tcp_established: self.req.options.tcp_established,
            mode: self.req.options.mode,
            lazy_restore: self.req.options.lazy_restore,
            post_copy_first: self.req.options.post_copy_first,
            ticket: self.req.ticket.clone(),
        };
        self.container = Some(info);
        self.session().open(&Request::Receive(begin)).await.at(p)
    }

    /// After the target's `Ready`: the work folder, a last look for a cancel.
    async fn finish_prepare(&mut self) -> Result<(), Fail> {
        let p = Phase::Prepare;
        tokio::fs::create_dir_all(&self.work_dir).await.map_err(|source| SourceError::CreateDir { path: self.work_dir.clone(), source }.at(p))?;
        self.check_cancel(p)
    }

    /// Puts the container's `checkpoint` folder in RAM for the dumps to
    /// come (ramdir.rs), when the host has the memory; the plan asks only
    /// in modes whose final dump can live there. Returns the folder if so.
    async fn checkpoint_to_ram(&mut self) -> Option<PathBuf> {
        let info = self.info().ok()?;
        let dir = match self.agent.engine.container_dir(&info.name).await {
            Ok(d) => d.join("checkpoint"),
            Err(e) => {
                tracing::info!("the checkpoint goes to disk: {e}");
                return None;
            }
        };
        // A folder left by an earlier migration that died is emptied;
        // anything else there is the user's and is not hidden under a mount.
        let storage = self.agent.storage.as_ref();
        if storage.is_ram(&dir) {
            let _ = crate::ramdir::empty(&dir);
            return Some(dir);
        }
        let to_disk = |why: &dyn std::fmt::Display| {
            tracing::info!("the checkpoint goes to disk: {why}");
            None
        };
        let Some(avail) = storage.mem_available() else { return to_disk(&"cannot read MemAvailable") };
        let cap = match crate::ramdir::fits(info.memory_bytes, 1, avail) {
            Ok(cap) => cap,
            Err(why) => return to_disk(&why),
        };
        match storage.mount_ram(&dir, cap) {
            Ok(()) => {
                tracing::info!(dir = %dir.display(), "the checkpoint goes to RAM");
                Some(dir)
            }
            Err(e) => to_disk(&e),
        }
    }

    /// Unmounts the RAM checkpoint folder, dropping what it holds.
    fn release_ram(&mut self, dir: &Path) -> Option<Event> {
        if let Err(e) = self.agent.storage.unmount_ram(dir, true) {
            self.warnings.push(format!("{e}; unmount it by hand"));
        }
        None
    }

    async fn read_target(&self, recv: &mut quinn::RecvStream, limit: Duration) -> Result<TargetMsg, RpcError> {
        let session = self.session();
        tokio::select! {
            r = session.read::<TargetMsg>(recv, limit) => r,
            e = session.conn.closed() => Err(RpcError::Connection { peer: session.peer.clone(), source: e }),
        }
    }

    /// Saves the image and sends it; the machine tells the target.
    async fn ship_image(&mut self) -> Result<Digest, Fail> {
        let p = Phase::Image;
        let info = self.info()?;
        let path = self.work_dir.join("image.tar");
        self.agent.engine.image_save(&info.image_id, &path).await.at(p)?;
        let file = tokio::fs::File::open(&path).await.map_err(SourceError::OpenImage).at(p)?;
        let done = Arc::new(AtomicU64::new(0));
        let header = DataHeader { id: self.req.id, kind: DataKind::Image };
        let (t0, throttled0) = (Instant::now(), self.pace.throttled());
        let zstd = self.zstd_level();
        let transfer::Sent { digest, stats, .. } = self
            .with_ticker(p, &done, transfer::send(&self.session().conn, &header, file, &done, zstd, &self.pace))
            .await
            .map_err(SourceError::ShipImage)
            .at(p)?;
        self.count_sent(&stats, t0.elapsed(), self.pace.throttled().saturating_sub(throttled0));
        let _ = tokio::fs::remove_file(&path).await;
        self.image_bytes = digest.bytes;
        Ok(digest)
    }

    /// Sends progress every half second while `fut` runs; stops early with
    /// an error when the migration is cancelled.
    async fn with_ticker<T>(
        &self,
        phase: Phase,
        done: &AtomicU64,
        fut: impl std::future::Future<Output = Result<T, TransferError>>,
    ) -> Result<T, SendError> {
        tokio::pin!(fut);
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        loop {
            tokio::select! {
                r = &mut fut => return r.map_err(SendError::Transfer),
                _ = tick.tick() => self.progress(phase, done.load(Ordering::Relaxed), ""),
                _ = self.cancel.cancelled() => return Err(SendError::Cancelled),
            }
        }
    }

    /// Writes the journal entry: should this agent die from here on, its
    /// successor finds the container checkpointed and asks the target what
    /// became of it.
    fn journal(&mut self, leftovers: Vec<PathBuf>, ram: Option<PathBuf>) -> Result<PathBuf, Fail> {
        let info = self.info()?;
        let entry = crate::recovery::Entry {
            id: self.req.id,
            container: info.name.clone(),
            container_id: info.id.clone(),
            target: self.req.target.clone(),
            tcp_established: self.req.options.tcp_established,
            leftovers,
            ram,
            commit: false,
            lazy: self.req.options.mode == Mode::PostCopy,
        };
        crate::recovery::record(self.agent, &entry)
            .map_err(|source| SourceError::Journal { dir: self.agent.cfg.state_dir.clone(), source }.at(Phase::Checkpoint))
    }

    /// The freeze: Podman checkpoints into a FIFO while its archive streams
    /// to the target as `kind` (delta-encoded against the base's pages when
    /// the plan says so).
    async fn dump(&mut self, kind: DataKind, with_previous: bool, in_ram: bool) -> Result<Digest, Fail> {
        let p = Phase::Checkpoint;
        let info = self.info()?;
        let fifo = self.work_dir.join("checkpoint.fifo");
        let (reader, hold) = archive_pipe(&fifo).map_err(|source| SourceError::Fifo { path: fifo.clone(), source }.at(p))?;
        let holder = FifoHolder::spawn(&fifo);
        // Podman's archive can lack changed files of the image (rootfs.rs):
        // they are added on the way, from the container's upper layer.
        let (reader, completion) = crate::rootfs::completing(reader, self.upper_dir.clone(), self.work_dir.join("rootfs-diff.spool"));
        let opts = CheckpointOpts { tcp_established: self.req.options.tcp_established, with_previous, ..Default::default() };
        self.checkpoint_in_ram = in_ram;
        self.frozen_at = Some(Instant::now());
        let (engine, name) = (self.agent.engine.clone(), info.name.clone());
        let checkpoint = tokio::spawn(async move {
            let r = engine.checkpoint_export(&name, &fifo, opts).await;
            drop(hold); // Podman is done: the reader sees the end
            (r, Instant::now())
        });
        let encoding = match (kind, self.base_index.clone()) {
            (DataKind::CheckpointDelta { .. }, Some(ix)) => transfer::Encoding::Delta(ix),
            _ => transfer::Encoding::Raw,
        };
        let (send_started, throttled0) = (Instant::now(), self.pace.throttled());
        let sent = self.stream_frozen(kind, reader, encoding).await;
        let sent_at = Instant::now();
        let (dumped, exported_at) = checkpoint.await.at(p)?;
        drop(holder);
        dumped.map_err(SourceError::Checkpoint).at(p)?;
        let completed = completion.await.at(p)?.map_err(SourceError::CompleteArchive).at(p)?;
        if !completed.added.is_empty() {
            tracing::info!(files = completed.added.len(), first = %completed.added[0], "changed files Podman left out of its archive were added");
        }
        if let Ok(dir) = self.agent.engine.container_dir(&info.name).await {
            self.final_stats = criu_stats::read(&dir);
        }
        let target = self.req.target.name.clone();
        let transfer::Sent { digest, stats: delta, wire_wait, .. } = sent.map_err(|source| SourceError::StreamCheckpoint { target, source }.at(p))?;
        self.frozen_steps = self.frozen_at.map_or_else(Vec::new, |frozen_at| {
            let criu_us = self.final_stats.map_or(0, |s| s.frozen_us);
            source_steps(exported_at - frozen_at, criu_us, wire_wait, sent_at.saturating_duration_since(exported_at))
        });
        self.checkpoint_bytes = digest.bytes;
        self.saved_bytes = delta.pages_reused * tern_proto::delta::PAGE as u64;
        self.count_sent(&delta, send_started.elapsed(), self.pace.throttled().saturating_sub(throttled0));
        self.check_cancel(p)?;
        self.agent.cfg.faults.exit_at_source(SourceExit::BeforeCheckpointSent);
        Ok(digest)
    }

    /// Streams the final archive as Podman writes it. The FIFO is drained
    /// whatever happens, so Podman can finish and the container can be
    /// restored here; a cancel stops the sending at once.
    async fn stream_frozen(
        &self,
        kind: DataKind,
        reader: impl tokio::io::AsyncRead + Unpin,
        encoding: transfer::Encoding,
    ) -> Result<transfer::Sent, TransferError> {
        let done = Arc::new(AtomicU64::new(0));
        let header = DataHeader { id: self.req.id, kind };
        let conn = self.session().conn.clone();
        let wire = transfer::Wire { zstd: self.zstd_level(), pace: &self.pace, stop: &self.cancel };
        let send_task = transfer::send_encoded(&conn, &header, reader, &done, encoding, wire);
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        tokio::pin!(send_task);
        loop {
            tokio::select! {
                r = &mut send_task => return r,
                _ = tick.tick() => self.progress(Phase::Checkpoint, done.load(Ordering::Relaxed), "frozen"),
            }
        }
    }

    /// The switchover: the target said the container runs there.
    fn switched(&mut self, r: RestoreInfo) -> Option<Event> {
        // Downtime ends when the container ran on the target, before the
        // target's extra check that it keeps running.
        self.downtime = self.frozen_at.take().map(|t| t.elapsed().saturating_sub(Duration::from_millis(r.confirm_ms)));
        // The target's own split of this phase.
        self.phases.push(PhaseTime { phase: Phase::Verify, ms: r.verify_ms });
        self.leave(Phase::Restore);
        self.warnings.extend(r.notes.iter().map(|n| format!("on {}: {n}", self.req.target.name)));
        tracing::info!(container = %r.container.name, "restored on the target: switchover");
        self.restore_info = Some(r);
        None
    }

    /// Records the commit in the journal entry, before the target hears it.
    fn record_commit(&mut self) -> Result<(), Fail> {
        let p = Phase::Restore;
        let path = self.journal_path.clone().ok_or_else(|| SourceError::NoJournal.at(p))?;
        crate::recovery::record_commit(self.agent, &path).map_err(|source| SourceError::RecordCommit { path, source }.at(p))?;
        if self.req.evacuation {
            self.record_evacuated();
        }
        if let Some(info) = &self.container {
            crate::arrivals::left(&self.agent.cfg.state_dir, &info.id);
        }
        self.agent.cfg.faults.exit_at_source(SourceExit::AfterRestored);
        Ok(())
    }

    /// An evacuation's move switched over: this host's evacuation record
    /// says where the container went, for `tern return`. A failure to
    /// write it is a warning: the move itself is done.
    fn record_evacuated(&mut self) {
        let Some(info) = self.container.as_ref() else { return };
        // The ID the target reported after its restore (Podman keeps it).
        let id = self.restore_info.as_ref().map(|r| r.container.id.clone()).filter(|id| !id.is_empty()).unwrap_or_else(|| info.id.clone());
        let entry = tern_proto::Evacuated {
            name: info.name.clone(),
            id,
            target: self.req.target.name.clone(),
            migration: self.req.id,
            moved_unix: std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0),
        };
        match crate::evacuation::record(&self.agent.cfg.state_dir, entry) {
            Ok(None) => {}
            Ok(Some(w)) => self.warnings.push(format!("the evacuation record: {w}")),
            Err(e) => self.warnings.push(format!(
                "{} could not be written ({e}): `tern return {}` will not know {} was evacuated to {}",
                crate::evacuation::path(&self.agent.cfg.state_dir).display(),
                self.agent.cfg.name,
                info.name,
                self.req.target.name
            )),
        }
    }

    /// Settles the switchover with the target on a connection of its own,
    /// after the conversation died once it could restore: abort, unless it
    /// already holds the container for good. Tries for [`SETTLE_WINDOW`],
    /// while it cannot be reached or says its side is busy (a restore still
    /// running); past it, recovery goes on asking.
    async fn resolve(&mut self) -> Event {
        let info = match self.info() {
            Ok(i) => i,
            Err(f) => return Event::Failed(f.failure()),
        };
        // Post-copy: once the target has every page the container is its
        // alone (the dump ended it here); if the dump failed, CRIU let it
        // run here again and the target's copy, short of pages, must go.
        let verdict = match self.fill_done().await {
            Some(Ok(())) => Verdict::Commit,
            Some(Err(e)) => {
                self.warnings.push(format!("{e}; the container runs on here, as of the freeze"));
                Verdict::Abort
            }
            None => Verdict::Abort,
        };
        let started = Instant::now();
        let mut last;
        self.progress(Phase::Rollback, 0, &format!("settling with {} whether it restored the container", self.target()));
        loop {
            match crate::recovery::settle(self.agent, self.req.id, &info.name, &info.id, &self.req.target, verdict).await {
                Ok(Resolution::Busy) => last = SourceError::TargetBusy { target: self.target().to_string() },
                Ok(r) => return Event::Resolved(r),
                Err(e) => last = SourceError::Settle(e),
            }
            if started.elapsed() >= tern_transport::timeouts::scaled(SETTLE_WINDOW) {
                return Event::Failed(last.at(Phase::Restore).failure());
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    /// The last look before the freeze: a connection opened since the
    /// coordinator's check that the move would reset is refused unless the
    /// user allowed resets (`tern_proto::network::fate`).
    async fn connections_survive(&self) -> Result<(), Fail> {
        let info = self.info()?;
        if self.req.options.allow_reset || info.pid == 0 {
            return Ok(());
        }
        let now = ContainerInfo { connections: crate::engine::connections_of(info.pid), ..info.clone() };
        let lost: Vec<String> = now
            .connections
            .iter()
            .filter_map(|c| match tern_proto::network::fate(&now, c) {
                tern_proto::network::Fate::Lost(why) => Some(why),
                _ => None,
            })
            .collect();
        if lost.is_empty() {
            return Ok(());
        }
        Err(SourceError::ConnectionsLost { lost }.at(Phase::Prepare))
    }

    /// The container runs on the target: remove it here, then tell the
    /// operator's hook it left.
    async fn remove_source_copy(&mut self) {
        let Ok(info) = self.info() else { return };
        if let Err(e) = self.agent.engine.remove(&self.req.container, false).await {
            self.warnings.push(format!(
                "the container runs on {} but its stopped copy could not be removed here: {e}; remove it with `podman rm {}`",
                self.req.target.name, self.req.container
            ));
        } else {
            self.remove_moved_volumes(&info.volumes).await;
        }
        let ctx = crate::netid::HookContext {
            event: crate::netid::HookEvent::Departed,
            container: &info,
            host: &self.agent.cfg.name,
            peer: &self.req.target.name,
            migration: self.req.id,
        };
        if let Err(e) = crate::netid::run_hook(&self.agent.cfg.network, &ctx).await {
            self.warnings.push(format!("{e}; the container runs on {} regardless", self.req.target.name));
        }
    }

    /// The named volumes moved with the container (Podman's export carried
    /// their content, the target's restore made them): the copies here are
    /// stale, and would block the container's coming back. One another
    /// container still uses is kept (Podman refuses), with a warning.
    async fn remove_moved_volumes(&mut self, volumes: &[tern_proto::facts::Volume]) {
        for vol in volumes.iter().map(|v| &v.name) {
            if let Err(e) = self.agent.engine.volume_remove(vol).await {
                self.warnings.push(format!(
                    "volume {vol} moved to {} with the container, but its old copy here could not be removed: {e}; \
                     remove it with `podman volume rm {vol}` once no container here uses it",
                    self.req.target.name
                ));
            }
        }
    }

    /// Adds to a failure after the freeze that the connection was lost, when it was.
    fn name_lost_connection(&self, mut failure: Failure) -> Failure {
        tracing::warn!(phase = failure.phase.as_str(), "migration failed after the freeze: {}; rolling back", failure.message);
        if let Some(reason) = self.session.as_ref().and_then(|s| s.conn.close_reason()) {
            failure.message = format!(
                "{} (the connection to {} was lost: {reason}; its agent stopped or the network failed)",
                failure.message, self.req.target.name
            );
        }
        failure
    }

    /// Brings the container back here, its traffic held meanwhile; the
    /// downtime ends here.
    async fn restore_held(&mut self) -> Event {
        // Post-copy: ending the dump lets the container run here again.
        // Its images hold no memory, so they are never restored here: CRIU's
        // restorer would wait forever for pages that are not in them
        // (it did, in a test, writing its log until the disk was full).
        if self.req.options.mode == Mode::PostCopy {
            self.abandon_fill().await;
            if let Some(t) = self.frozen_at.take() {
                self.downtime = Some(t.elapsed());
            }
            return match self.agent.engine.inspect(&self.req.container).await {
                Ok(Some(c)) if c.is_running() => Event::RestoredHere,
                Ok(_) => Event::RestoreFailed(
                    "the post-copy dump ended and the container does not run here; its images hold no memory and cannot be restored".into(),
                ),
                Err(e) => Event::RestoreFailed(e.to_string()),
            };
        }
        let hold = match self.agent.engine.networks().await {
            Ok(nets) => match &self.container {
                Some(c) => crate::netid::Hold::install(c, &nets, self.req.id).await.map_err(SourceError::Net),
                None => Ok(None),
            },
            Err(e) => Err(SourceError::Engine(e)),
        };
        let hold = hold.unwrap_or_else(|e| {
            self.warnings.push(format!("its traffic was not held during the local restore (a peer may see a reset): {e}"));
            None
        });
        let r = restore_here(self.agent, &self.req.container, self.req.options.tcp_established).await;
        if let Some(h) = hold {
            if let Err(e) = h.release().await {
                self.warnings.push(format!(
                    "its traffic hold could not be removed: {e}; remove it (nft delete table netdev ...) or its address stays unreachable here"
                ));
            }
        }
        if let Some(t) = self.frozen_at.take() {
            self.downtime = Some(t.elapsed());
        }
        match r {
            Ok(()) => Event::RestoredHere,
            Err(e) => Event::RestoreFailed(e.to_string()),
        }
    }

    fn report(&self, outcome: Outcome) -> MigrationReport {
        let bytes_on_wire = self.session.as_ref().map(|s| s.conn.stats().udp_tx.bytes.saturating_sub(self.wire_base)).unwrap_or(0);
        MigrationReport {
            id: self.req.id,
            container: self.req.container.clone(),
            source: self.agent.cfg.name.clone(),
            target: self.req.target.name.clone(),
            mode: self.req.options.mode,
            outcome,
            downtime_ms: self.downtime.map(|d| d.as_millis() as u64),
            total_ms: self.started.elapsed().as_millis() as u64,
            bytes_on_wire,
            image_bytes: self.image_bytes,
            checkpoint_bytes: self.checkpoint_bytes,
            final_pages: self.final_stats.map(|s| s.pages_written).unwrap_or(0),
            final_frozen_ms: self.final_stats.map(|s| s.frozen_us / 1000).unwrap_or(0),
            saved_bytes: self.saved_bytes,
            zstd_in: self.zstd_in,
            zstd_out: self.zstd_out,
            phases: self.phases.clone(),
            frozen: match (&self.restore_info, self.downtime) {
                (Some(r), Some(d)) => frozen_steps(&self.frozen_steps, &r.steps, d.as_millis() as u64),
                _ => Vec::new(),
            },
            memory_fill_ms: self.restore_info.as_ref().and_then(|r| r.memory_fill_ms),
            images_in_ram: ImagesInRam { source: self.checkpoint_in_ram, target: self.restore_info.as_ref().is_some_and(|r| r.images_in_ram) },
            rounds: self.rounds.clone(),
            stop_reason: self.stop_reason.clone(),
            warnings: self.warnings.clone(),
            bandwidth: self.pace.cap(),
            throttled_ms: self.pace.throttled().as_millis() as u64,
        }
    }
}

fn rpc_timeout() -> Duration {
    tern_transport::rpc::REPLY_TIMEOUT
}

/// A process that holds a read end of the export's FIFO for as long as
/// Podman may write to it, and outlives this agent. Should the agent die
/// mid-export, Podman then waits on a full pipe instead of meeting a
/// broken one: Podman 4 hangs for good after a failed write to its export,
/// holding the container's lock, and every later Podman command on it (and
/// `podman info`) waits too. The agent's successor drains the FIFO to its
/// end ([`release_orphaned_exports`]), and Podman finishes.
struct FifoHolder {
    child: Option<std::process::Child>,
}

/// Where a work folder keeps its holder's process ID.
const HOLDER_PID: &str = "fifo-holder.pid";

impl FifoHolder {
    fn spawn(fifo: &Path) -> FifoHolder {
        use std::os::unix::fs::OpenOptionsExt;
        use std::os::unix::process::CommandExt;
        let child = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(fifo)
            .and_then(|end| {
                std::process::Command::new("sleep")
                    .arg("infinity")
                    .stdin(end)
                    .stdout(std::process::Stdio::null())
                    .stderr(std::process::Stdio::null())
                    // Its own group: a signal to the agent's is not its.
                    .process_group(0)
                    .spawn()
            })
            .inspect(|c| {
                if let Some(dir) = fifo.parent() {
                    let _ = std::fs::write(dir.join(HOLDER_PID), c.id().to_string());
                }
            })
            .map_err(|e| tracing::warn!("no process holds the export's FIFO ({e}): should this agent die mid-export, Podman may hang"))
            .ok();
        FifoHolder { child }
    }
}

impl Drop for FifoHolder {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// At start, before asking Podman anything: a predecessor that died while
/// Podman exported into its FIFO left Podman writing there ([`FifoHolder`]).
/// Each such FIFO is read to its end, for as long as a process still names
/// it (at most 10 minutes), so that the export completes and Podman lets
/// go; then the holder goes. The archive read is dropped: the checkpoint
/// Podman keeps in the container's folder is what recovery restores.
pub fn release_orphaned_exports(state_dir: &Path) {
    for dir in std::fs::read_dir(state_dir).into_iter().flatten().flatten() {
        if !dir.file_name().to_string_lossy().starts_with("outgoing-") {
            continue;
        }
        let fifo = dir.path().join("checkpoint.fifo");
        if fifo.exists() {
            tracing::warn!(fifo = %fifo.display(), "draining an export a predecessor left running");
            let bytes = drain_fifo(&fifo, std::time::Duration::from_secs(600));
            tracing::info!(fifo = %fifo.display(), bytes, "the export it left has ended");
        }
        if let Some(pid) = std::fs::read_to_string(dir.path().join(HOLDER_PID)).ok().and_then(|p| p.trim().parse::<i32>().ok()) {
            // Only if that process is still a holder, not a reused ID.
            let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            if cmd.starts_with(b"sleep\0infinity") {
                let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
            }
        }
    }
}

/// Reads `fifo` until no process names it any more and no writer has it
/// open, or `limit` passes; returns the bytes read.
fn drain_fifo(fifo: &Path, limit: std::time::Duration) -> u64 {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let Ok(mut r) = std::fs::OpenOptions::new().read(true).custom_flags(libc::O_NONBLOCK).open(fifo) else { return 0 };
    let started = std::time::Instant::now();
    let needle = fifo.as_os_str().as_encoded_bytes().to_vec();
    let mut buf = vec![0u8; 1 << 16];
    let mut total = 0u64;
    while started.elapsed() < limit {
        match r.read(&mut buf) {
            Ok(n) if n > 0 => total += n as u64,
            // No writer now: done unless a process (Podman, before it
            // opens the FIFO) still names it.
            Ok(_) if !named_by_a_process(&needle) => break,
            _ => std::thread::sleep(std::time::Duration::from_millis(20)),
        }
    }
    total
}

/// Whether a running process has `needle` in its command line.
fn named_by_a_process(needle: &[u8]) -> bool {
    std::fs::read_dir("/proc").into_iter().flatten().flatten().any(|e| {
        e.file_name().to_string_lossy().bytes().all(|b| b.is_ascii_digit())
            && std::fs::read(e.path().join("cmdline")).is_ok_and(|c| c.windows(needle.len()).any(|w| w == needle))
    })
}

/// A FIFO for Podman to write an archive into, read as it is written.
///
/// The reader opens it first, without blocking, and also opens a write end
/// of its own (`hold`), so that reads never see an end of file before
/// Podman has even opened the FIFO. Dropping `hold` once Podman has exited
/// ends the stream after the last byte Podman wrote, or at once when Podman
/// failed before writing anything. No order of events can leave the reader
/// waiting forever.
fn archive_pipe(fifo: &Path) -> std::io::Result<(tokio::net::unix::pipe::Receiver, std::fs::File)> {
    use std::os::unix::fs::OpenOptionsExt;
    nix::unistd::mkfifo(fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).map_err(std::io::Error::from)?;
    let reader = tokio::net::unix::pipe::OpenOptions::new().open_receiver(fifo)?;
    let hold = std::fs::OpenOptions::new().write(true).custom_flags(libc::O_NONBLOCK).open(fifo)?;
    // A 1 MiB pipe instead of 64 KiB: Podman writes the archive 32 KiB at
    // a time, and each full pipe is a sleep and a wake-up on both sides.
    // Best effort: an unprivileged agent may be held to a smaller size.
    use std::os::fd::AsRawFd;
    if let Err(e) = nix::fcntl::fcntl(hold.as_raw_fd(), nix::fcntl::FcntlArg::F_SETPIPE_SZ(PIPE_BYTES)) {
        tracing::debug!("the archive pipe keeps its default size: {e}");
    }
    Ok((reader, hold))
}

/// The archive pipe's capacity.
const PIPE_BYTES: libc::c_int = 1 << 20;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn criu_s_frozen_time_is_taken_out_of_podman_s_export() {
        let ms = Duration::from_millis;
        let got: Vec<u64> = source_steps(ms(900), 250_400, ms(0), ms(80)).iter().map(|s| s.ms).collect();
        assert_eq!(got, [250, 650, 80]);
        // A slow link: what the sender waited for it is the transfer's.
        let got: Vec<u64> = source_steps(ms(9000), 1_000_000, ms(7000), ms(20)).iter().map(|s| s.ms).collect();
        assert_eq!(got, [1000, 1000, 7020]);
        // Without CRIU's statistics the whole export is Podman's; figures
        // past the export are capped at it, and the steps never exceed it.
        assert_eq!(source_steps(ms(900), 0, ms(0), ms(0))[1].ms, 900);
        assert_eq!(source_steps(ms(900), 5_000_000, ms(0), ms(0))[0].ms, 900);
        let got: Vec<u64> = source_steps(ms(900), 500_000, ms(5000), ms(0)).iter().map(|s| s.ms).collect();
        assert_eq!(got, [500, 0, 400]);
    }

    #[test]
    fn an_export_left_running_on_its_fifo_is_drained_to_its_end() {
        let dir = tempfile::tempdir().unwrap();
        let work = dir.path().join("outgoing-7");
        std::fs::create_dir(&work).unwrap();
        let fifo = work.join("checkpoint.fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        // The agent's holder, then a writer of 1 MiB that an agent's death
        // left without its reader, as Podman's export.
        let holder = super::FifoHolder::spawn(&fifo);
        let pid = holder.child.as_ref().unwrap().id();
        std::mem::forget(holder);
        let cmd = format!("head -c 1048576 /dev/zero > {}", fifo.display());
        let mut writer = std::process::Command::new("sh").arg("-c").arg(&cmd).spawn().unwrap();
        std::thread::sleep(std::time::Duration::from_millis(300));
        assert!(writer.try_wait().unwrap().is_none(), "the writer waits on a full pipe, not on a broken one");
        super::release_orphaned_exports(dir.path());
        assert!(writer.wait().unwrap().success(), "the export completed");
        std::thread::sleep(std::time::Duration::from_millis(100));
        let holder_alive = std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| c.starts_with(b"sleep"));
        assert!(!holder_alive, "the holder is gone");
    }
}
