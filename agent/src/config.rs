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
//! [facts_override]                 # tests and labs only: pretend facts differ
//! criu_version = "3.0.0"
//! [faults]                         # tests only: inject failures
//! fail_restore = true
//! ```

use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use tern_transport::TlsFiles;

pub use crate::faults::{Faults, SourceExit};

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
    /// Fields of the reported facts replaced by these values (lab and tests:
    /// two namespaces on one machine have identical facts otherwise).
    #[serde(default)]
    pub facts_override: toml::Table,
    /// Tests only (`faults.rs`).
    #[serde(default)]
    pub faults: Faults,
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

fn default_runc() -> String {
    "runc".to_string()
}

fn default_podman() -> String {
    "podman".to_string()
}

impl AgentConfig {
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| anyhow::anyhow!("cannot read the agent config {}: {e}", path.display()))?;
        toml::from_str(&text).map_err(|e| anyhow::anyhow!("the agent config {} is invalid: {e}", path.display()))
    }
}
