//! The switchover (ARCHITECTURE.md, "the switchover") with the link between
//! the two agents cut at its most delicate points: two real agents in one
//! process, real QUIC with mutual TLS on loopback, a fake container engine.
//!
//! Why a relay: the protocol's promise (exactly one copy runs, through lost
//! messages and a cut link) rests on what QUIC does when packets stop
//! arriving: retransmits, idle timeouts, handshakes that fail and later
//! succeed. A fault that drops a message inside the agent would not
//! exercise any of that. So the source is told the target lives at a UDP
//! relay (a tokio `UdpSocket` pair) that forwards datagrams both ways and
//! can drop every one of them, in both directions, until healed: the
//! agents see a real network partition. Only the agent-to-agent path goes
//! through it; the test, as coordinator, talks to both agents directly.
//!
//! The cut lands at a precise point: in the target's restore (a hook in
//! the fake's `restore_import`), so the target's `Restored` is lost; or
//! once the source recorded the commit (the `AfterRestored` stall of
//! `faults.rs`, seen by its flag file), so its `Commit` is lost. A cut
//! shorter than QUIC's idle timeout (10 s, transport/src/endpoint.rs) is
//! invisible, retransmission hides it; the timeouts can only be stretched
//! (`TERN_TIMEOUT_SCALE` >= 1), not shortened, so these tests last from
//! about 15 s to about 50 s.
//!
//! Throughout each test a watcher samples both fakes every 2 ms and fails
//! the test if the container ever runs on both hosts at once.

use async_trait::async_trait;
use std::collections::{BTreeMap, HashSet};
use std::io::Read;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tern_agent::config::{AgentConfig, Faults, PodmanConfig, StallPoint};
use tern_agent::context::Agent;
use tern_agent::engine::{CheckpointOpts, Engine, EngineError, PodmanInfo};
use tern_proto::facts::ContainerInfo;
use tern_proto::frame::read_frame;
use tern_proto::policy::PolicyConfig;
use tern_proto::*;
use tern_transport::rpc::Session;
use tern_transport::TlsFiles;
use tokio::net::UdpSocket;

/// The fake's image: a full image ID, as Podman's.
const IMG: &str = "1b2c3d4e5f60718293a4b5c6d7e8f9001b2c3d4e5f60718293a4b5c6d7e8f900";
const NAME: &str = "web";
const ID: &str = "id-web";

// ---- The relay ----

/// A UDP relay between the source agent and the target agent: the source
/// talks to `addr`, the relay to the target from a socket of its own.
struct Relay {
    addr: SocketAddr,
    cut: Arc<AtomicBool>,
    /// Datagrams dropped while cut.
    dropped: Arc<AtomicU64>,
}

impl Relay {
    async fn start(target: SocketAddr) -> Arc<Relay> {
        let front = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let back = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        back.connect(target).await.unwrap();
        let relay = Arc::new(Relay { addr: front.local_addr().unwrap(), cut: Arc::default(), dropped: Arc::default() });
        let (cut, dropped) = (relay.cut.clone(), relay.dropped.clone());
        tokio::spawn(async move {
            // The source agent's one endpoint: every connection it opens
            // (the conversation, Resolve) comes from this address.
            let mut source: Option<SocketAddr> = None;
            let (mut up, mut down) = (vec![0u8; 65536], vec![0u8; 65536]);
            loop {
                tokio::select! {
                    r = front.recv_from(&mut up) => {
                        let Ok((n, from)) = r else { continue };
                        source.get_or_insert(from);
                        if cut.load(Ordering::SeqCst) {
                            dropped.fetch_add(1, Ordering::Relaxed);
                        } else {
                            let _ = back.send(&up[..n]).await;
                        }
                    }
                    r = back.recv(&mut down) => {
                        // Errors (an ICMP unreachable echoed on the connected socket) are no datagram.
                        let Ok(n) = r else { continue };
                        match source {
                            _ if cut.load(Ordering::SeqCst) => {
                                dropped.fetch_add(1, Ordering::Relaxed);
                            }
                            Some(to) => {
                                let _ = front.send_to(&down[..n], to).await;
                            }
                            None => {}
                        }
                    }
                }
            }
        });
        relay
    }

    fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
    }

    fn heal(&self) {
        self.cut.store(false, Ordering::SeqCst);
    }

    fn is_cut(&self) -> bool {
        self.cut.load(Ordering::SeqCst)
    }

    /// Cuts now, heals after `d` (never, for `None`).
    fn cut_for(self: &Arc<Self>, d: Option<Duration>) {
        self.cut();
        if let Some(d) = d {
            let me = self.clone();
            tokio::spawn(async move {
                tokio::time::sleep(d).await;
                me.heal();
            });
        }
    }
}

// ---- The fake engine (the parts of migration_logic.rs's a switchover needs) ----

#[derive(Default)]
struct FakeState {
    containers: BTreeMap<String, ContainerInfo>,
    images: HashSet<String>,
    /// Containers with a kept checkpoint.
    checkpoints: HashSet<String>,
}

type Hook = Box<dyn FnOnce() + Send>;

/// A container engine in memory; stop-and-copy only.
struct FakeEngine {
    state: Mutex<FakeState>,
    dir: tempfile::TempDir,
    /// Called once when this engine is asked to restore an imported
    /// checkpoint (the target's restore), before it restores.
    on_restore: Mutex<Option<Hook>>,
}

impl FakeEngine {
    fn new() -> Arc<Self> {
        let e = FakeEngine { state: Mutex::default(), dir: tempfile::tempdir().unwrap(), on_restore: Mutex::default() };
        e.state.lock().unwrap().images.insert(IMG.into());
        Arc::new(e)
    }

    fn add(&self, name: &str, ip: &str) {
        let info = ContainerInfo {
            name: name.into(),
            id: format!("id-{name}"),
            image: "localhost/tern-busybox:latest".into(),
            image_id: IMG.into(),
            state: "running".into(),
            ips: vec![ip.parse().unwrap()],
            memory_bytes: 0,
            files_bytes: 0,
            volumes: vec![],
            pid: 0,
            networks: vec![],
            ports: vec![],
            connections: vec![],
            process_uids: vec![],
        };
        self.state.lock().unwrap().containers.insert(name.into(), info);
    }

    fn state_of(&self, name: &str) -> Option<String> {
        self.state.lock().unwrap().containers.get(name).map(|c| c.state.clone())
    }

    fn running(&self, name: &str) -> bool {
        self.state_of(name).as_deref() == Some("running")
    }

    fn on_restore(&self, hook: impl FnOnce() + Send + 'static) {
        *self.on_restore.lock().unwrap() = Some(Box::new(hook));
    }

    /// The container folder with this ID, as Podman's layout names it.
    fn folder(&self, id: &str) -> PathBuf {
        self.dir.path().join("containers").join(id)
    }

    /// The target's marker of a tentative copy (target/inplace.rs).
    fn tentative(&self, id: &str) -> bool {
        self.folder(id).join("tern-incoming").exists()
    }
}

fn failed(cmd: &str, why: &str) -> EngineError {
    EngineError::Failed { cmd: cmd.into(), code: Some(125), status: "exit status: 125".into(), stderr: why.into() }
}

/// config.dump as the fake writes it, with the fields admission checks.
fn podman_config(info: &ContainerInfo) -> Vec<u8> {
    let mut v = serde_json::to_value(info).unwrap();
    let o = v.as_object_mut().unwrap();
    o.insert("rootfsImageID".into(), info.image_id.clone().into());
    o.insert("rootfsImageName".into(), info.image.clone().into());
    o.insert("privileged".into(), false.into());
    o.insert("createNetNS".into(), true.into());
    serde_json::to_vec(&v).unwrap()
}

/// spec.dump of a plain container (target/admission.rs admits it).
fn podman_spec() -> Vec<u8> {
    let caps = ["CAP_CHOWN", "CAP_KILL", "CAP_NET_BIND_SERVICE"];
    let ns: Vec<_> = ["pid", "network", "ipc", "uts", "mount"].iter().map(|t| serde_json::json!({"type": t})).collect();
    serde_json::to_vec(&serde_json::json!({
        "process": {"args": ["sh"], "capabilities": {"bounding": caps, "effective": caps}},
        "mounts": [{"destination": "/proc", "type": "proc", "source": "proc"}],
        "linux": {"namespaces": ns}
    }))
    .unwrap()
}

#[async_trait]
impl Engine for FakeEngine {
    async fn list(&self) -> Result<Vec<ContainerInfo>, EngineError> {
        Ok(self.state.lock().unwrap().containers.values().cloned().collect())
    }
    async fn inspect(&self, name: &str) -> Result<Option<ContainerInfo>, EngineError> {
        Ok(self.state.lock().unwrap().containers.get(name).cloned())
    }
    async fn image_exists(&self, id: &str) -> Result<bool, EngineError> {
        Ok(self.state.lock().unwrap().images.contains(id))
    }
    async fn image_save(&self, id: &str, path: &Path) -> Result<(), EngineError> {
        std::fs::write(path, id).map_err(|e| failed("save", &e.to_string()))
    }
    async fn image_load(&self, path: &Path) -> Result<(), EngineError> {
        let id = std::fs::read_to_string(path).map_err(|e| failed("load", &e.to_string()))?;
        self.state.lock().unwrap().images.insert(id);
        Ok(())
    }
    async fn image_tag(&self, id: &str, _name: &str) -> Result<(), EngineError> {
        if !self.state.lock().unwrap().images.contains(id) {
            return Err(failed("tag", "no such image"));
        }
        Ok(())
    }
    async fn container_dir(&self, name: &str) -> Result<PathBuf, EngineError> {
        let d = self.dir.path().join(name);
        std::fs::create_dir_all(&d).unwrap();
        Ok(d)
    }
    async fn pre_dump(&self, _id: &str, _dir: &Path, _parent: Option<&str>) -> Result<(), EngineError> {
        Err(failed("runc", "this fake does stop-and-copy only"))
    }
    async fn checkpoint_export(&self, name: &str, path: &Path, opts: CheckpointOpts) -> Result<(), EngineError> {
        let info = {
            let mut s = self.state.lock().unwrap();
            if opts.leave_running || opts.with_previous {
                return Err(failed("checkpoint", "this fake does stop-and-copy only"));
            }
            let c = s.containers.get_mut(name).ok_or_else(|| failed("checkpoint", "no such container"))?;
            c.state = "exited".into();
            let info = c.clone();
            s.checkpoints.insert(name.into());
            info
        };
        let path = path.to_path_buf();
        // Opening a FIFO blocks until the reader comes: do it off the runtime.
        tokio::task::spawn_blocking(move || {
            let f = std::fs::OpenOptions::new().write(true).open(&path)?;
            let mut b = tar::Builder::new(f);
            let mut add = |name: &str, data: &[u8]| {
                let mut h = tar::Header::new_ustar();
                h.set_size(data.len() as u64);
                h.set_mode(0o600);
                b.append_data(&mut h, name, data)
            };
            add("config.dump", &podman_config(&info))?;
            add("spec.dump", &podman_spec())?;
            add("checkpoint/pagemap-1.img", &[0, 0, 0, 0])?;
            add("checkpoint/pages-1.img", &[7u8; 4096])?;
            b.finish()
        })
        .await
        .unwrap()
        .map_err(|e| failed("checkpoint", &e.to_string()))
    }
    async fn restore_local(&self, name: &str, _: CheckpointOpts) -> Result<(), EngineError> {
        let mut s = self.state.lock().unwrap();
        if !s.checkpoints.contains(name) {
            return Err(failed("restore", "no checkpoint kept"));
        }
        s.containers.get_mut(name).unwrap().state = "running".into();
        Ok(())
    }
    async fn restore_import(&self, path: &Path, _: CheckpointOpts) -> Result<(), EngineError> {
        let hook = self.on_restore.lock().unwrap().take();
        if let Some(hook) = hook {
            hook();
        }
        let err = |e: &dyn std::fmt::Display| failed("restore", &e.to_string());
        // As Podman does: the archive's config names the container, and the
        // archive is unpacked into the container's folder.
        let mut a = tar::Archive::new(std::fs::File::open(path).map_err(|e| err(&e))?);
        let mut info = None;
        let mut members = Vec::new();
        for entry in a.entries().map_err(|e| err(&e))? {
            let mut entry = entry.map_err(|e| err(&e))?;
            let name = entry.path().unwrap().to_string_lossy().into_owned();
            let mut data = Vec::new();
            entry.read_to_end(&mut data).map_err(|e| err(&e))?;
            if name == "config.dump" {
                info = Some(serde_json::from_slice::<ContainerInfo>(&data).map_err(|e| err(&e))?);
            }
            members.push((name, data));
        }
        let mut info = info.ok_or_else(|| err(&"no config.dump"))?;
        let folder = self.bundle_dir(&info.id).await?;
        for (name, data) in &members {
            let p = folder.join(name);
            std::fs::create_dir_all(p.parent().unwrap()).map_err(|e| err(&e))?;
            std::fs::write(p, data).map_err(|e| err(&e))?;
        }
        if !folder.join("checkpoint/pages-1.img").exists() {
            return Err(err(&"a complete checkpoint for this container cannot be found"));
        }
        let mut s = self.state.lock().unwrap();
        if s.containers.contains_key(&info.name) {
            return Err(failed("restore", "name in use"));
        }
        info.state = "running".into();
        s.containers.insert(info.name.clone(), info);
        Ok(())
    }
    async fn bundle_dir(&self, id: &str) -> Result<PathBuf, EngineError> {
        Ok(self.dir.path().join("containers").join(id).join("userdata"))
    }
    async fn remove(&self, name: &str, _force: bool) -> Result<(), EngineError> {
        let mut s = self.state.lock().unwrap();
        s.checkpoints.remove(name);
        let c = s.containers.remove(name).ok_or_else(|| failed("rm", "no such container"))?;
        // Podman removes the container's folder with it.
        let _ = std::fs::remove_dir_all(self.dir.path().join("containers").join(&c.id));
        Ok(())
    }
    async fn volumes(&self) -> Result<Vec<String>, EngineError> {
        Ok(Vec::new())
    }
    async fn volume_remove(&self, _name: &str) -> Result<(), EngineError> {
        Ok(())
    }
    async fn info(&self) -> Result<PodmanInfo, EngineError> {
        Ok(serde_json::from_value(serde_json::json!({
            "version": {"Version": "4.3.1"},
            "host": {"ociRuntime": {"name": "runc", "version": "runc version 1.1.5"}, "networkBackend": "netavark"},
            "store": {"volumePath": "/var/lib/containers/storage/volumes"}
        }))
        .expect("the fake's podman info parses"))
    }
    async fn networks(&self) -> Result<Vec<tern_proto::network::NetworkDef>, EngineError> {
        Ok(Vec::new())
    }
    async fn main_pid(&self, _name: &str) -> Result<u32, EngineError> {
        Ok(0)
    }
}

// ---- The watcher: never two copies ----

/// Samples both engines every 2 ms for as long as it lives.
struct Watch {
    stop: Arc<AtomicBool>,
    /// What was seen when both ran, if ever.
    both: Arc<Mutex<Option<String>>>,
    samples: Arc<AtomicU64>,
}

impl Watch {
    fn start(a: &Arc<FakeEngine>, b: &Arc<FakeEngine>) -> Watch {
        let w = Watch { stop: Arc::default(), both: Arc::default(), samples: Arc::default() };
        let (a, b, stop, both, samples) = (a.clone(), b.clone(), w.stop.clone(), w.both.clone(), w.samples.clone());
        tokio::spawn(async move {
            let t0 = Instant::now();
            while !stop.load(Ordering::SeqCst) {
                // One lock after the other: a copy that moves between the two
                // reads shows as none, never as two.
                let (on_a, on_b) = (a.running(NAME), b.running(NAME));
                if on_a && on_b {
                    both.lock().unwrap().get_or_insert_with(|| format!("running on both hosts {:?} into the test", t0.elapsed()));
                }
                samples.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        });
        w
    }

    /// Never two copies so far, and exactly one now.
    fn check(&self, a: &FakeEngine, b: &FakeEngine) {
        assert_eq!(*self.both.lock().unwrap(), None::<String>);
        assert!(self.samples.load(Ordering::Relaxed) > 100, "the watcher ran");
        assert_eq!(a.running(NAME) as u8 + b.running(NAME) as u8, 1, "a: {:?}, b: {:?}", a.state_of(NAME), b.state_of(NAME));
    }

    /// Never two copies so far.
    fn never_two(&self) {
        assert_eq!(*self.both.lock().unwrap(), None::<String>);
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

// ---- Two agents, the relay between them ----

struct Cluster {
    dir: tempfile::TempDir,
    coordinator: TlsFiles,
    addrs: BTreeMap<&'static str, SocketAddr>,
    relay: Arc<Relay>,
}

/// Starts agents `a` (source, with `a_faults`) and `b` (target) on
/// loopback, each with its recovery task as main.rs starts it, and the
/// relay in front of `b`.
async fn cluster(a: Arc<FakeEngine>, b: Arc<FakeEngine>, a_faults: Faults) -> Cluster {
    let dir = tempfile::tempdir().unwrap();
    let local: std::net::IpAddr = "127.0.0.1".parse().unwrap();
    let hosts = ["a", "b"].map(|n| tern_transport::pki::HostSpec { name: n.into(), addresses: vec![local] });
    tern_transport::pki::init(dir.path(), &hosts, false).unwrap();
    let mut addrs = BTreeMap::new();
    for (name, engine, faults) in [("a", a as Arc<dyn Engine>, a_faults), ("b", b as Arc<dyn Engine>, Faults::default())] {
        let cfg = AgentConfig {
            name: name.into(),
            listen: "127.0.0.1:0".parse().unwrap(),
            state_dir: dir.path().join(format!("state-{name}")),
            tls: TlsFiles::in_dir(dir.path(), name),
            podman: PodmanConfig::default(),
            runc: Default::default(),
            network: Default::default(),
            admission: Default::default(),
            limits: Default::default(),
            facts_override: Default::default(),
            faults,
        };
        std::fs::create_dir_all(&cfg.state_dir).unwrap();
        let endpoint = tern_transport::server_endpoint(cfg.listen, &cfg.tls).unwrap();
        addrs.insert(name, endpoint.local_addr().unwrap());
        let agent = Arc::new(Agent::new(cfg, engine, endpoint));
        tokio::spawn(tern_agent::recovery::recover(agent.clone()));
        tokio::spawn(agent.serve(std::future::pending()));
    }
    let relay = Relay::start(addrs["b"]).await;
    Cluster { coordinator: TlsFiles::in_dir(dir.path(), "coordinator"), addrs, relay, dir }
}

impl Cluster {
    async fn session(&self, host: &str) -> Session {
        let ep = tern_transport::client_endpoint(&self.coordinator).unwrap();
        Session::connect(&ep, self.addrs[host], host, "coordinator").await.unwrap()
    }

    fn state_dir(&self, host: &str) -> PathBuf {
        self.dir.path().join(format!("state-{host}"))
    }

    /// The source's journal entries still unsettled.
    fn journal(&self) -> usize {
        std::fs::read_dir(self.state_dir("a").join("journal"))
            .map(|d| d.flatten().filter(|f| f.path().extension().is_some_and(|e| e == "json")).count())
            .unwrap_or(0)
    }

    /// Asks `a` to move `web` to `b`, the target's address being the relay's.
    async fn migrate(&self) -> MigrationReport {
        let info = match self.session("a").await.request(&Request::Containers).await.unwrap() {
            Response::Containers(list) => list.into_iter().find(|c| c.name == NAME).unwrap(),
            other => panic!("{other:?}"),
        };
        let signer = tern_transport::ticket::Signer::load(&self.coordinator).unwrap();
        let ticket = signer.issue(7, "a", "b", &info, tern_transport::ticket::now_secs());
        let options = MigrateOptions {
            mode: Mode::StopAndCopy,
            compress: Compression::None,
            tcp_established: false,
            allow_reset: false,
            policy: PolicyConfig::default(),
            lazy_restore: false,
        };
        let req = MigrateRequest {
            id: 7,
            container: NAME.into(),
            target: Peer { name: "b".into(), address: self.relay.addr.to_string() },
            options,
            ticket,
        };
        let s = self.session("a").await;
        let (_send, mut recv) = s.open(&Request::Migrate(req)).await.unwrap();
        loop {
            let ev = tokio::time::timeout(Duration::from_secs(120), read_frame::<_, MigrateEvent>(&mut recv))
                .await
                .expect("the migration hung")
                .unwrap()
                .expect("stream ended without a report");
            match ev {
                MigrateEvent::Progress(_) => {}
                MigrateEvent::Done(r) => return r,
                MigrateEvent::Invalid => panic!("invalid event"),
            }
        }
    }

    /// What `b` answers `a` (with a's certificate, directly) to a Resolve.
    async fn resolve_as_source(&self, verdict: Verdict) -> Response {
        let ep = tern_transport::client_endpoint(&TlsFiles::in_dir(self.dir.path(), "a")).unwrap();
        let s = Session::connect(&ep, self.addrs["b"], "b", "a").await.unwrap();
        let req = ResolveRequest { id: 7, container: NAME.into(), container_id: ID.into(), verdict };
        s.request(&Request::Resolve(req)).await.unwrap()
    }
}

/// Waits up to `limit` for `cond`, polling.
async fn wait_for(limit: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !cond() {
        assert!(t0.elapsed() < limit, "{what}: not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn engines() -> (Arc<FakeEngine>, Arc<FakeEngine>) {
    let (a, b) = (FakeEngine::new(), FakeEngine::new());
    a.add(NAME, "203.0.113.5");
    (a, b)
}

/// The link breaks while the target restores, so its `Restored` is lost,
/// and comes back after QUIC gave up on the conversation (10 s) but
/// within the source's 30 s of trying to settle: the source's `Resolve`
/// gets through, the target drops its tentative copy, the source runs its
/// own again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restored_lost_and_link_back_within_the_settle_window_rolls_back() {
    let (a, b) = engines();
    let c = cluster(a.clone(), b.clone(), Faults::default()).await;
    let watch = Watch::start(&a, &b);
    let relay = c.relay.clone();
    b.on_restore(move || relay.cut_for(Some(Duration::from_secs(15))));
    let t0 = Instant::now();
    let r = c.migrate().await;
    assert!(matches!(&r.outcome, Outcome::RolledBack { failure } if failure.phase == Phase::Restore), "{r:#?}");
    assert!(c.relay.dropped.load(Ordering::Relaxed) > 0, "the cut dropped something");
    assert!(t0.elapsed() > Duration::from_secs(15), "settled only once healed: {:?}", t0.elapsed());
    watch.check(&a, &b);
    assert_eq!(a.state_of(NAME).as_deref(), Some("running"), "back on the source");
    assert_eq!(b.state_of(NAME), None, "nothing left on the target");
    assert!(!b.folder(ID).exists(), "{} left behind", b.folder(ID).display());
    assert_eq!(c.journal(), 0, "settled: no journal entry left");
}

/// The link breaks while the target restores and stays down past the
/// source's settle window: the migration ends undecided, the container
/// checkpointed on the source, at most the target's tentative copy
/// running. Once the link is back, the source's recovery settles it
/// (abort, as no commit was recorded): it runs on the source again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restored_lost_and_link_down_past_the_settle_window_is_undecided_then_recovered() {
    let (a, b) = engines();
    let c = cluster(a.clone(), b.clone(), Faults::default()).await;
    let watch = Watch::start(&a, &b);
    let relay = c.relay.clone();
    b.on_restore(move || relay.cut_for(None));
    let r = c.migrate().await;
    assert!(matches!(&r.outcome, Outcome::Undecided { failure, .. } if failure.phase == Phase::Restore), "{r:#?}");
    assert!(c.relay.is_cut());
    watch.never_two();
    assert_eq!(a.state_of(NAME).as_deref(), Some("exited"), "checkpointed on the source, not restored");
    assert_eq!(b.state_of(NAME).as_deref(), Some("running"), "the target's copy runs on, alone");
    assert!(b.tentative(ID), "and is tentative");
    assert_eq!(c.journal(), 1, "left for recovery");
    // Recovery tries at once, and while cut nothing changes.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!((a.state_of(NAME).as_deref(), b.running(NAME)), (Some("exited"), true));
    c.relay.heal();
    wait_for(Duration::from_secs(30), "recovery settles", || a.running(NAME) && b.state_of(NAME).is_none() && c.journal() == 0).await;
    watch.check(&a, &b);
    assert!(!b.folder(ID).exists(), "{} left behind", b.folder(ID).display());
}

/// The link breaks once the source recorded the commit, so its `Commit` is
/// lost: the migration completes (the container is the target's), the
/// target's copy runs on, tentative until the link is back; then the
/// source's recovery tells it `Commit`, and its marker goes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commit_lost_completes_and_recovery_commits_once_healed() {
    let (a, b) = engines();
    let stall = Faults { stall_at: Some(StallPoint::AfterRestored), stall_ms: Some(500), ..Default::default() };
    let c = cluster(a.clone(), b.clone(), stall).await;
    let watch = Watch::start(&a, &b);
    // The source shows its stall with a flag file: cut then, for longer
    // than QUIC's idle timeout, so the Commit is not merely retransmitted.
    let flag = c.state_dir("a").join(tern_agent::faults::STALL_FLAG);
    let relay = c.relay.clone();
    let cutter = tokio::spawn(async move {
        while !flag.exists() {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        relay.cut_for(Some(Duration::from_secs(15)));
    });
    let r = c.migrate().await;
    cutter.await.unwrap();
    assert_eq!(r.outcome, Outcome::Completed, "{r:#?}");
    assert!(r.warnings.iter().any(|w| w.contains("did not confirm the commit")), "{:?}", r.warnings);
    assert!(c.relay.is_cut(), "the report came before the link was back");
    watch.never_two();
    assert_eq!(a.state_of(NAME), None, "the source copy is removed");
    assert!(b.running(NAME), "the target's copy runs");
    assert!(b.tentative(ID), "still tentative: it never heard the commit");
    assert_eq!(c.journal(), 1, "left for recovery, commit recorded");
    wait_for(Duration::from_secs(30), "recovery commits", || !b.tentative(ID) && c.journal() == 0).await;
    watch.check(&a, &b);
    assert!(b.running(NAME));
    // Committed: not even an abort from its source removes it now.
    assert_eq!(c.resolve_as_source(Verdict::Abort).await, Response::Resolved(Resolution::Kept));
    assert!(b.running(NAME));
    watch.check(&a, &b);
}
