//! The target's side of a migration: stage, verify, restore, confirm.
//!
//! The legal order of the source's messages is [`tern_proto::state`]; this
//! module does the IO for each step. Data streams are received as they
//! come and posted to an [`Inbox`] keyed by what they carry; the control
//! conversation takes each one when the source announces its digest.
//!
//! Everything large lands where the restore reads it ([`inplace`]): the
//! container's folder is made when the migration begins, soft-dirty rounds
//! are written into it, and the final archive is unpacked into it as it
//! arrives ([`unpack`]; [`archive`] is where every received archive
//! goes), its `checkpoint/` in RAM when memory allows. The staging folder
//! keeps the rest:
//!
//! ```text
//!  <state dir>/incoming-<agent pid>-<n>/
//!    image.tar     the image, when shipped
//!    base.tar      content-addressed pre-copy's base archive
//!    rest.tar      the final archive but its checkpoint/ images: what
//!                  `podman container restore --import` reads
//! ```
//!
//! Anything restored or staged here is removed on `Abort`, on a failure
//! before `Restored`, or when the source vanishes before the switchover.
//! A restored container is tentative until `Commit` (the marker of
//! [`inplace`]): should the source vanish first, it is kept, and the
//! source settles it with a `Resolve` request ([`resolve`]), the only way
//! it is removed once the conversation is over.

pub mod admission;
pub mod archive;
pub mod error;
pub mod inplace;
pub mod lazy;
pub mod unpack;

use crate::context::Agent;
use crate::engine::CheckpointOpts;
use crate::faults::ReceiveFaults;
use crate::pages::PageStore;
use crate::transfer::{self, TransferError};
use archive::{receive_records, ArchiveOut, Limits, Received};
use error::TargetError;
use inplace::Bundle;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tern_proto::facts::ContainerInfo;
use tern_proto::frame::{read_frame, write_frame};
use tern_proto::plan::{Plan, Rounds};
use tern_proto::state::{step, Action, TargetState};
use tern_proto::*;
use tokio::sync::Notify;

/// How long a restored container must keep running before it counts.
const CONFIRM_MS: u64 = 300;
/// The final archive but its images, for `podman container restore --import`.
const REST_TAR: &str = "rest.tar";

/// Serves one `Receive` conversation.
pub async fn receive(
    agent: &Agent,
    conn: quinn::Connection,
    peer: &str,
    begin: Begin,
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
) -> anyhow::Result<()> {
    let name = begin.container.name.clone();
    tracing::info!(id = begin.id, %name, source = %peer, mode = begin.mode.as_str(), "incoming migration");
    // A cordoned host takes nothing, whoever checked what: refused before
    // anything of the container is written (cordon.rs). But what an
    // evacuation moved away from here may come back (`tern return`; its
    // ticket and admission are checked as for any other).
    if let Some(why) = crate::cordon::refusal(&agent.cfg.state_dir, &agent.cfg.name) {
        if !crate::evacuation::returning(&agent.cfg.state_dir, &begin.container.id) {
            return refuse(&mut send, why).await;
        }
        tracing::info!(id = begin.id, %name, "cordoned, but {name} was evacuated from here: it may come back");
    }
    // Only what the coordinator signed for, from the host it named (context.rs).
    if let Err(e) = agent.admit_receive(peer, &begin) {
        tracing::warn!(%peer, id = begin.id, %name, "refused a Receive: {e}");
        return refuse(&mut send, e.to_string()).await;
    }
    let Some(_guard) = agent.claim(&name) else {
        return refuse(&mut send, format!("a migration of {name} is already under way here")).await;
    };
    // The folder's name is this agent's own, never the peer's: two
    // migrations, whatever ids they carry, never share one.
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let staging = agent.cfg.state_dir.join(format!("incoming-{}-{n}", std::process::id()));
    let mut t = Target {
        agent,
        begin,
        staging,
        restored: false,
        bundle: None,
        host: None,
        tentative: None,
        lazy: false,
        notes: Vec::new(),
        hold: None,
        legs: None,
        base: Default::default(),
    };
    let result = t.run(conn, &mut send, &mut recv).await;
    agent.tunnels.close(t.begin.id);
    t.release_hold().await;
    let _ = tokio::fs::remove_dir_all(&t.staging).await;
    crate::release_freed_memory();
    let _ = send.finish();
    let _ = tokio::time::timeout(Duration::from_secs(5), send.stopped()).await;
    result
}

async fn refuse(send: &mut quinn::SendStream, message: String) -> anyhow::Result<()> {
    tracing::warn!("refusing an incoming migration: {message}");
    write_frame(send, &TargetMsg::Failed(Failure { phase: Phase::Prepare, message })).await?;
    let _ = send.finish();
    Ok(())
}

/// What a data stream left: the file or folder, the digest of what
/// arrived, and whether `spec.dump` now names the container's own CRIU
/// options file (`lazy.rs`).
struct Staged {
    path: PathBuf,
    digest: Digest,
    annotated: bool,
}

type Arrived = Result<Staged, TargetError>;

/// Data streams that arrived, by kind, until the control conversation
/// takes them.
#[derive(Default)]
struct Inbox {
    items: Mutex<HashMap<DataKind, Arrived>>,
    /// The receiving task ended: nothing more will arrive.
    closed: std::sync::atomic::AtomicBool,
    notify: Notify,
}

impl Inbox {
    fn post(&self, kind: DataKind, a: Arrived) {
        self.items.lock().unwrap().insert(kind, a);
        self.notify.notify_waiters();
    }

    fn close(&self) {
        self.closed.store(true, std::sync::atomic::Ordering::SeqCst);
        self.notify.notify_waiters();
    }

    /// Waits for the stream of `kind`.
    async fn take(&self, kind: DataKind) -> Arrived {
        loop {
            // Registered before looking, so a post in between is not missed.
            let notified = self.notify.notified();
            if let Some(a) = self.items.lock().unwrap().remove(&kind) {
                return a;
            }
            if self.closed.load(std::sync::atomic::Ordering::SeqCst) {
                return Err(TargetError::NeverArrived(kind));
            }
            notified.await;
        }
    }
}

struct Target<'a> {
    agent: &'a Agent,
    begin: Begin,
    staging: PathBuf,
    /// A container was created here by this migration.
    restored: bool,
    /// The container's folder, made by this migration until Podman owns it.
    bundle: Option<Bundle>,
    /// What admission needs of this host, read before the freeze.
    host: Option<admission::HostPaths>,
    /// Once restored: the folder's marker, removed at the commit.
    tentative: Option<inplace::Tentative>,
    /// Restore lazily: the source asked, and this host can.
    lazy: bool,
    /// What the source should tell the user about this side.
    notes: Vec<String>,
    /// Packets for the container's address, dropped here until it runs
    /// (netid.rs).
    hold: Option<crate::netid::Hold>,
    /// Post-copy: the legs of the page tunnel, as the source opens them
    /// (`tunnel.rs`), until the restore takes them.
    legs: Option<(crate::tunnel::Legs, tokio_util::sync::CancellationToken)>,
    /// The base's pages once they arrived (`hash-pre-copy`, and post-copy
    /// on its base, whose fill then takes the pages it names from here).
    base: BaseSlot,
}

/// The base's pages, shared between the data streams that receive them
/// and the page tunnel that reads them.
type BaseSlot = Arc<std::sync::Mutex<Option<Arc<PageStore>>>>;

/// A restore that went well.
struct Running {
    container: ContainerInfo,
    /// When the container was first seen running: the downtime ends here.
    at: Instant,
    /// After a lazy restore, from running until all memory was in place.
    filled: Option<Duration>,
    /// The steps from the verified archive until it ran.
    steps: Vec<StepTime>,
}

/// The target's steps after the archive was verified: admission, the hook,
/// CRIU's restore (`criu_us`, its own figure) and the rest of the time
/// until the container ran (`total`), which is Podman's.
fn restore_steps(admit: Duration, hook: Duration, criu_us: Option<u64>, total: Duration) -> Vec<StepTime> {
    let ms = |d: Duration| d.as_millis() as u64;
    let rest = ms(total).saturating_sub(ms(admit) + ms(hook));
    let criu = criu_us.map_or(0, |us| (us / 1000).min(rest));
    vec![
        StepTime { step: FrozenStep::Admit, ms: ms(admit) },
        StepTime { step: FrozenStep::Hook, ms: ms(hook) },
        StepTime { step: FrozenStep::CriuRestore, ms: criu },
        StepTime { step: FrozenStep::PodmanRestore, ms: rest - criu },
    ]
}

/// The longest a post-copy fill may take: as long as the source's lazy
/// dump may live (`engine::CheckpointOpts::lazy`). A lost link is waited
/// out, paused, until the source's operator decides (`tern post-copy`).
const POST_COPY_LIMIT: Duration = Duration::from_secs(7 * 24 * 3600);

/// The page tunnel's local end, for the restore.
struct Tunnel {
    /// Where `criu lazy-pages --page-server` connects.
    addr: std::net::SocketAddr,
    task: tokio::task::JoinHandle<()>,
    /// Why the fill can never complete, once that is so.
    failed: tokio::sync::oneshot::Receiver<String>,
}

/// The longest a lazy restore may take to fill the memory: a minute, plus
/// a second for each 50 MiB (far slower than any local copy).
fn fill_limit(memory_bytes: u64) -> Duration {
    Duration::from_secs(60 + memory_bytes / (50 << 20))
}

impl Target<'_> {
    /// What the migration's mode means for its course (both sides ask).
    fn plan(&self) -> Plan {
        Plan::new(self.begin.mode, self.begin.post_copy_first)
    }

    async fn run(&mut self, conn: quinn::Connection, send: &mut quinn::SendStream, recv: &mut quinn::RecvStream) -> anyhow::Result<()> {
        let (needs_image, places) = match self.prepare().await? {
            Ok(p) => p,
            Err(why) => return refuse(send, why).await,
        };
        let inbox = Arc::new(Inbox::default());
        let stall = self.agent.cfg.faults.stall(crate::faults::StallPoint::Transfer, &self.agent.cfg.state_dir);
        let receiver = tokio::spawn(accept_data(conn, self.begin.id, self.plan(), places, self.faults(), stall, inbox.clone()));
        write_frame(send, &TargetMsg::Ready { needs_image }).await?;
        let (state, outcome) = self.converse(&inbox, send, recv, needs_image).await;
        receiver.abort();
        if let Err(e) = &outcome {
            self.source_lost(state, e).await;
        }
        outcome
    }

    /// Everything before the freeze: the container's folder, the traffic
    /// hold, what admission needs, the image's name. `Ok(Err(why))`: refused
    /// with that reason; nothing of it is left here.
    async fn prepare(&mut self) -> anyhow::Result<Result<(bool, Places), String>> {
        let engine = self.agent.engine.clone();
        let c = self.begin.container.clone();
        if let Some(existing) = engine.inspect(&c.name).await? {
            return Ok(Err(format!("a container named {} already exists here ({})", c.name, existing.state)));
        }
        if self.begin.mode == Mode::Invalid {
            return Ok(Err("the source asked for no migration mode".into()));
        }
        tokio::fs::create_dir_all(&self.staging).await?;
        // Soft-dirty pre-copy's final dump links to rounds on disk: its
        // images stay on disk too (inplace.rs).
        let bundle = match Bundle::prepare(engine.as_ref(), &self.agent.storage, &c, self.plan().checkpoint_in_ram()).await {
            Ok(b) => b,
            Err(e) => return Ok(Err(e.to_string())),
        };
        if let Err(e) =
            bundle.mark(&inplace::Marker { id: self.begin.id, source: self.begin.source.clone(), evacuation: self.begin.ticket.body.evacuation })
        {
            bundle.remove();
            return Ok(Err(format!("cannot write the folder's marker: {e}")));
        }
        if bundle.in_ram {
            self.agent.cfg.faults.fill_disk(&bundle.checkpoint_dir());
        }
        tracing::info!(dir = %bundle.dir.display(), in_ram = bundle.in_ram, "the container's folder is ready for its images");
        self.notes.extend(bundle.on_disk_because.iter().map(|why| format!("the images were held on disk: {why}")));
        let post_copy = self.begin.mode == Mode::PostCopy;
        if post_copy || self.begin.lazy_restore {
            let unable = match self.agent.facts().await {
                Ok(f) if f.lazy_restore.supported => None,
                Ok(f) => Some(f.lazy_restore.detail),
                Err(e) => Some(format!("this host's facts are unreadable ({e:#})")),
            };
            match unable {
                // Post-copy has no pages here to fall back on: lazily or not at all.
                Some(why) if post_copy => {
                    bundle.remove();
                    return Ok(Err(format!("post-copy needs lazy restores here: {why}")));
                }
                Some(why) => self.notes.push(format!("restored eagerly: {why}")),
                None => self.lazy = true,
            }
            if post_copy {
                self.legs = Some(self.agent.tunnels.open(self.begin.id, &self.begin.source));
            }
        }
        // Before the freeze, so that it costs no downtime.
        let unheld = |e: &dyn std::fmt::Display| format!("its traffic was not held during the restore (a peer may see a reset): {e}");
        match engine.networks().await {
            Ok(nets) => match crate::netid::Hold::install(&c, &nets, self.begin.id).await {
                Ok(h) => self.hold = h,
                Err(e) => self.notes.push(unheld(&e)),
            },
            Err(e) => self.notes.push(unheld(&e)),
        }
        let dir = bundle.dir.clone();
        let checkpoint = bundle.checkpoint_dir();
        let annotate = Some((dir.join(lazy::CONF), self.lazy));
        self.bundle = Some(bundle);
        self.host = Some(admission::host_paths(engine.as_ref(), &c, &dir).await);
        let needs_image = !engine.image_exists(&c.image_id).await?;
        if !needs_image {
            // Before the freeze: restore looks the image up by this name.
            if let Err(e) = self.name_image().await {
                return Ok(Err(e.to_string()));
            }
        }
        let limits = Limits::of(&self.agent.cfg.limits, &c);
        let base = self.base.clone();
        Ok(Ok((needs_image, Places { staging: self.staging.clone(), bundle: dir, checkpoint, annotate, limits, base })))
    }

    /// The conversation with the source, message by message through the
    /// target's machine, until it commits, aborts, or goes away. Returns
    /// the state it ended in.
    async fn converse(
        &mut self,
        inbox: &Inbox,
        send: &mut quinn::SendStream,
        recv: &mut quinn::RecvStream,
        needs_image: bool,
    ) -> (TargetState, anyhow::Result<()>) {
        let plan = self.plan();
        let mut state = TargetState::initial(needs_image);
        loop {
            let msg = match read_frame::<_, SourceMsg>(recv).await {
                Ok(Some(m)) => m,
                other => return (state, Err(anyhow::anyhow!("the source went away in state {state:?} ({other:?})"))),
            };
            let (next, action) = match step(plan, state, &msg) {
                Ok(x) => x,
                Err(e) => {
                    let _ = write_frame(send, &TargetMsg::Failed(Failure { phase: Phase::Prepare, message: e.to_string() })).await;
                    return (state, Err(e.into()));
                }
            };
            state = next;
            let reply = match action {
                Action::LoadImage(d) => self.load_image(inbox, d).await,
                Action::StoreRound { round, digest } => match self.verified(inbox, plan.round_kind(round), digest).await {
                    Ok(_) => TargetMsg::RoundStored { round },
                    Err(e) => TargetMsg::Failed(e.failure(Phase::PreCopy)),
                },
                Action::PrepareRounds { rounds } => match self.prepare_rounds(rounds).await {
                    Ok(bytes) => TargetMsg::RoundsPrepared { bytes },
                    Err(e) => TargetMsg::Failed(e.failure(Phase::PreCopy)),
                },
                Action::Restore { digest, rounds } => self.restore(inbox, digest, rounds).await,
                Action::Commit => {
                    tracing::info!(id = self.begin.id, "committed");
                    if let Some(t) = self.tentative.take() {
                        if let Err(e) = t.commit() {
                            tracing::warn!("removing the marker in {}: {e}", t.root.display());
                        }
                    }
                    let b = &self.begin;
                    committed_here(self.agent, &b.container.id, &b.container.name, &b.source, b.ticket.body.evacuation);
                    return (state, write_frame(send, &TargetMsg::Committed).await.map_err(Into::into));
                }
                Action::Abort(reason) => {
                    tracing::warn!(id = self.begin.id, "the source aborted: {reason}");
                    self.undo().await;
                    return (state, write_frame(send, &TargetMsg::Aborted).await.map_err(Into::into));
                }
            };
            // A reply that cannot be sent ends the conversation like a lost
            // source: never past what must be undone.
            if let Err(e) = write_frame(send, &reply).await {
                return (state, Err(anyhow::anyhow!("answering the source in state {state:?}: {e}")));
            }
            if matches!(reply, TargetMsg::Restored(_)) {
                self.agent.cfg.faults.exit_after_restored_sent();
            }
        }
    }

    /// The conversation died in `state`: keep a restored copy, tentative,
    /// for the source to settle, or undo ([`tern_proto::state::when_source_lost`]).
    async fn source_lost(&mut self, state: TargetState, e: &anyhow::Error) {
        match tern_proto::state::when_source_lost(state, self.restored) {
            tern_proto::state::SourceLost::KeepTentative => tracing::warn!(
                id = self.begin.id,
                "{e:#}; the restored container is kept, tentative, until {} settles the migration",
                self.begin.source
            ),
            tern_proto::state::SourceLost::Undo => {
                tracing::warn!("{e:#}; removing what this migration left here");
                self.undo().await;
            }
        }
    }

    fn faults(&self) -> ReceiveFaults {
        self.agent.cfg.faults.receive()
    }

    /// Waits for the data stream of `kind` and checks it against `digest`.
    async fn verified(&self, inbox: &Inbox, kind: DataKind, digest: Digest) -> Result<Staged, TargetError> {
        let staged = inbox.take(kind).await?;
        let got = staged.digest;
        if got != digest {
            return Err(TargetError::DigestMismatch { kind, got, sent: digest });
        }
        Ok(staged)
    }

    async fn load_image(&self, inbox: &Inbox, digest: Digest) -> TargetMsg {
        let r = async {
            let path = self.verified(inbox, DataKind::Image, digest).await?.path;
            self.agent.engine.image_load(&path).await?;
            let _ = tokio::fs::remove_file(&path).await;
            self.name_image().await?;
            Ok::<_, TargetError>(())
        }
        .await;
        match r {
            Ok(()) => TargetMsg::ImageLoaded,
            Err(e) => TargetMsg::Failed(e.failure(Phase::Image)),
        }
    }

    async fn restore(&mut self, inbox: &Inbox, digest: Digest, rounds: u32) -> TargetMsg {
        let t0 = Instant::now();
        let kind = self.plan().final_kind(rounds);
        let staged = match self.verified(inbox, kind, digest).await {
            Ok(s) => s,
            Err(e) => return TargetMsg::Failed(e.failure(Phase::Verify)),
        };
        let verify_ms = t0.elapsed().as_millis() as u64;
        let t1 = Instant::now();
        match self.restore_and_confirm(&staged).await {
            Ok(run) => {
                let restore_ms = (run.at - t1).as_millis() as u64;
                let images_in_ram = self.bundle.as_ref().is_some_and(|b| b.in_ram);
                // Podman owns the folder now; the images can go. The marker
                // stays until the commit.
                if let Some(b) = self.bundle.take() {
                    b.after_restore();
                    self.tentative = Some(b.tentative());
                }
                let confirm_ms = run.at.elapsed().as_millis() as u64;
                let memory_fill_ms = run.filled.map(|d| d.as_millis() as u64);
                tracing::info!(name = %run.container.name, restore_ms, confirm_ms, ?memory_fill_ms, "restored and running");
                let mut steps = vec![StepTime { step: FrozenStep::Verify, ms: verify_ms }];
                steps.extend(run.steps);
                TargetMsg::Restored(RestoreInfo {
                    verify_ms,
                    restore_ms,
                    confirm_ms,
                    memory_fill_ms,
                    steps,
                    images_in_ram,
                    notes: std::mem::take(&mut self.notes),
                    container: run.container,
                })
            }
            Err(e) if self.begin.mode == Mode::PostCopy && self.restored && matches!(e, TargetError::LazyPages(_) | TargetError::PageTunnel(_)) => {
                // It ran here on part of its memory: paused, not removed,
                // until the source settles (its copy may be gone).
                let name = &self.begin.container.name;
                if let Err(pe) = self.agent.engine.pause(name, true).await {
                    tracing::warn!("pausing {name}: {pe}");
                }
                if let Some(b) = self.bundle.take() {
                    self.tentative = Some(b.tentative());
                }
                TargetMsg::Failed(e.failure(Phase::Restore))
            }
            Err(e) => {
                self.undo().await;
                TargetMsg::Failed(e.failure(Phase::Restore))
            }
        }
    }

    /// Links the stored rounds into the chain the final dump's `parent`
    /// reaches (inplace.rs). Returns their size.
    async fn prepare_rounds(&self, rounds: u32) -> Result<u64, TargetError> {
        let bundle = self.bundle.as_ref().ok_or(TargetError::FolderGone)?;
        bundle.link_rounds(rounds).map_err(|source| TargetError::LinkRounds { rounds, dir: bundle.dir.clone(), source })?;
        let bytes = (1..=rounds)
            .flat_map(|n| std::fs::read_dir(bundle.round_dir(n)).into_iter().flatten().flatten())
            .filter_map(|e| e.metadata().ok())
            .filter(|m| m.is_file())
            .map(|m| m.len())
            .sum();
        tracing::info!(rounds, bytes, "rounds ready for the restore");
        Ok(bytes)
    }

    /// Restores (lazily when it can: `lazy.rs`), then checks the container
    /// runs now and still runs a moment later, and after a lazy restore that
    /// all its memory came in: a process that dies right after restore is
    /// not a success.
    async fn restore_and_confirm(&mut self, staged: &Staged) -> Result<Running, TargetError> {
        if self.agent.cfg.faults.fail_restore() {
            return Err(TargetError::InjectedRestoreFailure);
        }
        let folder = self.bundle.as_ref().map(|b| b.dir.clone()).ok_or(TargetError::FolderGone)?;
        let started = Instant::now();
        let host = self.host.as_ref().ok_or(TargetError::FolderGone)?;
        admission::admit(&self.agent.cfg.admission, &self.begin.container, host, &staged.path).await?;
        let admit = started.elapsed();
        let engine = self.agent.engine.clone();
        let name = self.begin.container.name.clone();
        let opts = CheckpointOpts { tcp_established: self.begin.tcp_established, ..Default::default() };
        let mut daemon = None;
        let mut tunnel_failed = None;
        let post_copy = self.begin.mode == Mode::PostCopy;
        if post_copy && !staged.annotated {
            return Err(TargetError::PostCopy(
                "its spec.dump names a CRIU options file of its own (org.criu.config), so it cannot be restored lazily".into(),
            ));
        }
        if staged.annotated {
            if post_copy {
                let t = self.open_tunnel().await?;
                match self.agent.criu.lazy_pages(&folder, Some(t.addr)).await {
                    Ok(d) => daemon = Some(d),
                    Err(e) => {
                        t.task.abort();
                        return Err(TargetError::PostCopy(e.to_string()));
                    }
                }
                tunnel_failed = Some(t.failed);
            } else if self.lazy {
                match self.agent.criu.lazy_pages(&folder, None).await {
                    Ok(d) => daemon = Some(d),
                    Err(e) => self.notes.push(format!("restored eagerly: {e}")),
                }
            }
            // runc reads it at the restore: `lazy-pages` only with a daemon to serve them.
            // The hold ends the moment CRIU unlocks the container's network.
            let script = match &self.hold {
                Some(h) => match h.unlock_script(&folder) {
                    Ok(p) => Some(p),
                    Err(e) => {
                        tracing::warn!("the traffic hold ends after the restore, not at CRIU's unlock: {e}");
                        None
                    }
                },
                None => None,
            };
            lazy::write_conf(&folder, daemon.is_some(), script.as_deref())
                .map_err(|source| TargetError::WriteConf { path: folder.join(lazy::CONF), source })?;
        } else if self.lazy {
            self.notes.push("restored eagerly: its spec.dump names a CRIU options file of its own (org.criu.config), or could not be read".into());
        }
        // The peers to wake once it runs, while the images are at hand.
        let peers = match self.bundle.as_ref().map(|b| crate::netid::peers_in(&b.checkpoint_dir())) {
            Some(Ok(p)) => p,
            Some(Err(e)) => {
                self.notes.push(format!("its TCP peers were not woken after the restore: {e}"));
                Vec::new()
            }
            None => Vec::new(),
        };
        // The operator's hook (a route, a cloud's address) before the
        // container runs here: should it fail, nothing ran here and the
        // source takes over again cleanly. Once the container has talked to
        // its peers from here, going back would lose what it said.
        let ctx = crate::netid::HookContext {
            event: crate::netid::HookEvent::Arrived,
            container: &self.begin.container,
            host: &self.agent.cfg.name,
            peer: &self.begin.source,
            migration: self.begin.id,
        };
        if let Some(stall) = self.agent.cfg.faults.stall(crate::faults::StallPoint::Restore, &self.agent.cfg.state_dir) {
            stall.wait().await;
        }
        let hook_started = Instant::now();
        crate::netid::run_hook(&self.agent.cfg.network, &ctx).await.map_err(TargetError::Hook)?;
        let hook = hook_started.elapsed();
        self.restored = true;
        let restored = engine.restore_import(&staged.path, opts).await;
        if staged.annotated {
            // CRIU has read its options: from now on the host's apply.
            lazy::settle_conf(&folder);
        }
        if let Err(e) = restored {
            if post_copy || daemon.take().is_none() {
                return Err(TargetError::Restore { source: e, kept_log: self.keep_criu_log(&folder) });
            }
            // Once more, eagerly, from the images still in place: Podman
            // made the container before CRIU failed.
            tracing::warn!("the lazy restore failed: {e}; restoring eagerly");
            self.notes.push(format!("restored eagerly: the lazy restore failed ({e})"));
            match engine.inspect(&name).await {
                Ok(Some(c)) if c.id == self.begin.container.id => engine
                    .restore_local(&name, opts)
                    .await
                    .map_err(|e2| TargetError::EagerRestore { source: e2, lazy: e, kept_log: self.keep_criu_log(&folder) })?,
                _ => return Err(TargetError::Restore { source: e, kept_log: self.keep_criu_log(&folder) }),
            }
        }
        let at = Instant::now();
        // CRIU writes its statistics into its work folder, the container's.
        let steps = restore_steps(admit, hook, crate::criu_stats::read_restore_us(&folder), at - started);
        self.take_over_address(&name, peers).await;
        self.agent.cfg.faults.exit_after_restore();
        #[cfg(feature = "fault-injection")]
        if self.agent.cfg.faults.kill_lazy_daemon() {
            if let Some(d) = &mut daemon {
                d.kill();
            }
        }
        let container = self.confirm(&name).await?;
        tokio::time::sleep(self.agent.cfg.faults.delay_restored()).await;
        let filled = match (daemon, tunnel_failed) {
            // Post-copy: the pages cross a link that may drop and come back
            // for as long as the source keeps them; the fill ends with the
            // daemon, or fails with the tunnel.
            (Some(d), Some(mut failed)) => {
                let fill = d.finish(POST_COPY_LIMIT);
                tokio::pin!(fill);
                tokio::select! {
                    r = &mut fill => r.map_err(TargetError::LazyPages)?,
                    why = &mut failed => match why {
                        Ok(why) => return Err(TargetError::PageTunnel(why)),
                        // The tunnel ended whole: the daemon ends too.
                        Err(_) => fill.await.map_err(TargetError::LazyPages)?,
                    },
                }
                Some(at.elapsed())
            }
            (Some(d), None) => {
                d.finish(fill_limit(self.begin.container.memory_bytes)).await.map_err(TargetError::LazyPages)?;
                Some(at.elapsed())
            }
            (None, _) => None,
        };
        Ok(Running { container, at, filled, steps })
    }

    /// Post-copy: the local end of the page tunnel that `criu lazy-pages`
    /// connects to, and the task that serves it (`tunnel.rs`). While the
    /// link is lost, the container is paused here: its page faults would
    /// wait anyway, and nothing of it runs on half its memory.
    async fn open_tunnel(&mut self) -> Result<Tunnel, TargetError> {
        let (legs, given_up) = self.legs.take().ok_or_else(|| TargetError::PostCopy("the page tunnel was not opened".into()))?;
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0))
            .await
            .map_err(|e| TargetError::PostCopy(format!("listening for criu lazy-pages: {e}")))?;
        let addr = listener.local_addr().map_err(|e| TargetError::PostCopy(e.to_string()))?;
        let (news_tx, mut news) = tokio::sync::mpsc::unbounded_channel();
        let (failed_tx, failed) = tokio::sync::oneshot::channel();
        let (engine, name, id) = (self.agent.engine.clone(), self.begin.container.name.clone(), self.begin.id);
        let base = self.base.lock().unwrap().clone();
        let task = tokio::spawn(async move {
            let serve = crate::tunnel::serve_target(listener, legs, given_up, news_tx, base);
            tokio::pin!(serve);
            let mut paused = false;
            let mut failed_tx = Some(failed_tx);
            loop {
                tokio::select! {
                    r = &mut serve => {
                        // Whole, it runs on; on a failed tunnel it stays
                        // paused, short of pages, until the move is settled.
                        let hold = match r {
                            Ok(bytes) => {
                                tracing::info!(id, bytes, "every page came through the tunnel");
                                false
                            }
                            Err(e) => {
                                tracing::error!(id, "the page tunnel failed: {e}; {name} stays paused until the migration is settled");
                                true
                            }
                        };
                        if hold != paused {
                            if let Err(e) = engine.pause(&name, hold).await {
                                tracing::warn!(id, "pausing or unpausing {name}: {e}");
                            }
                        }
                        return;
                    }
                    Some(n) = news.recv() => {
                        let lost = n != crate::tunnel::News::Back;
                        if lost != paused {
                            match engine.pause(&name, lost).await {
                                Ok(()) => {
                                    paused = lost;
                                    tracing::warn!(id, "{name} {} while the page tunnel {}", if lost { "paused" } else { "resumes" }, if lost { "is down" } else { "is back" });
                                }
                                Err(e) => tracing::warn!(id, "pausing {name}: {e}"),
                            }
                        }
                        // The restore stops waiting for a fill that cannot
                        // complete: the container stays paused, tentative.
                        if let crate::tunnel::News::Failed(why) = n {
                            if let Some(tx) = failed_tx.take() {
                                let _ = tx.send(why);
                            }
                        }
                    }
                }
            }
        });
        Ok(Tunnel { addr, task, failed })
    }

    /// The container runs here now: its address is announced from here and
    /// its peers woken (netid.rs).
    async fn take_over_address(&mut self, name: &str, peers: Vec<crate::netid::Peer>) {
        let (pid, ()) = tokio::join!(self.agent.engine.main_pid(name), self.release_hold());
        let pid = match pid {
            Ok(p) => p,
            Err(e) => {
                self.notes.push(format!("its address was not announced: {e}"));
                0
            }
        };
        if pid > 0 {
            let done = crate::netid::announce(pid, peers).await;
            tracing::info!(addresses = ?done.addresses, peers_woken = done.peers_woken, problems = ?done.problems, "address announced");
            self.notes.extend(done.problems.into_iter().map(|p| format!("network: {p}")));
        }
    }

    /// Keeps CRIU's log of a failed restore in the agent's state folder:
    /// the container's folder goes with the undo. Returns the words to add
    /// to the error.
    fn keep_criu_log(&self, folder: &std::path::Path) -> String {
        let dir = self.agent.cfg.state_dir.join("logs");
        let kept = dir.join(format!("{}-{}-restore.log", self.begin.container.name, self.begin.id));
        match std::fs::create_dir_all(&dir).and_then(|()| std::fs::copy(folder.join("restore.log"), &kept)) {
            Ok(_) => format!(" (CRIU's log is kept at {} on {})", kept.display(), self.agent.cfg.name),
            Err(_) => String::new(),
        }
    }

    async fn release_hold(&mut self) {
        if let Some(h) = self.hold.take() {
            if let Err(e) = h.release().await {
                tracing::error!("{e}; remove the table by hand (nft delete table netdev ...) or the container's address stays unreachable here");
                self.notes.push(format!("its traffic hold could not be removed: {e}"));
            }
        }
    }

    /// The container runs now, and [`CONFIRM_MS`] later.
    async fn confirm(&self, name: &str) -> Result<ContainerInfo, TargetError> {
        let mut seen = None;
        for wait in [0u64, CONFIRM_MS] {
            tokio::time::sleep(Duration::from_millis(wait)).await;
            match self.agent.engine.inspect(name).await? {
                Some(c) if c.is_running() => seen = Some(c),
                Some(c) => return Err(TargetError::NotRunning(c.state)),
                None => return Err(TargetError::Vanished),
            }
        }
        seen.ok_or(TargetError::NeverSeenRunning)
    }

    /// Gives the image the name the container was created from: `restore
    /// --import` looks it up by name, and a loaded archive may carry none.
    async fn name_image(&self) -> Result<(), TargetError> {
        let c = &self.begin.container;
        if c.image.is_empty() || c.image.contains("<none>") {
            return Ok(());
        }
        // Only the image whose ID was announced, under a valid name (admission.rs).
        admission::check_image(&c.image, &c.image_id).map_err(TargetError::ImageRefused)?;
        if !self.agent.engine.image_exists(&c.image_id).await? {
            return Err(TargetError::ImageRefused(admission::ImageRefusal::Absent(c.image_id.clone())));
        }
        self.agent.engine.image_tag(&c.image_id, &c.image).await.map_err(|source| TargetError::NameImage { image: c.image.clone(), source })
    }

    /// Removes the container this migration restored here, if any, and
    /// the folder it made.
    async fn undo(&mut self) {
        let name = &self.begin.container.name;
        if self.restored {
            // The tmpfs first: Podman cannot remove a folder with a mount in it.
            if let Some(b) = &self.bundle {
                b.release_ram();
            }
            match self.agent.engine.inspect(name).await {
                Ok(Some(c)) if c.id == self.begin.container.id => {
                    // Its sockets must not reset the peers of the copy
                    // that runs on at the source.
                    crate::netid::silence(c.pid).await;
                    if let Err(e) = self.agent.engine.remove(name, true).await {
                        tracing::error!("could not remove the half-migrated {name}: {e}");
                    }
                }
                _ => {}
            }
            self.restored = false;
        }
        if let Some(b) = self.bundle.take() {
            b.remove();
        }
        if let Some(t) = self.tentative.take() {
            t.remove();
        }
    }
}

/// What this host keeps of a move that committed here, by the conversation
/// or by the source's later verdict: a container its evacuation record
/// holds is back; one an evacuation brought is recorded with its origin.
fn committed_here(agent: &Agent, container_id: &str, name: &str, source: &str, evacuation: bool) {
    crate::evacuation::came_back(&agent.cfg.state_dir, container_id, name);
    if evacuation {
        crate::arrivals::arrived(&agent.cfg.state_dir, container_id, name, source);
    }
}

/// Carries out the source's verdict on a migration whose conversation
/// ended before `Commit` or `Abort` (module docs). Only the source the
/// marker names may settle it.
pub async fn resolve(agent: &Agent, peer: &str, req: ResolveRequest) -> Result<Resolution, TargetError> {
    let name = &req.container;
    // A conversation still under way for it ends first (its restore may be
    // running): the source asks again.
    // A post-copy restore waiting for pages from a source that gave the
    // move up stops waiting: the source asks again once it ended.
    if req.verdict == Verdict::Abort && agent.tunnels.give_up(req.id, peer) {
        tracing::warn!(id = req.id, container = %name, "{peer} gave the post-copy move up: its copy here, paused short of pages, goes");
    }
    let Some(_guard) = agent.claim(name) else { return Ok(Resolution::Busy) };
    // Only the host that moved it here (the ticket's source, recorded at
    // the Receive) learns anything, even whether it exists.
    if agent.received_from(&req.container_id).as_deref() != Some(peer) {
        tracing::warn!(%peer, container = %name, "refused Resolve: no migration of it from {peer} is recorded here");
        return Err(TargetError::NotYours { peer: peer.to_string(), id: req.id });
    }
    let engine = agent.engine.as_ref();
    let tentative = inplace::tentative(engine, &agent.storage, &req.container_id).await?;
    if let Some(m) = tentative.as_ref().and_then(|t| t.marker.as_ref()) {
        if m.id != req.id || m.source != peer {
            return Err(TargetError::NotYours { peer: peer.to_string(), id: req.id });
        }
    }
    let here = engine.inspect(name).await?.filter(|c| c.id == req.container_id);
    let resolution = match (here, tentative, req.verdict) {
        (Some(_), None, _) => {
            // Committed already, or never a migration's: no verdict removes it.
            Resolution::Kept
        }
        (Some(_), Some(t), Verdict::Commit) => {
            let evacuation = t.marker.as_ref().is_some_and(|m| m.evacuation);
            t.commit().map_err(|source| TargetError::Marker { path: t.root.clone(), source })?;
            tracing::info!(id = req.id, %name, source = %peer, "committed by the source's verdict");
            committed_here(agent, &req.container_id, name, peer, evacuation);
            Resolution::Kept
        }
        (Some(c), Some(t), Verdict::Abort) => {
            tracing::warn!(id = req.id, %name, source = %peer, "the source never heard it was restored here: removing the tentative copy");
            // Its sockets must not reset the peers of the copy that runs on at the source.
            crate::netid::silence(c.pid).await;
            engine.remove(name, true).await?;
            t.remove();
            Resolution::Absent
        }
        (None, t, _) => {
            if let Some(t) = t {
                t.remove();
            }
            Resolution::Absent
        }
        (_, _, Verdict::Invalid) => return Err(TargetError::InvalidVerdict),
    };
    Ok(resolution)
}

/// Where a migration's data streams go.
struct Places {
    /// The staging folder (image, base, the rest of the final archive).
    staging: PathBuf,
    /// The container's folder (inplace.rs).
    bundle: PathBuf,
    /// Its `checkpoint/`, where the final dump's images go.
    checkpoint: PathBuf,
    /// `spec.dump`'s CRIU options file ([`unpack::TarSplit::annotating`]).
    annotate: Option<(PathBuf, bool)>,
    /// What each stream may take ([`archive::Limits`]).
    limits: Limits,
    /// Where the base's pages go once they arrived.
    base: BaseSlot,
}

/// Accepts the migration's data streams and stages each, posting the result
/// to `inbox`.
async fn accept_data(
    conn: quinn::Connection,
    id: MigrationId,
    plan: Plan,
    places: Places,
    faults: ReceiveFaults,
    stall: Option<crate::faults::Stall>,
    inbox: Arc<Inbox>,
) {
    let staging = &places.staging;
    let unpacked = || ArchiveOut::Unpack { dir: places.checkpoint.clone(), rest: staging.join(REST_TAR), annotate: places.annotate.clone() };
    let rest = |r: Received| Staged { path: staging.join(REST_TAR), digest: r.digest, annotated: r.split.is_some_and(|s| s.annotated) };
    let done = Arc::new(AtomicU64::new(0));
    let mode = plan.mode;
    loop {
        let Ok(mut recv) = conn.accept_uni().await else { break };
        let (data, image) = (places.limits.data, places.limits.image);
        let header = match tokio::time::timeout(data.stall, transfer::accept_header(&mut recv))
            .await
            .unwrap_or(Err(TransferError::ReceiveStalled(data.stall)))
        {
            Ok(h) if h.id == id => h,
            Ok(h) => {
                tracing::warn!("a data stream for migration {} arrived on migration {id}'s connection", h.id);
                continue;
            }
            Err(e) => {
                tracing::warn!("bad data stream header: {e}");
                continue;
            }
        };
        if let (Some(stall), DataKind::Checkpoint | DataKind::CheckpointDelta { .. }) = (&stall, header.kind) {
            stall.wait().await;
        }
        let arrived: Arrived = match header.kind {
            DataKind::Image => {
                let path = staging.join("image.tar");
                receive_records(recv, ArchiveOut::File(path.clone()), None, false, done.clone(), ReceiveFaults::default(), image)
                    .await
                    .map(|r| Staged { path, digest: r.digest, annotated: false })
                    .map_err(TargetError::from)
            }
            DataKind::Checkpoint => {
                receive_records(recv, unpacked(), None, false, done.clone(), faults, data).await.map(rest).map_err(TargetError::from)
            }
            DataKind::Round(n) if plan.rounds == Rounds::SoftDirty && (1..=10_000).contains(&n) => {
                let dir = places.bundle.join(crate::PRECOPY_DIR).join(n.to_string());
                transfer::receive_fileset(recv, &dir, done.clone(), data)
                    .await
                    .map(|(digest, _)| Staged { path: dir, digest, annotated: false })
                    .map_err(TargetError::from)
            }
            // Where the base's pages sit in base.tar: one base per migration.
            DataKind::Base if plan.rounds == Rounds::Base && places.base.lock().unwrap().is_none() => {
                let path = staging.join("base.tar");
                match receive_records(recv, ArchiveOut::FileSynced(path.clone()), None, true, done.clone(), ReceiveFaults::default(), data).await {
                    Ok(r) => match PageStore::open(&path, r.offsets.unwrap_or_default()) {
                        Ok(store) => {
                            *places.base.lock().unwrap() = Some(Arc::new(store));
                            Ok(Staged { path, digest: r.digest, annotated: false })
                        }
                        Err(e) => Err(TargetError::BaseUnreadable(e)),
                    },
                    Err(e) => Err(e.into()),
                }
            }
            DataKind::CheckpointDelta { base: 1 } if mode == Mode::HashPreCopy => {
                let base = places.base.lock().unwrap().clone();
                match base {
                    Some(store) => {
                        receive_records(recv, unpacked(), Some(store), false, done.clone(), faults, data).await.map(rest).map_err(TargetError::from)
                    }
                    None => Err(TargetError::NoBase),
                }
            }
            other => {
                tracing::warn!("refusing a {other:?} data stream in a {} migration", mode.as_str());
                let _ = recv.stop(1u32.into());
                continue;
            }
        };
        if let Err(e) = &arrived {
            tracing::warn!(kind = ?header.kind, "receiving data failed: {e}");
        }
        inbox.post(header.kind, arrived);
    }
    inbox.close();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn podmans_share_of_the_restore_is_what_the_others_leave() {
        let ms = Duration::from_millis;
        let steps = restore_steps(ms(30), ms(10), Some(250_000), ms(1000));
        let got: Vec<(FrozenStep, u64)> = steps.iter().map(|s| (s.step, s.ms)).collect();
        assert_eq!(got, [(FrozenStep::Admit, 30), (FrozenStep::Hook, 10), (FrozenStep::CriuRestore, 250), (FrozenStep::PodmanRestore, 710)]);
        // No stats-restore, or a figure past the whole: never more than the rest.
        assert_eq!(restore_steps(ms(0), ms(0), None, ms(500))[3].ms, 500);
        assert_eq!(restore_steps(ms(0), ms(0), Some(9_000_000), ms(500))[2].ms, 500);
    }
}
