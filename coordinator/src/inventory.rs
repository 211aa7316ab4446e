//! The hosts inventory: which agents exist, where, and the coordinator's
//! own certificate.
//!
//! ```toml
//! [tls]
//! ca = "/etc/tern/pki/ca.pem"
//! cert = "/etc/tern/pki/coordinator.pem"
//! key = "/etc/tern/pki/coordinator.key"   # also signs migration tickets
//! crl = "/etc/tern/pki/crl.pem"           # optional: crl.pem beside `ca` by default
//! [[hosts]]
//! name = "client1"            # as in the host's certificate
//! address = "198.51.100.11:7443"
//! [migrate]                   # optional defaults for migrate and evacuate
//! allow_reset = false         # true: move containers whose connections
//!                             # cannot survive, with a warning, as --allow-reset
//! post_copy = false           # true: `--mode auto` may pick post-copy where
//!                             # both hosts can run it
//! ```
//!
//! Found at `--inventory`, else `$TERN_INVENTORY`, else `./.tern/inventory.toml`
//! (what `scripts/lab.sh up` writes), else `~/.config/tern/inventory.toml`,
//! else `/etc/tern/inventory.toml`.

use anyhow::{bail, Context};
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use tern_transport::TlsFiles;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Inventory {
    pub tls: TlsFiles,
    #[serde(default)]
    pub hosts: Vec<HostEntry>,
    #[serde(default)]
    pub migrate: MigrateDefaults,
    #[serde(skip)]
    pub path: PathBuf,
    /// Who `[tls] cert` names (read once, at load): the coordinator, or a
    /// host's evacuator certificate. `None` when it cannot be read (the
    /// TLS setup then says why).
    #[serde(skip)]
    pub me: Option<tern_transport::PeerId>,
}

/// Defaults for `tern migrate` and `tern evacuate`, set by the operator.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MigrateDefaults {
    /// Move a container even when some of its TCP connections cannot
    /// survive the move (a warning instead of a refusal).
    #[serde(default)]
    pub allow_reset: bool,
    /// Let `auto` pick post-copy: the shortest downtime whatever the
    /// memory, but until the last page crosses the container needs both
    /// hosts and the link. Off by default: that risk is the operator's to
    /// take, for every move (`--mode post-copy` takes it for one).
    #[serde(default)]
    pub post_copy: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostEntry {
    pub name: String,
    pub address: SocketAddr,
}

fn candidates(explicit: Option<&Path>) -> Vec<PathBuf> {
    if let Some(p) = explicit {
        return vec![p.to_path_buf()];
    }
    if let Some(p) = std::env::var_os("TERN_INVENTORY") {
        return vec![PathBuf::from(p)];
    }
    let mut v = vec![PathBuf::from(".tern/inventory.toml")];
    if let Some(home) = std::env::var_os("HOME") {
        v.push(PathBuf::from(home).join(".config/tern/inventory.toml"));
    }
    v.push(PathBuf::from("/etc/tern/inventory.toml"));
    v
}

impl Inventory {
    pub fn load(explicit: Option<&Path>) -> anyhow::Result<Self> {
        let tried = candidates(explicit);
        let Some(path) = tried.iter().find(|p| p.exists()) else {
            bail!(
                "no hosts inventory found (looked at {}); run `scripts/lab.sh up` for the lab, or write one as README.md shows",
                tried.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
            );
        };
        let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let mut inv: Inventory = toml::from_str(&text).with_context(|| format!("the inventory {} is invalid", path.display()))?;
        inv.path = path.clone();
        inv.me = tern_transport::endpoint::identity_of_file(&inv.tls.cert).ok();
        if inv.hosts.is_empty() {
            bail!("the inventory {} lists no hosts", path.display());
        }
        Ok(inv)
    }

    pub fn host(&self, name: &str) -> anyhow::Result<&HostEntry> {
        self.hosts.iter().find(|h| h.name == name).with_context(|| {
            format!(
                "no host named {name} in {} (known: {})",
                self.path.display(),
                self.hosts.iter().map(|h| h.name.as_str()).collect::<Vec<_>>().join(", ")
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_finds_hosts() {
        let inv: Inventory = toml::from_str(
            r#"
            [tls]
            ca = "ca.pem"
            cert = "c.pem"
            key = "c.key"
            [[hosts]]
            name = "client1"
            address = "198.51.100.11:7443"
        "#,
        )
        .unwrap();
        assert_eq!(inv.host("client1").unwrap().address.port(), 7443);
        assert!(!inv.migrate.allow_reset);
        assert!(inv.host("nope").unwrap_err().to_string().contains("known: client1"));
        assert!(!inv.migrate.post_copy);
        let lenient: Inventory = toml::from_str("[tls]\nca='a'\ncert='b'\nkey='c'\n[migrate]\nallow_reset = true\npost_copy = true\n").unwrap();
        assert!(lenient.migrate.allow_reset && lenient.migrate.post_copy);
    }

    #[test]
    fn rejects_typos() {
        let r: Result<Inventory, _> = toml::from_str("[tls]\nca='a'\ncert='b'\nkey='c'\n[[hosts]]\nname='x'\nadress='1.2.3.4:1'\n");
        assert!(r.is_err());
    }
}
