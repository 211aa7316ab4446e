//! Migrations whose switchover this agent, as their source, did not see to
//! its end.
//!
//! Right before the freeze the source writes a journal entry,
//! `<state_dir>/journal/<id>.json`; once the target restored, it records
//! the commit in it before telling the target. The entry goes once the
//! migration has ended on both sides. One is left when:
//!
//! * the agent died in between (found at start), with the container
//!   checkpointed here;
//! * the target could not be reached after `CheckpointSent` (the migration
//!   ended undecided, the container checkpointed here), or did not confirm
//!   the commit.
//!
//! Recovery, a task for the agent's whole life, settles each entry with the
//! target ([`Request::Resolve`]): it tells the verdict the entry holds
//! (commit if recorded, otherwise abort) and acts on where the target says
//! the container runs:
//!
//! | the target says | meaning                                              | here                       |
//! |-----------------|------------------------------------------------------|----------------------------|
//! | `Busy`          | its side of the migration is still under way         | ask again in a few seconds |
//! | `Absent`        | it never restored, or removed its tentative copy     | restore the container      |
//! | `Kept`          | it runs there (committed now, or already)            | remove the stopped copy    |
//! | unreachable     | cannot tell: restoring could make two copies         | keep asking                |
//!
//! The target keeps a copy it restored, tentative, until it hears the
//! verdict, and removes it on `Abort` only while it is tentative, so the
//! answer is final.

use crate::context::Agent;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tern_proto::{MigrationId, Peer, Request, Resolution, ResolveRequest, Response, Verdict};
use tern_transport::rpc::Session;

/// How often unresolved entries are tried again.
const RETRY: Duration = Duration::from_secs(3);

/// A frozen migration, as written before the freeze.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub id: u64,
    pub container: String,
    pub container_id: String,
    pub target: Peer,
    pub tcp_established: bool,
    /// What the migration made in the container's folder (soft-dirty
    /// rounds and the link to them), removed once resolved.
    pub leftovers: Vec<PathBuf>,
    /// The tmpfs holding the checkpoint (ramdir.rs), unmounted once resolved.
    #[serde(default)]
    pub ram: Option<PathBuf>,
    /// The target restored and the source decided to commit: never roll
    /// back.
    #[serde(default)]
    pub commit: bool,
    /// A post-copy migration: the checkpoint here holds no memory, and is
    /// never restored (CRIU's restorer would wait forever for its pages).
    #[serde(default)]
    pub lazy: bool,
}

impl Entry {
    pub fn verdict(&self) -> Verdict {
        if self.commit {
            Verdict::Commit
        } else {
            Verdict::Abort
        }
    }
}

fn dir(agent: &Agent) -> PathBuf {
    journal_dir(&agent.cfg.state_dir)
}

fn journal_dir(state_dir: &Path) -> PathBuf {
    state_dir.join("journal")
}

/// Records in the entry at `path` that the migration commits, durably.
pub fn record_commit(agent: &Agent, path: &Path) -> std::io::Result<()> {
    let mut entry: Entry = serde_json::from_slice(&std::fs::read(path)?).map_err(std::io::Error::other)?;
    entry.commit = true;
    record(agent, &entry).map(|_| ())
}

/// Writes `entry` durably ([`crate::durable::write_atomic`]).
pub fn record(agent: &Agent, entry: &Entry) -> std::io::Result<PathBuf> {
    let path = dir(agent).join(format!("{}.json", entry.id));
    crate::durable::write_atomic(&path, &serde_json::to_vec(entry).map_err(std::io::Error::other)?)?;
    Ok(path)
}

pub fn forget(path: &Path) {
    if let Err(e) = std::fs::remove_file(path) {
        tracing::warn!("could not remove the journal entry {}: {e}", path.display());
    }
}

fn entries(agent: &Agent) -> Vec<(PathBuf, Entry)> {
    entries_in(&agent.cfg.state_dir)
}

/// At start, before recovery: tern's checkpoint folders in RAM that no
/// journal entry holds were a predecessor's, for a migration that died
/// before its freeze (nothing in them is needed): unmounted, so that
/// Podman can remove or checkpoint those containers again.
pub fn release_unjournaled_ram(state_dir: &Path, storage: &dyn crate::storage::Storage) {
    let kept: Vec<PathBuf> = entries_in(state_dir).into_iter().filter_map(|(_, e)| e.ram).collect();
    for m in storage.ram_under(Path::new("/")) {
        if kept.contains(&m) {
            continue;
        }
        tracing::info!(folder = %m.display(), "unmounting a checkpoint folder in RAM a predecessor left");
        if let Err(e) = storage.unmount_ram(&m, false) {
            tracing::warn!("{e}");
        }
    }
}

fn entries_in(state_dir: &Path) -> Vec<(PathBuf, Entry)> {
    let Ok(list) = std::fs::read_dir(journal_dir(state_dir)) else { return Vec::new() };
    let mut out = Vec::new();
    for f in list.flatten() {
        let path = f.path();
        if path.extension().is_none_or(|e| e != "json") {
            continue;
        }
        match std::fs::read(&path).and_then(|b| serde_json::from_slice(&b).map_err(std::io::Error::other)) {
            Ok(e) => out.push((path, e)),
            Err(e) => tracing::error!("unreadable journal entry {}: {e}; move it away once the container is sorted out", path.display()),
        }
    }
    out
}

/// Settles every journal entry, retrying until none is left, then waits
/// for the next one (`Agent::recovery`). Runs for the agent's whole life,
/// started with it.
pub async fn recover(agent: Arc<Agent>) {
    loop {
        let pending = entries(&agent);
        for (path, e) in &pending {
            match resolve(&agent, e).await {
                Ok(Some(settled)) => {
                    if settled == Settled::Done {
                        release(agent.storage.as_ref(), e);
                    }
                    forget(path);
                }
                Ok(None) => {}
                Err(err) => tracing::error!(id = e.id, container = %e.container, "recovery: {err:#}; trying again"),
            }
        }
        if pending.is_empty() {
            agent.recovery.notified().await;
        } else {
            // A new entry wakes it early; otherwise try again shortly.
            let _ = tokio::time::timeout(RETRY, agent.recovery.notified()).await;
        }
    }
}

/// How an entry was settled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Settled {
    /// The container runs somewhere: what the migration left here goes.
    Done,
    /// A human must decide: the checkpoint, rounds and RAM folder stay.
    KeepForHand,
}

/// Unmounts an entry's RAM folder and removes its leftovers.
fn release(storage: &dyn crate::storage::Storage, e: &Entry) {
    if let Some(dir) = &e.ram {
        if let Err(err) = storage.unmount_ram(dir, true) {
            tracing::warn!("recovery: {err}");
        }
    }
    for p in &e.leftovers {
        let _ = if p.is_dir() { std::fs::remove_dir_all(p) } else { std::fs::remove_file(p) };
    }
}

/// One entry: `Ok(Some(_))` once settled, `Ok(None)` to ask again later.
async fn resolve(agent: &Agent, e: &Entry) -> anyhow::Result<Option<Settled>> {
    let Some(_guard) = agent.claim(&e.container) else { return Ok(None) };
    let name = &e.container;
    // The stopped copy this migration left here, if it is still here.
    let here = match agent.engine.inspect(name).await? {
        Some(c) if c.id != e.container_id => {
            tracing::warn!(id = e.id, %name, "recovery: a different container has that name now");
            None
        }
        other => other,
    };
    if !e.commit {
        match &here {
            // Without a recorded commit the copy here is never removed:
            // gone, someone removed it; running, it was brought back.
            None => {
                tracing::info!(id = e.id, %name, "recovery: no longer here; nothing to settle");
                return Ok(Some(Settled::Done));
            }
            // A post-copy source's copy runs again once its dump ended
            // (given up, or failed): the target's copy, paused short of
            // pages, still has to hear the abort.
            Some(c) if c.is_running() && !e.lazy => return Ok(Some(Settled::Done)),
            Some(_) => {}
        }
    }
    let answer = match settle(agent, e.id, &e.container, &e.container_id, &e.target, e.verdict()).await {
        Ok(a) => a,
        Err(err) => {
            tracing::warn!(
                id = e.id, %name, target = %e.target.name,
                "recovery: cannot settle the migration with {} ({err:#}); {name} stays checkpointed here until it answers (restoring now could make two copies)",
                e.target.name
            );
            return Ok(None);
        }
    };
    match answer {
        Resolution::Busy => Ok(None),
        Resolution::Absent if e.commit || here.is_none() => {
            let left = if here.is_some() {
                format!("the checkpoint here is kept: restore it by hand (`podman container restore --keep {name}`) once you know it runs nowhere")
            } else {
                "no copy is left here either: it runs nowhere".to_string()
            };
            tracing::error!(id = e.id, %name, commit = e.commit, "recovery: {} has no {name}; {left}", e.target.name);
            Ok(Some(Settled::KeepForHand))
        }
        Resolution::Absent if e.lazy && here.as_ref().is_some_and(|c| c.is_running()) => {
            tracing::info!(id = e.id, %name, "recovery: {} removed its copy; {name} runs here, as of its freeze", e.target.name);
            for problem in crate::rollback::reclaim_address(agent, name, &e.target.name, e.id).await {
                tracing::warn!(id = e.id, %name, "recovery: {problem}");
            }
            Ok(Some(Settled::Done))
        }
        Resolution::Absent if e.lazy => {
            tracing::error!(
                id = e.id,
                %name,
                "recovery: {} has no {name}, and the post-copy checkpoint here holds no memory, so it is never restored: \
                 if {name} does not run here (CRIU runs it again when its dump fails), it is lost",
                e.target.name
            );
            Ok(Some(Settled::KeepForHand))
        }
        Resolution::Absent => {
            crate::rollback::restore_here(agent, name, e.tcp_established).await?;
            for problem in crate::rollback::reclaim_address(agent, name, &e.target.name, e.id).await {
                tracing::warn!(id = e.id, %name, "recovery: {problem}");
            }
            tracing::warn!(id = e.id, %name, "recovery: the switchover had not happened; {name} runs here again");
            Ok(Some(Settled::Done))
        }
        Resolution::Kept => {
            // The RAM folder first: Podman cannot remove a folder with a mount in it.
            release(agent.storage.as_ref(), e);
            if here.is_some() {
                agent.engine.remove(name, false).await?;
            }
            tracing::warn!(id = e.id, %name, target = %e.target.name, "recovery: the switchover had happened; {name} runs on {}, the stopped copy here is removed", e.target.name);
            Ok(Some(Settled::Done))
        }
        Resolution::Invalid => anyhow::bail!("{} answered an invalid resolution", e.target.name),
    }
}

/// Tells the target of migration `id` the source's verdict, on a
/// connection of its own; returns where the container runs.
pub async fn settle(
    agent: &Agent,
    id: MigrationId,
    container: &str,
    container_id: &str,
    target: &Peer,
    verdict: Verdict,
) -> anyhow::Result<Resolution> {
    let addr = target.address.parse()?;
    let session = Session::connect(&agent.endpoint, addr, &target.name, &agent.cfg.name).await?;
    let req = Request::Resolve(ResolveRequest { id, container: container.to_string(), container_id: container_id.to_string(), verdict });
    match session.request(&req).await? {
        Response::Resolved(r) => Ok(r),
        other => Err(session.unexpected("Resolved", &other).into()),
    }
}
