//! What an evacuation moved away from a host (`tern evacuate`), kept by
//! that host's agent so that `tern return` can bring it back: the host that
//! comes back is the one that remembers.
//!
//! The source agent adds an entry when it records the commit of a
//! migration the coordinator marked as an evacuation
//! ([`crate::MigrateRequest::evacuation`]); the entry goes when the
//! container comes back (its commit on this host, as the target) or when
//! `tern return` finds it will not ([`crate::EvacuationRequest::forget`]).
//! The rules are here, pure; the file is the agent's
//! (`agent/src/evacuation.rs`).

use serde::{Deserialize, Serialize};

/// Everything moved away from this host by evacuations and not back yet,
/// in the order it was moved.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EvacuationRecord {
    pub containers: Vec<Evacuated>,
}

/// One container an evacuation moved away.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Evacuated {
    pub name: String,
    /// Its container ID, the same on the host it went to: how `tern
    /// return` recognizes it there.
    pub id: String,
    /// The host it was moved to.
    pub target: String,
    /// The migration that moved it (its `MigrationId`).
    pub migration: u64,
    /// When its switchover was recorded, in seconds since the Unix epoch
    /// (this host's clock).
    pub moved_unix: u64,
}

impl EvacuationRecord {
    /// Adds `entry`; a container already recorded (same ID: moved again by
    /// a later evacuation) is replaced, keeping the others.
    pub fn merge(&mut self, entry: Evacuated) {
        self.containers.retain(|c| c.id != entry.id);
        self.containers.push(entry);
    }

    /// Drops the containers with these IDs; says whether any was there.
    pub fn forget(&mut self, ids: &[String]) -> bool {
        let before = self.containers.len();
        self.containers.retain(|c| !ids.contains(&c.id));
        self.containers.len() != before
    }

    /// Whether the container with this ID was moved away from here by an
    /// evacuation: coming back, it may land on this host while cordoned.
    pub fn holds(&self, id: &str) -> bool {
        !id.is_empty() && self.containers.iter().any(|c| c.id == id)
    }

    /// The earliest recorded move, if any.
    pub fn since_unix(&self) -> Option<u64> {
        self.containers.iter().map(|c| c.moved_unix).min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(name: &str, id: &str, target: &str, migration: u64) -> Evacuated {
        Evacuated { name: name.into(), id: id.into(), target: target.into(), migration, moved_unix: migration * 10 }
    }

    #[test]
    fn a_new_evacuation_replaces_only_the_containers_it_moved_again() {
        let mut r = EvacuationRecord::default();
        r.merge(e("a", "1", "client2", 1));
        r.merge(e("b", "2", "client2", 2));
        // a came back by hand and was evacuated again, elsewhere.
        r.merge(e("a", "1", "client3", 3));
        r.merge(e("c", "3", "client3", 4));
        assert_eq!(r.containers, vec![e("b", "2", "client2", 2), e("a", "1", "client3", 3), e("c", "3", "client3", 4)]);
        assert_eq!(r.since_unix(), Some(20));
        assert!(r.holds("1") && !r.holds("9") && !r.holds(""));
        // A different container that took a's name is another entry.
        r.merge(e("a", "7", "client2", 5));
        assert_eq!(r.containers.len(), 4);
    }

    #[test]
    fn forgetting_drops_only_the_ids_named() {
        let mut r = EvacuationRecord { containers: vec![e("a", "1", "x", 1), e("b", "2", "x", 2)] };
        assert!(!r.forget(&["9".into()]));
        assert!(r.forget(&["1".into(), "9".into()]));
        assert_eq!(r.containers, vec![e("b", "2", "x", 2)]);
        assert!(r.forget(&["2".into()]));
        assert_eq!(r, EvacuationRecord::default());
        assert_eq!(r.since_unix(), None);
    }
}
