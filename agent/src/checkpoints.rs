//! The checkpoint store: checkpoints a user keeps ([`tern_proto::checkpoint`]),
//! one folder each, `<state_dir>/checkpoints/<name>/` holding Podman's
//! export (`archive.tar`, uncompressed) and what it is (`meta.json`).
//!
//! A checkpoint is written into a staging folder beside the others and
//! renamed into place only once whole and checked, so a full disk, a dead
//! agent or a broken stream leaves the checkpoints already there as they
//! were; a staging folder left by a dead agent goes at the next start
//! ([`sweep`]).
//!
//! What a store takes from a peer is bounded by its room and checked
//! against the digest announced with it; its content is counted here from
//! the bytes, not taken from the peer's word. A restore reads the archive
//! again and compares its blake3 with the digest the coordinator asked
//! for, then runs the migration target's admission over it
//! ([`crate::target::admission`]) before Podman runs it as root.

use crate::context::Agent;
use crate::engine::CheckpointOpts;
pub mod oci;
pub mod standby;

use crate::pages::{PageIndex, PageOffsets, PageStore};
use crate::standby::Base;
use crate::target::archive::{receive_records, ArchiveOut};
use crate::transfer::{self, Encoding, StreamLimits, Wire};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tern_proto::checkpoint::{self as cp, CheckpointRequest, Content, CreateCheckpoint, RestoreCheckpoint, RestoredContainer, StoredCheckpoint};
use tern_proto::frame::write_frame;
use tern_proto::{DataHeader, DataKind, Digest};
use tern_proto::{Peer, RemoteError, Request, Response};
use tern_transport::rpc::Session;
use tokio_util::sync::CancellationToken;

const ARCHIVE: &str = "archive.tar";
const META: &str = "meta.json";
const STAGING_PREFIX: &str = ".staging-";
/// Room a store keeps free beyond a checkpoint (logs, journal, the rest of
/// the state folder).
const HEADROOM: u64 = 64 << 20;
/// The largest `meta.json` read back.
const MAX_META: u64 = 4 << 20;
/// How long a peer's store may take to answer once it has every byte
/// (it hashes and counts them).
const PUT_ANSWER: Duration = Duration::from_secs(120);

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("no checkpoint named {name} is stored on {host} (`tern checkpoint ls` lists them)")]
    NotFound { name: String, host: String },
    #[error("a checkpoint named {name} is already stored on {host}: choose another name, or `tern checkpoint rm {name}` first")]
    Exists { name: String, host: String },
    #[error(
        "{host}'s checkpoint store ({dir}) has {have} bytes free, and this checkpoint needs about {need}: remove older ones (`tern checkpoint rm`) or store it elsewhere (`--store HOST`)"
    )]
    NoRoom { host: String, dir: String, need: u64, have: u64 },
    #[error("the checkpoint store on {host} cannot be written: {error} (the checkpoints already there are intact)")]
    Io { host: String, error: std::io::Error },
    #[error("{0}")]
    Name(#[from] cp::NameError),
    #[error("{0}")]
    Replicas(#[from] cp::ReplicaError),
    #[error("stored checkpoint {name} on {host} is damaged: its archive's digest is {found}, not {expected}; it is not restored (`tern checkpoint rm {name}`)")]
    Corrupt { name: String, host: String, found: String, expected: String },
    #[error("the checkpoint {name} on {host} is not the one asked for: its digest is {found}, the coordinator asked for {expected}")]
    NotTheOne { name: String, host: String, found: String, expected: String },
    #[error("{0}")]
    Refused(String),
}

fn hex(d: &[u8; 32]) -> String {
    d.iter().map(|b| format!("{b:02x}")).collect()
}

fn now_unix() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// One host's store of checkpoints.
pub struct Store {
    root: PathBuf,
    host: String,
}

/// A checkpoint being written: its folder goes unless [`Staging::keep`]
/// renamed it into the store.
struct Staging {
    dir: PathBuf,
    kept: bool,
}

impl Staging {
    fn archive(&self) -> PathBuf {
        self.dir.join(ARCHIVE)
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        if !self.kept {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

impl Store {
    pub fn of(agent: &Agent) -> Store {
        Store { root: agent.cfg.state_dir.join("checkpoints"), host: agent.cfg.name.clone() }
    }

    fn io(&self, error: std::io::Error) -> StoreError {
        StoreError::Io { host: self.host.clone(), error }
    }

    /// Every checkpoint stored here, oldest first. A folder whose
    /// `meta.json` cannot be read is skipped with a warning.
    pub fn list(&self) -> Vec<StoredCheckpoint> {
        let mut all: Vec<StoredCheckpoint> = std::fs::read_dir(&self.root)
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
            .filter_map(|e| match read_meta(&e.path()) {
                Ok(m) => Some(m),
                Err(err) => {
                    tracing::warn!(dir = %e.path().display(), "skipping a checkpoint folder: {err}");
                    None
                }
            })
            .collect();
        all.sort_by(|a, b| (a.created_unix, &a.name).cmp(&(b.created_unix, &b.name)));
        all
    }

    /// A stored checkpoint and its archive.
    pub fn get(&self, name: &str) -> Result<(StoredCheckpoint, PathBuf), StoreError> {
        cp::check_name(name)?;
        let dir = self.root.join(name);
        if !dir.join(META).exists() {
            return Err(StoreError::NotFound { name: name.into(), host: self.host.clone() });
        }
        let meta = read_meta(&dir).map_err(|e| self.io(e))?;
        Ok((meta, dir.join(ARCHIVE)))
    }

    pub fn remove(&self, name: &str) -> Result<StoredCheckpoint, StoreError> {
        let (meta, _) = self.get(name)?;
        // Renamed out of the listing first: a half-removed folder is never
        // listed as a checkpoint.
        let gone = self.root.join(format!("{STAGING_PREFIX}rm-{name}"));
        std::fs::rename(self.root.join(name), &gone).map_err(|e| self.io(e))?;
        std::fs::remove_dir_all(&gone).map_err(|e| self.io(e))?;
        tracing::info!(name, "removed a stored checkpoint");
        Ok(meta)
    }

    fn taken(&self, name: &str) -> Result<(), StoreError> {
        cp::check_name(name)?;
        if self.root.join(name).exists() {
            return Err(StoreError::Exists { name: name.into(), host: self.host.clone() });
        }
        Ok(())
    }

    /// Free bytes in the store's file system (the folder is made first:
    /// a first checkpoint finds none).
    fn room(&self) -> u64 {
        let _ = std::fs::create_dir_all(&self.root);
        nix::sys::statvfs::statvfs(&self.root).map_or(0, |s| {
            #[allow(clippy::useless_conversion)]
            let (avail, frag) = (u64::from(s.blocks_available()), u64::from(s.fragment_size()));
            avail.saturating_mul(frag)
        })
    }

    fn ensure_room(&self, need: u64) -> Result<(), StoreError> {
        let have = self.room();
        if have < need.saturating_add(HEADROOM) {
            return Err(StoreError::NoRoom { host: self.host.clone(), dir: self.root.display().to_string(), need, have });
        }
        Ok(())
    }

    fn staging(&self) -> Result<Staging, StoreError> {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        std::fs::create_dir_all(&self.root).map_err(|e| self.io(e))?;
        let dir = self.root.join(format!("{STAGING_PREFIX}{}-{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed)));
        std::fs::create_dir(&dir).map_err(|e| self.io(e))?;
        Ok(Staging { dir, kept: false })
    }

    /// Writes `meta.json` and renames the staging folder into the store.
    fn keep(&self, mut staging: Staging, meta: &StoredCheckpoint) -> Result<(), StoreError> {
        self.taken(&meta.name)?;
        let json = serde_json::to_vec_pretty(meta).expect("a checkpoint's meta always encodes");
        let tmp = staging.dir.join(format!("{META}.tmp"));
        std::fs::write(&tmp, json).and_then(|()| std::fs::rename(&tmp, staging.dir.join(META))).map_err(|e| self.io(e))?;
        std::fs::rename(&staging.dir, self.root.join(&meta.name)).map_err(|e| self.io(e))?;
        staging.kept = true;
        tracing::info!(name = %meta.name, bytes = meta.bytes, container = %meta.container.name, "stored a checkpoint");
        Ok(())
    }
}

fn read_meta(dir: &Path) -> std::io::Result<StoredCheckpoint> {
    let mut s = String::new();
    std::fs::File::open(dir.join(META))?.take(MAX_META).read_to_string(&mut s)?;
    serde_json::from_str(&s).map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
}

/// Removes what agents that died mid-write left in the store (at start).
pub fn sweep(state_dir: &Path) {
    let root = state_dir.join("checkpoints");
    for e in std::fs::read_dir(&root).into_iter().flatten().flatten() {
        if e.file_name().to_string_lossy().starts_with(STAGING_PREFIX) {
            tracing::info!(dir = %e.path().display(), "removing a checkpoint left half-written");
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

/// blake3 of a file.
fn digest_of(path: &Path) -> std::io::Result<[u8; 32]> {
    let mut h = blake3::Hasher::new();
    h.update_reader(std::fs::File::open(path)?)?;
    Ok(*h.finalize().as_bytes())
}

/// What a Podman export holds, counted from its members' names and sizes
/// (CRIU writes one `core-<tid>.img` per thread, one `mm-<pid>.img` per
/// process, one `tcp-stream-<ino>.img` per established connection). A
/// file that is not a tar archive is an error.
pub fn content_of(archive: &Path) -> std::io::Result<Content> {
    let mut c = Content::default();
    let mut tar = tar::Archive::new(std::io::BufReader::new(std::fs::File::open(archive)?));
    for entry in tar.entries()? {
        let entry = entry?;
        let size = entry.header().size()?;
        let path = entry.path_bytes();
        let name = path.strip_prefix(b"./").unwrap_or(&path);
        if let Some(img) = name.strip_prefix(b"checkpoint/") {
            c.images_bytes += size;
            let starts = |p: &[u8]| img.starts_with(p) && img.ends_with(b".img");
            if starts(b"pages-") {
                c.memory_bytes += size;
            } else if starts(b"core-") {
                c.threads += 1;
            } else if starts(b"mm-") {
                c.processes += 1;
            } else if starts(b"tcp-stream-") {
                c.tcp_connections += 1;
            }
        } else if name == b"rootfs-diff.tar" || name.starts_with(b"volumes/") {
            c.files_bytes += size;
        }
    }
    Ok(c)
}

/// `Request::Checkpoint`.
pub async fn handle(agent: &Agent, req: CheckpointRequest) -> anyhow::Result<Response> {
    let store = Store::of(agent);
    Ok(match req {
        CheckpointRequest::Create(c) => Response::Checkpoints(vec![create(agent, &store, c, None).await?]),
        CheckpointRequest::List => Response::Checkpoints(store.list()),
        CheckpointRequest::Remove { name } => Response::Checkpoints(vec![store.remove(&name)?]),
        CheckpointRequest::Send { name, to } => Response::Checkpoints(vec![send_to(agent, &store, &name, &to, None).await?.0]),
        CheckpointRequest::Image { name, image } => Response::Checkpoints(vec![as_image(agent, &store, &name, &image).await?]),
        CheckpointRequest::Room { bytes } => {
            store.ensure_room(bytes)?;
            Response::Checkpoints(Vec::new())
        }
        CheckpointRequest::Standby(o) => Response::Standby(standby::order(agent, o).await?),
        CheckpointRequest::Restore(r) => Response::RestoredAs(restore(agent, &store, r).await?),
        CheckpointRequest::Invalid => anyhow::bail!("an invalid checkpoint request"),
    })
}

/// Checkpoints a container of this host into its store (for a standby
/// schedule that keeps `standby_keep` of them, when set).
pub async fn create(agent: &Agent, store: &Store, req: CreateCheckpoint, standby_keep: Option<u32>) -> anyhow::Result<StoredCheckpoint> {
    let engine = agent.engine.as_ref();
    let Some(c) = engine.inspect(&req.container).await? else {
        anyhow::bail!("no container named {} on {}", req.container, agent.cfg.name);
    };
    anyhow::ensure!(c.is_running(), "{} is {} on {}: only a running container can be checkpointed", c.name, c.state, agent.cfg.name);
    if let Some(f) = tern_proto::compat::dependencies(&c) {
        return Err(StoreError::Refused(f.note).into());
    }
    let created_unix = now_unix();
    let name = req.name.clone().unwrap_or_else(|| cp::default_name(&c.name, created_unix));
    store.taken(&name)?;
    let Some(_busy) = agent.claim(&c.name) else {
        anyhow::bail!("{} is being migrated or checkpointed already", c.name);
    };
    // Memory and files are what the archive holds, give or take CRIU's
    // other images: a store that cannot take that refuses before the dump.
    store.ensure_room(c.memory_bytes + c.files_bytes)?;
    let facts = agent.facts().await?;
    let staging = store.staging()?;
    let tcp_established = req.tcp_established || !c.connections.is_empty();
    let opts = CheckpointOpts { tcp_established, leave_running: req.leave_running, file_locks: req.file_locks, ..Default::default() };
    let t0 = Instant::now();
    engine.checkpoint_export(&c.name, &staging.archive(), opts).await.map_err(|e| {
        // A full disk shows as Podman's failure; say which store it was.
        let have = store.room();
        if have < HEADROOM {
            anyhow::Error::new(StoreError::NoRoom { host: agent.cfg.name.clone(), dir: store.root.display().to_string(), need: c.memory_bytes, have })
                .context(e.to_string())
        } else {
            anyhow::Error::new(e)
        }
    })?;
    let dumped = t0.elapsed();
    let archive = staging.archive();
    let (digest, content, bytes) = tokio::task::spawn_blocking(move || -> std::io::Result<_> {
        Ok((digest_of(&archive)?, content_of(&archive)?, std::fs::metadata(&archive)?.len()))
    })
    .await?
    .map_err(|e| store.io(e))?;
    let meta = StoredCheckpoint {
        name,
        container: c,
        taken_on: agent.cfg.name.clone(),
        facts,
        created_unix,
        bytes,
        digest,
        content,
        tcp_established,
        file_locks: req.file_locks,
        left_running: req.leave_running,
        standby_keep,
    };
    store.keep(staging, &meta)?;
    tracing::info!(name = %meta.name, ms = dumped.as_millis() as u64, "checkpointed {}", meta.container.name);
    Ok(meta)
}

/// What a send to another store cost.
#[derive(Debug, Clone, Copy, Default)]
pub struct Shipped {
    /// Bytes of the archive on the wire (after delta and compression).
    pub wire_bytes: u64,
    pub pages_reused: u64,
}

/// Hands every byte of the file at `path` to `f`, in order, a megabyte at
/// a time; returns how many there were.
pub(crate) fn each_chunk(path: &Path, mut f: impl FnMut(&[u8])) -> std::io::Result<u64> {
    let mut file = std::fs::File::open(path)?;
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0u64;
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            return Ok(total);
        }
        f(&buf[..n]);
        total += n as u64;
    }
}

/// The page hashes of an archive of this store (the base of the next send).
pub async fn index_of(archive: &Path) -> std::io::Result<PageIndex> {
    let archive = archive.to_path_buf();
    tokio::task::spawn_blocking(move || {
        let len = std::fs::metadata(&archive)?.len();
        let mut index = PageIndex::with_capacity((len / tern_proto::delta::PAGE as u64) as usize);
        each_chunk(&archive, |b| index.add(b))?;
        Ok(index)
    })
    .await
    .map_err(std::io::Error::other)?
}

/// Puts a stored checkpoint into `to`'s store, with the container's image
/// when that store lacks it, and as delta records against `base` when it
/// holds that.
pub async fn send_to(agent: &Agent, store: &Store, name: &str, to: &Peer, base: Option<&Base>) -> anyhow::Result<(StoredCheckpoint, Shipped)> {
    let (meta, archive) = store.get(name)?;
    anyhow::ensure!(to.name != agent.cfg.name, "{name} is stored on {} already", to.name);
    let addr = to.address.parse().map_err(|e| anyhow::anyhow!("bad address of {}: {} ({e})", to.name, to.address))?;
    let session = Session::connect(&agent.endpoint, addr, &to.name, &agent.cfg.name).await?;
    let r = async {
        let base_ref = base.map(|b| cp::BaseRef { name: b.name.clone(), digest: b.digest });
        let put = cp::PutCheckpoint { checkpoint: meta.clone(), base: base_ref };
        let (mut tx, mut rx) = session.open(&Request::CheckpointPut(Box::new(put))).await?;
        let (needs_image, base_ok) = match session.read::<Response>(&mut rx, PUT_ANSWER).await? {
            Response::CheckpointReady { needs_image, base_ok } => (needs_image, base_ok),
            Response::Error(e) => anyhow::bail!("{}", e.message),
            other => anyhow::bail!("answered {other:?} to a checkpoint"),
        };
        // The image goes through a file: Podman writes its archive whole.
        let staging = store.staging()?;
        let image = staging.dir.join("image.tar");
        let image_bytes = if needs_image {
            let c = &meta.container;
            agent
                .engine
                .image_save(&c.image_id, &image)
                .await
                .map_err(|e| anyhow::anyhow!("{} lacks image {}, and saving it here failed: {e}", to.name, c.image))?;
            tokio::fs::metadata(&image).await?.len()
        } else {
            0
        };
        tokio::io::AsyncWriteExt::write_all(&mut tx, &image_bytes.to_le_bytes()).await?;
        if needs_image {
            tokio::io::copy(&mut tokio::fs::File::open(&image).await?, &mut tx).await?;
        }
        drop(staging);
        let (kind, encoding) = match base.filter(|_| base_ok) {
            Some(b) => (DataKind::CheckpointDelta { base: 0 }, Encoding::Delta(b.index.clone())),
            None => (DataKind::Checkpoint, Encoding::Raw),
        };
        let pace = agent.bandwidth.join(0);
        let stop = CancellationToken::new();
        let done = AtomicU64::new(0);
        let file = tokio::fs::File::open(&archive).await?;
        let udp0 = session.conn.stats().udp_tx.bytes;
        let sent = transfer::send_encoded(
            &session.conn,
            &DataHeader { id: 0, kind },
            file,
            &done,
            encoding,
            Wire { zstd: Some(1), pace: &pace, stop: &stop },
        )
        .await?;
        anyhow::ensure!(sent.digest.bytes == meta.bytes && sent.digest.blake3 == meta.digest, "{name}'s archive changed in the store");
        tx.finish()?;
        let stored = match session.read::<Response>(&mut rx, PUT_ANSWER).await? {
            Response::Checkpoints(mut v) if v.len() == 1 => v.remove(0),
            Response::Error(e) => anyhow::bail!("{}", e.message),
            other => anyhow::bail!("answered {other:?} to a checkpoint"),
        };
        // What crossed for the archive, QUIC's own bytes included.
        let wire_bytes = session.conn.stats().udp_tx.bytes.saturating_sub(udp0);
        Ok((stored, Shipped { wire_bytes, pages_reused: sent.stats.pages_reused }))
    }
    .await;
    session.conn.close(0u32.into(), b"checkpoint sent");
    r.map_err(|e| anyhow::anyhow!("{}: {e:#}", to.name))
}

/// `Request::CheckpointPut`: says whether the image must come too and
/// whether the base is here, loads the image, then takes the archive from
/// its data stream into a staging folder, checks its size and digest,
/// counts what it holds, and keeps it under the announced name.
pub async fn put(
    agent: &Agent,
    conn: quinn::Connection,
    peer: &str,
    put: Box<cp::PutCheckpoint>,
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
) -> anyhow::Result<()> {
    let store = Store::of(agent);
    let reply = match receive(agent, &store, &conn, put, &mut send, &mut recv).await {
        Ok(m) => {
            tracing::info!(name = %m.name, from = peer, bytes = m.bytes, "took a checkpoint into the store");
            if let Some(keep) = m.standby_keep {
                prune(&store, &m, keep);
            }
            Response::Checkpoints(vec![m])
        }
        Err(e) => {
            tracing::warn!(from = peer, "refused a checkpoint: {e:#}");
            let _ = recv.stop(0u32.into());
            Response::Error(RemoteError { message: format!("{e:#}") })
        }
    };
    write_frame(&mut send, &reply).await?;
    let _ = send.finish();
    let _ = tokio::time::timeout(Duration::from_secs(5), send.stopped()).await;
    Ok(())
}

/// A standby's store keeps the `keep` latest of the container's series.
fn prune(store: &Store, newest: &StoredCheckpoint, keep: u32) {
    let all = store.list();
    let id = &newest.container.id;
    for old in cp::beyond_keep(&all, keep as usize, |c| c.standby_keep.is_some() && &c.container.id == id) {
        match store.remove(&old.name) {
            Ok(_) => tracing::info!(name = %old.name, keep, "dropped a standby checkpoint beyond the ones kept"),
            Err(e) => tracing::warn!(name = %old.name, "dropping an old standby checkpoint: {e}"),
        }
    }
}

/// Copies exactly `bytes` bytes of `recv` into `file`.
async fn take(recv: &mut quinn::RecvStream, file: &mut tokio::fs::File, bytes: u64) -> anyhow::Result<()> {
    let mut got = 0u64;
    while got < bytes {
        let want = (bytes - got).min(1 << 20) as usize;
        let Some(chunk) = recv.read_chunk(want, true).await? else { break };
        got += chunk.bytes.len() as u64;
        tokio::io::AsyncWriteExt::write_all(file, &chunk.bytes).await?;
    }
    anyhow::ensure!(got == bytes, "the stream ended after {got} of the {bytes} bytes announced");
    tokio::io::AsyncWriteExt::flush(file).await?;
    Ok(())
}

/// Where the pages of an archive of this store sit in it, for delta
/// records that refer to them.
async fn page_store(archive: &Path) -> std::io::Result<PageStore> {
    let path = archive.to_path_buf();
    let offsets = tokio::task::spawn_blocking(move || {
        let mut offsets = PageOffsets::default();
        each_chunk(&path, |b| offsets.add(b))?;
        Ok::<_, std::io::Error>(offsets.finish())
    })
    .await
    .map_err(std::io::Error::other)??;
    PageStore::open(archive, offsets)
}

async fn receive(
    agent: &Agent,
    store: &Store,
    conn: &quinn::Connection,
    put: Box<cp::PutCheckpoint>,
    send: &mut quinn::SendStream,
    recv: &mut quinn::RecvStream,
) -> anyhow::Result<StoredCheckpoint> {
    let cp::PutCheckpoint { checkpoint: mut meta, base } = *put;
    store.taken(&meta.name)?;
    anyhow::ensure!(
        meta.bytes <= cp::MAX_CHECKPOINT_BYTES,
        "a checkpoint of {} bytes is beyond what a store takes ({})",
        meta.bytes,
        cp::MAX_CHECKPOINT_BYTES
    );
    store.ensure_room(meta.bytes)?;
    let c = meta.container.clone();
    let named = !c.image.is_empty() && !c.image.contains("<none>");
    if named {
        crate::target::admission::check_image(&c.image, &c.image_id)?;
    }
    let needs_image = !agent.engine.image_exists(&c.image_id).await?;
    // The base must be exactly the archive the sender hashed.
    let base = match &base {
        Some(b) => match store.get(&b.name) {
            Ok((m, path)) if m.digest == b.digest => Some(path),
            _ => None,
        },
        None => None,
    };
    write_frame(send, &Response::CheckpointReady { needs_image, base_ok: base.is_some() }).await?;
    let mut len = [0u8; 8];
    recv.read_exact(&mut len).await?;
    let image_bytes = u64::from_le_bytes(len);
    let staging = store.staging()?;
    if image_bytes > 0 {
        anyhow::ensure!(needs_image, "the peer sent an image this store did not ask for");
        anyhow::ensure!(image_bytes <= cp::MAX_IMAGE_BYTES, "an image of {image_bytes} bytes is beyond what a store takes");
        store.ensure_room(meta.bytes.saturating_add(image_bytes))?;
        let path = staging.dir.join("image.tar");
        let mut file = tokio::fs::File::create(&path).await.map_err(|e| store.io(e))?;
        take(recv, &mut file, image_bytes).await?;
        drop(file);
        agent.engine.image_load(&path).await?;
        let _ = tokio::fs::remove_file(&path).await;
        // Only the image whose ID was announced, under its own name.
        anyhow::ensure!(agent.engine.image_exists(&c.image_id).await?, "the image sent is not {} ({})", c.image, c.image_id);
        if named {
            agent.engine.image_tag(&c.image_id, &c.image).await?;
        }
        tracing::info!(image = %c.image, bytes = image_bytes, "loaded a checkpoint's image");
    } else {
        anyhow::ensure!(!needs_image, "this store lacks image {} and the peer did not send it", c.image);
    }
    let mut data = tokio::time::timeout(PUT_ANSWER, conn.accept_uni()).await.map_err(|_| anyhow::anyhow!("no archive stream came"))??;
    let header = transfer::accept_header(&mut data).await?;
    let base = match (header.kind, base) {
        (DataKind::Checkpoint, _) => None,
        (DataKind::CheckpointDelta { .. }, Some(path)) => Some(Arc::new(page_store(&path).await.map_err(|e| store.io(e))?)),
        (kind, _) => anyhow::bail!("the peer sent a {kind:?} stream for a checkpoint"),
    };
    // The rebuilt archive is exactly as large as announced; records of raw
    // runs add a little to the stream, never more than this.
    let max_bytes = meta.bytes.saturating_add(meta.bytes / 64).saturating_add(1 << 20);
    let limits = StreamLimits { stall: Duration::from_secs(60), max_bytes };
    let out = ArchiveOut::FileSynced(staging.archive());
    let got = receive_records(data, out, base, false, Arc::new(AtomicU64::new(0)), Default::default(), limits).await?;
    let want = Digest { bytes: meta.bytes, blake3: meta.digest };
    anyhow::ensure!(
        got.digest == want,
        "the archive received is {} bytes with digest {}, the peer announced {} bytes with {}",
        got.digest.bytes,
        hex(&got.digest.blake3),
        meta.bytes,
        hex(&meta.digest)
    );
    let archive = staging.archive();
    meta.content = tokio::task::spawn_blocking(move || content_of(&archive)).await?.map_err(|e| anyhow::anyhow!("not a checkpoint archive: {e}"))?;
    store.keep(staging, &meta)?;
    Ok(meta)
}

/// Makes a stored checkpoint an OCI image in this host's Podman
/// ([`oci`]), after checking that its archive is whole.
async fn as_image(agent: &Agent, store: &Store, name: &str, image: &str) -> anyhow::Result<StoredCheckpoint> {
    let (meta, archive) = store.get(name)?;
    // A name Podman takes, and nothing that reads as an option.
    crate::target::admission::check_image_name(image)?;
    let path = archive.clone();
    let found = tokio::task::spawn_blocking(move || digest_of(&path)).await?.map_err(|e| store.io(e))?;
    if found != meta.digest {
        return Err(StoreError::Corrupt { name: meta.name, host: agent.cfg.name.clone(), found: hex(&found), expected: hex(&meta.digest) }.into());
    }
    store.ensure_room(meta.bytes)?;
    let staging = store.staging()?;
    let out = staging.dir.join("image.tar");
    let (m, a, i, o) = (meta.clone(), archive.clone(), image.to_string(), out.clone());
    let written = tokio::task::spawn_blocking(move || oci::write(&m, &a, &i, &o)).await?.map_err(|e| store.io(e))?;
    agent.engine.image_load(&out).await?;
    agent.engine.image_tag(&written.id, image).await?;
    tracing::info!(name, image, id = %written.id, "made a checkpoint image");
    Ok(meta)
}

/// Restores a checkpoint of this store here: as the container it was, or
/// as replicas under new names. Nothing runs unless the archive's digest is
/// the one asked for and admission passes; replicas are all made or none.
async fn restore(agent: &Agent, store: &Store, req: RestoreCheckpoint) -> anyhow::Result<Vec<RestoredContainer>> {
    let (meta, archive) = store.get(&req.name)?;
    let host = agent.cfg.name.clone();
    if meta.digest != req.digest {
        return Err(StoreError::NotTheOne { name: meta.name, host, found: hex(&meta.digest), expected: hex(&req.digest) }.into());
    }
    cp::check_replicas(&meta.container, &req.as_names)?;
    if !req.as_names.is_empty() && meta.content.tcp_connections > 0 {
        return Err(StoreError::Refused(format!(
            "{} holds {} established TCP connections, which cannot run in a replica (a connection has one end): restore it as {} itself",
            meta.name, meta.content.tcp_connections, meta.container.name
        ))
        .into());
    }
    let path = archive.clone();
    let found = tokio::task::spawn_blocking(move || digest_of(&path)).await?.map_err(|e| store.io(e))?;
    if found != meta.digest {
        return Err(StoreError::Corrupt { name: meta.name, host, found: hex(&found), expected: hex(&meta.digest) }.into());
    }
    let engine = agent.engine.as_ref();
    let c = &meta.container;
    if !engine.image_exists(&c.image_id).await? {
        anyhow::bail!(
            "{} needs image {} ({}), which {host} does not hold: pull or load it there first",
            meta.name,
            c.image,
            &c.image_id[..c.image_id.len().min(12)]
        );
    }
    if req.replace {
        for n in if req.as_names.is_empty() { vec![c.name.clone()] } else { req.as_names.clone() } {
            match engine.inspect(&n).await? {
                Some(old) if old.is_running() => anyhow::bail!("{n} runs on {host}: --replace replaces only a stopped container"),
                Some(_) => {
                    engine.remove(&n, false).await?;
                    tracing::info!(name = %n, "removed the stopped container a restore replaces");
                }
                None => {}
            }
        }
    }
    let folder = engine.bundle_dir(&c.id).await?;
    let paths = crate::target::admission::host_paths(engine, c, &folder).await;
    crate::target::admission::admit(&agent.cfg.admission, c, &paths, &archive).await?;
    let names: Vec<Option<&str>> = if req.as_names.is_empty() { vec![None] } else { req.as_names.iter().map(|n| Some(n.as_str())).collect() };
    let opts = CheckpointOpts { tcp_established: meta.tcp_established, file_locks: meta.file_locks, ..Default::default() };
    let mut made: Vec<RestoredContainer> = Vec::new();
    for as_name in names {
        let shown = as_name.unwrap_or(&c.name).to_string();
        let Some(_busy) = agent.claim(&shown) else {
            undo(engine, &made).await;
            anyhow::bail!("{shown} is being migrated or restored already");
        };
        let t0 = Instant::now();
        let r = engine.restore_archive(&archive, as_name, opts).await;
        let ms = t0.elapsed().as_millis() as u64;
        let r = match r {
            Ok(()) => engine.inspect(&shown).await.map_err(anyhow::Error::from),
            Err(e) => Err(e.into()),
        };
        match r {
            Ok(Some(i)) if i.is_running() => made.push(RestoredContainer { name: i.name, id: i.id, ips: i.ips, ms }),
            other => {
                let why = match other {
                    Err(e) => format!("{e:#}"),
                    Ok(Some(i)) => format!("it is {} after the restore", i.state),
                    Ok(None) => "Podman does not list it after the restore".into(),
                };
                let _ = engine.remove(&shown, true).await;
                undo(engine, &made).await;
                anyhow::bail!("restoring {} as {shown} on {host} failed: {why}", meta.name);
            }
        }
    }
    tracing::info!(name = %meta.name, made = ?made.iter().map(|m| &m.name).collect::<Vec<_>>(), "restored a stored checkpoint");
    Ok(made)
}

/// Removes the containers a restore made before one of them failed.
async fn undo(engine: &dyn crate::engine::Engine, made: &[RestoredContainer]) {
    for m in made {
        if let Err(e) = engine.remove(&m.name, true).await {
            tracing::warn!(name = %m.name, "removing a replica after a failed restore: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(b: &mut tar::Builder<Vec<u8>>, name: &str, size: usize) {
        let mut h = tar::Header::new_gnu();
        h.set_size(size as u64);
        h.set_mode(0o600);
        h.set_cksum();
        b.append_data(&mut h, name, vec![0u8; size].as_slice()).unwrap();
    }

    #[test]
    fn content_is_counted_from_criu_s_image_names() {
        let dir = tempfile::tempdir().unwrap();
        let mut b = tar::Builder::new(Vec::new());
        member(&mut b, "config.dump", 10);
        member(&mut b, "checkpoint/pstree.img", 20);
        member(&mut b, "checkpoint/core-1.img", 5);
        member(&mut b, "checkpoint/core-7.img", 5);
        member(&mut b, "checkpoint/core-8.img", 5);
        member(&mut b, "checkpoint/mm-1.img", 3);
        member(&mut b, "checkpoint/mm-7.img", 3);
        member(&mut b, "checkpoint/pages-1.img", 4096);
        member(&mut b, "checkpoint/pages-2.img", 8192);
        member(&mut b, "checkpoint/pagemap-1.img", 7);
        member(&mut b, "checkpoint/tcp-stream-4711.img", 9);
        member(&mut b, "rootfs-diff.tar", 1024);
        member(&mut b, "volumes/data.tar", 512);
        let path = dir.path().join("a.tar");
        std::fs::write(&path, b.into_inner().unwrap()).unwrap();
        let c = content_of(&path).unwrap();
        assert_eq!(
            c,
            Content {
                processes: 2,
                threads: 3,
                memory_bytes: 12288,
                tcp_connections: 1,
                files_bytes: 1536,
                images_bytes: 20 + 15 + 6 + 12288 + 7 + 9
            }
        );
        // A block that is no tar header: its checksum does not match.
        std::fs::write(&path, [b'A'; 1024]).unwrap();
        assert!(content_of(&path).is_err());
    }
}
