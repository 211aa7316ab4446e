//! Compatibility rules, run before anything is frozen.
//!
//! Each rule compares one field of the source's and the target's facts and
//! says whether a difference blocks the migration or only warns. The rules
//! are pure functions: the coordinator runs [`compare_hosts`] on the facts
//! both agents report and [`process_owners`] on the container, the target
//! agent runs [`check_incoming`] on its own containers, and `tern check`
//! prints them all. The rules between versions ([`versions`]) say what the
//! sources of Podman, runc, crun and CRIU show, with the evidence; an
//! operator may force the refusals that are judgement calls ([`force`],
//! marked "yes" below).
//!
//! | field               | blocks when                                                     | warns when                       | forceable |
//! |---------------------|-----------------------------------------------------------------|----------------------------------|-----------|
//! | arch                | different                                                       |                                  |           |
//! | cgroups             | different layout (v1 → v2 fails; v1 ↔ hybrid, v2 → v1 untested) | v2 → hybrid (tried: works)       | yes       |
//! | oci runtime         | different name (Podman restores with the dumper's)              |                                  | yes       |
//! | oci runtime version |                                                                 | same runtime, other version      |           |
//! | podman              | other major version, but 4 ↔ 5                                  | 4 ↔ 5, other versions of a major | yes       |
//! | criu                | missing on either (not forceable), target older (major.minor)   | other differences                | yes       |
//! | kernel              |                                                                 | different                        |           |
//! | cpu flags           | the target lacks any flag the source has                        |                                  | yes       |
//! | network backend     | different                                                       |                                  | yes       |
//! | dirty tracking      | pre-copy asked and either side lacks it                         |                                  |           |
//! | cordon              | the target is cordoned (`tern cordon`)                          |                                  |           |
//! | name / address      | already used on the target                                      |                                  |           |
//! | volumes             | a volume of that name exists on the target                      |                                  |           |
//! | volume path         | the target keeps volumes under another path                     |                                  |           |
//! | process owners      | not root, and the source lacks CAP_SYS_RESOURCE                 |                                  |           |
//! | image               |                                                                 | missing (it is shipped)          |           |

pub mod force;
pub mod versions;

pub use force::{force, forced, ForceField};

use crate::facts::{ContainerInfo, HostFacts};
use crate::mode::Mode;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Severity {
    Invalid,
    Ok,
    Warn,
    Block,
    /// A refusal an operator lifted (`--force-compat`): shown, not
    /// blocking. Only the coordinator makes it; agents never send it.
    Forced,
}

impl Severity {
    pub fn as_str(&self) -> &'static str {
        match self {
            Severity::Invalid => "invalid",
            Severity::Ok => "ok",
            Severity::Warn => "warn",
            Severity::Block => "BLOCK",
            Severity::Forced => "FORCED",
        }
    }
}

/// One compared field.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Finding {
    pub field: String,
    pub source: String,
    pub target: String,
    pub severity: Severity,
    /// Why it matters and what to do, for anything but `Ok`.
    pub note: String,
}

impl Finding {
    pub(crate) fn new(field: &str, source: impl Into<String>, target: impl Into<String>) -> Self {
        Finding { field: field.to_string(), source: source.into(), target: target.into(), severity: Severity::Ok, note: String::new() }
    }

    pub(crate) fn with(mut self, severity: Severity, note: impl Into<String>) -> Self {
        self.severity = severity;
        self.note = note.into();
        self
    }
}

/// True when any finding blocks.
pub fn blocks(findings: &[Finding]) -> bool {
    findings.iter().any(|f| f.severity == Severity::Block)
}

/// The leading numeric parts of a version string: `"6.18.44-fc"` gives
/// `[6, 18, 44]`, `"runc version 1.1.5"` gives `[1, 1, 5]`.
pub fn version_numbers(s: &str) -> Vec<u64> {
    let start = s.find(|c: char| c.is_ascii_digit()).unwrap_or(s.len());
    s[start..].split(|c: char| !c.is_ascii_digit() && c != '.').next().unwrap_or("").split('.').map_while(|p| p.parse().ok()).collect()
}

fn major_minor(s: &str) -> (u64, u64) {
    let v = version_numbers(s);
    (v.first().copied().unwrap_or(0), v.get(1).copied().unwrap_or(0))
}

/// Compares two hosts' facts for moving a container from `src` to `dst`.
pub fn compare_hosts(src: &HostFacts, dst: &HostFacts, mode: Mode) -> Vec<Finding> {
    let mut out = Vec::new();

    let f = Finding::new("arch", &src.arch, &dst.arch);
    out.push(if src.arch != dst.arch { f.with(Severity::Block, "process images are architecture-specific") } else { f });

    out.push(versions::cgroups(src.cgroups, dst.cgroups));
    out.push(versions::oci_runtime(&src.runtime_name, &dst.runtime_name, &dst.name));
    out.push(versions::oci_runtime_version(&src.runtime_name, &dst.runtime_name, &src.runtime_version, &dst.runtime_version));
    out.push(versions::podman(&src.podman_version, &dst.podman_version));
    out.push(versions::criu(&src.criu_version, &dst.criu_version));

    let f = Finding::new("kernel", &src.kernel, &dst.kernel);
    out.push(if major_minor(&dst.kernel) < major_minor(&src.kernel) {
        f.with(Severity::Warn, "the target's kernel is older; a process using newer kernel features may fail to restore")
    } else if src.kernel != dst.kernel {
        f.with(Severity::Warn, "different kernels")
    } else {
        f
    });

    let missing: Vec<&str> = src.cpu_flags.iter().filter(|flag| !dst.cpu_flags.contains(flag)).map(String::as_str).collect();
    let f = Finding::new("cpu flags", format!("{} flags", src.cpu_flags.len()), format!("{} flags", dst.cpu_flags.len()));
    out.push(if missing.is_empty() {
        f
    } else {
        let shown: Vec<&str> = missing.iter().take(12).copied().collect();
        let more = if missing.len() > shown.len() { format!(" and {} more", missing.len() - shown.len()) } else { String::new() };
        f.with(
            Severity::Block,
            format!(
                "the target lacks {} flag(s) the source has: {}{more}; a process that uses them would crash after restore",
                missing.len(),
                shown.join(" ")
            ),
        )
    });

    let f = Finding::new("network backend", &src.network_backend, &dst.network_backend);
    out.push(if src.network_backend != dst.network_backend {
        f.with(Severity::Block, "the container's network state is restored by the same backend that saved it")
    } else {
        f
    });

    let yes_no = |c: &crate::facts::Capability| if c.supported { "yes" } else { "no" };
    let f = Finding::new("dirty tracking", yes_no(&src.dirty_tracking), yes_no(&dst.dirty_tracking));
    let both = src.dirty_tracking.supported && dst.dirty_tracking.supported;
    out.push(match (mode, both) {
        (Mode::PreCopy, false) => {
            let (host, which) = if !src.dirty_tracking.supported { (&src.name, &src.dirty_tracking) } else { (&dst.name, &dst.dirty_tracking) };
            f.with(
                Severity::Block,
                format!(
                    "pre-copy needs soft-dirty memory tracking on both hosts; {host} has none ({}); use --mode hash-pre-copy (no soft-dirty needed) or stop-and-copy",
                    which.detail
                ),
            )
        }
        (Mode::HashPreCopy, false) => f.with(Severity::Ok, "not needed: content-addressed pre-copy works without it"),
        (_, false) => f.with(Severity::Ok, "soft-dirty pre-copy unavailable (--mode hash-pre-copy works without it)"),
        _ => f,
    });

    if mode == Mode::PostCopy {
        out.push(post_copy(src, dst));
    }
    out.push(cordon_finding(src, dst));
    out
}

/// Post-copy needs runc on the source (its `checkpoint` serves pages to a
/// lazy restore; crun has no such option) and userfaultfd on the target,
/// and it has a price every user must read before the freeze: until the
/// last page crosses, the container needs both hosts and the link.
fn post_copy(src: &HostFacts, dst: &HostFacts) -> Finding {
    let f =
        Finding::new("post-copy", format!("{} runtime", src.runtime_name), if dst.lazy_restore.supported { "userfaultfd" } else { "no userfaultfd" });
    if let Some(why) = post_copy_unavailable(src, dst) {
        return f.with(Severity::Block, format!("{why}; use --mode hash-pre-copy"));
    }
    f.with(
        Severity::Warn,
        format!(
            "the container runs on {} before its memory is there: until the last page crosses, losing {} or the link pauses it (tern waits for the link); losing {} loses the container",
            dst.name, src.name, src.name
        ),
    )
}

/// Why these two hosts cannot run post-copy, if they cannot: `auto`
/// asks before it picks it, the post-copy check before it refuses it.
pub fn post_copy_unavailable(src: &HostFacts, dst: &HostFacts) -> Option<String> {
    if src.runtime_name != "runc" {
        return Some(format!("post-copy needs runc on {} (its checkpoint serves pages to the target; {} cannot)", src.name, src.runtime_name));
    }
    if !dst.lazy_restore.supported {
        return Some(format!("post-copy needs lazy restores on {} ({})", dst.name, dst.lazy_restore.detail));
    }
    None
}

/// No migration lands on a cordoned host (its agent refuses a `Receive`
/// too); leaving one is what a cordon is for.
pub fn cordon_finding(src: &HostFacts, dst: &HostFacts) -> Finding {
    let word = |f: &HostFacts| if f.status.cordon.is_some() { "cordoned" } else { "no" };
    let f = Finding::new("cordon", word(src), word(dst));
    match &dst.status.cordon {
        Some(c) => f.with(
            Severity::Block,
            format!("{host} is cordoned {}: no migration lands there until `tern uncordon {host}`", c.describe(), host = dst.name),
        ),
        None => f,
    }
}

/// Whether the source can dump the container's processes at all: CRIU
/// reads each one's resource limits, which needs CAP_SYS_RESOURCE for a
/// process of another user. `None` when all of them run as root.
pub fn process_owners(c: &ContainerInfo, src: &HostFacts) -> Option<Finding> {
    if c.process_uids.is_empty() {
        return None;
    }
    let uids: Vec<String> = c.process_uids.iter().map(|u| u.to_string()).collect();
    let f = Finding::new("process owners", format!("uid {}", uids.join(",")), "");
    Some(if src.dump_other_users.supported {
        f
    } else {
        f.with(
            Severity::Block,
            format!(
                "{}: CRIU would fail to checkpoint processes of uid {} (\"Can't get rlimit\"); run the agent with \
                 CAP_SYS_RESOURCE, or the container's processes as root",
                src.dump_other_users.detail,
                uids.join(",")
            ),
        )
    })
}

/// A container a systemd unit runs (Podman's `PODMAN_SYSTEMD_UNIT` label)
/// would be started again by its unit once the migration removed it from
/// the source: two copies. Refused, with the fix; `None` when no unit
/// runs it.
pub fn service_manager(c: &ContainerInfo) -> Option<Finding> {
    let unit = c.systemd_unit.as_deref()?;
    Some(Finding::new("service manager", unit, "").with(
        Severity::Block,
        format!(
            "the systemd unit {unit} runs {name} (Podman's PODMAN_SYSTEMD_UNIT label): once tern removed it here, the \
             unit would start it again (its Restart=, or the next boot) and it would run twice. tern live-migrates \
             containers it alone manages: recreate {name} outside the unit, or move it with its unit (stop the unit \
             here, install it on the target and start it there: a restart, not a live move)",
            name = c.name
        ),
    ))
}

/// Podman exports no checkpoint of a container that depends on others but
/// its pod's infra container (`exportCheckpoint` in libpod), and finds out
/// only after CRIU dumped it: refused before anything is frozen, with
/// Podman's reason. One dependency in a pod is taken for the infra
/// container, as Podman's usual case; Podman checks that itself.
pub fn dependencies(c: &ContainerInfo) -> Option<Finding> {
    let in_pod_infra_only = c.pod.is_some() && c.dependencies.len() == 1;
    if c.dependencies.is_empty() || in_pod_infra_only {
        return None;
    }
    let short: Vec<&str> = c.dependencies.iter().map(|d| &d[..d.len().min(12)]).collect();
    Some(Finding::new("dependencies", short.join(","), "").with(
        Severity::Block,
        format!(
            "{} depends on other containers ({}): Podman exports no checkpoint of such a container (\"cannot export \
             checkpoints of containers with dependencies\"), and would say so only after freezing it. Recreate it \
             without --requires or another container's namespaces",
            c.name,
            short.join(", ")
        ),
    ))
}

/// Run by the target agent: can `incoming` land among `existing`?
/// `volumes_here`: the named volumes the target already has; `volume_dir`:
/// where it keeps them (`podman info`'s store.volumePath).
pub fn check_incoming(
    incoming: &ContainerInfo,
    existing: &[ContainerInfo],
    volumes_here: &[String],
    volume_dir: &str,
    has_image: bool,
) -> Vec<Finding> {
    let mut out = Vec::new();

    let f = Finding::new("container name", &incoming.name, "");
    out.push(match existing.iter().find(|c| c.name == incoming.name) {
        Some(c) => Finding {
            target: format!("taken ({}, {})", &c.id[..c.id.len().min(12)], c.state),
            ..f.with(Severity::Block, format!("a container named {} already exists on the target; remove or rename it there", incoming.name))
        },
        None => Finding { target: "free".into(), ..f },
    });

    let ips: Vec<String> = incoming.ips.iter().map(|ip| ip.to_string()).collect();
    let f = Finding::new("address", ips.join(","), "");
    let clash = existing
        .iter()
        .filter(|c| c.name != incoming.name && c.is_running())
        .find_map(|c| incoming.ips.iter().find(|ip| c.ips.contains(ip)).map(|ip| (c, ip)));
    out.push(match clash {
        Some((c, ip)) => Finding {
            target: format!("{ip} used by {}", c.name),
            ..f.with(Severity::Block, format!("the container keeps its address and {ip} is in use on the target by {}", c.name))
        },
        None => Finding { target: "free".into(), ..f },
    });

    if !incoming.volumes.is_empty() {
        let names: Vec<&str> = incoming.volumes.iter().map(|v| v.name.as_str()).collect();
        let f = Finding::new("volumes", names.join(","), "");
        let taken: Vec<&str> = names.iter().copied().filter(|n| volumes_here.iter().any(|h| h == n)).collect();
        out.push(if taken.is_empty() {
            Finding { target: "free".into(), ..f }
        } else {
            Finding {
                target: format!("{} exist", taken.join(",")),
                ..f.with(
                    Severity::Block,
                    format!(
                        "the container's volumes move with it and Podman will not restore over an existing one; \
                         if {} on the target is a stale copy (left by an earlier stay there), remove it (`podman volume rm {}`)",
                        taken.join(", "),
                        taken.join(" ")
                    ),
                )
            }
        });
        let dir = volume_dir.trim_end_matches('/');
        let source_dirs: Vec<&str> = incoming.volumes.iter().map(|v| v.path.strip_suffix(&format!("/{}/_data", v.name)).unwrap_or(&v.path)).collect();
        let f = Finding::new("volume path", source_dirs.join(","), dir);
        let moved = incoming.volumes.iter().find(|v| v.path != format!("{dir}/{}/_data", v.name));
        out.push(match moved {
            None => f,
            Some(v) => f.with(
                Severity::Block,
                format!(
                    "Podman restores volume {} bound at the path it had on the source ({}), and this host keeps volumes \
                     in {dir}; give both hosts the same volume path (containers-storage graph root, or volume_path in \
                     containers.conf)",
                    v.name, v.path
                ),
            ),
        });
    }

    let f = Finding::new("image", &incoming.image, if has_image { "present" } else { "missing" });
    out.push(if has_image { f } else { f.with(Severity::Warn, "the image will be shipped before the freeze") });
    out
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::facts::{Capability, CgroupsVersion, Volume};

    pub(crate) fn facts() -> HostFacts {
        HostFacts {
            name: "a".into(),
            agent_version: "0.1.0".into(),
            podman_version: "4.3.1".into(),
            runtime_name: "runc".into(),
            runtime_version: "1.1.5".into(),
            criu_version: "4.2.1".into(),
            cgroups: CgroupsVersion::Hybrid,
            kernel: "6.18.44".into(),
            arch: "x86_64".into(),
            cpu_flags: vec!["avx2".into(), "fpu".into(), "sse4_2".into()],
            network_backend: "netavark".into(),
            dirty_tracking: Capability { supported: false, detail: "Dirty tracking is OFF".into() },
            lazy_restore: Capability { supported: true, detail: "uffd".into() },
            dump_other_users: Capability { supported: true, detail: String::new() },
            status: Default::default(),
        }
    }

    #[test]
    fn dependencies_block_but_a_pods_infra_container_alone_does_not() {
        let mut c = ctr("web", "192.0.2.5", "running");
        assert!(dependencies(&c).is_none());
        c.dependencies = vec!["a".repeat(64)];
        let f = dependencies(&c).expect("a --requires dependency blocks");
        assert_eq!(f.severity, Severity::Block);
        assert!(f.note.contains("cannot export checkpoints of containers with dependencies"), "{}", f.note);
        c.pod = Some("p".into());
        assert!(dependencies(&c).is_none(), "its pod's infra container");
        c.dependencies.push("b".repeat(64));
        assert!(dependencies(&c).is_some());
    }

    #[test]
    fn a_cordoned_target_blocks_naming_the_way_out_and_a_cordoned_source_does_not() {
        let cordon = crate::facts::Cordon { reason: "kernel upgrade".into(), since_unix: 0 };
        let mut dst = facts();
        dst.name = "client2".into();
        dst.status.cordon = Some(cordon.clone());
        let f = compare_hosts(&facts(), &dst, Mode::StopAndCopy);
        assert!(blocks(&f));
        let row = f.iter().find(|x| x.field == "cordon").unwrap();
        assert_eq!((row.severity, row.source.as_str(), row.target.as_str()), (Severity::Block, "no", "cordoned"));
        assert!(
            row.note.contains("`tern uncordon client2`") && row.note.contains("kernel upgrade") && row.note.contains("1970-01-01"),
            "{}",
            row.note
        );
        // Every other row is fine: the cordon is the only reason.
        assert!(f.iter().filter(|x| x.field != "cordon").all(|x| x.severity == Severity::Ok), "{f:#?}");

        let mut src = facts();
        src.status.cordon = Some(cordon);
        let f = compare_hosts(&src, &facts(), Mode::StopAndCopy);
        assert!(!blocks(&f), "{f:#?}");
        assert_eq!(f.iter().find(|x| x.field == "cordon").unwrap().source, "cordoned");
    }

    fn severity(findings: &[Finding], field: &str) -> Severity {
        findings.iter().find(|f| f.field == field).unwrap().severity
    }

    #[test]
    fn identical_hosts_pass_every_rule() {
        let f = compare_hosts(&facts(), &facts(), Mode::StopAndCopy);
        assert!(!blocks(&f));
        assert!(f.iter().all(|x| x.severity == Severity::Ok), "{f:#?}");
    }

    #[test]
    fn each_blocking_difference_blocks_and_names_both_values() {
        type Edit = fn(&mut HostFacts);
        let cases: &[(&str, Edit)] = &[
            ("arch", |f| f.arch = "aarch64".into()),
            ("cgroups", |f| f.cgroups = CgroupsVersion::V2),
            ("oci runtime", |f| f.runtime_name = "crun".into()),
            ("podman", |f| f.podman_version = "3.4.7".into()),
            ("criu", |f| f.criu_version = "3.17.1".into()),
            ("criu", |f| f.criu_version = String::new()),
            ("cpu flags", |f| f.cpu_flags.retain(|x| x != "avx2")),
            ("network backend", |f| f.network_backend = "cni".into()),
        ];
        for (field, edit) in cases {
            let mut dst = facts();
            edit(&mut dst);
            let f = compare_hosts(&facts(), &dst, Mode::StopAndCopy);
            assert_eq!(severity(&f, field), Severity::Block, "{field}: {f:#?}");
            assert!(blocks(&f));
            let finding = f.iter().find(|x| x.field == *field && x.severity == Severity::Block).unwrap();
            assert!(!finding.note.is_empty());
        }
    }

    #[test]
    fn a_podman_4_host_empties_onto_podman_5_hosts_with_a_warning() {
        let mut five = facts();
        five.podman_version = "5.4.2".into();
        let f = compare_hosts(&facts(), &five, Mode::StopAndCopy);
        assert!(!blocks(&f), "{f:#?}");
        assert_eq!(severity(&f, "podman"), Severity::Warn);
        // And back, with a warning too (tried; Podman 4 drops Podman 5's newer settings).
        let back = compare_hosts(&five, &facts(), Mode::StopAndCopy);
        assert!(!blocks(&back) && severity(&back, "podman") == Severity::Warn, "{back:#?}");
    }

    #[test]
    fn missing_cpu_flags_are_named() {
        let mut dst = facts();
        dst.cpu_flags = vec!["fpu".into()];
        let f = compare_hosts(&facts(), &dst, Mode::StopAndCopy);
        let cpu = f.iter().find(|x| x.field == "cpu flags").unwrap();
        assert!(cpu.note.contains("avx2") && cpu.note.contains("sse4_2"), "{}", cpu.note);
        // Extra flags on the target are fine.
        let f = compare_hosts(&dst, &facts(), Mode::StopAndCopy);
        assert_eq!(severity(&f, "cpu flags"), Severity::Ok);
    }

    #[test]
    fn minor_differences_only_warn() {
        let mut dst = facts();
        dst.podman_version = "4.9.0".into();
        dst.runtime_version = "1.1.12".into();
        dst.criu_version = "4.3.0".into();
        dst.kernel = "6.1.0-28-amd64".into();
        let f = compare_hosts(&facts(), &dst, Mode::StopAndCopy);
        assert!(!blocks(&f), "{f:#?}");
        for field in ["podman", "oci runtime version", "criu", "kernel"] {
            assert_eq!(severity(&f, field), Severity::Warn, "{field}");
        }
    }

    #[test]
    fn precopy_needs_dirty_tracking_on_both_sides() {
        let mut yes = facts();
        yes.dirty_tracking = Capability { supported: true, detail: "ok".into() };
        assert!(blocks(&compare_hosts(&facts(), &yes, Mode::PreCopy)));
        assert!(blocks(&compare_hosts(&yes, &facts(), Mode::PreCopy)));
        assert!(!blocks(&compare_hosts(&yes, &yes, Mode::PreCopy)));
        assert!(!blocks(&compare_hosts(&facts(), &facts(), Mode::StopAndCopy)));
    }

    #[test]
    fn processes_of_other_users_need_cap_sys_resource() {
        let mut c = ctr("pg", "203.0.113.2", "running");
        assert!(process_owners(&c, &facts()).is_none());
        assert!(service_manager(&c).is_none(), "no unit runs it");
        c.process_uids = vec![999];
        assert_eq!(process_owners(&c, &facts()).unwrap().severity, Severity::Ok);
        let mut weak = facts();
        weak.dump_other_users = Capability { supported: false, detail: "no CAP_SYS_RESOURCE".into() };
        let f = process_owners(&c, &weak).unwrap();
        assert_eq!(f.severity, Severity::Block);
        assert!(f.note.contains("999") && f.note.contains("CAP_SYS_RESOURCE"), "{}", f.note);
    }

    #[test]
    fn a_container_a_systemd_unit_runs_is_refused_with_the_fix() {
        let mut c = ctr("web", "203.0.113.2", "running");
        c.systemd_unit = Some("container-web.service".into());
        let f = service_manager(&c).unwrap();
        assert_eq!((f.field.as_str(), f.source.as_str(), f.severity), ("service manager", "container-web.service", Severity::Block));
        assert!(f.note.contains("run twice") && f.note.contains("recreate web outside the unit"), "{}", f.note);
    }

    #[test]
    fn version_numbers_parse_real_strings() {
        assert_eq!(version_numbers("6.18.44-fc-v669"), vec![6, 18, 44]);
        assert_eq!(version_numbers("runc version 1.1.5+ds1"), vec![1, 1, 5]);
        assert_eq!(version_numbers("Version: 4.2"), vec![4, 2]);
        assert_eq!(version_numbers(""), Vec::<u64>::new());
    }

    pub(crate) fn ctr(name: &str, ip: &str, state: &str) -> ContainerInfo {
        ContainerInfo {
            files_bytes: 0,
            volumes: vec![],
            name: name.into(),
            id: "0123456789abcdef".into(),
            image: "localhost/tern-busybox:latest".into(),
            image_id: "sha256:1".into(),
            state: state.into(),
            ips: vec![ip.parse().unwrap()],
            memory_bytes: 0,
            pid: 0,
            networks: vec![],
            ports: vec![],
            connections: vec![],
            process_uids: vec![],
            systemd_unit: None,
            pod: None,
            dependencies: vec![],
        }
    }

    #[test]
    fn incoming_name_and_address_clashes_block() {
        let me = ctr("demo1", "203.0.113.2", "running");
        assert!(!blocks(&check_incoming(&me, &[], &[], VOLS, true)));
        assert!(blocks(&check_incoming(&me, &[ctr("demo1", "203.0.113.9", "exited")], &[], VOLS, true)));
        assert!(blocks(&check_incoming(&me, &[ctr("other", "203.0.113.2", "running")], &[], VOLS, true)));
        // A stopped container holds no address.
        assert!(!blocks(&check_incoming(&me, &[ctr("other", "203.0.113.2", "exited")], &[], VOLS, true)));
        let f = check_incoming(&me, &[], &[], VOLS, false);
        assert_eq!(severity(&f, "image"), Severity::Warn);
        assert!(!blocks(&f));
    }

    const VOLS: &str = "/var/lib/containers/storage/volumes";

    #[test]
    fn a_volume_already_on_the_target_or_kept_elsewhere_blocks() {
        let mut me = ctr("demo1", "203.0.113.2", "running");
        me.volumes = vec![Volume { name: "data".into(), path: format!("{VOLS}/data/_data") }];
        let here = vec!["other".to_string()];
        let ok = check_incoming(&me, &[], &here, VOLS, true);
        assert!(!blocks(&ok), "{ok:?}");
        let f = check_incoming(&me, &[], &["data".to_string()], VOLS, true);
        assert_eq!(severity(&f, "volumes"), Severity::Block);
        assert!(f.iter().any(|x| x.note.contains("podman volume rm data")), "{f:?}");
        // The target keeps volumes elsewhere: Podman would bind the source's path.
        let f = check_incoming(&me, &[], &here, "/srv/volumes/", true);
        assert_eq!(severity(&f, "volume path"), Severity::Block);
        // No volumes, no finding.
        me.volumes.clear();
        assert!(!check_incoming(&me, &[], &here, "/elsewhere", true).iter().any(|x| x.field.starts_with("volume")));
    }
}
