//! Standby schedules: checkpoints of a container taken on a schedule by
//! the agent of its host and kept by another host's store, so that the
//! container can be brought back there (`tern restore --host-lost`) when
//! its host is lost, as of its latest checkpoint. This is the registry:
//! the schedules (`<state_dir>/standby.json`, written atomically, so they
//! survive restarts of the agent and need no terminal), how each went, and
//! the page hashes of what its store last took (the next checkpoint
//! crosses as delta records against it). What a tick does is
//! `checkpoints/standby.rs`.

use crate::durable::write_atomic;
use crate::pages::PageIndex;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tern_proto::checkpoint::{StandbyRun, StandbySpec, StandbyStatus};

/// A checkpoint the store of a peer holds, with its page hashes here: the
/// next one sent there crosses as delta records against it.
pub struct Base {
    pub name: String,
    pub digest: [u8; 32],
    pub index: Arc<PageIndex>,
}

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

    pub fn statuses(&self) -> Vec<StandbyStatus> {
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

    /// Sets (or changes) a container's schedule; its first checkpoint is
    /// due at once.
    pub fn set(&self, state_dir: &Path, spec: StandbySpec) -> anyhow::Result<Vec<StandbyStatus>> {
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
        self.save(state_dir)?;
        self.wake.notify_one();
        Ok(self.statuses().into_iter().filter(|s| s.spec.container == spec.container).collect())
    }

    /// Ends a container's schedule: how it stood, or `None` if it had none.
    pub fn stop(&self, state_dir: &Path, container: &str) -> anyhow::Result<Option<Vec<StandbyStatus>>> {
        let gone: Vec<StandbyStatus> = self.statuses().into_iter().filter(|s| s.spec.container == container).collect();
        if gone.is_empty() {
            return Ok(None);
        }
        self.entries.lock().unwrap().retain(|e| e.spec.container != container);
        self.save(state_dir)?;
        Ok(Some(gone))
    }

    /// Waits until a schedule is set or changed, or `wait` passes.
    pub async fn sleep(&self, wait: Duration) {
        let _ = tokio::time::timeout(wait, self.wake.notified()).await;
    }

    /// The next schedule due, if one is, and else how long until one is.
    pub fn next_due(&self) -> Result<StandbySpec, Option<Duration>> {
        let now = Instant::now();
        let entries = self.entries.lock().unwrap();
        match entries.iter().min_by_key(|e| e.due) {
            Some(e) if e.due <= now => Ok(e.spec.clone()),
            Some(e) => Err(Some(e.due - now)),
            None => Err(None),
        }
    }

    pub fn base_of(&self, container: &str) -> Option<Arc<Base>> {
        self.entries.lock().unwrap().iter().find(|e| e.spec.container == container).and_then(|e| e.base.clone())
    }

    /// Records how a tick went, and when the next one is due.
    pub fn done(&self, spec: &StandbySpec, r: Result<(StandbyRun, Arc<Base>), String>) {
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
