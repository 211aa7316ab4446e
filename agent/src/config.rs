//! The agent's configuration file (TOML).
//!
//! ```toml
//! name = "client1"                 # must match the host's certificate
//! listen = "198.51.100.11:7443"
//! state_dir = "/var/lib/tern/agent" # staging and checkpoint files
//! [tls]
//! ca = "/etc/tern/pki/ca.pem"
//! cert = "/etc/tern/pki/client1.pem"
//! key = "/etc/tern/pki/client1.key"
//! crl = "/etc/tern/pki/crl.pem"     # optional: crl.pem beside `ca` by default
//! [podman]
//! program = "podman"
//! args = []                        # e.g. ["--root", "...", "--runroot", "..."]
//! [runc]                           # pre-copy dumps go through the runtime
//! program = "runc"
//! args = []                        # e.g. ["--root", "/run/runc"]
//! [network]
//! hook = "/usr/local/lib/tern/announce"  # optional: run when a container
//! hook_timeout = 10                # arrives or departs (netid.rs); seconds
//! [admission]                      # what an incoming checkpoint may ask for
//! allow_privileged = false         # (target/admission.rs; every key optional,
//! allow_capabilities = []          #  the defaults refuse anything beyond a
//! allow_bind_sources = []          #  plain Podman container)
//! allow_devices = []
//! allow_hooks = []
//! allow_host_namespaces = []
//! allow_criu_config = false
//! [limits]                         # data streams (transfer/, target/archive.rs)
//! send_stall_secs = 15             # no byte accepted by the peer this long: fail
//! receive_stall_secs = 60          # no byte arrived this long (+1 s per 64 MiB announced)
//! stream_floor_mib = 1024          # a stream may always be this large, plus
//! stream_factor = 2                # this many times the announced memory + files
//! image_max_mib = 65536            # an image archive (its size is not announced)
//! bandwidth = "500Mbit"            # outgoing migration traffic, all moves together
//!                                  # (none by default; requests may only lower it)
//! [self_evacuation]                # off unless on_stop is set (self_evacuation.rs)
//! on_stop = "shutdown"             # evacuate this host when the agent stops with the
//!                                  # system going down ("always": at any stop; "off")
//! inventory = "/etc/tern/evacuate.toml"  # its [tls]: this host's evacuator certificate
//! tern = "/usr/local/bin/tern"
//! limit_secs = 900                 # the longest the stop is held (then: rolled back)
//! parallel = 2                     # moves at once
//! args = ["--bandwidth", "500Mbit", "--skip-blocked"]   # more for `tern evacuate`
//! return_after_start = true        # bring them back after the next start
//! [facts_override]                 # tests and labs only: pretend facts differ
//! criu_version = "3.0.0"
//! [faults]                         # tests only: inject failures
//! fail_restore = true
//! ```

use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use tern_transport::TlsFiles;

pub use crate::faults::{Faults, SourceExit, StallPoint};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    pub name: String,
    pub listen: SocketAddr,
    pub state_dir: PathBuf,
    pub tls: TlsFiles,
    #[serde(default)]
    pub podman: PodmanConfig,
    #[serde(default)]
    pub runc: RuncConfig,
    #[serde(default)]
    pub network: NetworkConfig,
    /// What an incoming checkpoint may ask of this host (target/admission.rs).
    #[serde(default)]
    pub admission: AdmissionConfig,
    /// Deadlines and sizes of data streams.
    #[serde(default)]
    pub limits: LimitsConfig,
    /// Fields of the reported facts replaced by these values (lab and tests:
    /// two namespaces on one machine have identical facts otherwise).
    #[serde(default)]
    pub facts_override: toml::Table,
    /// Evacuating this host when it shuts down (`self_evacuation.rs`).
    #[serde(default)]
    pub self_evacuation: SelfEvacuation,
    /// Tests only (`faults.rs`).
    #[serde(default)]
    pub faults: Faults,
}

/// When a stop of the agent evacuates the host.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WhenStopped {
    #[default]
    Off,
    /// Only when systemd says the system is going down.
    Shutdown,
    /// At any stop (hosts without systemd, tests).
    Always,
}

/// Every field may be left out: [`SelfEvacuation::default`] gives it.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SelfEvacuation {
    pub on_stop: WhenStopped,
    /// An inventory whose `[tls]` holds this host's evacuator certificate.
    pub inventory: PathBuf,
    pub tern: PathBuf,
    pub limit_secs: u64,
    pub parallel: u16,
    pub args: Vec<String>,
    pub return_after_start: bool,
}

impl Default for SelfEvacuation {
    fn default() -> Self {
        SelfEvacuation {
            on_stop: WhenStopped::Off,
            inventory: PathBuf::from("/etc/tern/evacuate.toml"),
            tern: PathBuf::from("/usr/local/bin/tern"),
            limit_secs: 900,
            parallel: 2,
            args: Vec::new(),
            return_after_start: true,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PodmanConfig {
    #[serde(default = "default_podman")]
    pub program: String,
    #[serde(default)]
    pub args: Vec<String>,
}

impl Default for PodmanConfig {
    fn default() -> Self {
        PodmanConfig { program: default_podman(), args: Vec::new() }
    }
}

/// The OCI runtime, driven directly for pre-copy dumps. Podman runs runc
/// with its default state root (`/run/runc`), so no flags are needed there.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuncConfig {
    #[serde(default = "default_runc")]
    pub program: String,
    #[serde(default)]
    pub args: Vec<String>,
}

impl Default for RuncConfig {
    fn default() -> Self {
        RuncConfig { program: default_runc(), args: Vec::new() }
    }
}

/// What the agent does about a container's address beyond announcing it
/// on the segment itself (netid.rs).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkConfig {
    /// A program run when a container arrives here (`TERN_EVENT=arrived`:
    /// the target after a restore, the source after a rollback) or leaves
    /// (`departed`), with the container's name, addresses, MACs and
    /// networks in its environment (README, "Networks"). On arrival at a
    /// target its failure rolls the migration back.
    #[serde(default)]
    pub hook: Option<PathBuf>,
    /// Seconds the hook may run before it is killed (and counts as failed).
    #[serde(default)]
    pub hook_timeout: Option<u64>,
}

impl NetworkConfig {
    pub fn hook_timeout(&self) -> std::time::Duration {
        std::time::Duration::from_secs(self.hook_timeout.unwrap_or(10))
    }
}

/// What an incoming checkpoint may ask of this host beyond a plain Podman
/// container (`target/admission.rs`). Every default refuses.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdmissionConfig {
    /// Containers created with `--privileged`.
    #[serde(default)]
    pub allow_privileged: bool,
    /// Capabilities beyond Podman's default set, e.g. `["NET_ADMIN"]`
    /// (with or without `CAP_`).
    #[serde(default)]
    pub allow_capabilities: Vec<String>,
    /// Host folders (and what is under them) a bind mount may come from,
    /// besides the container's own folders and named volumes.
    #[serde(default)]
    pub allow_bind_sources: Vec<PathBuf>,
    /// Device nodes beyond the standard ones (`/dev/null`, ...), e.g. `["/dev/fuse"]`.
    #[serde(default)]
    pub allow_devices: Vec<String>,
    /// OCI hook programs that may run (their `path`).
    #[serde(default)]
    pub allow_hooks: Vec<PathBuf>,
    /// Namespaces that may be the host's or another's (`network`, `pid`,
    /// `ipc`, `uts`, `mount`, `user`, `cgroup`).
    #[serde(default)]
    pub allow_host_namespaces: Vec<String>,
    /// An `org.criu.config` annotation naming a CRIU options file of the
    /// container's own (tern's own is always allowed).
    #[serde(default)]
    pub allow_criu_config: bool,
}

/// Deadlines and size limits of data streams.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsConfig {
    /// A sender fails once the peer has taken no byte for this long
    /// (seconds, default 15, scaled by `TERN_TIMEOUT_SCALE`): the source
    /// is frozen meanwhile.
    #[serde(default)]
    pub send_stall_secs: Option<u64>,
    /// A receiver fails once no byte arrived for this long (seconds,
    /// default 60, plus a second for each 64 MiB of announced memory: the
    /// source's dump may take that long before its first byte).
    #[serde(default)]
    pub receive_stall_secs: Option<u64>,
    /// Every data stream may hold this much (MiB, default 1024) ...
    #[serde(default)]
    pub stream_floor_mib: Option<u64>,
    /// ... plus this many times the announced memory and files (default 2).
    #[serde(default)]
    pub stream_factor: Option<u64>,
    /// The largest image archive received (MiB, default 65536).
    #[serde(default)]
    pub image_max_mib: Option<u64>,
    /// A cap on this host's outgoing migration traffic, every move under
    /// way together, in bytes per second (0, the default: none). Written
    /// as a rate (`"500Mbit"`, `"50MB"`: [`tern_proto::bandwidth::parse_rate`]).
    /// A migration's request may lower it, never raise it.
    #[serde(default, deserialize_with = "rate")]
    pub bandwidth: u64,
    /// A post-copy source whose link to the target is lost tries it again
    /// every second for this long (seconds, default 600, scaled by
    /// `TERN_TIMEOUT_SCALE`), then reports the fill stalled and leaves the
    /// choice to the operator (`tern post-copy`), trying less often.
    #[serde(default)]
    pub post_copy_wait_secs: Option<u64>,
}

/// A rate as [`tern_proto::bandwidth::parse_rate`] reads it.
fn rate<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    let text = String::deserialize(d)?;
    tern_proto::bandwidth::parse_rate(&text).map_err(serde::de::Error::custom)
}

impl LimitsConfig {
    pub fn post_copy_wait(&self) -> std::time::Duration {
        let d = self.post_copy_wait_secs.map_or(tern_proto::postcopy::STALL_AFTER, std::time::Duration::from_secs);
        tern_transport::timeouts::scaled(d)
    }

    pub fn send_stall(&self) -> std::time::Duration {
        tern_transport::timeouts::scaled(std::time::Duration::from_secs(self.send_stall_secs.unwrap_or(15)))
    }

    /// The receive deadline for a container of `memory_bytes`.
    pub fn receive_stall(&self, memory_bytes: u64) -> std::time::Duration {
        let base = self.receive_stall_secs.unwrap_or(60).saturating_add(memory_bytes / (64 << 20));
        tern_transport::timeouts::scaled(std::time::Duration::from_secs(base))
    }

    /// The most bytes one data stream may carry for a container that
    /// announced `memory_bytes` and `files_bytes`: the floor covers CRIU's
    /// metadata and small containers, the factor memory that grew between
    /// the survey and the freeze and files beyond the ones counted.
    pub fn stream_max(&self, memory_bytes: u64, files_bytes: u64) -> u64 {
        let floor = self.stream_floor_mib.unwrap_or(1024).saturating_mul(1 << 20);
        floor.saturating_add(memory_bytes.saturating_add(files_bytes).saturating_mul(self.stream_factor.unwrap_or(2)))
    }

    pub fn image_max(&self) -> u64 {
        self.image_max_mib.unwrap_or(65536).saturating_mul(1 << 20)
    }
}

fn default_runc() -> String {
    "runc".to_string()
}

fn default_podman() -> String {
    "podman".to_string()
}

impl AgentConfig {
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| anyhow::anyhow!("cannot read the agent config {}: {e}", path.display()))?;
        let cfg: AgentConfig = toml::from_str(&text).map_err(|e| anyhow::anyhow!("the agent config {} is invalid: {e}", path.display()))?;
        // Senders run where no config reaches them (transfer/): the
        // deadline is the process's.
        crate::transfer::set_send_stall(cfg.limits.send_stall());
        Ok(cfg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admission_and_limits_default_to_refusing_and_bounded() {
        let c: AgentConfig =
            toml::from_str("name = \"b\"\nlisten = \"127.0.0.1:1\"\nstate_dir = \"/x\"\n[tls]\nca = \"a\"\ncert = \"b\"\nkey = \"c\"\n").unwrap();
        assert!(!c.admission.allow_privileged && c.admission.allow_capabilities.is_empty());
        assert_eq!(c.limits.stream_max(0, 0), 1 << 30);
        assert_eq!(c.limits.stream_max(1 << 30, 0), 3 << 30);
        assert_eq!(c.limits.stream_max(u64::MAX, 1), u64::MAX, "no overflow");
        let a: AdmissionConfig =
            toml::from_str("allow_privileged = true\nallow_capabilities = [\"NET_ADMIN\"]\nallow_bind_sources = [\"/srv/data\"]").unwrap();
        assert!(a.allow_privileged);
        assert!(toml::from_str::<AdmissionConfig>("allow_everything = true").is_err(), "a misspelt key is refused");
    }

    #[test]
    fn the_bandwidth_cap_is_a_rate_read_strictly() {
        assert_eq!(toml::from_str::<LimitsConfig>("").unwrap().bandwidth, 0, "none by default");
        assert_eq!(toml::from_str::<LimitsConfig>("bandwidth = \"500Mbit\"").unwrap().bandwidth, 62_500_000);
        assert_eq!(toml::from_str::<LimitsConfig>("bandwidth = \"50MiB/s\"").unwrap().bandwidth, 50 << 20);
        assert_eq!(toml::from_str::<LimitsConfig>("bandwidth = \"0\"").unwrap().bandwidth, 0);
        let e = toml::from_str::<LimitsConfig>("bandwidth = \"500Mbps\"").unwrap_err().to_string();
        assert!(e.contains("Mbit") && e.contains("Mbps"), "{e}");
        assert!(toml::from_str::<LimitsConfig>("bandwidth = 500").is_err(), "a bare number has no unit");
    }
}
