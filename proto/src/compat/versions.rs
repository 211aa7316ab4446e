//! Moves between versions: which Podman, OCI runtime, cgroup layout and
//! CRIU a checkpoint crosses, as their sources show it. One table or one
//! function per field, so that a move proven or disproven on real hosts
//! (the qemu tiers) changes one row and its test.
//!
//! What was read (tags: podman v3.4.7, v4.3.1, v4.9.5, v5.0.0, v5.8.2;
//! runc v1.5.1; crun 1.29.1; criu v3.17, v4.0 to v4.2):
//!
//! * **Podman's archive did not change from 4.3.1 to 5.8.2.**
//!   `libpod/container_internal_common.go` `exportCheckpoint` packs the
//!   same files in both (config.dump, spec.dump, network.status,
//!   stats-dump, devshm-checkpoint.tar, artifacts, ctr.log, checkpoint/,
//!   rootfs-diff.tar, deleted.files, volumes/); the import path
//!   (`pkg/checkpoint/checkpoint_restore.go` `CRImportCheckpoint`,
//!   `libpod/runtime_ctr.go` `RestoreContainer`) reads config.dump and
//!   spec.dump as JSON and checks no version: none is recorded. The JSON
//!   keys of `libpod/container_config.go` only grew (4.3.1 ⊂ 4.9.5 ⊂ 5.0.0
//!   ⊂ 5.8.2, none renamed or dropped), so a newer Podman reads all an
//!   older one wrote, and an older one silently drops the keys it does
//!   not know (Go's JSON decoding ignores them). Podman 3 wrote
//!   network.status as CNI results (`[]*cnitypes.Result`); 4 and 5 read a
//!   map of networks, fail to decode the old file and restore without the
//!   container's address and MAC (logged at info level only).
//! * **The runtime is the one that dumped.** `cmd/podman/root.go` (since
//!   2021, c76caba367, the same in 4.3.1 and 5.8.2) reads `OCIRuntime` from
//!   the archive's config.dump and sets `--runtime` to it for `restore
//!   --import`, and refuses a different `--runtime` ("cannot be restored
//!   with runtime"); its comment says crun and runc cannot restore each
//!   other's checkpoints. Both drive CRIU alike (runc
//!   `libcontainer/criu_linux.go`, crun `src/libcrun/criu.c`: the same
//!   external-mount keys, `descriptors.json`, `extRootNetNS`, cgroups
//!   mode soft by default), but Podman never lets the other one try. So
//!   what matters is whether the target has the source's runtime
//!   installed, which its facts do not say.
//! * **CRIU reads older images, not always newer ones.** Every CRIU since
//!   1.6 (2015, f5ea330ce) writes image version 1.1 (`criu/image.c`
//!   `check_img_inventory` accepts 1 and 1.1), and restore falls back for
//!   what older CRIUs did not write (`network_lock_method`,
//!   `plugins_entry`). The images are protobuf: an older CRIU drops fields
//!   it does not know and refuses kinds it does not know, e.g. 4.1's pidfd
//!   files (`images/fdinfo.proto` `PIDFD = 20`), which 4.0 and older fail
//!   on as "Unknown file type" (`criu/files.c`).
//! * **cgroup v1 images do not restore on a v2-only host.** On restore
//!   CRIU mounts every controller its cgroup image names, v1 controllers
//!   as `cgroup` (`criu/cgroup.c` `prepare_cgroup_sfd`), unless cgroups
//!   are ignored; runc and crun pass mode soft. A v2-only host has every
//!   controller in the unified hierarchy. runc and crun also dump a v1
//!   container's cgroup mounts as external bind mounts and map them back
//!   only on a v1 host (runc `criu_linux.go`: `case "cgroup"` skipped when
//!   `IsCgroup2UnifiedMode()`; crun `restore_cgroup_v1_mount` returns early
//!   on unified). Both treat hybrid as v1. Nothing was read that settles
//!   v2 → v1.
//!
//! What was tried (README "Compatibility": this machine's Podman 4.3.1,
//! runc 1.1.5, CRIU 4.2.1, hybrid cgroups, and Debian 13's Podman 5.4.2,
//! crun 1.21, runc 1.1.15, CRIU 4.1.1, cgroups v2 in the Podman 5 tier's
//! guest; `podman container checkpoint --export` on one, `restore
//! --import` on the other, a counter checked to carry on):
//!
//! * **Podman 4.3.1, hybrid → Podman 5.4.2, v2: fails**, with runc (the
//!   archive's runtime; Podman refuses crun for it) and with an archive
//!   edited to say crun, with CRIU 4.1.1 and 4.2.1 alike: CRIU cannot mount
//!   the v1 controllers its cgroup image names (`cg: Can't mount controller
//!   dir .criu.cgyard.*/pids: Device or resource busy`), and with
//!   `manage-cgroups=ignore` it cannot rebuild the container's v1
//!   `/sys/fs/cgroup` mounts (`mnt: No mapping for ...`).
//! * **Podman 5.4.2, v2, runc → Podman 4.3.1, hybrid, runc: works** (the
//!   counter carried on) once every /proc file Podman masks or makes
//!   read-only exists on the target's kernel (this machine's has no
//!   `/proc/sysrq-trigger` or `/proc/kcore`: `mnt-v2: Can't stat
//!   mountpoint ...` until the container ran with them unmasked); `podman
//!   exec` into it then failed on an RLIMIT_NOFILE above the target's
//!   hard limit.
//! * **crun ↔ runc fails** both ways within Podman 5.4.2: Podman refuses
//!   ("was created with runtime 'crun' and cannot be restored with runtime
//!   'runc'"), and an archive edited to name the other runtime fails in
//!   CRIU (`mnt: No mapping for ...:(null) mountpoint`: the two runtimes
//!   build the masked paths' mounts differently). Same runtime both sides
//!   works.
//! * **CRIU 4.2.1 → 4.1.1 fails, 4.1.1 → 4.2.1 works**: 4.2 moved
//!   pagemap's page count to a new field (images/pagemap.proto,
//!   afb2e6c3f) and writes 0 in the old one, so 4.1 restores no memory
//!   (`vdso: ELF header magic mismatch`, `Restoring FAILED`).

use super::{major_minor, version_numbers, Finding, Severity};
use crate::facts::CgroupsVersion;

/// Moves between Podman major versions: (source, target, severity, why).
/// A pair not listed is refused: nothing was read about it.
pub const PODMAN_MAJORS: &[(u64, u64, Severity, &str)] = &[
    (
        4,
        5,
        Severity::Warn,
        "Podman 5 imports Podman 4's checkpoints: the archive holds the same files (4.3.1 to 5.8), config.dump's \
         keys only grew and nothing checks versions on import; tried only across cgroup layouts, where the cgroups \
         row refuses it (a CNI host meets the network backend rule: Podman 5 has netavark only)",
    ),
    (
        5,
        4,
        Severity::Warn,
        "tried: Podman 5.4.2 → 4.3.1 with runc restored and carried on, but Podman 4 drops what config.dump says in \
         keys newer than it (Podman 5 added baseHostsFile and preserveFd, later artifactVolumes, healthLog*, \
         useImageHosts), and the target's kernel must have every /proc file Podman masks (CRIU fails on a missing \
         /proc/sysrq-trigger or /proc/kcore)",
    ),
    (
        3,
        4,
        Severity::Block,
        "Podman 3 wrote network.status as CNI results, which Podman 4 cannot read: the container would come back \
         without its address",
    ),
    (
        3,
        5,
        Severity::Block,
        "Podman 3 wrote network.status as CNI results, which Podman 5 cannot read: the container would come back \
         without its address",
    ),
];

/// The `podman` row: the same version passes; within a major version the
/// archive is the same (an older target only warns: it may drop newer
/// settings); across major versions [`PODMAN_MAJORS`] decides.
pub fn podman(src: &str, dst: &str) -> Finding {
    let f = Finding::new("podman", src, dst);
    if src == dst {
        return f;
    }
    let (smaj, dmaj) = (major_minor(src).0, major_minor(dst).0);
    if smaj == dmaj {
        return if version_numbers(dst) < version_numbers(src) {
            f.with(
                Severity::Warn,
                "the target's Podman is older: it drops the config.dump keys newer than it, which a container \
                 using such a setting would lose",
            )
        } else {
            f.with(Severity::Warn, "different Podman versions of one major version: the same checkpoint archive, no version check on import")
        };
    }
    match PODMAN_MAJORS.iter().find(|(s, d, _, _)| (*s, *d) == (smaj, dmaj)) {
        Some((_, _, severity, why)) => f.with(*severity, *why),
        None => f.with(
            Severity::Block,
            format!(
                "no evidence either way for a move from Podman {smaj} to Podman {dmaj}; force it (--force-compat \
                 podman) once such a move was tested"
            ),
        ),
    }
}

/// The `oci runtime` row. Podman restores with the runtime that dumped,
/// whatever the target's default (see the module header): a different
/// default passes only if the target has the source's runtime too, which
/// the operator knows and tern does not.
pub fn oci_runtime(src: &str, dst: &str, dst_host: &str) -> Finding {
    let f = Finding::new("oci runtime", src, dst);
    if src == dst {
        return f;
    }
    f.with(
        Severity::Block,
        format!(
            "Podman restores a checkpoint only with the runtime that took it ({src}, named in config.dump), not \
             {dst_host}'s default: {src} must be installed on {dst_host} (or be its default: runtime = \"{src}\" in \
             its containers.conf). If it is, force it (--force-compat oci-runtime): the container then runs under \
             {src} there, and soft-dirty pre-copy moves off {dst_host} would send its pre-dumps to {dst}, which does \
             not know it (use another mode for those)"
        ),
    )
}

/// The `oci runtime version` row: only compared for the same runtime.
pub fn oci_runtime_version(src_name: &str, dst_name: &str, src: &str, dst: &str) -> Finding {
    let f = Finding::new("oci runtime version", src, dst);
    if src_name != dst_name || src == dst {
        return f;
    }
    f.with(Severity::Warn, "different versions of one runtime: it hands CRIU the same options")
}

/// Moves between cgroup layouts: (source, target, severity, why).
pub const CGROUP_MOVES: &[(CgroupsVersion, CgroupsVersion, Severity, &str)] = {
    use CgroupsVersion::{Hybrid, V1, V2};
    const V1_TO_V2: &str = "a v1 checkpoint fails to restore on a v2-only host (tried: Podman 4.3.1 on hybrid \
        cgroups to Podman 5.4.2 on v2, runc and crun, CRIU 4.1 and 4.2: \"Can't mount controller dir\"): CRIU mounts \
        every v1 controller its cgroup image names, which the target keeps in its unified hierarchy, and runc and \
        crun map the container's v1 cgroup mounts back only on a v1 host; move it to a host with the same layout";
    const V2_TO_V1: &str = "tried once: Podman 5.4.2 on v2 to Podman 4.3.1 on hybrid cgroups, runc, restored and \
        carried on; the container's cgroups are v1 there from then on";
    const V2_TO_PURE_V1: &str = "not tested: v2 to hybrid cgroups worked (Podman 5.4.2 to 4.3.1, runc), but a v1-only \
        host lacks the unified hierarchy a hybrid one has; force it (--force-compat cgroups) to try";
    const V1_HYBRID: &str = "likely to restore, not tested: runc and crun treat both layouts as v1 and handle the \
        container's cgroup mounts alike; they differ in systemd's unified hierarchy, which CRIU's cgroup image \
        names on a hybrid host; force it (--force-compat cgroups) to try";
    &[
        (V1, Hybrid, Severity::Block, V1_HYBRID),
        (Hybrid, V1, Severity::Block, V1_HYBRID),
        (V1, V2, Severity::Block, V1_TO_V2),
        (Hybrid, V2, Severity::Block, V1_TO_V2),
        (V2, V1, Severity::Block, V2_TO_PURE_V1),
        (V2, Hybrid, Severity::Warn, V2_TO_V1),
    ]
};

/// The `cgroups` row, from [`CGROUP_MOVES`].
pub fn cgroups(src: CgroupsVersion, dst: CgroupsVersion) -> Finding {
    let f = Finding::new("cgroups", src.to_string(), dst.to_string());
    if src == dst && src != CgroupsVersion::Invalid {
        return f;
    }
    match CGROUP_MOVES.iter().find(|(s, d, _, _)| (*s, *d) == (src, dst)) {
        Some((_, _, severity, why)) => f.with(*severity, *why),
        None => f.with(Severity::Block, "a host's cgroup layout is unknown (its agent could not tell)"),
    }
}

/// Whether a CRIU version string names a usable CRIU.
pub fn criu_usable(v: &str) -> bool {
    major_minor(v) != (0, 0)
}

/// The note of a `criu` row refused because CRIU is missing: the one
/// `criu` block no `--force-compat` lifts.
pub const CRIU_MISSING: &str = "CRIU is missing or unusable on a host; run scripts/install-deps.sh there";

/// The `criu` row: a newer CRIU reads older images; an older one may not
/// read newer ones (module header).
pub fn criu(src: &str, dst: &str) -> Finding {
    let f = Finding::new("criu", src, dst);
    if !criu_usable(src) || !criu_usable(dst) {
        return f.with(Severity::Block, CRIU_MISSING);
    }
    if major_minor(dst) < major_minor(src) {
        return f.with(
            Severity::Block,
            "the target's CRIU is older: it drops what it does not know of newer images and refuses kinds it does \
             not know (tried: CRIU 4.2's images restore no memory on 4.1, whose pagemap reads 0 pages; 4.1's \
             pidfds fail on 4.0 as \"Unknown file type\"); upgrade CRIU on the target, or force it \
             (--force-compat criu) for a pair known to work",
        );
    }
    if src != dst {
        return f.with(
            Severity::Warn,
            "a newer CRIU restores older images (image format 1.1 since CRIU 1.6, with fallbacks for what older ones did not write)",
        );
    }
    f
}

#[cfg(test)]
mod tests {
    use super::*;
    use CgroupsVersion::{Hybrid, Invalid, V1, V2};

    #[test]
    fn podman_4_to_5_and_5_to_4_warn_3_to_later_is_refused() {
        let cases = [
            ("4.3.1", "4.3.1", Severity::Ok),
            ("4.3.1", "4.9.4", Severity::Warn),
            ("4.9.4", "4.3.1", Severity::Warn),
            ("4.3.1", "5.4.2", Severity::Warn),
            ("4.9.4", "5.0.0", Severity::Warn),
            ("5.4.2", "4.3.1", Severity::Warn),
            ("3.4.7", "4.3.1", Severity::Block),
            ("3.4.7", "5.4.2", Severity::Block),
            ("5.4.2", "6.0.0", Severity::Block),
            ("", "5.4.2", Severity::Block),
        ];
        for (src, dst, want) in cases {
            let f = podman(src, dst);
            assert_eq!(f.severity, want, "{src} → {dst}: {}", f.note);
            assert_eq!((f.source.as_str(), f.target.as_str()), (src, dst));
            assert_eq!(f.note.is_empty(), want == Severity::Ok, "{src} → {dst}");
        }
        assert!(podman("5.4.2", "4.3.1").note.starts_with("tried"));
        assert!(podman("4.9.4", "4.3.1").note.contains("older"));
        assert!(podman("3.4.7", "4.3.1").note.contains("address"));
        assert!(podman("5.4.2", "6.0.0").note.contains("no evidence either way for a move from Podman 5 to Podman 6"));
    }

    #[test]
    fn another_runtime_is_refused_saying_the_source_runtime_must_be_on_the_target() {
        assert_eq!(oci_runtime("runc", "runc", "b").severity, Severity::Ok);
        let f = oci_runtime("runc", "crun", "client2");
        assert_eq!(f.severity, Severity::Block);
        assert!(f.note.contains("runc must be installed on client2") && f.note.contains("--force-compat oci-runtime"), "{}", f.note);
        // Versions compare only within one runtime.
        assert_eq!(oci_runtime_version("runc", "crun", "1.1.5", "1.21").severity, Severity::Ok);
        assert_eq!(oci_runtime_version("runc", "runc", "1.1.5", "1.1.15").severity, Severity::Warn);
        assert_eq!(oci_runtime_version("crun", "crun", "1.21", "1.21").severity, Severity::Ok);
    }

    #[test]
    fn every_cgroup_move_has_a_rule_and_only_the_same_known_layout_passes() {
        for src in [V1, Hybrid, V2, Invalid] {
            for dst in [V1, Hybrid, V2, Invalid] {
                let f = cgroups(src, dst);
                let same = src == dst && src != Invalid;
                assert_eq!(f.severity == Severity::Ok, same, "{src} → {dst}");
                assert_eq!(f.severity == Severity::Warn, (src, dst) == (V2, Hybrid), "{src} → {dst}");
                assert_eq!(f.note.is_empty(), same, "{src} → {dst}");
            }
        }
        assert!(cgroups(V1, V2).note.starts_with("a v1 checkpoint fails"));
        assert!(cgroups(Hybrid, V2).note.starts_with("a v1 checkpoint fails"));
        assert!(cgroups(V2, V1).note.starts_with("not tested"));
        assert_eq!(cgroups(V2, Hybrid).severity, Severity::Warn);
        assert!(cgroups(Hybrid, V2).note.contains("tried"));
        assert!(cgroups(V1, Hybrid).note.starts_with("likely"));
        assert!(cgroups(Invalid, V2).note.contains("unknown"));
    }

    #[test]
    fn criu_older_or_missing_is_refused_newer_warns() {
        assert_eq!(criu("4.2", "4.2").severity, Severity::Ok);
        assert_eq!(criu("3.17.1", "4.1.1").severity, Severity::Warn);
        assert_eq!(criu("4.2.1", "4.2").severity, Severity::Warn);
        let older = criu("4.1.1", "3.17.1");
        assert_eq!(older.severity, Severity::Block);
        assert!(older.note.contains("--force-compat criu"), "{}", older.note);
        for (s, d) in [("", "4.2"), ("4.2", ""), ("none", "4.2")] {
            let f = criu(s, d);
            assert_eq!((f.severity, f.note.as_str()), (Severity::Block, CRIU_MISSING), "{s:?} → {d:?}");
        }
    }
}
