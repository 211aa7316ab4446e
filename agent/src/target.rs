//! The target's side of a migration: stage, verify, restore, confirm.
//!
//! The legal order of the source's messages is
//! [`tern_proto::state`]; this module does the IO for each step.
//! Anything restored or staged here is removed on `Abort`, on a failure
//! before `Restored`, or when the source vanishes before the switchover.
//! After `Restored` the container is the user's only running copy and is
//! kept whatever happens to the connection.

use crate::engine::CheckpointOpts;
use crate::server::Agent;
use crate::transfer::{self, ReceiveFaults};
use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, Instant};
use tern_proto::facts::ContainerInfo;
use tern_proto::frame::{read_frame, write_frame};
use tern_proto::state::{step, Action, TargetState};
use tern_proto::*;
use tokio::sync::mpsc;

/// How long a restored container must keep running before it counts.
const CONFIRM_MS: u64 = 300;

type Received = (DataKind, Result<(PathBuf, Digest), String>);

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
    tracing::info!(id = begin.id, %name, source = %peer, "incoming migration");
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
        tokio::fs::create_dir_all(&self.staging).await?;
        let needs_image = !engine.image_exists(&c.image_id).await?;
        if !needs_image {
            // Before the freeze: restore looks the image up by this name.
            if let Err(e) = self.name_image().await {
                return refuse(send, e).await;
            }
        }
        let (tx, mut data) = mpsc::channel::<Received>(2);
        let receiver = tokio::spawn(accept_data(conn, self.begin.id, self.staging.clone(), self.faults(), tx));
        write_frame(send, &TargetMsg::Ready { needs_image }).await?;

        let mut state = TargetState::initial(needs_image);
        let outcome = loop {
            let msg = match read_frame::<_, SourceMsg>(recv).await {
                Ok(Some(m)) => m,
                other => break Err(anyhow::anyhow!("the source went away in state {state:?} ({other:?})")),
            };
            let (next, action) = match step(state, &msg) {
                Ok(x) => x,
                Err(e) => {
                    let _ = write_frame(send, &TargetMsg::Failed(Failure { phase: Phase::Prepare, message: e.to_string() })).await;
                    break Err(e.into());
                }
            };
            state = next;
            let reply = match action {
                Action::LoadImage(d) => self.load_image(&mut data, d).await,
                Action::Restore(d) => self.restore(&mut data, d).await,
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
    async fn verified(&self, data: &mut mpsc::Receiver<Received>, kind: DataKind, digest: Digest) -> Result<PathBuf, String> {
        let Some((got_kind, result)) = data.recv().await else {
            return Err("the data stream never arrived".into());
        };
        if got_kind != kind {
            return Err(format!("expected the {kind:?} archive, got {got_kind:?}"));
        }
        let (path, got) = result?;
        if got != digest {
            return Err(format!(
                "the {kind:?} archive does not match its digest: received {} bytes with blake3 {}, the source sent {} bytes with blake3 {}",
                got.bytes,
                got.hex(),
                digest.bytes,
                digest.hex()
            ));
        }
        Ok(path)
    }

    async fn load_image(&self, data: &mut mpsc::Receiver<Received>, digest: Digest) -> TargetMsg {
        let r = async {
            let path = self.verified(data, DataKind::Image, digest).await?;
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

    async fn restore(&mut self, data: &mut mpsc::Receiver<Received>, digest: Digest) -> TargetMsg {
        let t0 = Instant::now();
        let path = match self.verified(data, DataKind::Checkpoint, digest).await {
            Ok(p) => p,
            Err(message) => return TargetMsg::Failed(Failure { phase: Phase::Verify, message }),
        };
        let verify_ms = t0.elapsed().as_millis() as u64;
        let t1 = Instant::now();
        match self.restore_and_confirm(&path).await {
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

    /// Restores, then checks the container runs now and still runs a moment
    /// later: a process that dies right after restore is not a success.
    /// Returns the container and when it was first seen running.
    async fn restore_and_confirm(&mut self, path: &std::path::Path) -> Result<(ContainerInfo, Instant), String> {
        if self.agent.cfg.faults.fail_restore {
            return Err("injected failure: this agent is configured with faults.fail_restore".into());
        }
        let engine = &self.agent.engine;
        let name = &self.begin.container.name;
        self.restored = true;
        engine
            .restore_import(path, CheckpointOpts { tcp_established: self.begin.tcp_established, zstd: false })
            .await
            .map_err(|e| e.to_string())?;
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

/// Accepts the migration's data streams and writes each into the staging
/// folder, reporting what arrived.
async fn accept_data(conn: quinn::Connection, id: MigrationId, staging: PathBuf, faults: ReceiveFaults, tx: mpsc::Sender<Received>) {
    let done = AtomicU64::new(0);
    loop {
        let Ok(mut recv) = conn.accept_uni().await else { return };
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
        let (path, faults) = match header.kind {
            DataKind::Image => (staging.join("image.tar"), ReceiveFaults::default()),
            _ => (staging.join("checkpoint.tar"), faults),
        };
        let r = transfer::receive(recv, &path, &done, faults).await;
        let r = r.map(|d| (path, d)).map_err(|e| e.to_string());
        if tx.send((header.kind, r)).await.is_err() {
            return;
        }
    }
}
