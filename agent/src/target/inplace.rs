//! Restoring in place: the container's folder is made before Podman makes
//! the container.
//!
//! `podman container restore --import ARCHIVE` creates the container with
//! the ID it had on the source and unpacks the archive into its folder,
//! `<graph root>/<driver>-containers/<id>/userdata` (Podman's `StaticDir`),
//! reading the archive twice and writing all of it again, during the
//! downtime. Podman keeps whatever that folder already holds. So the target
//! makes the folder when the migration begins, and everything large
//! arrives straight where CRIU will read it:
//!
//! ```text
//!  <graph root>/<driver>-containers/<id>/          made here, removed on undo
//!    userdata/
//!      checkpoint/              tmpfs when memory allows (ramdir.rs); the final
//!                               dump's images, written as they arrive (unpack.rs)
//!      tern-precopy/1, 2, ...   soft-dirty rounds, each `parent` -> ../<n-1>
//!      pre-checkpoint -> tern-precopy/<last>
//!  <state dir>/incoming-<pid>-<n>/rest.tar               config.dump, spec.dump,
//!                                                    rootfs-diff.tar, ...:
//!                                                    what Podman imports
//! ```
//!
//! Links stay relative and on one file system: CRIU follows `parent` from
//! inside the restored container's mount namespace, where absolute paths
//! and paths that leave the mount break. That is also why soft-dirty
//! pre-copy keeps its `checkpoint/` on disk: its final dump's `parent` link
//! leaves the folder.
//!
//! A marker file, `<id>/tern-incoming`, says the folder is this agent's
//! until the source commits the migration, and names the migration and its
//! source ([`Marker`]). Until then a container restored from the folder is
//! tentative: the source may still tell this target to drop it
//! (`target::resolve`). An agent that died mid-migration finds such folders
//! at start ([`sweep`]): a folder with no container is removed; a restored
//! container is kept, still tentative, for its source to settle. Removing
//! it could leave none running (the source may have recorded the commit);
//! keeping it cannot make two, since the source runs its own copy again
//! only once this agent said none is here.

use crate::engine::{Engine, EngineError};
use crate::ramdir;
use crate::storage::Storage;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tern_proto::facts::ContainerInfo;

/// Marks a container folder as made by tern for a migration not yet committed.
const MARKER: &str = "tern-incoming";

/// What the marker says: whose migration this folder, and the container
/// restored from it, belong to until it is committed.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Marker {
    pub id: tern_proto::MigrationId,
    /// The source agent's name, the only peer that may settle it.
    pub source: String,
    /// A move of an evacuation (its ticket's mark): once committed, this
    /// host records where it came from (`arrivals.rs`).
    #[serde(default)]
    pub evacuation: bool,
}

/// A tentative folder found by container ID: its marker (`None` when it is
/// unreadable) and the folder.
#[derive(Debug)]
pub struct Tentative {
    pub marker: Option<Marker>,
    pub root: PathBuf,
    storage: Arc<dyn Storage>,
}

impl Tentative {
    /// The migration is committed: the folder is Podman's alone.
    pub fn commit(&self) -> std::io::Result<()> {
        std::fs::remove_file(self.root.join(MARKER))
    }

    /// Removes the folder (after its container, if any, was removed).
    pub fn remove(&self) {
        let _ = self.storage.unmount_ram(&self.root.join("userdata").join("checkpoint"), false);
        if let Err(e) = std::fs::remove_dir_all(&self.root) {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!("removing {}: {e}", self.root.display());
            }
        }
    }
}

/// What the marker in the container folder `root` says (`None` when it is
/// missing or unreadable).
fn read_marker(root: &Path) -> Option<Marker> {
    std::fs::read(root.join(MARKER)).ok().and_then(|b| serde_json::from_slice(&b).ok())
}

/// The tentative folder of container `id`, if there is one.
pub async fn tentative(engine: &dyn Engine, storage: &Arc<dyn Storage>, id: &str) -> Result<Option<Tentative>, EngineError> {
    let dir = engine.bundle_dir(id).await?;
    let Some(root) = dir.parent() else { return Ok(None) };
    if !root.join(MARKER).exists() {
        return Ok(None);
    }
    Ok(Some(Tentative { marker: read_marker(root), root: root.to_path_buf(), storage: storage.clone() }))
}

/// The restored container's folder, prepared before the freeze.
#[derive(Debug)]
pub struct Bundle {
    /// `<driver>-containers/<id>`, which did not exist before.
    root: PathBuf,
    /// `root/userdata`.
    pub dir: PathBuf,
    /// Whether `checkpoint/` is a tmpfs.
    pub in_ram: bool,
    /// Why not, when RAM was asked for and it is not.
    pub on_disk_because: Option<NotInRam>,
    /// Its share of the agent's RAM budget while the tmpfs is there.
    ram: std::sync::Mutex<Option<ramdir::Reservation>>,
    storage: Arc<dyn Storage>,
}

/// Why `checkpoint/` is not in RAM though RAM was asked for (a note for
/// the report).
#[derive(Debug, thiserror::Error)]
pub enum NotInRam {
    #[error("cannot read MemAvailable from /proc/meminfo")]
    NoMemInfo,
    /// It does not fit in the agent's RAM budget (ramdir.rs).
    #[error(transparent)]
    NoRoom(#[from] ramdir::NoRoom),
    /// Mounting the tmpfs failed.
    #[error(transparent)]
    Mount(#[from] std::io::Error),
}

/// Why the container's folder could not be made.
#[derive(Debug, thiserror::Error)]
pub enum FolderError {
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error("{} has no parent folder", .0.display())]
    NoParent(PathBuf),
    #[error("a container with ID {id} already has a folder here ({}); remove that container first", root.display())]
    Exists { id: String, root: PathBuf },
    #[error("creating {}: {source}", path.display())]
    Create { path: PathBuf, source: std::io::Error },
}

impl Bundle {
    /// Makes the folder for `container`. With `ram`, tries to put its
    /// `checkpoint/` in RAM (the images and the restored container must
    /// both fit).
    pub async fn prepare(engine: &dyn Engine, storage: &Arc<dyn Storage>, container: &ContainerInfo, ram: bool) -> Result<Bundle, FolderError> {
        let dir = engine.bundle_dir(&container.id).await?;
        let root = dir.parent().map(Path::to_path_buf).ok_or_else(|| FolderError::NoParent(dir.clone()))?;
        if root.exists() {
            return Err(FolderError::Exists { id: container.id.clone(), root });
        }
        let checkpoint = dir.join("checkpoint");
        std::fs::create_dir_all(&checkpoint).map_err(|source| FolderError::Create { path: checkpoint.clone(), source })?;
        std::fs::write(root.join(MARKER), b"").map_err(|source| FolderError::Create { path: root.join(MARKER), source })?;
        let mut bundle = Bundle { root, dir, in_ram: false, on_disk_because: None, ram: Default::default(), storage: storage.clone() };
        if !ram {
            return Ok(bundle);
        }
        // The share of the agent's RAM budget (ramdir.rs) is the tmpfs's cap.
        // Why not, when it does not fit, is a note for the report.
        let share = storage
            .mem_available()
            .ok_or(NotInRam::NoMemInfo)
            .and_then(|avail| ramdir::reserve(container.memory_bytes, 2, avail).map_err(NotInRam::NoRoom));
        match share.and_then(|r| storage.mount_ram(&checkpoint, r.bytes()).map(|()| r).map_err(NotInRam::Mount)) {
            Ok(r) => {
                bundle.in_ram = true;
                *bundle.ram.lock().unwrap_or_else(|e| e.into_inner()) = Some(r);
            }
            Err(why) => {
                tracing::info!("the checkpoint images go to disk: {why}");
                bundle.on_disk_because = Some(why);
            }
        }
        Ok(bundle)
    }

    /// Names the migration in the marker: who may settle what is restored here.
    pub fn mark(&self, marker: &Marker) -> std::io::Result<()> {
        std::fs::write(self.root.join(MARKER), serde_json::to_vec(marker).map_err(std::io::Error::other)?)
    }

    /// The folder and its marker, once a container was restored from it.
    pub fn tentative(&self) -> Tentative {
        Tentative { marker: read_marker(&self.root), root: self.root.clone(), storage: self.storage.clone() }
    }

    pub fn checkpoint_dir(&self) -> PathBuf {
        self.dir.join("checkpoint")
    }

    /// Where soft-dirty round `n` goes.
    pub fn round_dir(&self, n: u32) -> PathBuf {
        self.dir.join(crate::PRECOPY_DIR).join(n.to_string())
    }

    /// Links the `rounds` rounds into the chain CRIU follows (module docs).
    pub fn link_rounds(&self, rounds: u32) -> std::io::Result<()> {
        for n in 2..=rounds {
            std::os::unix::fs::symlink(format!("../{}", n - 1), self.round_dir(n).join("parent"))?;
        }
        std::os::unix::fs::symlink(format!("{}/{rounds}", crate::PRECOPY_DIR), self.dir.join("pre-checkpoint"))
    }

    /// The container was restored (Podman kept the images, `--keep`): what
    /// its folder no longer needs goes: the images (a tmpfs, or a folder),
    /// the rounds. CRIU's `restore.log` stays, and the marker until the
    /// commit.
    pub fn after_restore(&self) {
        let images = self.checkpoint_dir();
        if self.storage.is_ram(&images) {
            if let Err(e) = self.storage.unmount_ram(&images, true) {
                tracing::warn!("{e}");
            }
        } else {
            let _ = std::fs::remove_dir_all(&images);
        }
        self.ram.lock().unwrap_or_else(|e| e.into_inner()).take();
        let _ = std::fs::remove_file(self.dir.join("pre-checkpoint"));
        let _ = std::fs::remove_dir_all(self.dir.join(crate::PRECOPY_DIR));
        // A restore cut short may have left `lazy-pages` in the container's
        // CRIU options: its next dump must not read it.
        if self.dir.join(super::lazy::CONF).exists() {
            super::lazy::settle_conf(&self.dir);
        }
        let _ = std::fs::remove_file(self.dir.join(crate::criu::SOCKET));
    }

    /// Unmounts the tmpfs (so that Podman can remove the container's
    /// folder) without removing anything.
    pub fn release_ram(&self) {
        if let Err(e) = self.storage.unmount_ram(&self.checkpoint_dir(), false) {
            tracing::warn!("{e}");
        }
        self.ram.lock().unwrap_or_else(|e| e.into_inner()).take();
    }

    /// Removes the folder this migration made; for when no container was
    /// made of it (Podman removes its own containers' folders).
    pub fn remove(&self) {
        self.release_ram();
        if let Err(e) = std::fs::remove_dir_all(&self.root) {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!("removing {}: {e}", self.root.display());
            }
        }
    }
}

/// At start: the folders a predecessor made for migrations it did not see
/// to their commit (module docs). A folder no container was made of is
/// removed; a container restored from one is kept, tentative, until its
/// source settles it.
pub async fn sweep(engine: &dyn Engine, storage: &Arc<dyn Storage>) {
    // Any valid ID names the folder that holds every container's folder.
    let Ok(probe) = engine.bundle_dir(&"0".repeat(64)).await else { return };
    let Some(containers) = probe.parent().and_then(Path::parent) else { return };
    let Ok(list) = std::fs::read_dir(containers) else { return };
    for entry in list.flatten() {
        let root = entry.path();
        if !root.join(MARKER).exists() {
            continue;
        }
        let id = entry.file_name().to_string_lossy().into_owned();
        let restored = match engine.inspect(&id).await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!("cannot tell whether {id} is a container: {e}; its folder stays");
                continue;
            }
        };
        let marker = read_marker(&root);
        match restored {
            Some(c) => {
                let source = marker.map_or_else(|| "its source".to_string(), |m| format!("{} (migration {})", m.source, m.id));
                tracing::warn!(
                    id = %id, name = %c.name, state = %c.state,
                    "{} was restored here by a migration not yet committed; it is kept, tentative, until {source} settles it",
                    c.name
                );
            }
            None => {
                tracing::warn!(folder = %root.display(), "removing what a migration this agent did not see end had staged");
                Tentative { marker, root, storage: storage.clone() }.remove();
            }
        }
    }
}
