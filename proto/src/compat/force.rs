//! `--force-compat FIELD`: the operator's word that a refused move between
//! versions will work (they tested it, or know the container needs nothing
//! the rule guards). Only judgement calls yield: the rows whose refusal
//! rests on missing or partial evidence ([`ForceField`]). A fact that makes
//! the restore impossible or unsafe never does ([`NEVER`]), and neither
//! does a missing CRIU under the `criu` row.
//!
//! A forced finding keeps its text and becomes [`Severity::Forced`], which
//! [`super::blocks`] passes; the report lists it. Forcing happens where the
//! findings are gathered (the coordinator's plan, which holds the target
//! agent's rows too); the target agent's own rows are never forceable, so
//! nothing about forcing crosses the wire.

use super::{versions, Finding, Severity};
use std::str::FromStr;

/// A row `--force-compat` may lift.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ForceField {
    Podman,
    OciRuntime,
    Cgroups,
    Criu,
    CpuFlags,
    NetworkBackend,
}

impl ForceField {
    pub const ALL: [ForceField; 6] =
        [ForceField::Podman, ForceField::OciRuntime, ForceField::Cgroups, ForceField::Criu, ForceField::CpuFlags, ForceField::NetworkBackend];

    /// The finding's `field`.
    pub fn field(self) -> &'static str {
        match self {
            ForceField::Podman => "podman",
            ForceField::OciRuntime => "oci runtime",
            ForceField::Cgroups => "cgroups",
            ForceField::Criu => "criu",
            ForceField::CpuFlags => "cpu flags",
            ForceField::NetworkBackend => "network backend",
        }
    }

    /// The name on the command line: the field, dashes for spaces.
    pub fn name(self) -> &'static str {
        match self {
            ForceField::Podman => "podman",
            ForceField::OciRuntime => "oci-runtime",
            ForceField::Cgroups => "cgroups",
            ForceField::Criu => "criu",
            ForceField::CpuFlags => "cpu-flags",
            ForceField::NetworkBackend => "network-backend",
        }
    }
}

/// Every field that can be forced, as typed: "podman, oci-runtime, ...".
pub fn names() -> String {
    ForceField::ALL.map(ForceField::name).join(", ")
}

/// The rows no `--force-compat` lifts, and why.
pub const NEVER: &[(&str, &str)] = &[
    ("arch", "process images hold machine code and registers of one architecture"),
    ("kernel", "it never refuses a move, only warns"),
    ("oci runtime version", "it never refuses a move, only warns"),
    ("image", "it never refuses a move: a missing image is shipped"),
    ("dirty tracking", "soft-dirty pre-copy cannot run without it; --mode hash-pre-copy needs none"),
    ("cordon", "a cordon is an operator's own word: `tern uncordon HOST` lifts it"),
    ("container name", "Podman cannot restore beside a container of the same name"),
    ("address", "two containers would answer for one address"),
    ("volumes", "Podman does not restore over an existing volume"),
    ("volume path", "Podman would bind the volume where the target keeps none"),
    ("networks", "the container's network must exist on the target as it is on the source"),
    ("published ports", "a port in use on the target cannot be published again"),
    ("tcp connections", "--allow-reset is the flag that moves a container whose connections would be reset"),
    ("process owners", "CRIU cannot dump processes of another user without CAP_SYS_RESOURCE"),
    ("service manager", "the unit would start the container again: it would run twice"),
    ("container state", "tern moves running containers only"),
];

/// Typed names: any case, dashes, underscores or spaces between words.
fn normal(s: &str) -> String {
    s.trim().to_ascii_lowercase().replace(['-', '_'], " ")
}

impl FromStr for ForceField {
    type Err = String;

    /// A field that can be forced; else why not (one that never can), or
    /// the names that can (an unknown one).
    fn from_str(s: &str) -> Result<Self, String> {
        let n = normal(s);
        if let Some(f) = ForceField::ALL.into_iter().find(|f| f.field() == n) {
            return Ok(f);
        }
        if let Some((field, why)) = NEVER.iter().find(|(field, _)| *field == n) {
            return Err(format!("{field} cannot be forced: {why}"));
        }
        Err(format!("no field named {s:?} can be forced; the fields that can: {}", names()))
    }
}

/// Why `f`, a refusal of a field that can be forced, still cannot be.
fn unforceable(f: &Finding) -> Option<&'static str> {
    (f.field == "criu" && f.note == versions::CRIU_MISSING).then_some("a missing CRIU cannot restore anything")
}

/// Lifts the refusals of `fields` in `findings`: each becomes
/// [`Severity::Forced`], its text unchanged. A refusal of such a field
/// that still cannot be forced stays, its note saying why.
pub fn force(findings: &mut [Finding], fields: &[ForceField]) {
    for f in findings.iter_mut().filter(|f| f.severity == Severity::Block) {
        let Some(asked) = fields.iter().find(|x| x.field() == f.field) else { continue };
        match unforceable(f) {
            None => f.severity = Severity::Forced,
            Some(why) => f.note = format!("{}; --force-compat {} cannot lift this: {why}", f.note, asked.name()),
        }
    }
}

/// The findings `--force-compat` lifted.
pub fn forced(findings: &[Finding]) -> impl Iterator<Item = &Finding> {
    findings.iter().filter(|f| f.severity == Severity::Forced)
}

#[cfg(test)]
mod tests {
    use super::super::{blocks, compare_hosts, tests::facts};
    use super::*;
    use crate::facts::CgroupsVersion;
    use crate::mode::Mode;

    #[test]
    fn names_parse_loosely_and_every_forceable_field_round_trips() {
        for f in ForceField::ALL {
            assert_eq!(f.name().parse::<ForceField>(), Ok(f));
            assert_eq!(f.field().parse::<ForceField>(), Ok(f));
        }
        assert_eq!("OCI_Runtime".parse::<ForceField>(), Ok(ForceField::OciRuntime));
        assert_eq!(" cpu flags ".parse::<ForceField>(), Ok(ForceField::CpuFlags));
    }

    #[test]
    fn a_field_that_never_yields_says_why_and_an_unknown_one_lists_the_valid_names() {
        let e = "arch".parse::<ForceField>().unwrap_err();
        assert_eq!(e, "arch cannot be forced: process images hold machine code and registers of one architecture");
        assert!("cordon".parse::<ForceField>().unwrap_err().contains("tern uncordon"));
        assert!("tcp-connections".parse::<ForceField>().unwrap_err().contains("--allow-reset"));
        let e = "podmn".parse::<ForceField>().unwrap_err();
        assert_eq!(e, "no field named \"podmn\" can be forced; the fields that can: podman, oci-runtime, cgroups, criu, cpu-flags, network-backend");
        // No name is both.
        for f in ForceField::ALL {
            assert!(!NEVER.iter().any(|(n, _)| *n == f.field()), "{}", f.field());
        }
    }

    #[test]
    fn a_forced_refusal_keeps_its_text_and_no_longer_blocks() {
        let mut dst = facts();
        dst.podman_version = "4.3.1".into();
        let mut src = facts();
        src.podman_version = "3.4.7".into();
        src.runtime_name = "crun".into();
        let mut f = compare_hosts(&src, &dst, Mode::StopAndCopy);
        let before: Vec<Finding> = f.clone();
        force(&mut f, &[ForceField::Podman]);
        assert!(blocks(&f), "the runtime still blocks");
        let podman = f.iter().find(|x| x.field == "podman").unwrap();
        let was = before.iter().find(|x| x.field == "podman").unwrap();
        assert_eq!((podman.severity, &podman.note, &podman.source), (Severity::Forced, &was.note, &was.source));
        force(&mut f, &[ForceField::Podman, ForceField::OciRuntime]);
        assert!(!blocks(&f), "{f:#?}");
        assert_eq!(forced(&f).map(|x| x.field.as_str()).collect::<Vec<_>>(), ["oci runtime", "podman"]);
    }

    #[test]
    fn forcing_touches_only_refusals_of_the_fields_named() {
        let mut dst = facts();
        dst.cgroups = CgroupsVersion::V2;
        dst.kernel = "6.1.0".into();
        let mut f = compare_hosts(&facts(), &dst, Mode::StopAndCopy);
        force(&mut f, &[ForceField::Criu, ForceField::Podman]);
        assert!(blocks(&f) && forced(&f).next().is_none(), "{f:#?}");
        assert_eq!(f.iter().find(|x| x.field == "kernel").unwrap().severity, Severity::Warn);
        force(&mut f, &[ForceField::Cgroups]);
        assert!(!blocks(&f));
    }

    #[test]
    fn a_missing_criu_is_not_lifted_by_forcing_criu_but_an_older_one_is() {
        let mut dst = facts();
        dst.criu_version = String::new();
        let mut f = compare_hosts(&facts(), &dst, Mode::StopAndCopy);
        force(&mut f, &[ForceField::Criu]);
        let row = f.iter().find(|x| x.field == "criu").unwrap();
        assert_eq!(row.severity, Severity::Block);
        assert!(row.note.ends_with("--force-compat criu cannot lift this: a missing CRIU cannot restore anything"), "{}", row.note);

        dst.criu_version = "3.17.1".into();
        let mut f = compare_hosts(&facts(), &dst, Mode::StopAndCopy);
        assert!(blocks(&f));
        force(&mut f, &[ForceField::Criu]);
        assert!(!blocks(&f), "{f:#?}");
    }

    #[test]
    fn cpu_flags_and_network_backend_can_be_forced() {
        let mut dst = facts();
        dst.cpu_flags.retain(|x| x != "avx2");
        dst.network_backend = "cni".into();
        let mut f = compare_hosts(&facts(), &dst, Mode::StopAndCopy);
        force(&mut f, &[ForceField::CpuFlags]);
        assert!(blocks(&f));
        force(&mut f, &[ForceField::NetworkBackend]);
        assert!(!blocks(&f), "{f:#?}");
    }
}
