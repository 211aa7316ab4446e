//! The harness of the agent's integration tests (migration_logic.rs,
//! switchover_relay.rs): a fake container engine in memory behind the
//! `Engine` trait, and a [`Cluster`] of two real agents on loopback, `a`
//! the source and `b` the target, talking QUIC with mutual TLS.

use async_trait::async_trait;
use std::collections::{BTreeMap, HashSet};
use std::io::Read;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tern_agent::config::{AgentConfig, Faults, NetworkConfig, PodmanConfig};
use tern_agent::context::{Agent, Ports};
use tern_agent::criu::{Criu, CriuError, FeatureCheck, LazyPages};
use tern_agent::engine::{CheckpointOpts, Engine, EngineError, PodmanInfo};
use tern_agent::storage::Storage;
use tern_proto::facts::ContainerInfo;
use tern_proto::frame::{read_frame, write_frame};
use tern_proto::policy::PolicyConfig;
use tern_proto::*;
use tern_transport::rpc::Session;
use tern_transport::TlsFiles;

pub const PAGE: usize = 4096;
/// The fake's image: a full image ID, as Podman's (the target tags no other).
pub const IMG: &str = "1b2c3d4e5f60718293a4b5c6d7e8f9001b2c3d4e5f60718293a4b5c6d7e8f900";

pub struct FakeContainer {
    pub info: ContainerInfo,
    pub memory: Vec<Vec<u8>>,
    /// Pages written since the last dump.
    pub dirty: HashSet<usize>,
    pub writes: u64,
}

#[derive(Default)]
pub struct FakeState {
    pub containers: BTreeMap<String, FakeContainer>,
    pub images: HashSet<String>,
    /// Containers with a kept checkpoint.
    pub checkpoints: HashSet<String>,
    pub calls: Vec<String>,
}

/// A one-shot action of a test's, run by the fake at a given point.
pub type Hook = Box<dyn FnOnce() + Send>;

/// A container engine in memory.
pub struct FakeEngine {
    pub state: Mutex<FakeState>,
    pub dir: tempfile::TempDir,
    pub pages: usize,
    /// Pages the workload writes between two dumps.
    pub dirty_per_dump: usize,
    pub fail_checkpoint: bool,
    /// Makes `inspect` slow, so a cancel lands in the prepare phase.
    pub inspect_delay: Duration,
    /// Memory of the last container checkpointed, as it was at the freeze.
    pub last_frozen: Mutex<Option<Vec<Vec<u8>>>>,
    /// A bind mount of this host folder in the spec.dump it exports.
    pub spec_bind: Option<String>,
    /// Called once when this engine is asked to restore an imported
    /// checkpoint (the target's restore), before it restores.
    pub on_restore: Mutex<Option<Hook>>,
}

impl FakeEngine {
    pub fn new(pages: usize) -> Arc<Self> {
        Arc::new(Self::with(pages, 8))
    }
    pub fn with(pages: usize, dirty_per_dump: usize) -> Self {
        FakeEngine {
            state: Mutex::default(),
            dir: tempfile::tempdir().unwrap(),
            pages,
            dirty_per_dump,
            fail_checkpoint: false,
            inspect_delay: Duration::ZERO,
            last_frozen: Mutex::default(),
            spec_bind: None,
            on_restore: Mutex::default(),
        }
    }
    /// Gives `name` a named volume.
    pub fn add_volume(&self, name: &str, volume: &str) {
        let mut s = self.state.lock().unwrap();
        let c = s.containers.get_mut(name).unwrap();
        c.info.volumes.push(tern_proto::facts::Volume { name: volume.into(), path: format!("{VOLUME_DIR}/{volume}/_data") });
    }

    pub fn add(&self, name: &str, ip: &str) {
        let mut s = self.state.lock().unwrap();
        s.images.insert(IMG.into());
        let memory = (0..self.pages).map(|i| page_of(name, i, 0)).collect();
        s.containers.insert(
            name.into(),
            FakeContainer {
                info: ContainerInfo {
                    image: "localhost/tern-busybox:latest".into(),
                    image_id: IMG.into(),
                    state: "running".into(),
                    ips: vec![ip.parse().unwrap()],
                    ..stand_in(name)
                },
                memory,
                dirty: HashSet::new(),
                writes: 0,
            },
        );
    }
    pub fn state_of(&self, name: &str) -> Option<String> {
        self.state.lock().unwrap().containers.get(name).map(|c| c.info.state.clone())
    }
    pub fn running(&self, name: &str) -> bool {
        self.state_of(name).as_deref() == Some("running")
    }
    pub fn memory_of(&self, name: &str) -> Vec<Vec<u8>> {
        self.state.lock().unwrap().containers[name].memory.clone()
    }
    pub fn frozen(&self) -> Vec<Vec<u8>> {
        self.last_frozen.lock().unwrap().clone().expect("a container was checkpointed")
    }
    /// The container folder with this ID, as Podman's layout names it.
    pub fn folder(&self, id: &str) -> PathBuf {
        self.dir.path().join("containers").join(id)
    }
    /// The target's marker of a tentative copy (target/inplace.rs).
    pub fn tentative(&self, id: &str) -> bool {
        self.folder(id).join("tern-incoming").exists()
    }
    /// Runs `hook` once, when this engine next restores an imported checkpoint.
    pub fn on_restore(&self, hook: impl FnOnce() + Send + 'static) {
        *self.on_restore.lock().unwrap() = Some(Box::new(hook));
    }
    /// After a migration in: the folder holds the container's own files
    /// only, none of what the migration staged.
    pub fn assert_tidy(&self, id: &str) {
        let f = self.folder(id);
        assert!(f.join("userdata").is_dir(), "the restored container's folder is there");
        for staged in ["tern-incoming", "userdata/checkpoint", "userdata/tern-precopy", "userdata/pre-checkpoint"] {
            assert!(std::fs::symlink_metadata(f.join(staged)).is_err(), "{staged} left in {}", f.display());
        }
    }
    /// After a migration in failed: no folder at all.
    pub fn assert_no_folder(&self, id: &str) {
        assert!(!self.folder(id).exists(), "{} left behind", self.folder(id).display());
    }
    pub fn called(&self, what: &str) -> bool {
        self.state.lock().unwrap().calls.iter().any(|c| c.starts_with(what))
    }
    pub fn count(&self, what: &str) -> usize {
        self.state.lock().unwrap().calls.iter().filter(|c| c.starts_with(what)).count()
    }
}

/// config.dump as the fake writes it: the container's info (what its
/// restore reads back), with the fields of Podman's that admission checks.
fn podman_config(info: &ContainerInfo) -> Vec<u8> {
    let mut v = serde_json::to_value(info).unwrap();
    let o = v.as_object_mut().unwrap();
    o.insert("rootfsImageID".into(), info.image_id.clone().into());
    o.insert("rootfsImageName".into(), info.image.clone().into());
    o.insert("privileged".into(), false.into());
    o.insert("createNetNS".into(), true.into());
    serde_json::to_vec(&v).unwrap()
}

/// spec.dump of a plain container (target/admission.rs admits it), with a
/// bind mount of `bind` if asked.
fn podman_spec(bind: Option<&str>) -> Vec<u8> {
    let caps = ["CAP_CHOWN", "CAP_KILL", "CAP_NET_BIND_SERVICE"];
    let ns: Vec<_> = ["pid", "network", "ipc", "uts", "mount"].iter().map(|t| serde_json::json!({"type": t})).collect();
    let mut mounts = vec![serde_json::json!({"destination": "/proc", "type": "proc", "source": "proc"})];
    mounts.extend(bind.map(|b| serde_json::json!({"destination": "/host", "type": "bind", "source": b, "options": ["rbind"]})));
    serde_json::to_vec(&serde_json::json!({
        "process": {"args": ["sh"], "capabilities": {"bounding": caps, "effective": caps}},
        "mounts": mounts,
        "linux": {"namespaces": ns}
    }))
    .unwrap()
}

/// Where both fake hosts keep named volumes.
pub const VOLUME_DIR: &str = "/var/lib/containers/storage/volumes";

/// Distinct, recognisable content for page `i` of `name` after `writes` writes.
pub fn page_of(name: &str, i: usize, writes: u64) -> Vec<u8> {
    let seed = blake3::hash(format!("{name}/{i}/{writes}").as_bytes());
    seed.as_bytes().iter().cycle().take(PAGE).copied().collect()
}

impl FakeContainer {
    /// The workload runs a little: the next `n` pages, in order, get new
    /// content. Each interval writes pages no other interval writes (until
    /// memory wraps around), so a round lost anywhere in the chain shows.
    fn work(&mut self, n: usize) {
        for _ in 0..n {
            let i = self.writes as usize % self.memory.len();
            self.writes += 1;
            self.memory[i] = page_of(&self.info.name, i, self.writes);
            self.dirty.insert(i);
        }
    }
}

/// CRIU-like images: `pagemap-1.img` lists page numbers (u32 LE),
/// `pages-1.img` holds those pages in that order.
fn write_images(dir: &Path, memory: &[Vec<u8>], which: &[usize]) -> std::io::Result<()> {
    let map: Vec<u8> = which.iter().flat_map(|i| (*i as u32).to_le_bytes()).collect();
    std::fs::write(dir.join("pagemap-1.img"), map)?;
    let pages: Vec<u8> = which.iter().flat_map(|i| memory[*i].clone()).collect();
    std::fs::write(dir.join("pages-1.img"), pages)?;
    std::fs::write(dir.join("dump.log"), "not shipped")?;
    Ok(())
}

fn apply_images(memory: &mut Vec<Vec<u8>>, map: &[u8], pages: &[u8]) {
    for (k, idx) in map.chunks(4).enumerate() {
        let i = u32::from_le_bytes(idx.try_into().unwrap()) as usize;
        if memory.len() <= i {
            memory.resize(i + 1, Vec::new());
        }
        memory[i] = pages[k * PAGE..(k + 1) * PAGE].to_vec();
    }
}

/// Every link under `dir` is relative: CRIU resolves them inside the
/// restored container's mount namespace, where absolute paths break.
fn check_links_relative(dir: &Path) {
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let t = entry.file_type().unwrap();
        if t.is_symlink() {
            let link = std::fs::read_link(entry.path()).unwrap();
            assert!(link.is_relative(), "absolute link {link:?} would break inside the container");
        } else if t.is_dir() {
            check_links_relative(&entry.path());
        }
    }
}

/// Applies an image folder and, first, its chain of parents.
fn apply_chain(memory: &mut Vec<Vec<u8>>, dir: &Path) {
    let parent = dir.join("parent");
    if parent.exists() {
        apply_chain(memory, &parent);
    }
    let map = std::fs::read(dir.join("pagemap-1.img")).unwrap();
    let pages = std::fs::read(dir.join("pages-1.img")).unwrap();
    apply_images(memory, &map, &pages);
}

fn failed(cmd: &str, why: &str) -> EngineError {
    EngineError::Failed { cmd: cmd.into(), code: Some(125), status: "exit status: 125".into(), stderr: why.into() }
}

#[async_trait]
impl Engine for FakeEngine {
    async fn list(&self) -> Result<Vec<ContainerInfo>, EngineError> {
        Ok(self.state.lock().unwrap().containers.values().map(|c| c.info.clone()).collect())
    }
    async fn inspect(&self, name: &str) -> Result<Option<ContainerInfo>, EngineError> {
        tokio::time::sleep(self.inspect_delay).await;
        Ok(self.state.lock().unwrap().containers.get(name).map(|c| c.info.clone()))
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
    async fn container_dir(&self, name: &str) -> Result<PathBuf, EngineError> {
        let d = self.dir.path().join(name);
        std::fs::create_dir_all(&d).unwrap();
        Ok(d)
    }
    async fn pre_dump(&self, id: &str, dir: &Path, parent: Option<&str>) -> Result<(), EngineError> {
        let mut s = self.state.lock().unwrap();
        s.calls.push(format!("pre_dump parent={parent:?}"));
        let c = s.containers.values_mut().find(|c| c.info.id == id).ok_or_else(|| failed("runc", "no such container"))?;
        let which: Vec<usize> = match parent {
            Some(p) => {
                if !dir.join(p).join("pagemap-1.img").exists() {
                    return Err(failed("runc", &format!("no parent images at {p}")));
                }
                std::os::unix::fs::symlink(p, dir.join("parent")).unwrap();
                let mut d: Vec<usize> = c.dirty.iter().copied().collect();
                d.sort();
                d
            }
            None => (0..c.memory.len()).collect(),
        };
        write_images(dir, &c.memory, &which).map_err(|e| failed("runc", &e.to_string()))?;
        c.dirty.clear();
        c.work(self.dirty_per_dump);
        Ok(())
    }
    async fn checkpoint_export(&self, name: &str, path: &Path, opts: CheckpointOpts) -> Result<(), EngineError> {
        let pre = self.dir.path().join(name).join("pre-checkpoint");
        let (info, memory, which) = {
            let mut s = self.state.lock().unwrap();
            s.calls.push(format!("checkpoint with_previous={} leave_running={}", opts.with_previous, opts.leave_running));
            if self.fail_checkpoint && !opts.leave_running {
                return Err(failed("checkpoint", "CRIU dump failed (fake)"));
            }
            if opts.with_previous && !pre.join("pagemap-1.img").exists() {
                return Err(failed("checkpoint", "no pre-checkpoint"));
            }
            let c = s.containers.get_mut(name).ok_or_else(|| failed("checkpoint", "no such container"))?;
            let mut which: Vec<usize> = if opts.with_previous { c.dirty.iter().copied().collect() } else { (0..c.memory.len()).collect() };
            which.sort();
            let r = (c.info.clone(), c.memory.clone(), which);
            if opts.leave_running {
                // It runs on: its workload writes on.
                c.dirty.clear();
                c.work(self.dirty_per_dump);
            } else {
                c.info.state = "exited".into();
                *self.last_frozen.lock().unwrap() = Some(c.memory.clone());
                s.checkpoints.insert(name.into());
            }
            r
        };
        let path = path.to_path_buf();
        let with_previous = opts.with_previous;
        let spec_bind = self.spec_bind.clone();
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
            add("spec.dump", &podman_spec(spec_bind.as_deref()))?;
            let map: Vec<u8> = which.iter().flat_map(|i| (*i as u32).to_le_bytes()).collect();
            add("checkpoint/pagemap-1.img", &map)?;
            let pages: Vec<u8> = which.iter().flat_map(|i| memory[*i].clone()).collect();
            add("checkpoint/pages-1.img", &pages)?;
            if with_previous {
                // CRIU links a dump to its parent, and Podman exports the link.
                let mut h = tar::Header::new_ustar();
                h.set_entry_type(tar::EntryType::Symlink);
                h.set_size(0);
                b.append_link(&mut h, "checkpoint/parent", "../pre-checkpoint")?;
            }
            b.finish()
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
        s.containers.get_mut(name).unwrap().info.state = "running".into();
        Ok(())
    }
    async fn restore_import(&self, path: &Path, _: CheckpointOpts) -> Result<(), EngineError> {
        let hook = self.on_restore.lock().unwrap().take();
        if let Some(hook) = hook {
            hook();
        }
        let err = |e: &dyn std::fmt::Display| failed("restore", &e.to_string());
        // As Podman does: the archive's config names the container; the
        // archive is unpacked into the container's folder, which may hold
        // the images already; CRIU reads checkpoint/ and follows its
        // `parent` link down the chain of rounds.
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
        let images = folder.join("checkpoint");
        if !images.join("pages-1.img").exists() {
            return Err(err(&"a complete checkpoint for this container cannot be found"));
        }
        let mut memory = Vec::new();
        check_links_relative(&folder);
        apply_chain(&mut memory, &images);
        let mut s = self.state.lock().unwrap();
        s.calls.push("restore_import".into());
        if s.containers.contains_key(&info.name) {
            return Err(failed("restore", "name in use"));
        }
        info.state = "running".into();
        let c = FakeContainer { info: info.clone(), memory, dirty: HashSet::new(), writes: 0 };
        s.containers.insert(info.name.clone(), c);
        // The agent restores with --keep: the images stay for it to drop.
        Ok(())
    }
    async fn bundle_dir(&self, id: &str) -> Result<PathBuf, EngineError> {
        Ok(self.dir.path().join("containers").join(id).join("userdata"))
    }
    async fn remove(&self, name: &str, _force: bool) -> Result<(), EngineError> {
        let mut s = self.state.lock().unwrap();
        s.calls.push(format!("remove {name}"));
        s.checkpoints.remove(name);
        let c = s.containers.remove(name).ok_or_else(|| failed("rm", "no such container"))?;
        // Podman removes the container's folder with it.
        let _ = std::fs::remove_dir_all(self.dir.path().join("containers").join(&c.info.id));
        Ok(())
    }
    async fn volumes(&self) -> Result<Vec<String>, EngineError> {
        Ok(Vec::new())
    }
    async fn volume_remove(&self, name: &str) -> Result<(), EngineError> {
        self.state.lock().unwrap().calls.push(format!("volume rm {name}"));
        Ok(())
    }
    async fn info(&self) -> Result<PodmanInfo, EngineError> {
        Ok(serde_json::from_value(serde_json::json!({
            "version": {"Version": "4.3.1"},
            "host": {"ociRuntime": {"name": "runc", "version": "runc version 1.1.5"}, "networkBackend": "netavark"},
            "store": {"volumePath": VOLUME_DIR}
        }))
        .expect("the fake's podman info parses"))
    }
    async fn networks(&self) -> Result<Vec<tern_proto::network::NetworkDef>, EngineError> {
        Ok(Vec::new())
    }
    async fn main_pid(&self, _name: &str) -> Result<u32, EngineError> {
        // No real process: nothing to announce from.
        Ok(0)
    }
}

/// Two agents on loopback, `a` and `b`, and the coordinator's credentials.
pub struct Cluster {
    pub dir: tempfile::TempDir,
    pub coordinator: TlsFiles,
    pub addrs: BTreeMap<String, SocketAddr>,
    /// The address `a` is told `b` has: `b`'s own, unless a test puts
    /// something between them.
    pub target: SocketAddr,
    /// How long a migration may go without an event before it counts as hung.
    pub patience: Duration,
}

pub fn files(dir: &Path, name: &str) -> TlsFiles {
    TlsFiles::in_dir(dir, name)
}

/// Starts agents `a` (source) and `b` (target) on loopback.
pub async fn cluster(a: Arc<FakeEngine>, b: Arc<FakeEngine>, b_faults: Faults) -> Cluster {
    cluster_with(a, b, b_faults, NetworkConfig::default()).await
}

/// [`cluster`] with `b`'s network settings (its hook).
pub async fn cluster_with(a: Arc<FakeEngine>, b: Arc<FakeEngine>, b_faults: Faults, b_network: NetworkConfig) -> Cluster {
    cluster_tuned(a, b, b_faults, b_network, |_| {}).await
}

/// [`cluster_with`], `b`'s config changed by `tune` (its admission, its limits).
pub async fn cluster_tuned(
    a: Arc<FakeEngine>,
    b: Arc<FakeEngine>,
    b_faults: Faults,
    b_network: NetworkConfig,
    tune: impl Fn(&mut AgentConfig) + 'static,
) -> Cluster {
    ClusterBuilder::new(a, b).target_faults(b_faults).target_network(b_network).tune_target(tune).start().await
}

/// What a [`Cluster`] starts with; by default, no faults, no recovery task.
pub struct ClusterBuilder {
    a: Arc<FakeEngine>,
    b: Arc<FakeEngine>,
    a_faults: Faults,
    b_faults: Faults,
    b_network: NetworkConfig,
    tune_a: Box<dyn Fn(&mut AgentConfig)>,
    tune_b: Box<dyn Fn(&mut AgentConfig)>,
    recovery: bool,
}

impl ClusterBuilder {
    pub fn new(a: Arc<FakeEngine>, b: Arc<FakeEngine>) -> Self {
        ClusterBuilder {
            a,
            b,
            a_faults: Faults::default(),
            b_faults: Faults::default(),
            b_network: NetworkConfig::default(),
            tune_a: Box::new(|_| {}),
            tune_b: Box::new(|_| {}),
            recovery: false,
        }
    }
    pub fn source_faults(self, faults: Faults) -> Self {
        ClusterBuilder { a_faults: faults, ..self }
    }
    pub fn target_faults(self, faults: Faults) -> Self {
        ClusterBuilder { b_faults: faults, ..self }
    }
    pub fn target_network(self, network: NetworkConfig) -> Self {
        ClusterBuilder { b_network: network, ..self }
    }
    /// Changes `b`'s config (its admission, its limits) before it starts.
    pub fn tune_target(self, tune: impl Fn(&mut AgentConfig) + 'static) -> Self {
        ClusterBuilder { tune_b: Box::new(tune), ..self }
    }
    /// Changes `a`'s config (its limits) before it starts.
    pub fn tune_source(self, tune: impl Fn(&mut AgentConfig) + 'static) -> Self {
        ClusterBuilder { tune_a: Box::new(tune), ..self }
    }
    /// Each agent gets its recovery task, as main.rs starts it.
    pub fn with_recovery(self) -> Self {
        ClusterBuilder { recovery: true, ..self }
    }

    pub async fn start(self) -> Cluster {
        let dir = tempfile::tempdir().unwrap();
        let local: std::net::IpAddr = "127.0.0.1".parse().unwrap();
        let hosts = ["a", "b"].map(|n| tern_transport::pki::HostSpec { name: n.into(), addresses: vec![local] });
        tern_transport::pki::init(dir.path(), &hosts, false).unwrap();
        let mut addrs = BTreeMap::new();
        for (name, engine, faults, network) in [
            ("a", self.a as Arc<dyn Engine>, self.a_faults, NetworkConfig::default()),
            ("b", self.b as Arc<dyn Engine>, self.b_faults, self.b_network),
        ] {
            let mut cfg = AgentConfig {
                name: name.into(),
                listen: "127.0.0.1:0".parse().unwrap(),
                state_dir: dir.path().join(format!("state-{name}")),
                tls: files(dir.path(), name),
                podman: PodmanConfig::default(),
                runc: Default::default(),
                network,
                admission: Default::default(),
                limits: Default::default(),
                facts_override: Default::default(),
                self_evacuation: Default::default(),
                faults,
            };
            if name == "a" {
                (self.tune_a)(&mut cfg);
            }
            if name == "b" {
                (self.tune_b)(&mut cfg);
            }
            std::fs::create_dir_all(&cfg.state_dir).unwrap();
            let endpoint = tern_transport::server_endpoint(cfg.listen, &cfg.tls).unwrap();
            addrs.insert(name.to_string(), endpoint.local_addr().unwrap());
            let ports = Ports { engine, criu: Arc::new(FakeCriu), storage: Arc::new(FakeStorage::default()) };
            let agent = Arc::new(Agent::new(cfg, ports, endpoint));
            if self.recovery {
                tokio::spawn(tern_agent::recovery::recover(agent.clone()));
            }
            tokio::spawn(agent.serve(std::future::pending()));
        }
        let target = addrs["b"];
        Cluster { coordinator: files(dir.path(), "coordinator"), addrs, target, patience: Duration::from_secs(60), dir }
    }
}

/// CRIU as the fake engine's containers need it: a version, no soft-dirty
/// tracking, no lazy restores (so the host's CRIU is never run).
pub struct FakeCriu;

#[async_trait]
impl Criu for FakeCriu {
    async fn version(&self) -> Option<String> {
        Some("4.2".into())
    }
    async fn check_feature(&self, name: &str) -> FeatureCheck {
        FeatureCheck::Unsupported(format!("{name} is not offered in tests"))
    }
    async fn lazy_pages(&self, _folder: &Path, _page_server: Option<std::net::SocketAddr>) -> Result<Box<dyn LazyPages>, CriuError> {
        Err(CriuError::Spawn(std::io::Error::other("no lazy-pages daemon in tests")))
    }
}

/// Folders "in RAM" that are plain folders, so the tests need no root: a
/// folder taken out of RAM loses what it held, as a tmpfs would.
#[derive(Default)]
pub struct FakeStorage {
    ram: Mutex<HashSet<PathBuf>>,
}

impl Storage for FakeStorage {
    fn mem_available(&self) -> Option<u64> {
        Some(64 << 30)
    }
    fn mount_ram(&self, dir: &Path, _cap: u64) -> std::io::Result<()> {
        std::fs::create_dir_all(dir)?;
        if std::fs::read_dir(dir)?.next().is_some() {
            return Err(std::io::Error::other(format!("{} is not empty", dir.display())));
        }
        self.ram.lock().unwrap().insert(dir.to_path_buf());
        Ok(())
    }
    fn unmount_ram(&self, dir: &Path, remove_dir: bool) -> std::io::Result<()> {
        if self.ram.lock().unwrap().remove(dir) {
            tern_agent::ramdir::empty(dir)?;
        }
        if remove_dir {
            let _ = std::fs::remove_dir(dir);
        }
        Ok(())
    }
    fn is_ram(&self, dir: &Path) -> bool {
        self.ram.lock().unwrap().contains(dir)
    }
    fn ram_under(&self, prefix: &Path) -> Vec<PathBuf> {
        self.ram.lock().unwrap().iter().filter(|d| d.starts_with(prefix)).cloned().collect()
    }
}

/// A container known by its name and ID only: what the coordinator asks
/// about when a host has none by that name; the fake's containers start
/// from it.
pub fn stand_in(name: &str) -> ContainerInfo {
    ContainerInfo {
        name: name.into(),
        id: format!("id-{name}"),
        image: String::new(),
        image_id: String::new(),
        state: String::new(),
        ips: vec![],
        memory_bytes: 0,
        files_bytes: 0,
        volumes: vec![],
        pid: 0,
        networks: vec![],
        ports: vec![],
        connections: vec![],
        process_uids: vec![],
        systemd_unit: None,
        pod: None,
        dependencies: vec![],
    }
}

pub fn options(mode: Mode) -> MigrateOptions {
    MigrateOptions {
        mode,
        compress: Compression::None,
        tcp_established: false,
        allow_reset: false,
        policy: PolicyConfig::default(),
        lazy_restore: true,
        bandwidth: 0,
        post_copy_first: Default::default(),
    }
}

impl Cluster {
    pub async fn session(&self, host: &str) -> Session {
        let ep = tern_transport::client_endpoint(&self.coordinator).unwrap();
        Session::connect(&ep, self.addrs[host], host, "coordinator").await.unwrap()
    }

    /// A session to `host` holding `who`'s certificate (`who` is issued one on demand).
    pub async fn session_as(&self, who: &str, host: &str) -> Result<Session, tern_transport::rpc::RpcError> {
        if !self.dir.path().join(format!("{who}.pem")).exists() {
            let spec = tern_transport::pki::HostSpec { name: who.into(), addresses: vec!["127.0.0.1".parse().unwrap()] };
            tern_transport::pki::issue(self.dir.path(), &spec).unwrap();
        }
        let ep = tern_transport::client_endpoint(&files(self.dir.path(), who)).unwrap();
        Session::connect(&ep, self.addrs[host], host, who).await
    }

    pub fn state_dir(&self, host: &str) -> PathBuf {
        self.dir.path().join(format!("state-{host}"))
    }

    /// Asks `a` to migrate `name` to `b`; returns the events and the report.
    pub async fn migrate(&self, name: &str, cancel_after: Option<Phase>) -> (Vec<Progress>, MigrationReport) {
        self.migrate_with(name, options(Mode::StopAndCopy), cancel_after).await
    }

    /// The coordinator's signer.
    pub fn signer(&self) -> tern_transport::ticket::Signer {
        tern_transport::ticket::Signer::load(&self.coordinator).unwrap()
    }

    /// `name` as `host` reports it to the coordinator (a stand-in when absent).
    pub async fn container(&self, host: &str, name: &str) -> ContainerInfo {
        match self.session(host).await.request(&Request::Containers).await.unwrap() {
            Response::Containers(list) => list.into_iter().find(|c| c.name == name).unwrap_or_else(|| stand_in(name)),
            other => panic!("{other:?}"),
        }
    }

    /// The ticket the coordinator would give for moving `name` from a to b.
    pub async fn ticket(&self, name: &str) -> Ticket {
        let c = self.container("a", name).await;
        self.signer().issue(7, "a", "b", &c, tern_transport::ticket::now_secs())
    }

    pub async fn migrate_with(&self, name: &str, options: MigrateOptions, cancel_after: Option<Phase>) -> (Vec<Progress>, MigrationReport) {
        let ticket = self.ticket(name).await;
        self.migrate_ticket(name, options, cancel_after, ticket).await
    }

    pub async fn migrate_ticket(
        &self,
        name: &str,
        options: MigrateOptions,
        cancel_after: Option<Phase>,
        ticket: Ticket,
    ) -> (Vec<Progress>, MigrationReport) {
        self.migrate_marked(name, options, cancel_after, ticket, false).await
    }

    /// [`Cluster::migrate_ticket`], marked as an evacuation's move or not.
    pub async fn migrate_marked(
        &self,
        name: &str,
        options: MigrateOptions,
        cancel_after: Option<Phase>,
        ticket: Ticket,
        evacuation: bool,
    ) -> (Vec<Progress>, MigrationReport) {
        let s = self.session("a").await;
        let target = Peer { name: "b".into(), address: self.target.to_string() };
        let req = MigrateRequest { id: 7, container: name.into(), target, options, ticket, evacuation };
        let (mut send, mut recv) = s.open(&Request::Migrate(req)).await.unwrap();
        let mut events = Vec::new();
        loop {
            let ev = tokio::time::timeout(self.patience, read_frame::<_, MigrateEvent>(&mut recv))
                .await
                .expect("the migration hung")
                .unwrap()
                .expect("stream ended without a report");
            match ev {
                MigrateEvent::Progress(p) => {
                    if Some(p.phase) == cancel_after {
                        // The migration may already be past this point; a
                        // failed write then is no error of the agent's.
                        let _ = write_frame(&mut send, &CoordinatorSignal::Cancel).await;
                    }
                    events.push(p);
                }
                MigrateEvent::Done(r) => return (events, r),
                MigrateEvent::Invalid => panic!("invalid event"),
                MigrateEvent::Refused(e) => panic!("refused: {}", e.message),
                MigrateEvent::Notice(_) => {}
            }
        }
    }
}
