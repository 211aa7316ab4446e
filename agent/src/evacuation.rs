//! This host's evacuation record (`tern evacuate`, `tern return`): what
//! evacuations moved away from here and has not come back. The host that
//! comes back keeps it, so it holds whatever happens to the coordinator:
//! a `tern` killed mid-evacuation leaves every move that switched over
//! recorded.
//!
//! The file is `<state dir>/evacuation.json` (absent: nothing recorded),
//! written atomically like `cordon.json`. It changes at three points:
//!
//! * as the source of a move marked `evacuation`, right after the commit
//!   is journaled (`source.rs`): the container is the target's from then
//!   on, whatever happens to either agent; a container moved again
//!   replaces its entry (merged by container ID);
//! * as the target of a move that commits a recorded container (it came
//!   back, by `tern return` or by hand): its entry goes;
//! * at a coordinator's [`Request::Evacuation`](tern_proto::Request): the
//!   IDs it names go (`tern return` found they will not come back).
//!
//! A recorded container may land here while the host is cordoned (an
//! evacuation's cordon must not keep out what it sent away); anything else
//! is refused as usual (`target::receive`).
//!
//! An unreadable file is an error to the coordinator (`tern return` says
//! which file); the next recorded move sets it aside (`.unreadable-<time>`)
//! and starts a new one, with a warning, so evacuations keep working.

use crate::durable::write_atomic;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use tern_proto::{Evacuated, EvacuationRecord};

/// The file's name in the agent's state folder.
pub const FILE: &str = "evacuation.json";

/// Serializes the read-modify-writes within this process (parallel moves
/// record side by side).
static WRITING: Mutex<()> = Mutex::new(());

pub fn path(state_dir: &Path) -> PathBuf {
    state_dir.join(FILE)
}

/// What goes wrong with the record's file.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error("{} is unreadable: {source}", path.display())]
    Unreadable { path: PathBuf, source: serde_json::Error },
    #[error("cannot read {}: {source}", path.display())]
    Read { path: PathBuf, source: std::io::Error },
    #[error("cannot write {}: {source}", path.display())]
    Write { path: PathBuf, source: std::io::Error },
}

/// The record as the file says: empty when there is no file.
pub fn load(state_dir: &Path) -> Result<EvacuationRecord, RecordError> {
    let path = path(state_dir);
    match std::fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map_err(|source| RecordError::Unreadable { path, source }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(EvacuationRecord::default()),
        Err(source) => Err(RecordError::Read { path, source }),
    }
}

fn store(state_dir: &Path, record: &EvacuationRecord) -> std::io::Result<()> {
    let p = path(state_dir);
    if record.containers.is_empty() {
        return crate::durable::remove(&p);
    }
    write_atomic(&p, &serde_json::to_vec_pretty(record).expect("a record serializes"))
}

/// Records that `entry` was moved away (merged by container ID). An
/// unreadable file is set aside first; the warning says where.
pub fn record(state_dir: &Path, entry: Evacuated) -> std::io::Result<Option<String>> {
    let _one_at_a_time = WRITING.lock().unwrap_or_else(|p| p.into_inner());
    let (mut record, warning) = match load(state_dir) {
        Ok(r) => (r, None),
        Err(e) => {
            let aside = state_dir.join(format!("{FILE}.unreadable-{}", entry.moved_unix));
            std::fs::rename(path(state_dir), &aside)?;
            (EvacuationRecord::default(), Some(format!("{e}; set aside as {} and a new record started", aside.display())))
        }
    };
    record.merge(entry);
    store(state_dir, &record)?;
    Ok(warning)
}

/// Drops the containers with these IDs; returns the record that is left.
/// An unreadable file is an error (nothing is changed).
pub fn forget(state_dir: &Path, ids: &[String]) -> Result<EvacuationRecord, RecordError> {
    let _one_at_a_time = WRITING.lock().unwrap_or_else(|p| p.into_inner());
    let mut record = load(state_dir)?;
    if record.forget(ids) {
        store(state_dir, &record).map_err(|source| RecordError::Write { path: path(state_dir), source })?;
    }
    Ok(record)
}

/// Whether the container with this ID was evacuated from here (an
/// unreadable record holds nothing: the cordon then keeps it out).
pub fn returning(state_dir: &Path, container_id: &str) -> bool {
    load(state_dir).is_ok_and(|r| r.holds(container_id))
}

/// A recorded container came back and committed here: its entry goes.
/// Logged, never failing the migration.
pub fn came_back(state_dir: &Path, container_id: &str, name: &str) {
    if !returning(state_dir, container_id) {
        return;
    }
    match forget(state_dir, &[container_id.to_string()]) {
        Ok(_) => tracing::info!(container = %name, "back from its evacuation: dropped from {FILE}"),
        Err(e) => tracing::warn!(container = %name, "back from its evacuation, but {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("tern-evacuation-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn e(name: &str, id: &str, target: &str, when: u64) -> Evacuated {
        Evacuated { name: name.into(), id: id.into(), target: target.into(), migration: when + 1, moved_unix: when }
    }

    fn names(d: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(d).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        v.sort();
        v
    }

    #[test]
    fn the_record_round_trips_through_its_file_merging_by_container_id() {
        let d = dir("roundtrip");
        assert_eq!(load(&d).unwrap(), EvacuationRecord::default());
        assert_eq!(record(&d, e("a", "1", "client2", 100)).unwrap(), None);
        assert_eq!(record(&d, e("b", "2", "client2", 101)).unwrap(), None);
        // What a restarted agent reads.
        let r = load(&d).unwrap();
        assert_eq!(r.containers, vec![e("a", "1", "client2", 100), e("b", "2", "client2", 101)]);
        let text = std::fs::read_to_string(path(&d)).unwrap();
        assert!(text.contains("\"target\": \"client2\"") && text.contains("\"moved_unix\": 100"), "{text}");
        // Evacuated again, elsewhere: replaced, the other kept.
        record(&d, e("a", "1", "client3", 200)).unwrap();
        assert_eq!(load(&d).unwrap().containers, vec![e("b", "2", "client2", 101), e("a", "1", "client3", 200)]);
        assert!(returning(&d, "1") && !returning(&d, "3"));
        assert_eq!(names(&d), vec![FILE.to_string()], "no temporary file is left");
        // Back: its entry goes; the last one gone, so does the file.
        came_back(&d, "1", "a");
        assert_eq!(load(&d).unwrap().containers, vec![e("b", "2", "client2", 101)]);
        came_back(&d, "9", "other");
        assert_eq!(forget(&d, &["2".into()]).unwrap(), EvacuationRecord::default());
        assert!(names(&d).is_empty(), "{:?}", names(&d));
        assert_eq!(forget(&d, &[]).unwrap(), EvacuationRecord::default());
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn an_unreadable_file_is_an_error_to_readers_and_set_aside_by_the_next_move() {
        let d = dir("garbage");
        std::fs::write(path(&d), b"{half").unwrap();
        let err = load(&d).unwrap_err().to_string();
        assert!(err.contains("evacuation.json is unreadable"), "{err}");
        assert!(forget(&d, &["1".into()]).unwrap_err().to_string().contains("unreadable"));
        assert!(!returning(&d, "1"), "an unreadable record lets nothing past the cordon");
        let warning = record(&d, e("a", "1", "client2", 300)).unwrap().expect("a warning");
        assert!(warning.contains("unreadable") && warning.contains("evacuation.json.unreadable-300"), "{warning}");
        assert_eq!(load(&d).unwrap().containers, vec![e("a", "1", "client2", 300)]);
        assert_eq!(std::fs::read(d.join("evacuation.json.unreadable-300")).unwrap(), b"{half");
        let _ = std::fs::remove_dir_all(&d);
    }
}
