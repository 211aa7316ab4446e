//! The facts a host reports about itself, and what a container looks like
//! from the outside, its network identity included. The agent gathers them;
//! the compatibility rules ([`crate::compat`], [`crate::network`]) compare
//! them.

use serde::{Deserialize, Serialize};
use std::net::{IpAddr, SocketAddr};

/// How a host mounts cgroups. What moves between different layouts is
/// [`crate::compat::versions::CGROUP_MOVES`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum CgroupsVersion {
    Invalid,
    /// Only the v1 hierarchies.
    V1,
    /// v1 controllers plus the unified hierarchy at `/sys/fs/cgroup/unified`.
    Hybrid,
    /// Unified cgroup v2 only.
    V2,
}

impl std::fmt::Display for CgroupsVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            CgroupsVersion::Invalid => "unknown",
            CgroupsVersion::V1 => "v1",
            CgroupsVersion::Hybrid => "hybrid (v1 + unified)",
            CgroupsVersion::V2 => "v2",
        })
    }
}

/// Whether a capability is there, with the evidence either way.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Capability {
    pub supported: bool,
    /// What was checked and what it said, for the user.
    pub detail: String,
}

/// Everything a host says about itself in answer to `Facts`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostFacts {
    pub name: String,
    pub agent_version: String,
    pub podman_version: String,
    /// The OCI runtime Podman uses (`runc`, `crun`).
    pub runtime_name: String,
    pub runtime_version: String,
    pub criu_version: String,
    pub cgroups: CgroupsVersion,
    /// `uname -r`.
    pub kernel: String,
    /// `uname -m`.
    pub arch: String,
    /// The `flags` line of `/proc/cpuinfo`, sorted.
    pub cpu_flags: Vec<String>,
    /// Podman's network backend (`netavark`, `cni`).
    pub network_backend: String,
    /// Soft-dirty memory tracking (`criu check --feature mem_dirty_track`):
    /// needed for iterative pre-copy.
    pub dirty_tracking: Capability,
    /// Lazy restores (`criu check --feature uffd-noncoop`): the container
    /// resumes before its memory is copied in, the rest is filled on demand
    /// from this host's own copy.
    pub lazy_restore: Capability,
    /// Whether the agent can checkpoint processes of other users: CRIU
    /// reads every process's resource limits with prlimit(2), which the
    /// kernel allows across users only with CAP_SYS_RESOURCE (a VM or
    /// container host may drop it even for root).
    pub dump_other_users: Capability,
    /// What changes by the minute (cordon, room): read at every `Facts`
    /// request, where the rest may be served from the agent's cache.
    pub status: HostStatus,
}

/// The part of a host's facts read afresh at every `Facts` request. A
/// field missing from a self-describing document (an agent's
/// `facts_override`) takes its default.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct HostStatus {
    /// Set while the host is cordoned: no migration lands on it. Kept by
    /// the host's agent in its state folder, across restarts.
    pub cordon: Option<Cordon>,
    /// Memory the kernel could give new work without swapping
    /// (`MemAvailable`); 0 when unknown.
    pub memory_available_bytes: u64,
    /// Free space in the agent's state folder, where incoming checkpoints
    /// are staged when they do not fit in RAM; 0 when unknown.
    pub disk_available_bytes: u64,
    /// The agent's cap on this host's outgoing migration traffic, in bytes
    /// per second (its `[limits] bandwidth`; 0: none). A request may
    /// lower it, never raise it.
    pub bandwidth_cap: u64,
}

/// Why and since when a host is cordoned (`tern cordon`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cordon {
    pub reason: String,
    /// Seconds since the Unix epoch, by the host's clock.
    pub since_unix: u64,
}

impl Cordon {
    /// "since 2025-03-01 12:00:00 UTC (kernel upgrade)".
    pub fn describe(&self) -> String {
        let mut s = format!("since {}", utc(self.since_unix));
        if !self.reason.is_empty() {
            s.push_str(&format!(" ({})", self.reason));
        }
        s
    }
}

/// `secs` since the Unix epoch as `[year, month, day, hour, minute,
/// second]`, UTC (proleptic Gregorian calendar; Howard Hinnant's
/// days-to-civil).
pub fn utc_parts(secs: u64) -> [i64; 6] {
    let days = (secs / 86_400) as i64;
    let rem = (secs % 86_400) as i64;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    [y, m, d, rem / 3600, rem % 3600 / 60, rem % 60]
}

/// `secs` since the Unix epoch as `YYYY-MM-DD HH:MM:SS UTC`.
pub fn utc(secs: u64) -> String {
    let [y, m, d, h, mi, s] = utc_parts(secs);
    format!("{y:04}-{m:02}-{d:02} {h:02}:{mi:02}:{s:02} UTC")
}

/// A container as the agent sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerInfo {
    pub name: String,
    pub id: String,
    /// The image name the container was created from.
    pub image: String,
    /// The image's full ID: what the target must hold for the restore.
    pub image_id: String,
    /// Podman's state word (`running`, `exited`, ...).
    pub state: String,
    /// Addresses on Podman networks.
    pub ips: Vec<IpAddr>,
    /// Anonymous memory of the container's processes (what a checkpoint
    /// dumps), from its cgroup; 0 when unknown or not running.
    pub memory_bytes: u64,
    /// What Podman's checkpoint carries besides memory: the container's
    /// root file system changes and its named volumes, in bytes of file
    /// data (a lower bound past [`FILES_COUNTED`] entries); 0 when unknown.
    pub files_bytes: u64,
    /// Its named volumes: Podman's export carries their content and the
    /// restore creates them, so none may exist on the target already.
    pub volumes: Vec<Volume>,
    /// Its main process on its host (0 when not running): the way into its
    /// network namespace.
    pub pid: u32,
    /// The Podman networks it is attached to.
    pub networks: Vec<Attachment>,
    /// Host ports published to it.
    pub ports: Vec<PublishedPort>,
    /// Its established TCP connections when it was inspected.
    pub connections: Vec<TcpConnection>,
    /// The users (as this host numbers them) its processes run as, but root.
    pub process_uids: Vec<u32>,
    /// The systemd unit that runs it, from Podman's `PODMAN_SYSTEMD_UNIT`
    /// label (`podman generate systemd --new`, Quadlet).
    pub systemd_unit: Option<String>,
    /// Its pod's ID (`podman run --pod`), if any.
    #[serde(default)]
    pub pod: Option<String>,
    /// The containers it depends on (Podman's `Dependencies`: `--requires`,
    /// another's namespace, its pod's infra container).
    #[serde(default)]
    pub dependencies: Vec<String>,
}

/// One Podman network a container is attached to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attachment {
    /// The network's name (`podman network ls`).
    pub network: String,
    /// Its driver: `bridge`, `macvlan`, `ipvlan`.
    pub driver: String,
    pub ips: Vec<IpAddr>,
    /// The container's MAC on it, as Podman reports it (may be empty).
    pub mac: String,
}

/// A host port published to the container (`podman run -p`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublishedPort {
    /// The host address it is bound to; empty for every address.
    pub host_ip: String,
    pub host_port: u16,
    pub container_port: u16,
    /// `tcp` or `udp`.
    pub protocol: String,
}

/// An established TCP connection of the container, seen from inside it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TcpConnection {
    pub local: SocketAddr,
    pub remote: SocketAddr,
}

/// A named volume of a container.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Volume {
    pub name: String,
    /// Where its data lives on the container's host. Podman 4 restores the
    /// container with the volume bound at this same path, so the target
    /// must keep volumes where the source does.
    pub path: String,
}

/// How many directory entries an agent walks to size a container's files:
/// enough for any container worth weighing, bounded for one with millions.
pub const FILES_COUNTED: usize = 100_000;

impl ContainerInfo {
    pub fn is_running(&self) -> bool {
        self.state == "running"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_dates() {
        assert_eq!(utc(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(utc(951_782_400), "2000-02-29 00:00:00 UTC");
        assert_eq!(utc(1_709_208_000 + 3_661), "2024-02-29 13:01:01 UTC");
        assert_eq!(utc(4_102_444_799), "2099-12-31 23:59:59 UTC");
    }

    #[test]
    fn a_cordon_says_since_when_and_why() {
        let c = Cordon { reason: "kernel upgrade".into(), since_unix: 0 };
        assert_eq!(c.describe(), "since 1970-01-01 00:00:00 UTC (kernel upgrade)");
        assert_eq!(Cordon { reason: String::new(), since_unix: 0 }.describe(), "since 1970-01-01 00:00:00 UTC");
    }
}
