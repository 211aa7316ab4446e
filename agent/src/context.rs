//! The agent's shared context: its configuration, the engine, the QUIC
//! endpoint, the containers with a migration under way, the host's facts
//! and the link rates last measured. Every request handler (`server.rs`
//! dispatches to them) gets an [`Agent`].

use crate::config::AgentConfig;
use crate::engine::Engine;
use crate::facts;
use std::collections::HashSet;
use std::sync::{Arc, Mutex};

/// Everything a request handler may need.
pub struct Agent {
    pub cfg: AgentConfig,
    pub engine: Arc<dyn Engine>,
    /// Used both to accept and to call other agents.
    pub endpoint: quinn::Endpoint,
    /// Containers with a migration under way (either direction).
    busy: Mutex<HashSet<String>>,
    /// The host's facts and when they were read: `podman info` and `criu
    /// check` cost a second of CPU, and facts change with upgrades, not by
    /// the minute.
    facts: tokio::sync::Mutex<Option<(std::time::Instant, tern_proto::facts::HostFacts)>>,
    /// The rate last measured to each peer (bytes/s), by a probe or a
    /// migration: `--compress auto` decides with it.
    links: Mutex<std::collections::HashMap<String, f64>>,
    /// Wakes recovery (`recovery.rs`): a migration left its journal entry
    /// for it to settle.
    pub recovery: tokio::sync::Notify,
}

/// How long gathered facts are served before they are read again.
const FACTS_TTL: std::time::Duration = std::time::Duration::from_secs(60);

/// Marks a container busy until dropped.
pub struct BusyGuard<'a> {
    agent: &'a Agent,
    name: String,
}

impl Drop for BusyGuard<'_> {
    fn drop(&mut self) {
        self.agent.busy.lock().unwrap().remove(&self.name);
    }
}

impl Agent {
    pub fn new(cfg: AgentConfig, engine: Arc<dyn Engine>, endpoint: quinn::Endpoint) -> Self {
        Agent {
            cfg,
            engine,
            endpoint,
            busy: Mutex::new(HashSet::new()),
            facts: Default::default(),
            links: Default::default(),
            recovery: Default::default(),
        }
    }

    /// The rate last measured to `peer`, in bytes per second.
    pub fn link_rate(&self, peer: &str) -> Option<f64> {
        self.links.lock().unwrap().get(peer).copied()
    }

    pub fn note_link_rate(&self, peer: &str, bytes_per_sec: f64) {
        tracing::debug!(peer, mbit = bytes_per_sec * 8e-6, "link rate measured");
        self.links.lock().unwrap().insert(peer.to_string(), bytes_per_sec);
    }

    /// This host's facts, read at most once a minute.
    pub async fn facts(&self) -> anyhow::Result<tern_proto::facts::HostFacts> {
        let mut cached = self.facts.lock().await;
        if let Some((at, f)) = cached.as_ref() {
            if at.elapsed() < FACTS_TTL {
                return Ok(f.clone());
            }
        }
        let f = facts::gather(&self.cfg.name, self.engine.as_ref(), &self.cfg.facts_override).await?;
        *cached = Some((std::time::Instant::now(), f.clone()));
        Ok(f)
    }

    /// Claims `name` for one migration; `None` when one is already under way.
    pub fn claim(&self, name: &str) -> Option<BusyGuard<'_>> {
        self.busy.lock().unwrap().insert(name.to_string()).then(|| BusyGuard { agent: self, name: name.to_string() })
    }

    /// Whether a migration of `name` is under way here.
    pub fn is_busy(&self, name: &str) -> bool {
        self.busy.lock().unwrap().contains(name)
    }

    /// The containers with a migration under way here.
    pub fn under_way(&self) -> Vec<String> {
        self.busy.lock().unwrap().iter().cloned().collect()
    }
}
