//! When the source agent itself dies mid-migration.
//!
//! Right before the freeze the source writes a journal entry,
//! `<state_dir>/journal/<id>.json`, and removes it once the migration has
//! ended either way (the container runs on the target and the copy here is
//! removed, or it runs here again). An entry found when the agent starts
//! means it died in between, with the container checkpointed here. Only the
//! target knows which side of the switchover that was, so the agent asks it
//! ([`Request::Whereabouts`]) and acts on the answer:
//!
//! | the target says | meaning                                     | here                      |
//! |-----------------|---------------------------------------------|---------------------------|
//! | `Busy`          | it has not noticed yet (QUIC idle timeout)  | ask again in a few seconds |
//! | `Absent`        | it never restored, or dropped what it staged | restore the container     |
//! | `Running`       | it restored and keeps the container         | remove the stopped copy   |
//! | `Stopped`       | restored there, then stopped                | keep both, log for a human |
//! | unreachable     | cannot tell: restoring could make two copies | keep asking               |
//!
//! The target keeps a restored container whatever happens to the
//! connection after it answered `Restored`, and removes anything else when
//! the source vanishes (`target.rs`), so its answer, once it is not busy,
//! is final.

use crate::context::Agent;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tern_proto::{Peer, Request, Response, Whereabouts};
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
}

fn dir(agent: &Agent) -> PathBuf {
    agent.cfg.state_dir.join("journal")
}

/// Writes `entry` durably (a rename over a synced file).
pub fn record(agent: &Agent, entry: &Entry) -> std::io::Result<PathBuf> {
    use std::io::Write;
    let dir = dir(agent);
    std::fs::create_dir_all(&dir)?;
    let path = dir.join(format!("{}.json", entry.id));
    let tmp = dir.join(format!("{}.json.tmp", entry.id));
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(&serde_json::to_vec(entry).map_err(std::io::Error::other)?)?;
    f.sync_all()?;
    std::fs::rename(&tmp, &path)?;
    std::fs::File::open(&dir)?.sync_all()?;
    Ok(path)
}

pub fn forget(path: &Path) {
    if let Err(e) = std::fs::remove_file(path) {
        tracing::warn!("could not remove the journal entry {}: {e}", path.display());
    }
}

fn entries(agent: &Agent) -> Vec<(PathBuf, Entry)> {
    let Ok(list) = std::fs::read_dir(dir(agent)) else { return Vec::new() };
    let mut out = Vec::new();
    for f in list.flatten() {
        let path = f.path();
        if path.extension().is_none_or(|e| e != "json") {
            continue;
        }
        match std::fs::read(&path).map_err(|e| e.to_string()).and_then(|b| serde_json::from_slice(&b).map_err(|e| e.to_string())) {
            Ok(e) => out.push((path, e)),
            Err(e) => tracing::error!("unreadable journal entry {}: {e}; move it away once the container is sorted out", path.display()),
        }
    }
    out
}

/// Resolves every journal entry, retrying until none is left. Run at start-up.
pub async fn recover(agent: Arc<Agent>) {
    loop {
        let pending = entries(&agent);
        if pending.is_empty() {
            return;
        }
        for (path, e) in pending {
            match resolve(&agent, &e).await {
                Ok(Some(settled)) => {
                    if settled == Settled::Done {
                        release(&e);
                    }
                    forget(&path);
                }
                Ok(None) => {}
                Err(err) => tracing::error!(id = e.id, container = %e.container, "recovery: {err:#}; trying again"),
            }
        }
        tokio::time::sleep(RETRY).await;
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
fn release(e: &Entry) {
    if let Some(dir) = &e.ram {
        if let Err(err) = crate::ramdir::unmount(dir, true) {
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
    match agent.engine.inspect(name).await? {
        None => {
            tracing::info!(id = e.id, %name, "recovery: no longer here, the migration had completed");
            return Ok(Some(Settled::Done));
        }
        Some(c) if c.id != e.container_id => {
            tracing::warn!(id = e.id, %name, "recovery: a different container has that name now; nothing to do");
            return Ok(Some(Settled::Done));
        }
        Some(c) if c.is_running() => return Ok(Some(Settled::Done)),
        Some(_) => {}
    }
    let answer = match ask(agent, e).await {
        Ok(a) => a,
        Err(err) => {
            tracing::warn!(
                id = e.id, %name, target = %e.target.name,
                "recovery: cannot ask {} ({err:#}); {name} stays checkpointed here until it answers (restoring now could make two copies)",
                e.target.name
            );
            return Ok(None);
        }
    };
    match answer {
        Whereabouts::Busy => Ok(None),
        Whereabouts::Absent => {
            crate::rollback::restore_here(agent, name, e.tcp_established).await?;
            for problem in crate::rollback::reclaim_address(agent, name, &e.target.name, e.id).await {
                tracing::warn!(id = e.id, %name, "recovery: {problem}");
            }
            tracing::warn!(id = e.id, %name, "recovery: the agent had died before the switchover; {name} runs here again");
            Ok(Some(Settled::Done))
        }
        Whereabouts::Running => {
            // The RAM folder first: Podman cannot remove a folder with a mount in it.
            release(e);
            agent.engine.remove(name, false).await?;
            tracing::warn!(id = e.id, %name, target = %e.target.name, "recovery: the switchover had happened; {name} runs on {}, the stopped copy here is removed", e.target.name);
            Ok(Some(Settled::Done))
        }
        Whereabouts::Stopped { state } => {
            tracing::error!(
                id = e.id, %name,
                "recovery: {name} was restored on {} and is {state} there; both copies are kept, decide by hand (`podman container restore --keep {name}` here)",
                e.target.name
            );
            Ok(Some(Settled::KeepForHand))
        }
        Whereabouts::Invalid => anyhow::bail!("{} answered an invalid whereabouts", e.target.name),
    }
}

async fn ask(agent: &Agent, e: &Entry) -> anyhow::Result<Whereabouts> {
    let addr = e.target.address.parse()?;
    let session = Session::connect(&agent.endpoint, addr, &e.target.name, &agent.cfg.name).await?;
    let req = Request::Whereabouts { container: e.container.clone(), container_id: e.container_id.clone() };
    match session.request(&req).await? {
        Response::Whereabouts(w) => Ok(w),
        other => Err(session.unexpected("Whereabouts", &other).into()),
    }
}

/// The target's answer about `name` to `peer`: only about a container
/// that `peer` moved here (the source of record, `Agent::received_from`);
/// anyone else learns nothing, not even whether it exists. The refusal is
/// an error, not `Absent`: a source told `Absent` would restore its copy.
pub async fn whereabouts(agent: &Agent, peer: &str, name: &str, id: &str) -> anyhow::Result<Whereabouts> {
    if agent.received_from(id).as_deref() != Some(peer) {
        tracing::warn!(%peer, container = %name, "refused Whereabouts: no migration of it from {peer} is recorded here");
        anyhow::bail!("refused: no migration of {name} ({id}) from {peer} is recorded here");
    }
    if agent.is_busy(name) {
        return Ok(Whereabouts::Busy);
    }
    Ok(match agent.engine.inspect(name).await? {
        Some(c) if c.id == id && c.is_running() => Whereabouts::Running,
        Some(c) if c.id == id => Whereabouts::Stopped { state: c.state },
        _ => Whereabouts::Absent,
    })
}
