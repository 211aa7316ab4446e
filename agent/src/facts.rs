//! Reading this host's facts: Podman, the OCI runtime, CRIU, cgroups, the
//! kernel and CPU, the network backend, soft-dirty support.

use crate::criu::{Criu, FeatureCheck};
use crate::engine::Engine;
use tern_proto::facts::{Capability, CgroupsVersion, HostFacts};

/// Gathers the facts; fields that cannot be read are left empty, which the
/// compatibility rules treat as "missing" and explain.
pub async fn gather(name: &str, engine: &dyn Engine, criu: &dyn Criu, overrides: &toml::Table) -> anyhow::Result<HostFacts> {
    let info = engine.info().await?;
    let s = |field: &Option<String>| field.clone().unwrap_or_default();
    let runtime_version = s(&info.host.oci_runtime.version).lines().next().unwrap_or("").to_string();
    let (criu_version, dirty_tracking, mut lazy_restore) = criu_facts(criu).await;
    let runtime_name = s(&info.host.oci_runtime.name);
    if lazy_restore.supported && runtime_name == "crun" {
        lazy_restore = crun_lazy();
    }
    let facts = HostFacts {
        name: name.to_string(),
        agent_version: env!("CARGO_PKG_VERSION").to_string(),
        podman_version: s(&info.version.version),
        runtime_name,
        runtime_version,
        criu_version,
        cgroups: cgroups_version(),
        kernel: nix::sys::utsname::uname().map(|u| u.release().to_string_lossy().into_owned()).unwrap_or_default(),
        arch: std::env::consts::ARCH.to_string(),
        cpu_flags: cpu_flags(&std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default()),
        network_backend: s(&info.host.network_backend),
        dirty_tracking,
        lazy_restore,
        dump_other_users: cap_sys_resource(&std::fs::read_to_string("/proc/self/status").unwrap_or_default()),
        // Read afresh at every request (server.rs, cordon.rs): these are cached.
        status: Default::default(),
    };
    apply_overrides(facts, overrides)
}

/// Replaces fields named in `overrides` (TOML values) through serde, so
/// any field can be overridden without a list of names to keep in step.
pub fn apply_overrides(facts: HostFacts, overrides: &toml::Table) -> anyhow::Result<HostFacts> {
    if overrides.is_empty() {
        return Ok(facts);
    }
    let mut value = serde_json::to_value(&facts)?;
    let obj = value.as_object_mut().expect("facts serialize to an object");
    for (key, v) in overrides {
        if !obj.contains_key(key) {
            anyhow::bail!("facts_override names an unknown field `{key}`; known fields: {}", obj.keys().cloned().collect::<Vec<_>>().join(", "));
        }
        obj.insert(key.clone(), serde_json::to_value(v)?);
    }
    serde_json::from_value(value).map_err(|e| anyhow::anyhow!("facts_override has a value of the wrong type: {e}"))
}

/// CRIU's version, whether it can track dirty memory, whether it can
/// restore lazily.
async fn criu_facts(criu: &dyn Criu) -> (String, Capability, Capability) {
    let Some(version) = criu.version().await else {
        let missing = || Capability { supported: false, detail: "criu not found on PATH (run scripts/install-deps.sh)".into() };
        return (String::new(), missing(), missing());
    };
    let dirty = feature(criu, "mem_dirty_track", "no soft-dirty memory tracking").await;
    let lazy = feature(criu, "uffd-noncoop", "no lazy restores (userfaultfd)").await;
    (version, dirty, lazy)
}

/// crun (1.21, Podman 5's default) does not hand CRIU the options file a
/// container's `org.criu.config` annotation names, through which tern asks
/// for `lazy-pages`: the restore would run eagerly while tern waited for
/// a lazy-pages daemon CRIU never talks to (seen in the Podman 5 tier).
fn crun_lazy() -> Capability {
    Capability {
        supported: false,
        detail: "no lazy restores with crun: it does not pass the container's CRIU options file (org.criu.config) to CRIU".into(),
    }
}

/// Whether this process holds CAP_SYS_RESOURCE (bit 24 of `CapEff` in
/// `/proc/self/status`), which CRIU needs to read the resource limits of
/// another user's processes.
pub fn cap_sys_resource(status: &str) -> Capability {
    let eff = status.lines().find_map(|l| l.strip_prefix("CapEff:")).and_then(|h| u64::from_str_radix(h.trim(), 16).ok());
    match eff {
        Some(bits) if bits & (1 << 24) != 0 => Capability { supported: true, detail: "the agent holds CAP_SYS_RESOURCE".into() },
        Some(_) => Capability {
            supported: false,
            detail: "the agent runs without CAP_SYS_RESOURCE (this host drops it even for root), so CRIU cannot read the \
                     resource limits of another user's processes"
                .into(),
        },
        None => Capability { supported: false, detail: "cannot read the agent's capabilities from /proc/self/status".into() },
    }
}

/// `criu check --feature NAME`, with what it said.
async fn feature(criu: &dyn Criu, name: &str, missing: &str) -> Capability {
    match criu.check_feature(name).await {
        FeatureCheck::Supported => Capability { supported: true, detail: format!("criu check --feature {name}: supported") },
        FeatureCheck::Unsupported(said) => Capability { supported: false, detail: format!("{missing}: criu check says \"{said}\"") },
        FeatureCheck::NotRun => Capability { supported: false, detail: "criu check could not run".into() },
    }
}

pub fn cpu_flags(cpuinfo: &str) -> Vec<String> {
    let mut flags: Vec<String> = cpuinfo
        .lines()
        .find(|l| l.starts_with("flags"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, f)| f.split_whitespace().map(str::to_string).collect())
        .unwrap_or_default();
    flags.sort();
    flags.dedup();
    flags
}

fn is_cgroup2(path: &str) -> bool {
    nix::sys::statfs::statfs(path).map(|s| s.filesystem_type() == nix::sys::statfs::CGROUP2_SUPER_MAGIC).unwrap_or(false)
}

fn cgroups_version() -> CgroupsVersion {
    if is_cgroup2("/sys/fs/cgroup") {
        CgroupsVersion::V2
    } else if is_cgroup2("/sys/fs/cgroup/unified") {
        CgroupsVersion::Hybrid
    } else {
        CgroupsVersion::V1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> HostFacts {
        HostFacts {
            name: "h".into(),
            agent_version: "0".into(),
            podman_version: "4.3.1".into(),
            runtime_name: "runc".into(),
            runtime_version: "runc version 1.1.5".into(),
            criu_version: "4.2".into(),
            cgroups: CgroupsVersion::Hybrid,
            kernel: "6.18".into(),
            arch: "x86_64".into(),
            cpu_flags: vec![],
            network_backend: "netavark".into(),
            dirty_tracking: Capability { supported: false, detail: String::new() },
            lazy_restore: Capability { supported: false, detail: String::new() },
            dump_other_users: Capability { supported: true, detail: String::new() },
            status: Default::default(),
        }
    }

    #[test]
    fn overrides_replace_named_fields() {
        let t: toml::Table = toml::from_str("criu_version = \"3.0.0\"\ncpu_flags = [\"fpu\"]").unwrap();
        let f = apply_overrides(sample(), &t).unwrap();
        assert_eq!(f.criu_version, "3.0.0");
        assert_eq!(f.cpu_flags, vec!["fpu".to_string()]);
        assert_eq!(f.podman_version, "4.3.1");
    }

    #[test]
    fn a_status_override_leaves_out_what_it_does_not_name() {
        let mut f = sample();
        f.status.bandwidth_cap = 7;
        let t: toml::Table = toml::from_str("status = { memory_available_bytes = 0, disk_available_bytes = 5 }").unwrap();
        let f = apply_overrides(f, &t).unwrap();
        // The table replaces the status: no cordon, no cap, as TOML cannot say "none".
        assert_eq!((f.status.memory_available_bytes, f.status.disk_available_bytes, f.status.bandwidth_cap), (0, 5, 0));
        assert!(f.status.cordon.is_none());
    }

    #[test]
    fn overrides_reject_unknown_fields_and_wrong_types() {
        let t: toml::Table = toml::from_str("criu = \"3\"").unwrap();
        assert!(apply_overrides(sample(), &t).unwrap_err().to_string().contains("unknown field `criu`"));
        let t: toml::Table = toml::from_str("cpu_flags = 3").unwrap();
        assert!(apply_overrides(sample(), &t).is_err());
    }

    #[test]
    fn reads_cap_sys_resource() {
        assert!(cap_sys_resource("Name:\ttern\nCapEff:\t000001ffffffffff\n").supported);
        // This development VM's root: everything but CAP_SYS_RESOURCE (and a few more).
        assert!(!cap_sys_resource("CapEff:\t00000000a80425fb\n").supported);
        assert!(!cap_sys_resource("").supported);
    }

    #[test]
    fn parses_criu_and_cpuinfo() {
        use crate::criu::{last_message, parse_version};
        assert_eq!(parse_version("Version: 4.2\nGitID: v4.2\n"), "4.2");
        assert_eq!(parse_version("nonsense"), "");
        assert_eq!(
            last_message("Warn  (criu/cr-check.c:824): Dirty tracking is OFF. Memory snapshot will not work.\n"),
            "Dirty tracking is OFF. Memory snapshot will not work."
        );
        let flags = cpu_flags("processor\t: 0\nflags\t\t: sse2 fpu avx2 fpu\nbugs\t: x\n");
        assert_eq!(flags, vec!["avx2", "fpu", "sse2"]);
    }
}
