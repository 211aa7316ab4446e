//! Checkpoints a user keeps: taken from a running container, stored by the
//! agent of a host of the user's choice, listed, shipped between stores and
//! restored on any compatible host, as the container it was or as replicas
//! under new names.
//!
//! ```text
//!  tern checkpoint create C --store S     tern restore CP --on T --name a --name b
//!    coordinator ─Create──▶ C's host          coordinator ─Send{to T}──▶ S ─CheckpointPut──▶ T (store)
//!    C's host ─CheckpointPut──▶ S (store)     coordinator ─Restore{digest}──▶ T: verify, admit, restore ×2
//! ```
//!
//! Moving bytes and running them are separate orders. Any agent may put a
//! checkpoint into another's store (bounded by that store's room, checked
//! against its digest; the container's image comes along where the store
//! lacks it, so a store can always restore what it holds, even once the
//! host it was taken on is gone), but only the coordinator's order, sent to the host
//! itself, restores one, and that order carries the digest the coordinator
//! read where the checkpoint was taken: a store that was handed other bytes
//! under the same name refuses them before Podman sees them.
//!
//! The wire types and the rules that need no IO live here; the store is
//! `agent/src/checkpoints.rs`, the commands `coordinator/src/checkpoint.rs`.

use crate::facts::{ContainerInfo, HostFacts};
use crate::peer::Peer;
use serde::{Deserialize, Serialize};

/// The longest checkpoint name: it names a folder in the store.
pub const MAX_NAME_LEN: usize = 64;
/// The most containers one restore makes.
pub const MAX_REPLICAS: usize = 32;
/// The largest checkpoint a store takes from a peer, whatever its room.
pub const MAX_CHECKPOINT_BYTES: u64 = 1 << 40;
/// The largest image archive a store takes with a checkpoint.
pub const MAX_IMAGE_BYTES: u64 = 64 << 30;

/// A checkpoint as its store keeps it: what was checkpointed, where and
/// when, what restoring it needs, and the blake3 digest of its archive.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredCheckpoint {
    /// Unique in its store ([`check_name`]).
    pub name: String,
    /// The container as it was inspected right before the dump.
    pub container: ContainerInfo,
    /// The host it was taken on.
    pub taken_on: String,
    /// That host's facts then: a restore is checked against them as a
    /// migration from it would be.
    pub facts: HostFacts,
    /// Seconds since the epoch.
    pub created_unix: u64,
    /// The archive's size.
    pub bytes: u64,
    /// blake3 of the archive.
    pub digest: [u8; 32],
    /// What the archive holds, read from it by the store.
    pub content: Content,
    /// Established TCP connections were dumped (CRIU TCP repair): restoring
    /// the container as it was keeps them; replicas close them.
    pub tcp_established: bool,
    /// File locks were dumped (`--file-locks`).
    pub file_locks: bool,
    /// The container kept running after the dump (else it was stopped).
    pub left_running: bool,
    /// Taken by a standby schedule that keeps this many of the container's
    /// latest: the store drops the older ones of the series as each new one
    /// arrives ([`beyond_keep`]).
    pub standby_keep: Option<u32>,
}

/// `Request::CheckpointPut`'s body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PutCheckpoint {
    pub checkpoint: StoredCheckpoint,
    /// A checkpoint the sender believes the store holds: if it does (same
    /// name and digest), the archive comes as delta records against its
    /// pages, and only what changed crosses.
    pub base: Option<BaseRef>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BaseRef {
    pub name: String,
    pub digest: [u8; 32],
}

/// A container's standby: checkpoints taken on a schedule by the agent of
/// the container's host and kept by another host's store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StandbySpec {
    pub container: String,
    /// The store that keeps them.
    pub store: Peer,
    pub every_secs: u64,
    /// How many of the latest the store keeps.
    pub keep: u32,
}

/// What the coordinator asks of a host's standby schedules.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum StandbyOrder {
    Invalid,
    /// Start (or change) the schedule of a container of this host; its
    /// first checkpoint is taken at once.
    Set(StandbySpec),
    /// End a container's schedule (its checkpoints stay in the store).
    Stop {
        container: String,
    },
    /// Every schedule of this host.
    List,
}

/// How one standby schedule stands, on the container's host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StandbyStatus {
    pub spec: StandbySpec,
    /// The last checkpoint that reached the store.
    pub last: Option<StandbyRun>,
    /// The last failure, if the last attempt failed: when, and why.
    pub failing: Option<(u64, String)>,
    /// Seconds until the next checkpoint.
    pub next_in_secs: u64,
}

/// One checkpoint of a standby schedule, stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StandbyRun {
    pub name: String,
    pub at_unix: u64,
    /// The archive's size.
    pub bytes: u64,
    /// Bytes on the wire for it: less than `bytes` where the store held
    /// the previous one, and only what changed since crossed.
    pub wire_bytes: u64,
    /// Pages of the previous checkpoint the store reused.
    pub pages_reused: u64,
    /// From the dump until the store had it.
    pub ms: u64,
}

/// The shortest standby interval.
pub const MIN_STANDBY_SECS: u64 = 10;
/// The most checkpoints a standby keeps.
pub const MAX_STANDBY_KEEP: u32 = 100;

/// Why a standby schedule cannot be set.
pub fn check_standby(spec: &StandbySpec) -> Result<(), String> {
    if spec.every_secs < MIN_STANDBY_SECS {
        return Err(format!("a standby checkpoints at most every {MIN_STANDBY_SECS} s, not every {} s", spec.every_secs));
    }
    if spec.keep == 0 || spec.keep > MAX_STANDBY_KEEP {
        return Err(format!("a standby keeps 1 to {MAX_STANDBY_KEEP} checkpoints, not {}", spec.keep));
    }
    Ok(())
}

/// What a checkpoint holds, counted from CRIU's images in its archive.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Content {
    /// Processes in the dumped tree (`pstree.img`).
    pub processes: u32,
    /// Their threads.
    pub threads: u32,
    /// Bytes of memory pages dumped (`pages-*.img`).
    pub memory_bytes: u64,
    /// Established TCP connections dumped (`tcp-stream-*.img`).
    pub tcp_connections: u32,
    /// Bytes of the container's files: root file system changes and
    /// volumes (`rootfs-diff.tar`, `volumes/`).
    pub files_bytes: u64,
    /// Bytes of CRIU's images in all.
    pub images_bytes: u64,
}

/// What the coordinator asks of an agent's checkpoints.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum CheckpointRequest {
    Invalid,
    /// Checkpoint a container of this host into this host's store.
    Create(CreateCheckpoint),
    /// Every checkpoint in this host's store.
    List,
    /// Remove a checkpoint from this host's store.
    Remove {
        name: String,
    },
    /// Put a checkpoint of this host's store into another host's store
    /// (`CheckpointPut` to it); this store keeps its own.
    Send {
        name: String,
        to: Peer,
    },
    /// Restore a checkpoint of this host's store here.
    Restore(RestoreCheckpoint),
    /// This host's standby schedules: answer with [`crate::Response::Standby`].
    Standby(StandbyOrder),
    /// Make a stored checkpoint an OCI image named `image` in this host's
    /// Podman (Podman's checkpoint image: `podman push` sends it to a
    /// registry, `podman container restore IMAGE` restores it).
    Image {
        name: String,
        image: String,
    },
    /// Could this store take a checkpoint of about `bytes`? Asked before a
    /// dump whose checkpoint goes elsewhere: an empty list if so, else an
    /// error that says how much room it has.
    Room {
        bytes: u64,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreateCheckpoint {
    pub container: String,
    /// `None`: [`default_name`].
    pub name: Option<String>,
    /// The container goes on running after the dump (paused only while
    /// CRIU dumps); else it is stopped, as `podman container checkpoint`.
    pub leave_running: bool,
    pub tcp_established: bool,
    pub file_locks: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestoreCheckpoint {
    pub name: String,
    /// The digest the coordinator read where the checkpoint was taken: the
    /// store restores nothing else.
    pub digest: [u8; 32],
    /// New names, one container each (replicas: new IDs and addresses,
    /// their TCP connections closed). Empty: the container as it was,
    /// under its own name, ID and address.
    pub as_names: Vec<String>,
    /// A stopped container of the same name here is removed first (the
    /// checkpoint supersedes it); a running one is never touched.
    pub replace: bool,
}

/// A container a restore made.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestoredContainer {
    pub name: String,
    pub id: String,
    pub ips: Vec<std::net::IpAddr>,
    /// Milliseconds Podman took to restore it.
    pub ms: u64,
}

/// Why a name cannot name a checkpoint.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("a checkpoint name cannot be empty")]
    Empty,
    #[error("checkpoint name {0:?} is longer than {MAX_NAME_LEN} bytes")]
    TooLong(String),
    #[error("checkpoint name {0:?} must start with a letter or digit and hold only letters, digits, '_', '.' and '-'")]
    Characters(String),
}

/// A checkpoint's name names a folder of its store: letters, digits, `_`,
/// `.`, `-`, starting with a letter or digit, at most [`MAX_NAME_LEN`].
pub fn check_name(name: &str) -> Result<(), NameError> {
    let first_ok = name.chars().next().ok_or(NameError::Empty)?.is_ascii_alphanumeric();
    if name.len() > MAX_NAME_LEN {
        return Err(NameError::TooLong(name.to_string()));
    }
    if !first_ok || !name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')) {
        return Err(NameError::Characters(name.to_string()));
    }
    Ok(())
}

/// `<container>-<YYYYMMDD>-<HHMMSS>` (UTC), the container's name cut to fit
/// and stripped of what a name may not hold.
pub fn default_name(container: &str, unix: u64) -> String {
    let stamp = utc_stamp(unix);
    let room = MAX_NAME_LEN - stamp.len() - 1;
    let base: String = container.chars().filter(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')).take(room).collect();
    let base = base.trim_start_matches(|c: char| !c.is_ascii_alphanumeric());
    if base.is_empty() {
        format!("checkpoint-{stamp}")
    } else {
        format!("{base}-{stamp}")
    }
}

/// `YYYYMMDD-HHMMSS` of a Unix time, UTC.
fn utc_stamp(unix: u64) -> String {
    let [y, m, d, h, mi, s] = crate::facts::utc_parts(unix);
    format!("{y:04}{m:02}{d:02}-{h:02}{mi:02}{s:02}")
}

/// Why the names asked of a restore cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReplicaError {
    #[error("at most {MAX_REPLICAS} containers per restore, not {0}")]
    TooMany(usize),
    #[error("{0:?} is asked for twice")]
    Twice(String),
    #[error("{0:?} is not a container name Podman takes (letters, digits, '_', '.', '-'; a letter or digit first)")]
    BadName(String),
    #[error(
        "{container} publishes host ports ({ports}): replicas on one host would ask for the same ports; restore one at a time, or as the container itself"
    )]
    Ports { container: String, ports: String },
}

/// The names a restore will make containers under (`as_names`): each a
/// name Podman accepts, none twice, and no two replicas of a container
/// that publishes host ports (they would clash on the host).
pub fn check_replicas(c: &ContainerInfo, as_names: &[String]) -> Result<(), ReplicaError> {
    if as_names.len() > MAX_REPLICAS {
        return Err(ReplicaError::TooMany(as_names.len()));
    }
    for (i, n) in as_names.iter().enumerate() {
        let ok = n.len() <= 253
            && n.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
            && n.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
        if !ok {
            return Err(ReplicaError::BadName(n.clone()));
        }
        if as_names[..i].contains(n) {
            return Err(ReplicaError::Twice(n.clone()));
        }
    }
    if as_names.len() > 1 && !c.ports.is_empty() {
        let ports: Vec<String> = c.ports.iter().map(|p| p.host_port.to_string()).collect();
        return Err(ReplicaError::Ports { container: c.name.clone(), ports: ports.join(", ") });
    }
    Ok(())
}

/// The container a restore under `as_name` would make, as the target's
/// incoming checks should see it: the new name, and no address (Podman
/// gives a replica a new one); `None` is the container as it was.
pub fn as_restored(c: &ContainerInfo, as_name: Option<&str>) -> ContainerInfo {
    let mut c = c.clone();
    if let Some(n) = as_name {
        c.name = n.to_string();
        c.ips.clear();
        c.connections.clear();
        for a in &mut c.networks {
            a.ips.clear();
            a.mac.clear();
        }
    }
    c
}

/// The checkpoints of a store to drop so that `keep` remain: the oldest
/// first, by creation time (names break ties), among those `of` selects.
pub fn beyond_keep(all: &[StoredCheckpoint], keep: usize, of: impl Fn(&StoredCheckpoint) -> bool) -> Vec<&StoredCheckpoint> {
    let mut mine: Vec<&StoredCheckpoint> = all.iter().filter(|c| of(c)).collect();
    mine.sort_by(|a, b| (a.created_unix, &a.name).cmp(&(b.created_unix, &b.name)));
    let extra = mine.len().saturating_sub(keep);
    mine.truncate(extra);
    mine
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::facts::PublishedPort;

    fn container(name: &str) -> ContainerInfo {
        crate::compat::tests::ctr(name, "192.0.2.5", "running")
    }

    #[test]
    fn names_are_folder_safe() {
        assert!(check_name("demo1-20261130-120000").is_ok());
        assert!(check_name("a.b_c-1").is_ok());
        assert_eq!(check_name(""), Err(NameError::Empty));
        for bad in ["../x", "/etc", ".hidden", "-x", "a/b", "a b", "é"] {
            assert!(matches!(check_name(bad), Err(NameError::Characters(_))), "{bad}");
        }
        assert!(matches!(check_name(&"x".repeat(65)), Err(NameError::TooLong(_))));
        assert!(check_name(&"x".repeat(64)).is_ok());
    }

    #[test]
    fn default_names_carry_the_utc_time_and_fit() {
        assert_eq!(default_name("demo1", 0), "demo1-19700101-000000");
        // 2026-11-30 12:34:56 UTC.
        assert_eq!(default_name("demo1", 1_796_042_096), "demo1-20261130-123456");
        // 2024-02-29 (a leap day) 23:59:59.
        assert_eq!(default_name("c", 1_709_251_199), "c-20240229-235959");
        let long = default_name(&"y".repeat(300), 0);
        assert!(check_name(&long).is_ok(), "{long}");
        assert_eq!(default_name("_-", 0), "checkpoint-19700101-000000");
        assert!(check_name(&default_name("a/b:c", 0)).is_ok());
    }

    #[test]
    fn replicas_need_distinct_podman_names_and_no_shared_ports() {
        let c = container("demo1");
        assert!(check_replicas(&c, &[]).is_ok());
        assert!(check_replicas(&c, &["r1".into(), "r2".into()]).is_ok());
        assert_eq!(check_replicas(&c, &["r1".into(), "r1".into()]), Err(ReplicaError::Twice("r1".into())));
        assert!(matches!(check_replicas(&c, &["bad/name".into()]), Err(ReplicaError::BadName(_))));
        let many: Vec<String> = (0..=MAX_REPLICAS).map(|i| format!("r{i}")).collect();
        assert!(matches!(check_replicas(&c, &many), Err(ReplicaError::TooMany(_))));
        let mut p = c.clone();
        p.ports.push(PublishedPort { host_ip: String::new(), host_port: 8080, container_port: 80, protocol: "tcp".into() });
        assert!(check_replicas(&p, &["one".into()]).is_ok());
        assert!(matches!(check_replicas(&p, &["r1".into(), "r2".into()]), Err(ReplicaError::Ports { .. })));
    }

    #[test]
    fn a_replica_is_checked_under_its_new_name_without_the_old_address() {
        let c = container("demo1");
        assert_eq!(as_restored(&c, None), c);
        let r = as_restored(&c, Some("r1"));
        assert_eq!(r.name, "r1");
        assert!(r.ips.is_empty());
        assert_eq!(r.id, c.id);
    }

    #[test]
    fn standby_intervals_and_counts_are_bounded() {
        let p = Peer { name: "b".into(), address: "192.0.2.1:7000".into() };
        let spec = |every_secs, keep| StandbySpec { container: "c".into(), store: p.clone(), every_secs, keep };
        assert!(check_standby(&spec(10, 1)).is_ok());
        assert!(check_standby(&spec(3600, MAX_STANDBY_KEEP)).is_ok());
        assert!(check_standby(&spec(9, 3)).unwrap_err().contains("every 9 s"));
        assert!(check_standby(&spec(60, 0)).is_err());
        assert!(check_standby(&spec(60, MAX_STANDBY_KEEP + 1)).is_err());
    }

    #[test]
    fn keeping_n_drops_the_oldest_of_the_selection_only() {
        let facts = crate::compat::tests::facts();
        let cp = |name: &str, t: u64, c: &str| StoredCheckpoint {
            name: name.into(),
            container: container(c),
            taken_on: "h".into(),
            facts: facts.clone(),
            created_unix: t,
            bytes: 1,
            digest: [0; 32],
            content: Content::default(),
            tcp_established: false,
            file_locks: false,
            left_running: true,
            standby_keep: None,
        };
        let all = vec![cp("a3", 30, "a"), cp("a1", 10, "a"), cp("b1", 5, "b"), cp("a2", 20, "a")];
        let of_a = |c: &StoredCheckpoint| c.container.name == "a";
        let names = |v: Vec<&StoredCheckpoint>| v.into_iter().map(|c| c.name.clone()).collect::<Vec<_>>();
        assert_eq!(names(beyond_keep(&all, 2, of_a)), ["a1"]);
        assert_eq!(names(beyond_keep(&all, 1, of_a)), ["a1", "a2"]);
        assert!(beyond_keep(&all, 5, of_a).is_empty());
        assert_eq!(names(beyond_keep(&all, 0, |_| true)).len(), 4);
    }
}
