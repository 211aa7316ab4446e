//! This host's cordon (`tern cordon`): while it holds, no migration lands
//! here. The coordinator's check refuses a cordoned target before anything
//! is frozen (`tern_proto::compat::cordon_finding`), and the target agent
//! refuses a `Receive` itself too ([`refusal`], before anything of the
//! container is written), whoever asks.
//!
//! The state is one small file, `<state dir>/cordon.json` (`{"reason":
//! ..., "since_unix": ...}`; absent: not cordoned), written atomically (a
//! temporary file, fsync, rename, fsync of the folder), so it survives
//! agent restarts and crashes, and never reads half-written. An unreadable
//! file counts as a cordon: refusing migrations is the safe side, and
//! `tern uncordon` rewrites it.
//!
//! Also here: the rest of what a host's facts say afresh at every request
//! ([`status`]): the memory and disk it has room in, which placement
//! weighs.

use crate::durable::{remove, write_atomic};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use tern_proto::facts::{Cordon, HostStatus};
use tern_proto::CordonChange;

/// The file's name in the agent's state folder.
pub const FILE: &str = "cordon.json";

/// Serializes the read-modify-write of [`set`] within this process.
static WRITING: Mutex<()> = Mutex::new(());

pub fn path(state_dir: &Path) -> PathBuf {
    state_dir.join(FILE)
}

/// The cordon as the file says: `Ok(None)` when there is no file.
pub fn load(state_dir: &Path) -> Result<Option<Cordon>, String> {
    let p = path(state_dir);
    match std::fs::read(&p) {
        Ok(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(|e| format!("{} is unreadable: {e}", p.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(format!("cannot read {}: {e}", p.display())),
    }
}

/// The cordon in force: an unreadable file counts as one.
pub fn current(state_dir: &Path) -> Option<Cordon> {
    match load(state_dir) {
        Ok(c) => c,
        Err(e) => Some(Cordon { reason: format!("{e}; treated as cordoned (`tern uncordon` rewrites it)"), since_unix: 0 }),
    }
}

/// Cordons (`Some(reason)`) or uncordons (`None`) the host; `now` in
/// seconds since the Unix epoch. A host already cordoned keeps its first
/// reason and time.
pub fn set(state_dir: &Path, cordon: Option<String>, now: u64) -> std::io::Result<CordonChange> {
    let _one_at_a_time = WRITING.lock().unwrap_or_else(|p| p.into_inner());
    // An unreadable file is replaced either way.
    let was = load(state_dir).unwrap_or(None);
    let now = match (cordon, &was) {
        (Some(_), Some(kept)) => Some(kept.clone()),
        (Some(reason), None) => {
            let c = Cordon { reason, since_unix: now };
            write_atomic(&path(state_dir), &serde_json::to_vec_pretty(&c).expect("a cordon serializes"))?;
            Some(c)
        }
        (None, _) => {
            remove(&path(state_dir))?;
            None
        }
    };
    Ok(CordonChange { was, now })
}

/// Why this host refuses an incoming migration now, if it does.
pub fn refusal(state_dir: &Path, host: &str) -> Option<String> {
    current(state_dir).map(|c| format!("{host} is cordoned {}: it takes no migration until `tern uncordon {host}`", c.describe()))
}

/// What a host's facts say afresh at every request: its cordon, the
/// memory the kernel could give (`MemAvailable`) and the free space of
/// the state folder.
// statvfs's counts are u64 here, narrower on some targets.
#[allow(clippy::unnecessary_cast)]
pub fn status(state_dir: &Path) -> HostStatus {
    HostStatus {
        cordon: current(state_dir),
        memory_available_bytes: mem_available(&std::fs::read_to_string("/proc/meminfo").unwrap_or_default()).unwrap_or(0),
        disk_available_bytes: nix::sys::statvfs::statvfs(state_dir)
            .map(|s| (s.blocks_available() as u64).saturating_mul(s.fragment_size() as u64))
            .unwrap_or(0),
        ..Default::default()
    }
}

/// `MemAvailable` of `/proc/meminfo`, in bytes.
pub fn mem_available(meminfo: &str) -> Option<u64> {
    let kib = meminfo.lines().find_map(|l| l.strip_prefix("MemAvailable:"))?.trim().strip_suffix("kB")?.trim().parse::<u64>().ok()?;
    Some(kib.saturating_mul(1024))
}

/// Says at start whether the host is cordoned (and whether the file reads).
pub fn log_at_start(state_dir: &Path) {
    match load(state_dir) {
        Ok(Some(c)) => tracing::info!("this host is cordoned {}: it takes no migration until `tern uncordon`", c.describe()),
        Ok(None) => {}
        Err(e) => tracing::warn!("{e}: this host counts as cordoned until `tern uncordon` rewrites it"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("tern-cordon-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn a_cordon_round_trips_through_its_file_and_keeps_its_first_reason() {
        let d = dir("roundtrip");
        assert_eq!(load(&d), Ok(None));
        assert_eq!(refusal(&d, "client2"), None);
        let c = set(&d, Some("kernel upgrade".into()), 1_700_000_000).unwrap();
        let want = Cordon { reason: "kernel upgrade".into(), since_unix: 1_700_000_000 };
        assert_eq!(c, CordonChange { was: None, now: Some(want.clone()) });
        // What a restarted agent reads.
        assert_eq!(load(&d), Ok(Some(want.clone())));
        let text = std::fs::read_to_string(path(&d)).unwrap();
        assert!(text.contains("\"since_unix\": 1700000000"), "{text}");
        // Cordoning again keeps the first reason and time.
        let c = set(&d, Some("evacuating".into()), 1_800_000_000).unwrap();
        assert_eq!(c, CordonChange { was: Some(want.clone()), now: Some(want.clone()) });
        let why = refusal(&d, "client2").unwrap();
        assert!(
            why.contains("client2 is cordoned since 2023-11-14") && why.contains("kernel upgrade") && why.contains("`tern uncordon client2`"),
            "{why}"
        );
        // No temporary file is left beside it.
        let names: Vec<String> = std::fs::read_dir(&d).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        assert_eq!(names, vec![FILE.to_string()]);
        let c = set(&d, None, 0).unwrap();
        assert_eq!(c, CordonChange { was: Some(want), now: None });
        assert_eq!(load(&d), Ok(None));
        // Uncordoning an uncordoned host is no error.
        assert_eq!(set(&d, None, 0).unwrap(), CordonChange { was: None, now: None });
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn an_unreadable_file_counts_as_a_cordon_until_rewritten() {
        let d = dir("garbage");
        std::fs::write(path(&d), b"{half").unwrap();
        assert!(load(&d).is_err());
        let c = current(&d).unwrap();
        assert!(c.reason.contains("unreadable") && c.reason.contains("tern uncordon"), "{}", c.reason);
        assert!(refusal(&d, "h").is_some());
        assert_eq!(set(&d, None, 0).unwrap().now, None);
        assert_eq!(current(&d), None);
        std::fs::write(path(&d), b"{half").unwrap();
        let c = set(&d, Some("maintenance".into()), 7).unwrap();
        assert_eq!(c.now, Some(Cordon { reason: "maintenance".into(), since_unix: 7 }));
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn status_reads_available_memory_and_disk() {
        assert_eq!(mem_available("MemTotal:  8000 kB\nMemAvailable:    2048 kB\n"), Some(2 << 20));
        assert_eq!(mem_available("MemTotal: 1 kB\n"), None);
        let d = dir("status");
        let s = status(&d);
        assert_eq!(s.cordon, None);
        assert!(s.disk_available_bytes > 0 && s.memory_available_bytes > 0, "{s:?}");
        let _ = std::fs::remove_dir_all(&d);
    }
}
