//! The agent's shared context: its configuration, its seams to the host
//! (the engine, CRIU, storage), the QUIC endpoint, the containers with a migration under way, the host's facts,
//! the link rates last measured and the bandwidth cap's bucket. Every request handler (`server.rs`
//! dispatches to them) gets an [`Agent`].

use crate::config::AgentConfig;
use crate::criu::Criu;
use crate::engine::Engine;
use crate::facts;
use crate::storage::Storage;
use std::collections::HashSet;
use std::sync::{Arc, Mutex};

/// Everything a request handler may need.
pub struct Agent {
    pub cfg: AgentConfig,
    pub engine: Arc<dyn Engine>,
    pub criu: Arc<dyn Criu>,
    pub storage: Arc<dyn Storage>,
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
    /// The CA and its revocation list, to verify tickets' signers; loaded
    /// at first use.
    trust: std::sync::OnceLock<Result<Arc<tern_transport::Trust>, Arc<tern_transport::TransportError>>>,
    /// Ticket ids used, until they expire.
    replay: Mutex<tern_transport::ticket::ReplayGuard>,
    /// Open connections by peer name, and in all.
    connections: Mutex<(std::collections::HashMap<String, usize>, usize)>,
    /// The cap on this host's outgoing migration traffic: one token bucket
    /// for every data stream of every migration under way (`[limits]
    /// bandwidth`, lowered by what the moves under way ask).
    pub bandwidth: crate::transfer::Limiter,
    /// Post-copy page tunnels waiting here for their source's legs.
    pub tunnels: crate::tunnel::Tunnels,
    /// Post-copy fills served from here, for the operator.
    pub fills: std::sync::Arc<crate::fills::Fills>,
    /// Checkpoints of this host's containers taken on a schedule for
    /// another host's store (`standby.rs`).
    pub standby: crate::standby::Standby,
}

/// The agent's seams to the host: what it asks of Podman and the runtime,
/// of CRIU directly, and of storage. Tests put stand-ins behind each.
#[derive(Clone)]
pub struct Ports {
    pub engine: Arc<dyn Engine>,
    pub criu: Arc<dyn Criu>,
    pub storage: Arc<dyn Storage>,
}

impl Ports {
    /// This host's: the Podman and runc the configuration names, CRIU on
    /// `PATH`, tmpfs mounts.
    pub fn host(cfg: &AgentConfig) -> Self {
        Ports {
            engine: Arc::new(crate::engine::PodmanCli::new(
                cfg.podman.program.clone(),
                cfg.podman.args.clone(),
                cfg.runc.program.clone(),
                cfg.runc.args.clone(),
            )),
            criu: Arc::new(crate::criu::HostCriu),
            storage: Arc::new(crate::storage::HostStorage),
        }
    }
}

/// Why a peer's connection is not taken.
#[derive(Debug, thiserror::Error)]
pub enum ConnectionLimit {
    #[error("too many connections: {0} open, the most an agent keeps")]
    Total(usize),
    #[error("too many connections from {peer}: {n} open, the most one peer may keep")]
    PerPeer { peer: String, n: usize },
}

/// Counts one connection until dropped.
pub struct ConnectionGuard<'a> {
    agent: &'a Agent,
    peer: Option<String>,
}

impl ConnectionGuard<'_> {
    /// Counts the connection against `peer`'s share too.
    pub fn named(&mut self, peer: &str) -> Result<(), ConnectionLimit> {
        let mut c = self.agent.connections.lock().unwrap();
        let n = c.0.entry(peer.to_string()).or_default();
        if *n >= tern_transport::endpoint::MAX_CONNECTIONS_PER_PEER {
            return Err(ConnectionLimit::PerPeer { peer: peer.into(), n: *n });
        }
        *n += 1;
        self.peer = Some(peer.to_string());
        Ok(())
    }
}

impl Drop for ConnectionGuard<'_> {
    fn drop(&mut self) {
        let mut c = self.agent.connections.lock().unwrap();
        c.1 -= 1;
        if let Some(p) = &self.peer {
            if let Some(n) = c.0.get_mut(p) {
                *n -= 1;
                if *n == 0 {
                    c.0.remove(p);
                }
            }
        }
    }
}

/// `<state dir>/received/<container ID>`: the source of record of each
/// container received here, kept across restarts (a restarted source asks
/// about it, `recovery.rs`). `None` for an ID that is not a plain word.
fn received_path(dir: &std::path::Path, id: &str) -> Option<std::path::PathBuf> {
    let ok = !id.is_empty() && id.len() <= 128 && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    ok.then(|| dir.join(id))
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
    pub fn new(cfg: AgentConfig, ports: Ports, endpoint: quinn::Endpoint) -> Self {
        Agent {
            bandwidth: crate::transfer::Limiter::new(cfg.limits.bandwidth),
            tunnels: Default::default(),
            fills: Default::default(),
            standby: crate::standby::Standby::load(&cfg.state_dir),
            cfg,
            engine: ports.engine,
            criu: ports.criu,
            storage: ports.storage,
            endpoint,
            busy: Mutex::new(HashSet::new()),
            facts: Default::default(),
            links: Default::default(),
            recovery: Default::default(),
            trust: Default::default(),
            replay: Default::default(),
            connections: Default::default(),
        }
    }

    /// Counts a new connection; refused past [`MAX_CONNECTIONS`](tern_transport::endpoint::MAX_CONNECTIONS).
    pub fn count_connection(&self) -> Result<ConnectionGuard<'_>, ConnectionLimit> {
        let mut c = self.connections.lock().unwrap();
        if c.1 >= tern_transport::endpoint::MAX_CONNECTIONS {
            return Err(ConnectionLimit::Total(c.1));
        }
        c.1 += 1;
        Ok(ConnectionGuard { agent: self, peer: None })
    }

    fn trust(&self) -> Result<Arc<tern_transport::Trust>, Arc<tern_transport::TransportError>> {
        self.trust.get_or_init(|| tern_transport::Trust::load(&self.cfg.tls).map_err(Arc::new)).clone()
    }

    /// Whether `peer` may hand this agent the migration `begin`: its ticket
    /// is the coordinator's, for exactly this move, and new
    /// (`tern_transport::ticket`). Remembers `peer` as the container's
    /// source of record ([`Agent::received_from`]).
    pub fn admit_receive(&self, peer: &str, begin: &tern_proto::Begin) -> anyhow::Result<()> {
        let trust = self.trust().map_err(|e| anyhow::anyhow!("this agent cannot check tickets: {e}"))?;
        let now = tern_transport::ticket::now_secs();
        tern_transport::ticket::verify(&begin.ticket, &trust, &self.cfg.name, peer, begin, now)?;
        self.replay.lock().unwrap().admit(&begin.ticket.body, now)?;
        let dir = self.received_dir();
        let path =
            received_path(&dir, &begin.container.id).ok_or_else(|| anyhow::anyhow!("the container ID {:?} is malformed", begin.container.id))?;
        std::fs::create_dir_all(&dir)
            .and_then(|()| std::fs::write(&path, peer))
            .map_err(|e| anyhow::anyhow!("cannot record the migration in {}: {e}", path.display()))?;
        Ok(())
    }

    fn received_dir(&self) -> std::path::PathBuf {
        self.cfg.state_dir.join("received")
    }

    /// The host that last moved the container with this ID here, if any.
    pub fn received_from(&self, container_id: &str) -> Option<String> {
        std::fs::read_to_string(received_path(&self.received_dir(), container_id)?).ok()
    }

    /// The rate last measured to `peer`, in bytes per second: what the
    /// link carries, not what a bandwidth cap lets through (estimates take
    /// the lower of the two: [`tern_proto::bandwidth::capped_link_rate`]).
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
        let f = facts::gather(&self.cfg.name, self.engine.as_ref(), self.criu.as_ref(), &self.cfg.facts_override).await?;
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
