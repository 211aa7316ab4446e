//! What evacuations brought to this host, and from where: the evidence
//! that lets an evacuated host's own evacuator certificate bring its
//! containers back (`tern return` run by that host's agent after a
//! reboot) without letting it take anything else (`server::authorize`).
//!
//! The file is `<state dir>/arrivals.json` (absent: nothing), a map from
//! container ID to the host it came from, written atomically. An entry is
//! added when a move whose ticket is marked `evacuation` commits here, and
//! goes when the container leaves (any move out that commits). An
//! unreadable file holds nothing: a return by an evacuator is then
//! refused, and the coordinator's own `tern return` still works.

use crate::durable::write_atomic;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

pub const FILE: &str = "arrivals.json";

static WRITING: Mutex<()> = Mutex::new(());

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Arrival {
    pub name: String,
    /// The host it was evacuated from.
    pub from: String,
}

fn path(state_dir: &Path) -> PathBuf {
    state_dir.join(FILE)
}

fn load(state_dir: &Path) -> BTreeMap<String, Arrival> {
    std::fs::read(path(state_dir)).ok().and_then(|b| serde_json::from_slice(&b).ok()).unwrap_or_default()
}

fn change(state_dir: &Path, edit: impl FnOnce(&mut BTreeMap<String, Arrival>) -> bool) {
    let _one_at_a_time = WRITING.lock().unwrap_or_else(|p| p.into_inner());
    let mut all = load(state_dir);
    if !edit(&mut all) {
        return;
    }
    let p = path(state_dir);
    let written =
        if all.is_empty() { crate::durable::remove(&p) } else { write_atomic(&p, &serde_json::to_vec_pretty(&all).expect("arrivals serialize")) };
    if let Err(e) = written {
        tracing::warn!("cannot write {}: {e}", p.display());
    }
}

/// A container evacuated from `from` committed here.
pub fn arrived(state_dir: &Path, container_id: &str, name: &str, from: &str) {
    change(state_dir, |all| {
        all.insert(container_id.to_string(), Arrival { name: name.to_string(), from: from.to_string() });
        true
    });
}

/// The container left this host (a move out committed).
pub fn left(state_dir: &Path, container_id: &str) {
    change(state_dir, |all| all.remove(container_id).is_some());
}

/// The host an evacuation brought this container from, if one did.
pub fn came_from(state_dir: &Path, container_id: &str) -> Option<String> {
    load(state_dir).remove(container_id).map(|a| a.from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arrivals_are_kept_until_the_container_leaves() {
        let d = tempfile::tempdir().unwrap();
        assert_eq!(came_from(d.path(), "abc"), None);
        arrived(d.path(), "abc", "web", "client1");
        arrived(d.path(), "def", "db", "client3");
        assert_eq!(came_from(d.path(), "abc").as_deref(), Some("client1"));
        left(d.path(), "abc");
        assert_eq!(came_from(d.path(), "abc"), None);
        assert_eq!(came_from(d.path(), "def").as_deref(), Some("client3"));
        left(d.path(), "def");
        assert!(!d.path().join(FILE).exists(), "an empty record is no file");
        std::fs::write(d.path().join(FILE), b"{not json").unwrap();
        assert_eq!(came_from(d.path(), "abc"), None, "an unreadable file holds nothing");
    }
}
