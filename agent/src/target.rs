//! The target's side of a migration: stage, verify, restore, confirm.
//!
//! The legal order of the source's messages is [`tern_proto::state`]; this
//! module does the IO for each step. Data streams are received as they come
//! into the staging folder and posted to an [`Inbox`] keyed by what they
//! carry; the control conversation takes each one when the source announces
//! its digest.
//!
//! ```text
//!  staging/incoming-<id>/
//!    image.tar                 the image, when shipped
//!    pre-checkpoint.tar        soft-dirty rounds, appended as they arrive, for Podman's
//!                              --import-previous (below); closed by RoundsDone
//!    base.tar                  content-addressed pre-copy's base archive
//!    checkpoint.tar            the final archive (rebuilt from deltas in hash mode)
//! ```
//!
//! Podman unpacks `--import-previous` into the new container's folder;
//! CRIU then follows the final dump's `parent` link (`../pre-checkpoint`)
//! from inside the restored task's mount namespace, so every link must be
//! relative and stay inside that folder:
//!
//! ```text
//!  pre-checkpoint -> tern-precopy/3
//!  tern-precopy/1/...   tern-precopy/2/... + parent -> ../1   tern-precopy/3/... + parent -> ../2
//! ```
//!
//! Anything restored or staged here is removed on `Abort`, on a failure
//! before `Restored`, or when the source vanishes before the switchover.
//! After `Restored` the container is the user's only running copy and is
//! kept whatever happens to the connection.

use crate::engine::CheckpointOpts;
use crate::pages::PageStore;
use crate::server::Agent;
use crate::transfer::{self, ReceiveFaults};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tern_proto::facts::ContainerInfo;
use tern_proto::frame::{read_frame, write_frame};
use tern_proto::state::{step, Action, TargetState};
use tern_proto::*;
use tokio::sync::Notify;

/// How long a restored container must keep running before it counts.
const CONFIRM_MS: u64 = 300;
/// The archive of soft-dirty rounds, for Podman's `--import-previous`.
const PRE_CHECKPOINT_TAR: &str = "pre-checkpoint.tar";

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
    let Some(_guard) = agent.claim(&name) else {
        return refuse(&mut send, format!("a migration of {name} is already under way here")).await;
    };
    let staging = agent.cfg.state_dir.join(format!("incoming-{}", begin.id));
    let mut t = Target { agent, begin, staging, restored: false };
    let result = t.run(conn, &mut send, &mut recv).await;
    let _ = tokio::fs::remove_dir_all(&t.staging).await;
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

/// What a data stream left in the staging folder: the file or folder, and
/// the digest of what arrived.
type Arrived = Result<(PathBuf, Digest), String>;

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
                return Err(format!("the {kind:?} data stream never arrived"));
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
}

impl Target<'_> {
    async fn run(&mut self, conn: quinn::Connection, send: &mut quinn::SendStream, recv: &mut quinn::RecvStream) -> anyhow::Result<()> {
        let engine = &self.agent.engine;
        let c = &self.begin.container;
        if let Some(existing) = engine.inspect(&c.name).await? {
            return refuse(send, format!("a container named {} already exists here ({})", c.name, existing.state)).await;
        }
        if self.begin.mode == Mode::Invalid {
            return refuse(send, "the source asked for no migration mode".into()).await;
        }
        tokio::fs::create_dir_all(self.staging.join("rounds")).await?;
        let needs_image = !engine.image_exists(&c.image_id).await?;
        if !needs_image {
            // Before the freeze: restore looks the image up by this name.
            if let Err(e) = self.name_image().await {
                return refuse(send, e).await;
            }
        }
        let inbox = Arc::new(Inbox::default());
        let receiver = tokio::spawn(accept_data(conn, self.begin.id, self.begin.mode, self.staging.clone(), self.faults(), inbox.clone()));
        write_frame(send, &TargetMsg::Ready { needs_image }).await?;

        let mode = self.begin.mode;
        let mut state = TargetState::initial(needs_image);
        let outcome = loop {
            let msg = match read_frame::<_, SourceMsg>(recv).await {
                Ok(Some(m)) => m,
                other => break Err(anyhow::anyhow!("the source went away in state {state:?} ({other:?})")),
            };
            let (next, action) = match step(mode, state, &msg) {
                Ok(x) => x,
                Err(e) => {
                    let _ = write_frame(send, &TargetMsg::Failed(Failure { phase: Phase::Prepare, message: e.to_string() })).await;
                    break Err(e.into());
                }
            };
            state = next;
            let reply = match action {
                Action::LoadImage(d) => self.load_image(&inbox, d).await,
                Action::StoreRound { round, digest } => match self.verified(&inbox, round_kind(mode, round), digest).await {
                    Ok(_) => TargetMsg::RoundStored { round },
                    Err(message) => TargetMsg::Failed(Failure { phase: Phase::PreCopy, message }),
                },
                Action::PrepareRounds { rounds } => match self.prepare_rounds(rounds).await {
                    Ok(bytes) => TargetMsg::RoundsPrepared { bytes },
                    Err(message) => TargetMsg::Failed(Failure { phase: Phase::PreCopy, message }),
                },
                Action::Restore { digest, rounds } => self.restore(&inbox, digest, rounds).await,
                Action::Commit => {
                    tracing::info!(id = self.begin.id, "committed");
                    write_frame(send, &TargetMsg::Committed).await?;
                    break Ok(());
                }
                Action::Abort(reason) => {
                    tracing::warn!(id = self.begin.id, "the source aborted: {reason}");
                    self.undo().await;
                    write_frame(send, &TargetMsg::Aborted).await?;
                    break Ok(());
                }
            };
            write_frame(send, &reply).await?;
        };
        receiver.abort();
        if let Err(e) = &outcome {
            if state == TargetState::Restored && self.restored {
                tracing::warn!("{e:#}; the restored container is kept: it is the running copy");
            } else {
                tracing::warn!("{e:#}; removing what this migration left here");
                self.undo().await;
            }
        }
        outcome
    }

    fn faults(&self) -> ReceiveFaults {
        let f = &self.agent.cfg.faults;
        ReceiveFaults { exit_after_bytes: f.exit_after_checkpoint_bytes, corrupt: f.corrupt_checkpoint }
    }

    /// Waits for the data stream of `kind` and checks it against `digest`.
    async fn verified(&self, inbox: &Inbox, kind: DataKind, digest: Digest) -> Result<PathBuf, String> {
        let (path, got) = inbox.take(kind).await?;
        if got != digest {
            return Err(format!(
                "the {kind:?} data does not match its digest: received {} bytes with blake3 {}, the source sent {} bytes with blake3 {}",
                got.bytes,
                got.hex(),
                digest.bytes,
                digest.hex()
            ));
        }
        Ok(path)
    }

    async fn load_image(&self, inbox: &Inbox, digest: Digest) -> TargetMsg {
        let r = async {
            let path = self.verified(inbox, DataKind::Image, digest).await?;
            self.agent.engine.image_load(&path).await.map_err(|e| e.to_string())?;
            let _ = tokio::fs::remove_file(&path).await;
            self.name_image().await?;
            Ok::<_, String>(())
        }
        .await;
        match r {
            Ok(()) => TargetMsg::ImageLoaded,
            Err(message) => TargetMsg::Failed(Failure { phase: Phase::Image, message }),
        }
    }

    async fn restore(&mut self, inbox: &Inbox, digest: Digest, rounds: u32) -> TargetMsg {
        let t0 = Instant::now();
        let kind = match self.begin.mode {
            Mode::HashPreCopy => DataKind::CheckpointDelta { base: rounds },
            _ => DataKind::Checkpoint,
        };
        let path = match self.verified(inbox, kind, digest).await {
            Ok(p) => p,
            Err(message) => return TargetMsg::Failed(Failure { phase: Phase::Verify, message }),
        };
        let previous = (self.begin.mode == Mode::PreCopy && rounds > 0).then(|| self.staging.join(PRE_CHECKPOINT_TAR));
        let verify_ms = t0.elapsed().as_millis() as u64;
        let t1 = Instant::now();
        match self.restore_and_confirm(&path, previous.as_deref()).await {
            Ok((container, running_at)) => {
                let restore_ms = (running_at - t1).as_millis() as u64;
                let confirm_ms = running_at.elapsed().as_millis() as u64;
                tracing::info!(name = %container.name, restore_ms, confirm_ms, "restored and running");
                TargetMsg::Restored(RestoreInfo { verify_ms, restore_ms, confirm_ms, container })
            }
            Err(message) => {
                self.undo().await;
                TargetMsg::Failed(Failure { phase: Phase::Restore, message })
            }
        }
    }

    /// Closes the archive the rounds were appended to: the links of the
    /// chain (module docs) and the end-of-archive blocks. Returns its size.
    async fn prepare_rounds(&self, rounds: u32) -> Result<u64, String> {
        let dir = crate::PRECOPY_DIR;
        let mut links: Vec<(String, String)> = (2..=rounds).map(|n| (format!("{dir}/{n}/parent"), format!("../{}", n - 1))).collect();
        links.push(("pre-checkpoint".into(), format!("{dir}/{rounds}")));
        let tar = self.staging.join(PRE_CHECKPOINT_TAR);
        let bytes = tokio::task::spawn_blocking(move || transfer::finish_tar(&tar, &links))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| format!("closing the archive of the rounds: {e}"))?;
        tracing::info!(rounds, bytes, "rounds ready for the restore");
        Ok(bytes)
    }

    /// Restores, then checks the container runs now and still runs a moment
    /// later: a process that dies right after restore is not a success.
    /// Returns the container and when it was first seen running.
    async fn restore_and_confirm(&mut self, path: &Path, previous: Option<&Path>) -> Result<(ContainerInfo, Instant), String> {
        if self.agent.cfg.faults.fail_restore {
            return Err("injected failure: this agent is configured with faults.fail_restore".into());
        }
        let engine = &self.agent.engine;
        let name = &self.begin.container.name;
        self.restored = true;
        let opts = CheckpointOpts { tcp_established: self.begin.tcp_established, ..Default::default() };
        engine.restore_import(path, previous, opts).await.map_err(|e| e.to_string())?;
        let running_at = Instant::now();
        for wait in [0u64, CONFIRM_MS] {
            tokio::time::sleep(Duration::from_millis(wait)).await;
            match engine.inspect(name).await.map_err(|e| e.to_string())? {
                Some(c) if c.is_running() => {
                    if wait > 0 {
                        return Ok((c, running_at));
                    }
                }
                Some(c) => return Err(format!("the restored container is {}, not running", c.state)),
                None => return Err("the restored container is not there".into()),
            }
        }
        unreachable!("the loop returns on its last pass")
    }

    /// Gives the image the name the container was created from: `restore
    /// --import` looks it up by name, and a loaded archive may carry none.
    async fn name_image(&self) -> Result<(), String> {
        let c = &self.begin.container;
        if c.image.is_empty() || c.image.contains("<none>") {
            return Ok(());
        }
        self.agent
            .engine
            .image_tag(&c.image_id, &c.image)
            .await
            .map_err(|e| format!("naming the image {} here: {e}", c.image))
    }

    /// Removes the container this migration restored here, if any.
    async fn undo(&mut self) {
        if !self.restored {
            return;
        }
        let name = &self.begin.container.name;
        match self.agent.engine.inspect(name).await {
            Ok(Some(c)) if c.id == self.begin.container.id => {
                if let Err(e) = self.agent.engine.remove(name, true).await {
                    tracing::error!("could not remove the half-migrated {name}: {e}");
                }
            }
            _ => {}
        }
        self.restored = false;
    }
}

/// Accepts the migration's data streams and stages each, posting the result
/// to `inbox`.
async fn accept_data(conn: quinn::Connection, id: MigrationId, mode: Mode, staging: PathBuf, faults: ReceiveFaults, inbox: Arc<Inbox>) {
    let done = Arc::new(AtomicU64::new(0));
    // Where the base's pages sit in base.tar (content-addressed pre-copy).
    let mut base_pages: Option<Arc<PageStore>> = None;
    loop {
        let Ok(mut recv) = conn.accept_uni().await else { break };
        let header = match transfer::accept_header(&mut recv).await {
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
        let arrived: Arrived = match header.kind {
            DataKind::Image => {
                let path = staging.join("image.tar");
                transfer::receive_records(recv, &path, None, false, done.clone(), ReceiveFaults::default())
                    .await
                    .map(|(d, _)| (path, d))
                    .map_err(|e| e.to_string())
            }
            DataKind::Checkpoint => {
                let path = staging.join("checkpoint.tar");
                transfer::receive_records(recv, &path, None, false, done.clone(), faults)
                    .await
                    .map(|(d, _)| (path, d))
                    .map_err(|e| e.to_string())
            }
            DataKind::Round(n) if mode == Mode::PreCopy && (1..=10_000).contains(&n) => {
                receive_round(recv, &staging, n, done.clone()).await
            }
            DataKind::Base if mode == Mode::HashPreCopy && base_pages.is_none() => {
                let path = staging.join("base.tar");
                match transfer::receive_records(recv, &path, None, true, done.clone(), ReceiveFaults::default()).await {
                    Ok((d, offsets)) => {
                        base_pages = Some(Arc::new(PageStore::new(&path, offsets.unwrap_or_default())));
                        Ok((path, d))
                    }
                    Err(e) => Err(e.to_string()),
                }
            }
            DataKind::CheckpointDelta { base: 1 } if mode == Mode::HashPreCopy => {
                let path = staging.join("checkpoint.tar");
                match &base_pages {
                    Some(store) => transfer::receive_records(recv, &path, Some(store.clone()), false, done.clone(), faults)
                        .await
                        .map(|(d, _)| (path, d))
                        .map_err(|e| e.to_string()),
                    None => Err("the delta refers to a base that never arrived".into()),
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

/// Appends soft-dirty round `n` to the archive for the restore.
async fn receive_round(recv: quinn::RecvStream, staging: &Path, n: u32, done: Arc<AtomicU64>) -> Arrived {
    let path = staging.join(PRE_CHECKPOINT_TAR);
    let target = transfer::FileSetTarget::TarAppend { path: path.clone(), prefix: format!("{}/{n}", crate::PRECOPY_DIR) };
    let (digest, _) = transfer::receive_fileset(recv, target, done).await.map_err(|e| e.to_string())?;
    Ok((path, digest))
}

/// The data stream a round arrives on.
fn round_kind(mode: Mode, round: u32) -> DataKind {
    match mode {
        Mode::HashPreCopy => DataKind::Base,
        _ => DataKind::Round(round),
    }
}
