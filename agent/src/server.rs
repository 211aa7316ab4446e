//! The agent's QUIC server: accepts authenticated connections, answers
//! Hello, then serves each request on its own stream, handing it to the
//! module that answers it. The shared context they all get is
//! [`Agent`] (`context.rs`).

use crate::context::Agent;
use crate::{source, target};
use std::sync::{Arc, Mutex};
use std::time::Instant;
use tern_proto::frame::{read_frame, write_frame};
use tern_proto::{compat, CoordinatorSignal, Request, Response};
use tern_transport::endpoint;
use tern_transport::rpc::answer_hello;
use tern_transport::timeouts::scaled;
use tern_transport::{PeerId, Role};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// A request the peer's role does not allow.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Denied {
    #[error("refused: {what} is for the coordinator only, and {peer} holds a host certificate")]
    CoordinatorOnly { what: &'static str, peer: String },
    #[error("refused: {what} comes from another agent only, and {peer} holds a {role} certificate")]
    HostOnly { what: &'static str, peer: String, role: Role },
    #[error("refused: {peer}'s evacuator certificate may only evacuate {peer} and bring back what left it; {what} on {here} is neither")]
    BeyondEvacuator { what: &'static str, peer: String, here: String },
}

/// What remains to check once the role allows a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Allowed {
    Yes,
    /// A move back to host `.0` asked by its evacuator: only a container
    /// an evacuation brought here from it (`arrivals.rs`).
    IfEvacuatedFrom(String),
}

/// How long a container listing may wait for Podman while a post-copy
/// fill holds a container's lock.
const BUSY_LISTING: std::time::Duration = std::time::Duration::from_secs(3);

/// Who may ask for what: the coordinator drives (Migrate, Probe, Facts,
/// Containers, CheckIncoming, Cordon, Evacuation, PostCopy); agents talk to each
/// other only within what the coordinator started (Receive with its
/// ticket, Sink for its probe, Pages and Resolve about their own migrations). Host
/// H's evacuator certificate (`pki.rs`) reads what any coordinator reads,
/// and drives on H itself (migrations, cordon, evacuation record, probes);
/// elsewhere it may only ask for a move back to H (`me` is this agent).
pub fn authorize(req: &Request, peer: &PeerId, me: &str) -> Result<Allowed, Denied> {
    let (what, role) = match req {
        Request::Migrate(_) => ("Migrate", Role::Coordinator),
        Request::Probe(_) => ("Probe", Role::Coordinator),
        Request::Facts => ("Facts", Role::Coordinator),
        Request::Containers => ("Containers", Role::Coordinator),
        Request::CheckIncoming(_) => ("CheckIncoming", Role::Coordinator),
        Request::Receive(_) => ("Receive", Role::Host),
        Request::Sink { .. } => ("Sink", Role::Host),
        Request::Resolve(_) => ("Resolve", Role::Host),
        Request::Pages { .. } => ("Pages", Role::Host),
        Request::Cordon(_) => ("Cordon", Role::Coordinator),
        Request::Evacuation(_) => ("Evacuation", Role::Coordinator),
        Request::PostCopy(_) => ("PostCopy", Role::Coordinator),
        Request::Checkpoint(_) => ("Checkpoint", Role::Coordinator),
        // Bytes into the store, bounded by its room and checked against
        // their digest; only the coordinator's own order restores them.
        Request::CheckpointPut(_) => ("CheckpointPut", Role::Host),
        Request::Hello(_) | Request::Invalid => return Ok(Allowed::Yes),
    };
    match (role, peer.role) {
        (Role::Coordinator, Role::Host) => Err(Denied::CoordinatorOnly { what, peer: peer.name.clone() }),
        (Role::Host, Role::Coordinator | Role::Evacuator) => Err(Denied::HostOnly { what, peer: peer.name.clone(), role: peer.role }),
        (Role::Coordinator, Role::Evacuator) => {
            let beyond = || Denied::BeyondEvacuator { what, peer: peer.name.clone(), here: me.to_string() };
            match req {
                Request::Facts | Request::Containers | Request::CheckIncoming(_) => Ok(Allowed::Yes),
                _ if peer.name == me => Ok(Allowed::Yes),
                Request::Migrate(m) if m.target.name == peer.name && !m.evacuation => Ok(Allowed::IfEvacuatedFrom(peer.name.clone())),
                _ => Err(beyond()),
            }
        }
        _ => Ok(Allowed::Yes),
    }
}

impl Agent {
    /// Serves until `shutdown` resolves.
    pub async fn serve(self: Arc<Self>, shutdown: impl std::future::Future<Output = ()>) {
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                incoming = self.endpoint.accept() => {
                    let Some(incoming) = incoming else { break };
                    let agent = self.clone();
                    tokio::spawn(async move {
                        if let Err(e) = agent.connection(incoming).await {
                            tracing::info!("connection ended: {e:#}");
                        }
                    });
                }
                _ = &mut shutdown => break,
            }
        }
        // Stop taking new work, but let migrations under way finish or roll
        // back: dying mid-migration would leave a container frozen.
        self.endpoint.set_server_config(None);
        let mut waited = 0;
        loop {
            let busy = self.under_way();
            if busy.is_empty() {
                break;
            }
            if waited % 50 == 0 {
                tracing::info!(?busy, "waiting for migrations under way before exiting");
                // Under systemd, each 5 s asks for 30 s more than the unit's
                // stop timeout, so that no migration is killed mid-way.
                crate::notify::notify(&format!("STATUS=waiting for {} migration(s) under way\nEXTEND_TIMEOUT_USEC=30000000", busy.len()));
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            waited += 1;
        }
        self.endpoint.close(0u32.into(), b"agent shutting down");
    }

    async fn connection(self: Arc<Self>, incoming: quinn::Incoming) -> anyhow::Result<()> {
        let remote = incoming.remote_address();
        let mut counted = match self.count_connection() {
            Ok(g) => g,
            Err(e) => {
                incoming.refuse();
                anyhow::bail!("refused {remote}: {e}");
            }
        };
        let conn = incoming.await.map_err(|e| anyhow::anyhow!("handshake with {remote} failed: {e}"))?;
        let peer = match tern_transport::peer_identity(&conn) {
            Ok(p) => p,
            Err(e) => {
                conn.close(1u32.into(), b"no usable identity");
                anyhow::bail!("refused {remote}: {e}");
            }
        };
        // Each certificate its own share: a host's agent and its evacuator
        // bear one name, and an evacuation of that host by the evacuator
        // (its survey, checks and orders) runs beside the agent's own
        // migrations to the same targets.
        if let Err(e) = counted.named(&format!("{} ({})", peer.name, peer.role)) {
            conn.close(2u32.into(), b"too many connections");
            anyhow::bail!("refused {remote}: {e}");
        }
        // The first stream must be Hello, and soon.
        let hello_limit = scaled(endpoint::HELLO_TIMEOUT);
        let first = tokio::time::timeout(hello_limit, async {
            let (send, mut recv) = conn.accept_bi().await?;
            let req: Request = tern_proto::frame::expect_frame(&mut recv).await?;
            anyhow::Ok((send, req))
        })
        .await;
        let (mut send, req) = match first {
            Ok(r) => r?,
            Err(_) => {
                conn.close(3u32.into(), b"no hello in time");
                anyhow::bail!("{remote} ({}) sent no Hello within {} s; closed", peer.name, hello_limit.as_secs());
            }
        };
        let Request::Hello(hello) = req else {
            anyhow::bail!("{remote} sent a request before Hello");
        };
        let reply = answer_hello(&hello, Some(&peer.name), &self.cfg.name);
        let accepted = matches!(reply, tern_proto::HelloReply::Accepted { .. });
        write_frame(&mut send, &Response::Hello(reply)).await?;
        let _ = send.finish();
        if !accepted {
            let _ = send.stopped().await;
            conn.close(1u32.into(), b"hello refused");
            anyhow::bail!("refused {remote} ({})", peer.name);
        }
        tracing::info!(%remote, peer = %peer.name, role = %peer.role, "peer connected");
        let permits = Arc::new(tokio::sync::Semaphore::new(endpoint::MAX_REQUESTS_PER_CONNECTION));
        let activity = Arc::new(Mutex::new((0usize, Instant::now())));
        let idle_limit = scaled(endpoint::IDLE_CONNECTION);
        loop {
            let (send, recv) = match tokio::time::timeout(idle_limit, conn.accept_bi()).await {
                Err(_) => {
                    let (open, since) = *activity.lock().unwrap();
                    if open == 0 && since.elapsed() >= idle_limit {
                        tracing::info!(peer = %peer.name, "closing a connection idle for {} s", idle_limit.as_secs());
                        conn.close(0u32.into(), b"idle");
                        return Ok(());
                    }
                    continue;
                }
                Ok(Ok(s)) => s,
                Ok(Err(quinn::ConnectionError::ApplicationClosed(_) | quinn::ConnectionError::LocallyClosed)) => return Ok(()),
                Ok(Err(e)) => return Err(e.into()),
            };
            // At most so many requests served at once: the next stream waits.
            let permit = permits.clone().acquire_owned().await?;
            activity.lock().unwrap().0 += 1;
            let agent = self.clone();
            let conn = conn.clone();
            let peer = peer.clone();
            let activity = activity.clone();
            tokio::spawn(async move {
                if let Err(e) = agent.request(conn, &peer, send, recv).await {
                    tracing::warn!(peer = %peer.name, "request failed: {e:#}");
                }
                drop(permit);
                let mut a = activity.lock().unwrap();
                *a = (a.0 - 1, Instant::now());
            });
        }
    }

    async fn request(
        self: Arc<Self>,
        conn: quinn::Connection,
        peer: &PeerId,
        mut send: quinn::SendStream,
        mut recv: quinn::RecvStream,
    ) -> anyhow::Result<()> {
        let req: Request = tern_proto::frame::expect_frame(&mut recv).await?;
        let allowed = match authorize(&req, peer, &self.cfg.name) {
            Ok(Allowed::Yes) => Ok(()),
            Ok(Allowed::IfEvacuatedFrom(host)) => self.evacuated_from(&req, &host).await,
            Err(denied) => Err(denied),
        };
        if let Err(denied) = allowed {
            tracing::warn!(peer = %peer.name, role = %peer.role, "{denied}");
            let error = tern_proto::RemoteError { message: denied.to_string() };
            // A Migrate's stream carries events, not responses.
            match req {
                Request::Migrate(_) => write_frame(&mut send, &tern_proto::MigrateEvent::Refused(error)).await?,
                _ => write_frame(&mut send, &Response::Error(error)).await?,
            }
            let _ = send.finish();
            return Ok(());
        }
        let response = match req {
            Request::Migrate(m) => return self.migrate(m, send, recv).await,
            Request::Receive(begin) => return target::receive(&self, conn, &peer.name, begin, send, recv).await,
            Request::Sink { bytes } => return crate::probe::sink(bytes, send, recv).await,
            Request::Pages { id } => return self.tunnels.attach(id, &peer.name, send, recv).await,
            Request::CheckpointPut(put) => return crate::checkpoints::put(&self, conn, &peer.name, put, send, recv).await,
            Request::Checkpoint(r) => crate::checkpoints::handle(&self, r).await,
            Request::Probe(p) => crate::probe::probe(&self, p).await.map(Response::Probe),
            Request::Facts => self.facts().await.and_then(|f| self.with_status(f)).map(Response::Facts),
            Request::Cordon(r) => self.cordon(r).map(Response::Cordon),
            Request::Evacuation(r) => {
                crate::evacuation::forget(&self.cfg.state_dir, &r.forget).map(Response::Evacuation).map_err(anyhow::Error::from)
            }
            Request::Containers => self.containers().await.map(Response::Containers),
            Request::CheckIncoming(c) => self.check_incoming(&c).await.map(Response::IncomingCheck),
            Request::Resolve(r) => target::resolve(&self, &peer.name, r).await.map(Response::Resolved).map_err(Into::into),
            Request::PostCopy(r) => self.fills.act(&r, &self.cfg.name).await.map(Response::PostCopy).map_err(Into::into),
            Request::Hello(_) | Request::Invalid => Err(anyhow::anyhow!("unexpected request")),
        };
        let response = response.unwrap_or_else(|e| Response::Error(tern_proto::RemoteError { message: format!("{e:#}") }));
        write_frame(&mut send, &response).await?;
        let _ = send.finish();
        Ok(())
    }

    /// Every container here. While a post-copy fill is served from here,
    /// Podman's dump holds a container's lock and every listing waits for
    /// the fill: after a few seconds the answer says so instead of timing
    /// out at the coordinator.
    async fn containers(&self) -> anyhow::Result<Vec<tern_proto::facts::ContainerInfo>> {
        let fills = self.fills.list(None);
        if fills.is_empty() {
            return Ok(self.engine.list().await?);
        }
        match tokio::time::timeout(BUSY_LISTING, self.engine.list()).await {
            Ok(r) => Ok(r?),
            Err(_) => {
                let names: Vec<String> = fills.iter().map(|f| format!("{} (to {})", f.container, f.target)).collect();
                anyhow::bail!(
                    "Podman on {} lists nothing until the post-copy fill of {} ends: its dump holds the container's lock (`tern post-copy` shows the fill)",
                    self.cfg.name,
                    names.join(", ")
                )
            }
        }
    }

    /// A move back to `host` asked by its evacuator: the container must be
    /// the one the ticket names, and an evacuation must have brought it
    /// here from `host`.
    async fn evacuated_from(&self, req: &Request, host: &str) -> Result<(), Denied> {
        let Request::Migrate(m) = req else { return Ok(()) };
        let id = &m.ticket.body.container_id;
        let here = self.engine.inspect(&m.container).await.ok().flatten().is_some_and(|c| &c.id == id);
        if here && crate::arrivals::came_from(&self.cfg.state_dir, id).as_deref() == Some(host) {
            return Ok(());
        }
        Err(Denied::BeyondEvacuator {
            what: "moving a container that no evacuation brought here from it",
            peer: host.to_string(),
            here: self.cfg.name.clone(),
        })
    }

    /// The cached facts with what is read afresh (`cordon.rs`) and the
    /// bandwidth cap; the config's `facts_override` still has the last word.
    fn with_status(&self, mut f: tern_proto::facts::HostFacts) -> anyhow::Result<tern_proto::facts::HostFacts> {
        f.status = crate::cordon::status(&self.cfg.state_dir);
        f.status.bandwidth_cap = self.bandwidth.ceiling();
        crate::facts::apply_overrides(f, &self.cfg.facts_override)
    }

    fn cordon(&self, r: tern_proto::CordonRequest) -> anyhow::Result<tern_proto::CordonChange> {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
        let change = crate::cordon::set(&self.cfg.state_dir, r.cordon, now)
            .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", crate::cordon::path(&self.cfg.state_dir).display()))?;
        match (&change.was, &change.now) {
            (None, Some(c)) => tracing::info!("cordoned {}: no migration lands here", c.describe()),
            (Some(c), None) => tracing::info!("uncordoned (was cordoned {})", c.describe()),
            _ => {}
        }
        Ok(change)
    }

    async fn check_incoming(&self, c: &tern_proto::facts::ContainerInfo) -> anyhow::Result<Vec<compat::Finding>> {
        let existing = self.engine.list().await?;
        let has_image = self.engine.image_exists(&c.image_id).await?;
        let (volumes, volume_dir) = if c.volumes.is_empty() {
            (Vec::new(), String::new())
        } else {
            let info = self.engine.info().await?;
            let dir = info.store.volume_path.unwrap_or_default();
            (self.engine.volumes().await?, dir)
        };
        let mut findings = compat::check_incoming(c, &existing, &volumes, &volume_dir, has_image);
        let networks = self.engine.networks().await?;
        findings.extend(tern_proto::network::networks_finding(c, &networks));
        if !c.ports.is_empty() {
            // The agent runs in the host's network namespace: its sockets
            // are the host's. Conmon holds every port Podman publishes.
            let read = |f: &str| std::fs::read_to_string(format!("/proc/self/net/{f}")).unwrap_or_default();
            let in_use = tern_proto::network::ports_in_use(&(read("tcp") + &read("tcp6")), &(read("udp") + &read("udp6")));
            findings.extend(tern_proto::network::ports_finding(c, &in_use, "its current host", &self.cfg.name));
        }
        Ok(findings)
    }

    /// Runs a migration as source, streaming events to the coordinator and
    /// listening for its Cancel (or its going away, which cancels too).
    async fn migrate(
        self: Arc<Self>,
        req: tern_proto::MigrateRequest,
        mut send: quinn::SendStream,
        mut recv: quinn::RecvStream,
    ) -> anyhow::Result<()> {
        let cancel = CancellationToken::new();
        let watcher = {
            let cancel = cancel.clone();
            tokio::spawn(async move {
                match read_frame::<_, CoordinatorSignal>(&mut recv).await {
                    Ok(Some(CoordinatorSignal::Cancel)) => tracing::info!("the coordinator cancelled"),
                    other => tracing::info!("the coordinator's stream ended ({other:?}); cancelling"),
                }
                cancel.cancel();
            })
        };
        let (tx, mut rx) = mpsc::channel(64);
        let agent = self.clone();
        let run = tokio::spawn(async move { source::migrate(&agent, req, tx, cancel).await });
        // Forward events; a coordinator that went away must not stop the
        // migration's own cleanup, so write errors are only logged.
        let mut alive = true;
        while let Some(ev) = rx.recv().await {
            if alive {
                if let Err(e) = write_frame(&mut send, &ev).await {
                    tracing::warn!("the coordinator is gone ({e}); the migration goes on to its end");
                    alive = false;
                }
            }
        }
        let _ = run.await;
        watcher.abort();
        let _ = send.finish();
        let _ = tokio::time::timeout(std::time::Duration::from_secs(5), send.stopped()).await;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tern_proto::checkpoint::CheckpointRequest;

    #[test]
    fn only_the_coordinator_drives_and_only_hosts_talk_agent_to_agent() {
        let host = PeerId { name: "b".into(), role: Role::Host };
        let coordinator = PeerId { name: "coordinator".into(), role: Role::Coordinator };
        let info: tern_proto::facts::ContainerInfo = serde_json::from_str(
            r#"{"name":"x","id":"1","image":"","image_id":"","state":"","ips":[],"memory_bytes":0,"files_bytes":0,"volumes":[],"pid":0,"networks":[],"ports":[],"connections":[],"process_uids":[],"systemd_unit":null}"#,
        )
        .unwrap();
        for r in [
            Request::Facts,
            Request::Containers,
            Request::CheckIncoming(info),
            Request::Cordon(tern_proto::CordonRequest { cordon: Some("maintenance".into()) }),
            Request::Cordon(tern_proto::CordonRequest { cordon: None }),
            Request::Evacuation(tern_proto::EvacuationRequest { forget: vec!["1".into()] }),
            // A host may put bytes into another's store, never have it
            // restore, list, remove or send what it keeps.
            Request::Checkpoint(CheckpointRequest::List),
            Request::Checkpoint(CheckpointRequest::Remove { name: "x".into() }),
            Request::Checkpoint(CheckpointRequest::Restore(tern_proto::checkpoint::RestoreCheckpoint {
                name: "x".into(),
                digest: [0; 32],
                as_names: vec![],
                replace: false,
            })),
            Request::Checkpoint(CheckpointRequest::Standby(tern_proto::checkpoint::StandbyOrder::List)),
        ] {
            assert!(authorize(&r, &coordinator, "a").is_ok());
            let e = authorize(&r, &host, "a").unwrap_err();
            assert!(e.to_string().contains("for the coordinator only, and b holds a host certificate"), "{e}");
        }
        for r in [
            Request::Sink { bytes: 1 },
            Request::Resolve(tern_proto::ResolveRequest {
                id: 1,
                container: "x".into(),
                container_id: "1".into(),
                verdict: tern_proto::Verdict::Abort,
            }),
        ] {
            assert!(authorize(&r, &host, "a").is_ok());
            assert!(matches!(authorize(&r, &coordinator, "a"), Err(Denied::HostOnly { .. })));
        }
    }

    #[test]
    fn an_evacuator_drives_its_own_host_and_reads_the_others_but_only_brings_back_elsewhere() {
        let evacuator = PeerId { name: "a".into(), role: Role::Evacuator };
        let migrate = |target: &str, evacuation: bool| {
            Request::Migrate(tern_proto::MigrateRequest {
                id: 1,
                container: "x".into(),
                target: tern_proto::Peer { name: target.into(), address: "198.51.100.12:7443".into() },
                options: tern_proto::MigrateOptions {
                    mode: tern_proto::mode::Mode::StopAndCopy,
                    compress: tern_proto::Compression::None,
                    tcp_established: false,
                    allow_reset: false,
                    policy: Default::default(),
                    lazy_restore: false,
                    bandwidth: 0,
                    post_copy_first: Default::default(),
                },
                ticket: Default::default(),
                evacuation,
            })
        };
        let cordon = Request::Cordon(tern_proto::CordonRequest { cordon: None });
        let forget = Request::Evacuation(tern_proto::EvacuationRequest { forget: vec![] });
        // On its own host: anything a coordinator may ask.
        for r in [migrate("b", true), cordon.clone(), forget.clone(), Request::Facts] {
            assert_eq!(authorize(&r, &evacuator, "a"), Ok(Allowed::Yes));
        }
        // Elsewhere: reads, and a move back to a of what an evacuation brought.
        for r in [Request::Facts, Request::Containers] {
            assert_eq!(authorize(&r, &evacuator, "b"), Ok(Allowed::Yes));
        }
        assert_eq!(authorize(&migrate("a", false), &evacuator, "b"), Ok(Allowed::IfEvacuatedFrom("a".into())));
        for r in [migrate("c", false), migrate("a", true), cordon, forget] {
            let e = authorize(&r, &evacuator, "b").unwrap_err();
            assert!(matches!(e, Denied::BeyondEvacuator { .. }), "{e}");
            assert!(e.to_string().contains("may only evacuate a"), "{e}");
        }
        // Never what agents say to each other.
        let sink = Request::Sink { bytes: 1 };
        assert!(matches!(authorize(&sink, &evacuator, "a"), Err(Denied::HostOnly { .. })));
    }
}
