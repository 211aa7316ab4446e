//! The source's side of a migration.
//!
//! ```text
//!  prepare ─▶ image? ─▶ pre-copy rounds? ─▶ FREEZE: checkpoint ║ stream ─▶ target verifies+restores ─▶ cleanup
//!     │          │              │                       │                         │
//!     └──────────┴──────────────┴── failure: Refused (container never stopped)
//!                                                       └─────────────────────────┴── failure: Abort target,
//!                                                                                     restore locally: RolledBack
//! ```
//!
//! The rounds live in [`precopy`]. The container is removed here only after
//! the target answered `Restored`. Every failure after the freeze ends in
//! `rollback`.

mod precopy;

use crate::criu_stats;
use crate::engine::CheckpointOpts;
use crate::faults::SourceExit;
use crate::server::Agent;
use crate::transfer;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tern_proto::facts::ContainerInfo;
use tern_proto::frame::write_frame;
use tern_proto::*;
use tern_transport::rpc::{RpcError, Session};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// From this rate on (bytes/s, 2 Gbit/s) per compressing thread
/// ([`transfer::compress_threads`]) `--compress auto` sends raw: zstd's
/// fastest level runs at about 300-500 MB/s per core on memory.
const FAST_LINK: f64 = 250e6;

/// How long the target may take to verify and restore.
const RESTORE_TIMEOUT: Duration = Duration::from_secs(600);
/// How long to wait for the target to confirm an Abort or a Commit.
const ACK_TIMEOUT: Duration = Duration::from_secs(10);

/// A failure, and whether it happened after the freeze.
struct Fail {
    phase: Phase,
    message: String,
}

impl Fail {
    fn new(phase: Phase, message: impl std::fmt::Display) -> Self {
        Fail { phase, message: message.to_string() }
    }
    fn failure(&self) -> Failure {
        Failure { phase: self.phase, message: self.message.clone() }
    }
}

/// One migration's bookkeeping.
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
    frozen_at: Option<Instant>,
    /// From the freeze until the container ran again (here or there).
    downtime: Option<Duration>,
    session: Option<Session>,
    wire_base: u64,
    work_dir: PathBuf,
    rounds: Vec<RoundReport>,
    stop_reason: Option<String>,
    final_stats: Option<criu_stats::DumpStats>,
    saved_bytes: u64,
    /// The container's `pre-checkpoint` link this migration made.
    pre_link: Option<PathBuf>,
    /// The soft-dirty rounds, inside the container's folder.
    precopy_dir: Option<PathBuf>,
    zstd_in: u64,
    zstd_out: u64,
    /// This migration's journal entry, from the freeze to the end.
    journal: Option<PathBuf>,
    /// The container's `checkpoint` folder, when this migration put it in
    /// RAM (ramdir.rs).
    ram_dir: Option<PathBuf>,
    /// What the target said about its restore.
    restore_info: Option<RestoreInfo>,
    /// The final dump went to RAM.
    checkpoint_in_ram: bool,
    /// The container as prepare saw it (its networks, for a rollback).
    container: Option<ContainerInfo>,
}

/// Runs one migration to its end and sends the report as the last event.
pub async fn migrate(agent: &Agent, req: MigrateRequest, events: mpsc::Sender<MigrateEvent>, cancel: CancellationToken) {
    let work_dir = agent.cfg.state_dir.join(format!("outgoing-{}", req.id));
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
        stop_reason: None,
        final_stats: None,
        saved_bytes: 0,
        pre_link: None,
        precopy_dir: None,
        zstd_in: 0,
        zstd_out: 0,
        journal: None,
        ram_dir: None,
        restore_info: None,
        checkpoint_in_ram: false,
        container: None,
    };
    tracing::info!(id = run.req.id, container = %run.req.container, target = %run.req.target.name, "migration starts");
    let outcome = run.execute().await;
    // A checkpoint kept after a failed rollback sits on top of the rounds:
    // keep them for the manual restore. Otherwise the container runs (here
    // or there) and neither the rounds nor the link to them are needed.
    let keep_rounds = matches!(outcome, Outcome::Failed { .. }) && run.pre_link.is_some();
    if !keep_rounds {
        if let Some(link) = run.pre_link.take() {
            let _ = tokio::fs::remove_file(&link).await;
        }
        if let Some(dir) = run.precopy_dir.take() {
            let _ = tokio::fs::remove_dir_all(&dir).await;
        }
    }
    // The images in RAM are needed no more, but after a failed rollback:
    // then they are the container's only state, kept for a manual restore.
    if !matches!(outcome, Outcome::Failed { .. }) {
        run.release_ram();
    }
    let _ = tokio::fs::remove_dir_all(&run.work_dir).await;
    // Seen to the end (a failed rollback included: its report tells the
    // user how to restore), so nothing is left to recover.
    if let Some(j) = run.journal.take() {
        crate::recovery::forget(&j);
    }
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
            return Err(Fail::new(phase, "cancelled by the user"));
        }
        Ok(())
    }

    /// The zstd level for this migration's streams, or none (see
    /// [`Compression::Auto`]).
    fn zstd_level(&self) -> Option<i32> {
        match self.req.options.compress {
            Compression::None | Compression::Invalid => None,
            Compression::Zstd => Some(3),
            Compression::Auto => match self.agent.link_rate(&self.req.target.name) {
                Some(rate) if rate >= FAST_LINK * transfer::compress_threads() as f64 => None,
                _ => Some(1),
            },
        }
    }

    /// Adds a stream's compression to the report and what it taught about
    /// the link to the target.
    fn count_sent(&mut self, stats: &tern_proto::delta::DeltaStats, took: Duration) {
        self.zstd_in += stats.zstd_in;
        self.zstd_out += stats.zstd_out;
        let sent = stats.raw_bytes + stats.zstd_out;
        // Only long transfers say something about the link (and not its
        // slow start); a dump's own pace limits short ones anyway.
        if sent >= 32 << 20 {
            self.agent.note_link_rate(&self.req.target.name, sent as f64 / took.as_secs_f64().max(1e-3));
        }
    }

    fn session(&self) -> &Session {
        self.session.as_ref().expect("connected during prepare")
    }

    async fn execute(&mut self) -> Outcome {
        let Some(_guard) = self.agent.claim(&self.req.container) else {
            return Outcome::Refused {
                failure: Failure { phase: Phase::Prepare, message: format!("{} is already being migrated", self.req.container) },
            };
        };
        let (info, mut send, mut recv, needs_image) = match self.prepare().await {
            Ok(x) => x,
            Err(f) => return Outcome::Refused { failure: f.failure() },
        };
        self.container = Some(info.clone());
        self.checkpoint_to_ram(&info).await;
        if needs_image {
            if let Err(f) = self.ship_image(&info, &mut send, &mut recv).await {
                self.abort_target(&mut send, &mut recv, &f).await;
                return Outcome::Refused { failure: f.failure() };
            }
        }
        let mut base = None;
        if self.req.options.mode.has_rounds() {
            let rounds = async {
                let b = self.precopy(&info, &mut send, &mut recv).await?;
                if self.req.options.mode == Mode::PreCopy {
                    self.link_pre_checkpoint(&info, &b.last_dir).await?;
                }
                Ok(b)
            }
            .await;
            match rounds {
                Ok(b) => base = Some(b),
                Err(f) => {
                    self.abort_target(&mut send, &mut recv, &f).await;
                    return Outcome::Refused { failure: f.failure() };
                }
            }
        }
        if let Err(f) = self.connections_survive(&info).await {
            self.abort_target(&mut send, &mut recv, &f).await;
            return Outcome::Refused { failure: f.failure() };
        }
        // From here on, the container is frozen: every failure rolls back.
        match self.freeze_and_switch(&info, base.as_ref(), &mut send, &mut recv).await {
            Ok(()) => {}
            Err(f) => return self.rollback(f, &mut send, &mut recv).await,
        }
        self.cleanup(&info, &mut send, &mut recv).await;
        Outcome::Completed
    }

    async fn prepare(&mut self) -> Result<(ContainerInfo, quinn::SendStream, quinn::RecvStream, bool), Fail> {
        let p = Phase::Prepare;
        self.enter(p, "connecting to the target");
        let info = self
            .agent
            .engine
            .inspect(&self.req.container)
            .await
            .map_err(|e| Fail::new(p, e))?
            .ok_or_else(|| Fail::new(p, format!("no container named {} on {}", self.req.container, self.agent.cfg.name)))?;
        if !info.is_running() {
            return Err(Fail::new(p, format!("{} is {}, not running; tern migrates running containers", info.name, info.state)));
        }
        let addr = self.req.target.address.parse().map_err(|e| Fail::new(p, format!("bad target address {}: {e}", self.req.target.address)))?;
        let session = Session::connect(&self.agent.endpoint, addr, &self.req.target.name, &self.agent.cfg.name).await.map_err(|e| Fail::new(p, e))?;
        self.wire_base = session.conn.stats().udp_tx.bytes;
        self.session = Some(session);
        let begin = Begin {
            id: self.req.id,
            source: self.agent.cfg.name.clone(),
            container: info.clone(),
            tcp_established: self.req.options.tcp_established,
            mode: self.req.options.mode,
            lazy_restore: self.req.options.lazy_restore,
        };
        let (send, mut recv) = self.session().open(&Request::Receive(begin)).await.map_err(|e| Fail::new(p, e))?;
        let needs_image = match self.read_target(&mut recv, rpc_timeout()).await.map_err(|e| Fail::new(p, e))? {
            TargetMsg::Ready { needs_image } => needs_image,
            TargetMsg::Failed(f) => return Err(Fail::new(p, format!("the target refused: {}", f.message))),
            other => return Err(Fail::new(p, self.session().unexpected("Ready", &other))),
        };
        tokio::fs::create_dir_all(&self.work_dir).await.map_err(|e| Fail::new(p, format!("cannot create {}: {e}", self.work_dir.display())))?;
        self.check_cancel(p)?;
        self.leave(p);
        Ok((info, send, recv, needs_image))
    }

    /// Puts the container's `checkpoint` folder in RAM for the dumps to
    /// come (ramdir.rs), when the host has the memory. Soft-dirty pre-copy
    /// keeps it on disk: its final dump links to rounds there, and CRIU
    /// cannot follow a link out of a mount at restore time.
    async fn checkpoint_to_ram(&mut self, info: &ContainerInfo) {
        if self.req.options.mode == Mode::PreCopy {
            return;
        }
        let dir = match self.agent.engine.container_dir(&info.name).await {
            Ok(d) => d.join("checkpoint"),
            Err(e) => {
                tracing::info!("the checkpoint goes to disk: {e}");
                return;
            }
        };
        // A folder left by an earlier migration that died is emptied;
        // anything else there is the user's and is not hidden under a mount.
        if crate::ramdir::is_mounted(&dir) {
            let _ = crate::ramdir::empty(&dir);
            self.ram_dir = Some(dir);
            return;
        }
        let fits = crate::ramdir::mem_available()
            .ok_or_else(|| "cannot read MemAvailable".to_string())
            .and_then(|avail| crate::ramdir::fits(info.memory_bytes, 1, avail));
        match fits.and_then(|cap| crate::ramdir::mount(&dir, cap).map_err(|e| e.to_string())) {
            Ok(()) => {
                tracing::info!(dir = %dir.display(), "the checkpoint goes to RAM");
                self.ram_dir = Some(dir);
            }
            Err(why) => tracing::info!("the checkpoint goes to disk: {why}"),
        }
    }

    /// Unmounts the RAM checkpoint folder, dropping what it holds.
    fn release_ram(&mut self) {
        if let Some(dir) = self.ram_dir.take() {
            if let Err(e) = crate::ramdir::unmount(&dir, true) {
                self.warnings.push(format!("{e}; unmount it by hand"));
            }
        }
    }

    async fn read_target(&self, recv: &mut quinn::RecvStream, limit: Duration) -> Result<TargetMsg, RpcError> {
        let session = self.session();
        tokio::select! {
            r = session.read::<TargetMsg>(recv, limit) => r,
            e = session.conn.closed() => Err(RpcError::Connection { peer: session.peer.clone(), source: e }),
        }
    }

    async fn ship_image(&mut self, info: &ContainerInfo, send: &mut quinn::SendStream, recv: &mut quinn::RecvStream) -> Result<(), Fail> {
        let p = Phase::Image;
        self.enter(p, "the target lacks the image; shipping it");
        let path = self.work_dir.join("image.tar");
        self.agent.engine.image_save(&info.image_id, &path).await.map_err(|e| Fail::new(p, e))?;
        let file = tokio::fs::File::open(&path).await.map_err(|e| Fail::new(p, e))?;
        let done = Arc::new(AtomicU64::new(0));
        let header = DataHeader { id: self.req.id, kind: DataKind::Image };
        let t0 = Instant::now();
        let zstd = self.zstd_level();
        let transfer::Sent { digest, stats, .. } =
            self.with_ticker(p, &done, transfer::send(&self.session().conn, &header, file, &done, zstd)).await.map_err(|e| Fail::new(p, e))?;
        self.count_sent(&stats, t0.elapsed());
        let _ = tokio::fs::remove_file(&path).await;
        self.image_bytes = digest.bytes;
        write_frame(send, &SourceMsg::ImageSent(digest)).await.map_err(|e| Fail::new(p, e))?;
        match self.read_target(recv, RESTORE_TIMEOUT).await.map_err(|e| Fail::new(p, e))? {
            TargetMsg::ImageLoaded => {}
            TargetMsg::Failed(f) => return Err(Fail::new(p, format!("on the target: {}", f.message))),
            other => return Err(Fail::new(p, self.session().unexpected("ImageLoaded", &other))),
        }
        self.check_cancel(p)?;
        self.leave(p);
        Ok(())
    }

    /// Sends progress every half second while `fut` runs; stops early with
    /// an error when the migration is cancelled.
    async fn with_ticker<T, E: std::fmt::Display>(
        &self,
        phase: Phase,
        done: &AtomicU64,
        fut: impl std::future::Future<Output = Result<T, E>>,
    ) -> Result<T, String> {
        tokio::pin!(fut);
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        loop {
            tokio::select! {
                r = &mut fut => return r.map_err(|e| e.to_string()),
                _ = tick.tick() => self.progress(phase, done.load(Ordering::Relaxed), ""),
                _ = self.cancel.cancelled() => return Err("cancelled by the user".to_string()),
            }
        }
    }

    async fn freeze_and_switch(
        &mut self,
        info: &ContainerInfo,
        base: Option<&precopy::Precopied>,
        send: &mut quinn::SendStream,
        recv: &mut quinn::RecvStream,
    ) -> Result<(), Fail> {
        let p = Phase::Checkpoint;
        self.check_cancel(p)?;
        let mode = self.req.options.mode;
        self.enter(
            p,
            match mode {
                Mode::PreCopy => "freezing; the final dump holds only the pages written since the last round",
                Mode::HashPreCopy => "freezing; only pages the target lacks cross the wire",
                _ => "freezing and dumping; the archive streams as it is written",
            },
        );
        let fifo = self.work_dir.join("checkpoint.fifo");
        let (reader, hold) = archive_pipe(&fifo).map_err(|e| Fail::new(p, format!("creating the FIFO {}: {e}", fifo.display())))?;
        let index = base.and_then(|b| b.index.clone());
        let opts = CheckpointOpts {
            tcp_established: self.req.options.tcp_established,
            with_previous: mode == Mode::PreCopy && base.is_some(),
            leave_running: false,
        };
        // Should this agent die from here on, its successor finds the
        // container checkpointed and asks the target what became of it.
        let entry = crate::recovery::Entry {
            id: self.req.id,
            container: info.name.clone(),
            container_id: info.id.clone(),
            target: self.req.target.clone(),
            tcp_established: self.req.options.tcp_established,
            leftovers: self.pre_link.iter().chain(self.precopy_dir.iter()).cloned().collect(),
            ram: self.ram_dir.clone(),
        };
        self.journal = Some(
            crate::recovery::record(self.agent, &entry)
                .map_err(|e| Fail::new(p, format!("writing the journal entry in {}: {e}", self.agent.cfg.state_dir.display())))?,
        );
        self.checkpoint_in_ram = self.ram_dir.is_some();
        self.frozen_at = Some(Instant::now());
        let engine = self.agent.engine.clone();
        let name = info.name.clone();
        let fifo2 = fifo.clone();
        let checkpoint = tokio::spawn(async move {
            let r = engine.checkpoint_export(&name, &fifo2, opts).await;
            drop(hold); // Podman is done: the reader sees the end
            r
        });
        let done = Arc::new(AtomicU64::new(0));
        let kind = match (&index, base) {
            (Some(_), Some(b)) => DataKind::CheckpointDelta { base: b.rounds },
            _ => DataKind::Checkpoint,
        };
        let header = DataHeader { id: self.req.id, kind };
        let conn = self.session().conn.clone();
        let cancel = self.cancel.clone();
        let zstd = self.zstd_level();
        let send_started = Instant::now();
        let send_task = {
            let done = done.clone();
            async move {
                let encoding = match index {
                    Some(ix) => transfer::Encoding::Delta(ix),
                    None => transfer::Encoding::Raw,
                };
                transfer::send_encoded(&conn, &header, reader, &done, encoding, zstd, &cancel).await
            }
        };
        // The FIFO is drained whatever happens, so Podman can finish and the
        // container can be restored here; a cancel stops the sending at once.
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        tokio::pin!(send_task);
        let sent = loop {
            tokio::select! {
                r = &mut send_task => break r,
                _ = tick.tick() => self.progress(p, done.load(Ordering::Relaxed), "frozen"),
            }
        };
        let dumped = checkpoint.await.map_err(|e| Fail::new(p, e))?;
        dumped.map_err(|e| Fail::new(p, format!("podman checkpoint: {e}")))?;
        if let Ok(dir) = self.agent.engine.container_dir(&info.name).await {
            self.final_stats = criu_stats::read(&dir);
        }
        let target = self.req.target.name.clone();
        let transfer::Sent { digest, stats: delta, .. } = sent.map_err(|e| Fail::new(p, format!("streaming the checkpoint to {target}: {e}")))?;
        self.checkpoint_bytes = digest.bytes;
        self.saved_bytes = delta.pages_reused * tern_proto::delta::PAGE as u64;
        self.count_sent(&delta, send_started.elapsed());
        self.check_cancel(p)?;
        self.agent.cfg.faults.exit_at_source(SourceExit::BeforeCheckpointSent);
        write_frame(send, &SourceMsg::CheckpointSent(digest))
            .await
            .map_err(|e| Fail::new(p, format!("telling {target} the checkpoint is complete: {e}")))?;
        self.leave(p);

        let p = Phase::Restore;
        self.enter(p, "the target verifies and restores");
        let reply = tokio::select! {
            r = self.read_target(recv, RESTORE_TIMEOUT) => r.map_err(|e| Fail::new(p, format!("waiting for {} to restore: {e}", self.req.target.name)))?,
            _ = self.cancel.cancelled() => return Err(Fail::new(p, "cancelled by the user")),
        };
        match reply {
            TargetMsg::Restored(r) => {
                // Downtime ends when the container ran on the target, before
                // the target's extra check that it keeps running.
                self.downtime = self.frozen_at.take().map(|t| t.elapsed().saturating_sub(Duration::from_millis(r.confirm_ms)));
                // The target's own split of this phase.
                self.phases.push(PhaseTime { phase: Phase::Verify, ms: r.verify_ms });
                self.leave(p);
                self.warnings.extend(r.notes.iter().map(|n| format!("on {}: {n}", self.req.target.name)));
                self.restore_info = Some(r.clone());
                tracing::info!(container = %r.container.name, "restored on the target: switchover");
                self.agent.cfg.faults.exit_at_source(SourceExit::AfterRestored);
                Ok(())
            }
            TargetMsg::Failed(f) => Err(Fail::new(f.phase, format!("on {}: {}", self.req.target.name, f.message))),
            other => Err(Fail::new(p, self.session().unexpected("Restored", &other))),
        }
    }

    /// The last look before the freeze: a connection opened since the
    /// coordinator's check that the move would reset is refused unless the
    /// user allowed resets (`tern_proto::network::fate`).
    async fn connections_survive(&self, info: &ContainerInfo) -> Result<(), Fail> {
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
        Err(Fail::new(
            Phase::Prepare,
            format!(
                "{} connection(s) would not survive the move: {}; nothing was frozen. Pass --allow-reset to move it anyway",
                lost.len(),
                lost.iter().take(3).cloned().collect::<Vec<_>>().join("; ")
            ),
        ))
    }

    /// The container runs on the target: remove it here, then tell the target.
    async fn cleanup(&mut self, info: &ContainerInfo, send: &mut quinn::SendStream, recv: &mut quinn::RecvStream) {
        let p = Phase::Cleanup;
        self.enter(p, "removing the source copy");
        // A mount inside the container's folder would make Podman fail.
        self.release_ram();
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
            container: info,
            host: &self.agent.cfg.name,
            peer: &self.req.target.name,
            migration: self.req.id,
        };
        if let Err(e) = crate::netid::run_hook(&self.agent.cfg.network, &ctx).await {
            self.warnings.push(format!("{e}; the container runs on {} regardless", self.req.target.name));
        }
        let acked = async {
            write_frame(send, &SourceMsg::Commit).await.ok()?;
            self.read_target(recv, ACK_TIMEOUT).await.ok()
        }
        .await;
        if !matches!(acked, Some(TargetMsg::Committed)) {
            self.warnings.push(format!("{} did not confirm the commit ({acked:?}); the container runs there regardless", self.req.target.name));
        }
        self.leave(p);
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

    /// Best effort: tell the target to drop whatever it staged or restored.
    async fn abort_target(&mut self, send: &mut quinn::SendStream, recv: &mut quinn::RecvStream, f: &Fail) -> bool {
        if self.session.is_none() {
            return true;
        }
        let reason = f.message.clone();
        let acked = async {
            write_frame(send, &SourceMsg::Abort { reason }).await.ok()?;
            self.read_target(recv, ACK_TIMEOUT).await.ok()
        }
        .await;
        matches!(acked, Some(TargetMsg::Aborted))
    }

    async fn rollback(&mut self, f: Fail, send: &mut quinn::SendStream, recv: &mut quinn::RecvStream) -> Outcome {
        tracing::warn!(phase = f.phase.as_str(), "migration failed after the freeze: {}; rolling back", f.message);
        let p = Phase::Rollback;
        self.enter(p, "bringing the container back on the source");
        if !self.abort_target(send, recv, &f).await && f.phase == Phase::Restore {
            self.warnings.push(format!(
                "{} did not confirm the abort; if it restored {} before failing, two copies may run: check with `podman ps` there",
                self.req.target.name, self.req.container
            ));
        }
        let mut failure = f.failure();
        if let Some(reason) = self.session.as_ref().and_then(|s| s.conn.close_reason()) {
            failure.message = format!(
                "{} (the connection to {} was lost: {reason}; its agent stopped or the network failed)",
                failure.message, self.req.target.name
            );
        }
        let hold = match self.agent.engine.networks().await.map_err(|e| e.to_string()) {
            Ok(nets) => {
                let info = self.container.clone();
                match info {
                    Some(c) => crate::netid::Hold::install(&c, &nets, self.req.id).await,
                    None => Ok(None),
                }
            }
            Err(e) => Err(e),
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
        if r.is_ok() {
            let problems = reclaim_address(self.agent, &self.req.container, &self.req.target.name, self.req.id).await;
            self.warnings.extend(problems);
        }
        self.leave(p);
        match r {
            Ok(()) => Outcome::RolledBack { failure },
            Err(e) => Outcome::Failed {
                failure,
                rollback_error: format!(
                    "{e}; the checkpoint is kept{}: restore it with `podman container restore --keep {}` on {}",
                    match &self.ram_dir {
                        Some(d) => format!(" in RAM (a tmpfs on {}, lost at reboot)", d.display()),
                        None => String::new(),
                    },
                    self.req.container,
                    self.agent.cfg.name
                ),
            },
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
            memory_fill_ms: self.restore_info.as_ref().and_then(|r| r.memory_fill_ms),
            images_in_ram: ImagesInRam { source: self.checkpoint_in_ram, target: self.restore_info.as_ref().is_some_and(|r| r.images_in_ram) },
            rounds: self.rounds.clone(),
            stop_reason: self.stop_reason.clone(),
            warnings: self.warnings.clone(),
        }
    }
}

fn rpc_timeout() -> Duration {
    tern_transport::rpc::REPLY_TIMEOUT
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

/// After a container was brought back here from its checkpoint: its
/// address announced from here again, its peers woken, the hook told it
/// arrived (netid.rs). Returns what went wrong, as warnings: the container
/// runs here whatever they say.
pub(crate) async fn reclaim_address(agent: &Agent, name: &str, peer: &str, migration: u64) -> Vec<String> {
    let mut problems = Vec::new();
    let info = match agent.engine.inspect(name).await {
        Ok(Some(i)) => i,
        Ok(None) => return problems,
        Err(e) => return vec![format!("its address was not announced again here: {e}")],
    };
    let peers = match agent.engine.container_dir(name).await {
        Ok(dir) => crate::netid::peers_in(&crate::netid::checkpoint_dir(&dir)).unwrap_or_else(|e| {
            problems.push(format!("its TCP peers were not woken: {e}"));
            Vec::new()
        }),
        Err(e) => {
            problems.push(format!("its TCP peers were not woken: {e}"));
            Vec::new()
        }
    };
    let done = crate::netid::announce(info.pid, peers).await;
    tracing::info!(addresses = ?done.addresses, peers_woken = done.peers_woken, "address announced again after the rollback");
    problems.extend(done.problems.into_iter().map(|p| format!("network: {p}")));
    let ctx = crate::netid::HookContext { event: crate::netid::HookEvent::Arrived, container: &info, host: &agent.cfg.name, peer, migration };
    if let Err(e) = crate::netid::run_hook(&agent.cfg.network, &ctx).await {
        problems.push(format!("{e}; the container runs here again regardless"));
    }
    problems
}

/// Brings a checkpointed container back here, unless it already runs (a
/// failed dump leaves it running).
pub(crate) async fn restore_here(agent: &Agent, name: &str, tcp_established: bool) -> anyhow::Result<()> {
    let engine = &agent.engine;
    if engine.inspect(name).await?.is_some_and(|c| c.is_running()) {
        return Ok(());
    }
    engine.restore_local(name, CheckpointOpts { tcp_established, ..Default::default() }).await?;
    match engine.inspect(name).await? {
        Some(c) if c.is_running() => Ok(()),
        Some(c) => anyhow::bail!("after the local restore {name} is {}", c.state),
        None => anyhow::bail!("{name} disappeared during the local restore"),
    }
}
