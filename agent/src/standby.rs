//! Standby: checkpoints of a container taken on a schedule by the agent of
//! its host and kept by another host's store, so that the container can be
//! brought back there (`tern restore --host-lost`) when its host is lost,
//! as of its latest checkpoint.
//!
//! The schedules are this agent's (`<state_dir>/standby.json`, written
//! atomically): they survive restarts of the agent and need no terminal.
//! Each tick dumps the container while it runs on (paused only while CRIU
//! dumps), sends the checkpoint to the store and drops the local copy. The
//! page hashes of what the store last took stay here: the next checkpoint
//! crosses as delta records against it (the content-addressed pre-copy's
//! encoding), so only what changed since crosses. The store keeps the
//! `keep` latest of the series and drops older ones as new ones arrive.
//! After a restart of this agent the first checkpoint is sent whole.

use crate::checkpoints::{self, Base, Store};
use crate::context::Agent;
use crate::durable::write_atomic;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tern_proto::checkpoint::{self as cp, CreateCheckpoint, StandbyOrder, StandbyRun, StandbySpec, StandbyStatus};

/// A schedule, with how it went.
struct Entry {
    spec: StandbySpec,
    due: Instant,
    last: Option<StandbyRun>,
    failing: Option<(u64, String)>,
    /// What the store last took, hashed here.
    base: Option<Arc<Base>>,
}

/// This host's standby schedules.
#[derive(Default)]
pub struct Standby {
    entries: Mutex<Vec<Entry>>,
    wake: tokio::sync::Notify,
}

fn path(state_dir: &Path) -> PathBuf {
    state_dir.join("standby.json")
}

fn now_unix() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

impl Standby {
    /// The schedules kept in the state folder: each takes its first
    /// checkpoint at once.
    pub fn load(state_dir: &Path) -> Standby {
        let specs: Vec<StandbySpec> = match std::fs::read(path(state_dir)) {
            Ok(b) => serde_json::from_slice(&b).unwrap_or_else(|e| {
                tracing::error!("{} does not parse ({e}); no standby runs until it is set again", path(state_dir).display());
                Vec::new()
            }),
            Err(_) => Vec::new(),
        };
        let now = Instant::now();
        let entries = specs.into_iter().map(|spec| Entry { spec, due: now, last: None, failing: None, base: None }).collect();
        Standby { entries: Mutex::new(entries), wake: Default::default() }
    }

    fn save(&self, state_dir: &Path) -> anyhow::Result<()> {
        let specs: Vec<StandbySpec> = self.entries.lock().unwrap().iter().map(|e| e.spec.clone()).collect();
        write_atomic(&path(state_dir), &serde_json::to_vec_pretty(&specs)?)
            .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", path(state_dir).display()))
    }

    fn statuses(&self) -> Vec<StandbyStatus> {
        let now = Instant::now();
        self.entries
            .lock()
            .unwrap()
            .iter()
            .map(|e| StandbyStatus {
                spec: e.spec.clone(),
                last: e.last.clone(),
                failing: e.failing.clone(),
                next_in_secs: e.due.saturating_duration_since(now).as_secs(),
            })
            .collect()
    }

    /// `CheckpointRequest::Standby`.
    pub async fn order(&self, agent: &Agent, order: StandbyOrder) -> anyhow::Result<Vec<StandbyStatus>> {
        match order {
            StandbyOrder::Set(spec) => {
                cp::check_standby(&spec).map_err(anyhow::Error::msg)?;
                anyhow::ensure!(spec.store.name != agent.cfg.name, "a standby is kept on another host than the container's");
                match agent.engine.inspect(&spec.container).await? {
                    Some(c) if c.is_running() => {}
                    Some(c) => anyhow::bail!("{} is {} on {}: a standby is for a running container", c.name, c.state, agent.cfg.name),
                    None => anyhow::bail!("no container named {} on {}", spec.container, agent.cfg.name),
                }
                {
                    let mut entries = self.entries.lock().unwrap();
                    match entries.iter_mut().find(|e| e.spec.container == spec.container) {
                        // Another store: the hashes of the old one's last are no base there.
                        Some(e) => {
                            if e.spec.store != spec.store {
                                e.base = None;
                            }
                            e.spec = spec.clone();
                            e.due = Instant::now();
                        }
                        None => entries.push(Entry { spec: spec.clone(), due: Instant::now(), last: None, failing: None, base: None }),
                    }
                }
                self.save(&agent.cfg.state_dir)?;
                tracing::info!(container = %spec.container, store = %spec.store.name, every_secs = spec.every_secs, keep = spec.keep, "standby set");
                self.wake.notify_one();
                Ok(self.statuses().into_iter().filter(|s| s.spec.container == spec.container).collect())
            }
            StandbyOrder::Stop { container } => {
                let gone: Vec<StandbyStatus> = self.statuses().into_iter().filter(|s| s.spec.container == container).collect();
                anyhow::ensure!(!gone.is_empty(), "{container} has no standby on {}", agent.cfg.name);
                self.entries.lock().unwrap().retain(|e| e.spec.container != container);
                self.save(&agent.cfg.state_dir)?;
                tracing::info!(%container, "standby stopped; its checkpoints stay in the store");
                Ok(gone)
            }
            StandbyOrder::List => Ok(self.statuses()),
            StandbyOrder::Invalid => anyhow::bail!("an invalid standby order"),
        }
    }

    /// The next schedule due, if one is, and else how long until one is.
    fn next_due(&self) -> Result<StandbySpec, Option<Duration>> {
        let now = Instant::now();
        let entries = self.entries.lock().unwrap();
        match entries.iter().min_by_key(|e| e.due) {
            Some(e) if e.due <= now => Ok(e.spec.clone()),
            Some(e) => Err(Some(e.due - now)),
            None => Err(None),
        }
    }

    fn base_of(&self, container: &str) -> Option<Arc<Base>> {
        self.entries.lock().unwrap().iter().find(|e| e.spec.container == container).and_then(|e| e.base.clone())
    }

    /// Records how a tick went, and when the next one is due.
    fn done(&self, spec: &StandbySpec, r: Result<(StandbyRun, Arc<Base>), String>) {
        let mut entries = self.entries.lock().unwrap();
        // The schedule may have been stopped or changed meanwhile.
        let Some(e) = entries.iter_mut().find(|e| e.spec.container == spec.container) else { return };
        let same = e.spec == *spec;
        e.due = Instant::now() + Duration::from_secs(e.spec.every_secs);
        match r {
            Ok((run, base)) => {
                e.last = Some(run);
                e.failing = None;
                if same {
                    e.base = Some(base);
                }
            }
            Err(why) => e.failing = Some((now_unix(), why)),
        }
    }
}

/// Takes the checkpoints as they fall due, for the agent's life.
pub async fn run(agent: Arc<Agent>) {
    loop {
        match agent.standby.next_due() {
            Ok(spec) => {
                let r = tick(&agent, &spec).await;
                match &r {
                    Ok((run, _)) => tracing::info!(
                        container = %spec.container, name = %run.name, bytes = run.bytes, wire_bytes = run.wire_bytes,
                        pages_reused = run.pages_reused, ms = run.ms, store = %spec.store.name, "standby checkpoint stored"
                    ),
                    Err(e) => tracing::warn!(container = %spec.container, store = %spec.store.name, "standby checkpoint failed: {e}"),
                }
                agent.standby.done(&spec, r);
            }
            Err(wait) => {
                let wait = wait.unwrap_or(Duration::from_secs(3600));
                let _ = tokio::time::timeout(wait, agent.standby.wake.notified()).await;
            }
        }
    }
}

/// One checkpoint of a schedule: dump here, send to the store (against the
/// last one it took), drop the copy here once the next base is hashed.
async fn tick(agent: &Agent, spec: &StandbySpec) -> Result<(StandbyRun, Arc<Base>), String> {
    let store = Store::of(agent);
    let t0 = Instant::now();
    let req = CreateCheckpoint { container: spec.container.clone(), name: None, leave_running: true, tcp_established: false, file_locks: false };
    let made = checkpoints::create(agent, &store, req, Some(spec.keep)).await.map_err(|e| format!("{e:#}"))?;
    let r = async {
        let (_, archive) = store.get(&made.name)?;
        let base = agent.standby.base_of(&spec.container);
        let (stored, shipped) = checkpoints::send_to(agent, &store, &made.name, &spec.store, base.as_deref()).await?;
        let index = checkpoints::index_of(&archive).await?;
        let run = StandbyRun {
            name: stored.name.clone(),
            at_unix: stored.created_unix,
            bytes: stored.bytes,
            wire_bytes: shipped.wire_bytes,
            pages_reused: shipped.pages_reused,
            ms: t0.elapsed().as_millis() as u64,
        };
        Ok::<_, anyhow::Error>((run, Arc::new(Base { name: stored.name, digest: stored.digest, index: Arc::new(index) })))
    }
    .await;
    if let Err(e) = store.remove(&made.name) {
        tracing::warn!(name = %made.name, "removing the local copy of a standby checkpoint: {e}");
    }
    r.map_err(|e| format!("{e:#}"))
}
