//! The seam between the agent and the host's storage for checkpoint
//! folders in RAM: what memory is free, and tmpfs mounts over a folder
//! (`ramdir.rs` says why and when). [`HostStorage`] mounts real tmpfs file
//! systems; tests put a stand-in behind [`Storage`] that keeps plain
//! folders, so the migration logic runs without root.
//!
//! Where a container's folder lies is Podman's to say (its storage
//! layout), so that stays on the [`Engine`](crate::engine::Engine) seam.

use std::path::{Path, PathBuf};

/// Checkpoint folders in RAM.
pub trait Storage: Send + Sync + 'static {
    /// The memory available without swapping, in bytes (`None`: unknown).
    fn mem_available(&self) -> Option<u64>;
    /// Puts `dir` (created if missing, which must be empty) in RAM, at most
    /// `cap` bytes of it.
    fn mount_ram(&self, dir: &Path, cap: u64) -> std::io::Result<()>;
    /// Takes `dir` out of RAM if it is in RAM (what it held is gone), and
    /// removes the folder when `remove_dir` and it is then empty.
    fn unmount_ram(&self, dir: &Path, remove_dir: bool) -> std::io::Result<()>;
    /// Whether `dir` is one of tern's folders in RAM.
    fn is_ram(&self, dir: &Path) -> bool;
    /// tern's folders in RAM at or under `prefix`.
    fn ram_under(&self, prefix: &Path) -> Vec<PathBuf>;
}

impl std::fmt::Debug for dyn Storage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Storage")
    }
}

/// This host: tmpfs mounts named [`ramdir::FS_NAME`](crate::ramdir::FS_NAME).
pub struct HostStorage;

impl Storage for HostStorage {
    fn mem_available(&self) -> Option<u64> {
        crate::ramdir::mem_available()
    }
    fn mount_ram(&self, dir: &Path, cap: u64) -> std::io::Result<()> {
        crate::ramdir::mount(dir, cap)
    }
    fn unmount_ram(&self, dir: &Path, remove_dir: bool) -> std::io::Result<()> {
        crate::ramdir::unmount(dir, remove_dir)
    }
    fn is_ram(&self, dir: &Path) -> bool {
        crate::ramdir::is_mounted(dir)
    }
    fn ram_under(&self, prefix: &Path) -> Vec<PathBuf> {
        crate::ramdir::mounted_under(prefix)
    }
}
