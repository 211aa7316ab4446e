//! The migration logic of two real agents talking real QUIC with mutual TLS
//! on loopback, with a fake container engine behind the `Engine` trait.
//! These run without root; the end-to-end tests in `tests/` do the same
//! with real Podman, runc and CRIU.

use async_trait::async_trait;
use std::collections::{BTreeMap, HashSet};
use std::io::{BufRead, Write};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tern_agent::config::{AgentConfig, Faults, PodmanConfig};
use tern_agent::engine::{CheckpointOpts, Engine, EngineError};
use tern_agent::server::Agent;
use tern_proto::facts::ContainerInfo;
use tern_proto::frame::{read_frame, write_frame};
use tern_proto::*;
use tern_transport::rpc::Session;
use tern_transport::TlsFiles;

#[derive(Default)]
struct FakeState {
    containers: BTreeMap<String, ContainerInfo>,
    images: HashSet<String>,
    /// Containers with a kept checkpoint.
    checkpoints: HashSet<String>,
    calls: Vec<String>,
}

/// A container engine in memory. The "checkpoint archive" is the container's
/// JSON on one line followed by `size` bytes of filler.
struct FakeEngine {
    state: Mutex<FakeState>,
    size: usize,
    fail_checkpoint: bool,
}

impl FakeEngine {
    fn new(size: usize) -> Arc<Self> {
        Arc::new(FakeEngine { state: Mutex::default(), size, fail_checkpoint: false })
    }
    fn add(&self, name: &str, ip: &str) {
        let mut s = self.state.lock().unwrap();
        s.images.insert("img1".into());
        s.containers.insert(
            name.into(),
            ContainerInfo {
                name: name.into(),
                id: format!("id-{name}"),
                image: "localhost/tern-busybox:latest".into(),
                image_id: "img1".into(),
                state: "running".into(),
                ips: vec![ip.parse().unwrap()],
            },
        );
    }
    fn state_of(&self, name: &str) -> Option<String> {
        self.state.lock().unwrap().containers.get(name).map(|c| c.state.clone())
    }
    fn called(&self, what: &str) -> bool {
        self.state.lock().unwrap().calls.iter().any(|c| c.starts_with(what))
    }
}

fn failed(cmd: &str, why: &str) -> EngineError {
    EngineError::Failed { cmd: cmd.into(), status: "exit status: 125".into(), stderr: why.into() }
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
        self.state.lock().unwrap().calls.push("image_save".into());
        std::fs::write(path, id).map_err(|e| failed("save", &e.to_string()))
    }
    async fn image_load(&self, path: &Path) -> Result<(), EngineError> {
        let id = std::fs::read_to_string(path).map_err(|e| failed("load", &e.to_string()))?;
        let mut s = self.state.lock().unwrap();
        s.calls.push("image_load".into());
        s.images.insert(id);
        Ok(())
    }
    async fn image_tag(&self, id: &str, _name: &str) -> Result<(), EngineError> {
        let s = self.state.lock().unwrap();
        if !s.images.contains(id) {
            return Err(failed("tag", "no such image"));
        }
        Ok(())
    }
    async fn checkpoint_export(&self, name: &str, path: &Path, _: CheckpointOpts) -> Result<(), EngineError> {
        let info = {
            let mut s = self.state.lock().unwrap();
            s.calls.push("checkpoint".into());
            if self.fail_checkpoint {
                return Err(failed("checkpoint", "CRIU dump failed (fake)"));
            }
            let c = s.containers.get_mut(name).ok_or_else(|| failed("checkpoint", "no such container"))?;
            c.state = "exited".into();
            let info = c.clone();
            s.checkpoints.insert(name.into());
            info
        };
        let (path, size) = (path.to_path_buf(), self.size);
        // Opening a FIFO blocks until the reader comes: do it off the runtime.
        tokio::task::spawn_blocking(move || {
            let mut f = std::fs::OpenOptions::new().write(true).open(&path)?;
            writeln!(f, "{}", serde_json::to_string(&info).unwrap())?;
            let chunk = vec![0xA5u8; 64 * 1024];
            let mut left = size;
            while left > 0 {
                let n = left.min(chunk.len());
                f.write_all(&chunk[..n])?;
                left -= n;
            }
            Ok::<_, std::io::Error>(())
        })
        .await
        .unwrap()
        .map_err(|e| failed("checkpoint", &e.to_string()))
    }
    async fn restore_local(&self, name: &str, _: CheckpointOpts) -> Result<(), EngineError> {
        let mut s = self.state.lock().unwrap();
        s.calls.push("restore_local".into());
        if !s.checkpoints.contains(name) {
            return Err(failed("restore", "no checkpoint kept"));
        }
        s.containers.get_mut(name).unwrap().state = "running".into();
        Ok(())
    }
    async fn restore_import(&self, path: &Path, _: CheckpointOpts) -> Result<(), EngineError> {
        let f = std::fs::File::open(path).map_err(|e| failed("restore", &e.to_string()))?;
        let mut line = String::new();
        std::io::BufReader::new(f).read_line(&mut line).unwrap();
        let mut info: ContainerInfo = serde_json::from_str(&line).map_err(|e| failed("restore", &e.to_string()))?;
        let mut s = self.state.lock().unwrap();
        s.calls.push("restore_import".into());
        if s.containers.contains_key(&info.name) {
            return Err(failed("restore", "name in use"));
        }
        info.state = "running".into();
        s.containers.insert(info.name.clone(), info);
        Ok(())
    }
    async fn remove(&self, name: &str, _force: bool) -> Result<(), EngineError> {
        let mut s = self.state.lock().unwrap();
        s.calls.push(format!("remove {name}"));
        s.checkpoints.remove(name);
        s.containers.remove(name).map(drop).ok_or_else(|| failed("rm", "no such container"))
    }
    async fn info(&self) -> Result<serde_json::Value, EngineError> {
        Ok(serde_json::json!({
            "version": {"Version": "4.3.1"},
            "host": {"ociRuntime": {"name": "runc", "version": "runc version 1.1.5"}, "networkBackend": "netavark"}
        }))
    }
}

struct Cluster {
    _dir: tempfile::TempDir,
    coordinator: TlsFiles,
    addrs: BTreeMap<String, SocketAddr>,
}

fn files(dir: &Path, name: &str) -> TlsFiles {
    TlsFiles { ca: dir.join("ca.pem"), cert: dir.join(format!("{name}.pem")), key: dir.join(format!("{name}.key")) }
}

/// Starts agents `a` (source) and `b` (target) on loopback.
async fn cluster(a: Arc<FakeEngine>, b: Arc<FakeEngine>, b_faults: Faults) -> Cluster {
    let dir = tempfile::tempdir().unwrap();
    let local: std::net::IpAddr = "127.0.0.1".parse().unwrap();
    let hosts = ["a", "b"].map(|n| tern_transport::pki::HostSpec { name: n.into(), addresses: vec![local] });
    tern_transport::pki::init(dir.path(), &hosts, false).unwrap();
    let mut addrs = BTreeMap::new();
    for (name, engine, faults) in [("a", a as Arc<dyn Engine>, Faults::default()), ("b", b as Arc<dyn Engine>, b_faults)] {
        let cfg = AgentConfig {
            name: name.into(),
            listen: "127.0.0.1:0".parse().unwrap(),
            state_dir: dir.path().join(format!("state-{name}")),
            tls: files(dir.path(), name),
            podman: PodmanConfig::default(),
            facts_override: Default::default(),
            faults,
        };
        std::fs::create_dir_all(&cfg.state_dir).unwrap();
        let endpoint = tern_transport::server_endpoint(cfg.listen, &cfg.tls).unwrap();
        addrs.insert(name.to_string(), endpoint.local_addr().unwrap());
        let agent = Arc::new(Agent::new(cfg, engine, endpoint));
        tokio::spawn(agent.serve(std::future::pending()));
    }
    Cluster { coordinator: files(dir.path(), "coordinator"), addrs, _dir: dir }
}

impl Cluster {
    async fn session(&self, host: &str) -> Session {
        let ep = tern_transport::client_endpoint(&self.coordinator).unwrap();
        Session::connect(&ep, self.addrs[host], host, "coordinator").await.unwrap()
    }

    /// Asks `a` to migrate `name` to `b`; returns the events and the report.
    async fn migrate(&self, name: &str, cancel_after: Option<Phase>) -> (Vec<Progress>, MigrationReport) {
        let s = self.session("a").await;
        let req = MigrateRequest {
            id: 7,
            container: name.into(),
            target: Peer { name: "b".into(), address: self.addrs["b"].to_string() },
            options: MigrateOptions { mode: Mode::StopAndCopy, compress: Compression::None, tcp_established: false },
        };
        let (mut send, mut recv) = s.open(&Request::Migrate(req)).await.unwrap();
        let mut events = Vec::new();
        loop {
            let ev = tokio::time::timeout(Duration::from_secs(60), read_frame::<_, MigrateEvent>(&mut recv))
                .await
                .expect("the migration hung")
                .unwrap()
                .expect("stream ended without a report");
            match ev {
                MigrateEvent::Progress(p) => {
                    if Some(p.phase) == cancel_after {
                        write_frame(&mut send, &CoordinatorSignal::Cancel).await.unwrap();
                    }
                    events.push(p);
                }
                MigrateEvent::Done(r) => return (events, r),
                MigrateEvent::Invalid => panic!("invalid event"),
            }
        }
    }
}

#[tokio::test]
async fn stop_and_copy_moves_the_container_and_ships_the_image() {
    let (a, b) = (FakeEngine::new(3 << 20), FakeEngine::new(0));
    a.add("web", "203.0.113.5");
    let c = cluster(a.clone(), b.clone(), Faults::default()).await;
    let (events, r) = c.migrate("web", None).await;
    assert_eq!(r.outcome, Outcome::Completed, "{r:#?}");
    assert_eq!(a.state_of("web"), None, "the source copy is removed");
    assert_eq!(b.state_of("web").as_deref(), Some("running"));
    assert!(b.called("image_load"), "b lacked the image, so it was shipped");
    assert!(r.image_bytes > 0);
    assert!(r.checkpoint_bytes > 3 << 20);
    assert!(r.bytes_on_wire >= r.checkpoint_bytes + r.image_bytes, "{r:#?}");
    assert!(r.downtime_ms.is_some() && r.downtime_ms.unwrap() <= r.total_ms);
    let phases: Vec<Phase> = r.phases.iter().map(|p| p.phase).collect();
    assert_eq!(phases, [Phase::Prepare, Phase::Image, Phase::Checkpoint, Phase::Verify, Phase::Restore, Phase::Cleanup]);
    assert!(events.iter().any(|e| e.phase == Phase::Checkpoint));
}

#[tokio::test]
async fn target_restore_failure_rolls_back_on_the_source() {
    let (a, b) = (FakeEngine::new(1 << 20), FakeEngine::new(0));
    a.add("web", "203.0.113.5");
    let faults = Faults { fail_restore: true, ..Default::default() };
    let c = cluster(a.clone(), b.clone(), faults).await;
    let (_, r) = c.migrate("web", None).await;
    match &r.outcome {
        Outcome::RolledBack { failure } => {
            assert_eq!(failure.phase, Phase::Restore);
            assert!(failure.message.contains("fail_restore"), "{failure}");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(a.state_of("web").as_deref(), Some("running"), "back on the source");
    assert!(a.called("restore_local"));
    assert_eq!(b.state_of("web"), None, "nothing left on the target");
    assert!(r.downtime_ms.is_some());
}

#[tokio::test]
async fn corrupted_transfer_is_caught_by_the_digest_and_rolled_back() {
    let (a, b) = (FakeEngine::new(1 << 20), FakeEngine::new(0));
    a.add("web", "203.0.113.5");
    let faults = Faults { corrupt_checkpoint: true, ..Default::default() };
    let c = cluster(a.clone(), b.clone(), faults).await;
    let (_, r) = c.migrate("web", None).await;
    match &r.outcome {
        Outcome::RolledBack { failure } => {
            assert_eq!(failure.phase, Phase::Verify);
            assert!(failure.message.contains("does not match its digest"), "{failure}");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(a.state_of("web").as_deref(), Some("running"));
    assert!(!b.called("restore_import"), "a corrupt archive is never restored");
}

#[tokio::test]
async fn name_taken_on_target_refuses_before_the_freeze() {
    let (a, b) = (FakeEngine::new(1 << 20), FakeEngine::new(0));
    a.add("web", "203.0.113.5");
    b.add("web", "203.0.113.9");
    let c = cluster(a.clone(), b.clone(), Faults::default()).await;
    let (_, r) = c.migrate("web", None).await;
    assert!(matches!(&r.outcome, Outcome::Refused { failure } if failure.message.contains("already exists")), "{r:?}");
    assert!(!a.called("checkpoint"), "never frozen");
    assert_eq!(a.state_of("web").as_deref(), Some("running"));
    assert_eq!(r.downtime_ms, None);
}

#[tokio::test]
async fn failed_dump_leaves_the_container_running() {
    let a = Arc::new(FakeEngine { state: Mutex::default(), size: 1 << 20, fail_checkpoint: true });
    let b = FakeEngine::new(0);
    a.add("web", "203.0.113.5");
    let c = cluster(a.clone(), b.clone(), Faults::default()).await;
    let (_, r) = c.migrate("web", None).await;
    assert!(matches!(&r.outcome, Outcome::RolledBack { failure } if failure.message.contains("CRIU dump failed")), "{r:?}");
    assert_eq!(a.state_of("web").as_deref(), Some("running"));
    assert!(!a.called("restore_local"), "a failed dump left it running; nothing to restore");
    assert_eq!(b.state_of("web"), None);
}

#[tokio::test]
async fn cancel_during_prepare_is_a_refusal_and_after_freeze_a_rollback() {
    let (a, b) = (FakeEngine::new(1 << 20), FakeEngine::new(0));
    a.add("web", "203.0.113.5");
    let c = cluster(a.clone(), b.clone(), Faults::default()).await;
    let (_, r) = c.migrate("web", Some(Phase::Prepare)).await;
    assert!(matches!(&r.outcome, Outcome::Refused { failure } if failure.message.contains("cancelled")), "{r:?}");
    assert!(!a.called("checkpoint"));

    let (a, b) = (FakeEngine::new(8 << 20), FakeEngine::new(0));
    a.add("web", "203.0.113.5");
    let c = cluster(a.clone(), b.clone(), Faults::default()).await;
    let (_, r) = c.migrate("web", Some(Phase::Checkpoint)).await;
    assert!(matches!(&r.outcome, Outcome::RolledBack { failure } if failure.message.contains("cancelled")), "{r:?}");
    assert_eq!(a.state_of("web").as_deref(), Some("running"));
    assert_eq!(b.state_of("web"), None);
}

#[tokio::test]
async fn hostile_frames_get_errors_and_the_agent_keeps_serving() {
    let (a, b) = (FakeEngine::new(0), FakeEngine::new(0));
    a.add("web", "203.0.113.5");
    let c = cluster(a, b, Faults::default()).await;
    let s = c.session("a").await;
    // A length prefix of 4 GiB, then garbage, then a zero variant.
    for junk in [vec![0xff, 0xff, 0xff, 0xff, 1, 2, 3], vec![0, 0, 0, 1, 0], vec![0, 0, 0, 3, 9, 9, 9]] {
        let (mut send, mut recv) = s.conn.open_bi().await.unwrap();

        send.write_all(&junk).await.unwrap();
        send.finish().unwrap();
        // The agent drops the stream; it must not answer with anything valid.
        let r = tokio::time::timeout(Duration::from_secs(5), read_frame::<_, Response>(&mut recv)).await.unwrap();
        assert!(!matches!(r, Ok(Some(_))), "{r:?}");
    }
    // Still alive and serving on the same connection.
    match s.request(&Request::Containers).await.unwrap() {
        Response::Containers(c) => assert_eq!(c.len(), 1),
        other => panic!("{other:?}"),
    }
}
