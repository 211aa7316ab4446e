//! Planning a migration: find the container, pick the mode, run every
//! compatibility rule. Nothing here touches a container.

use crate::cluster::{Cluster, HostState};
use anyhow::{bail, Context};
use tern_proto::compat::{self, Finding, ForceField};
use tern_proto::facts::ContainerInfo;
use tern_proto::plan::PostCopyFirst;
use tern_proto::{Mode, Request, Response};

/// What the user asked for with `--mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ModeArg {
    /// Pre-copy where both hosts track dirty memory (unless the container's
    /// files outweigh its memory); else content-addressed pre-copy for
    /// containers holding 64 MiB or more of memory and files, stop-and-copy
    /// for smaller ones (a base costs a pause and a full extra copy, which
    /// only pays off when there is data to spare at the freeze). Post-copy
    /// instead, on the same first steps, where the inventory's `[migrate]
    /// post_copy` allows it and both hosts can run it.
    Auto,
    /// Freeze, dump everything, stream it, restore.
    StopAndCopy,
    /// Soft-dirty rounds while the container runs, then a short final dump.
    PreCopy,
    /// Content-addressed pre-copy (no soft-dirty needed): ship a full dump
    /// while it runs, then only the pages the target lacks.
    HashPreCopy,
    /// Restore on the target at once and pull the memory from the frozen
    /// source afterwards: the shortest downtime, whatever the memory, but
    /// until the last page crosses the container needs both hosts and the
    /// link (`auto` picks it only where the inventory allows it).
    PostCopy,
    /// Post-copy after content-addressed pre-copy's base: a full dump
    /// crosses while the container runs (it pauses while CRIU dumps), then
    /// post-copy, whose fill carries only the pages written since the
    /// base: fewer bytes after the restore, and a shorter time in which
    /// the container needs both hosts. Where both hosts track soft-dirty
    /// memory, soft-dirty rounds take the base's place.
    HashPostCopy,
}

/// `auto` uses content-addressed pre-copy from this much memory and files
/// on.
pub const HASH_PRE_COPY_FROM: u64 = 64 << 20;

/// Whether `auto` may pick post-copy. Post-copy splits a container over
/// two hosts until its last page crosses, so only the operator can allow
/// it for every move (the inventory's `[migrate] post_copy`); `--mode
/// post-copy` asks for it move by move.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AutoPostCopy {
    /// Not allowed (the default).
    No,
    /// Allowed, and both hosts can run it.
    Yes,
    /// Allowed, but these hosts cannot: why.
    Cannot(String),
}

/// What `auto` picked, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AutoPick {
    pub mode: Mode,
    /// For post-copy: what crosses before the freeze.
    pub first: PostCopyFirst,
    pub why: String,
}

/// `auto`'s choice from what the container holds, and why. Soft-dirty
/// pre-copy copies memory only: a container whose files (root file system
/// changes, volumes) outweigh its memory goes content-addressed, the one
/// mode that ships files before the freeze. Without soft-dirty, a base is
/// worth its pause and extra copy from [`HASH_PRE_COPY_FROM`] on.
///
/// Where post-copy is allowed and possible it wins: its downtime does not
/// grow with memory (the operator took its risk when allowing it). What
/// crosses first follows the same rules: soft-dirty rounds, or the base
/// from [`HASH_PRE_COPY_FROM`] on (it halves the fill, the time the
/// container needs both hosts), or nothing.
pub fn auto_mode(both_track: bool, memory_bytes: u64, files_bytes: u64, post_copy: &AutoPostCopy) -> AutoPick {
    let held = format!("{} MiB of memory and {} MiB of files", memory_bytes >> 20, files_bytes >> 20);
    let files_first = files_bytes >= HASH_PRE_COPY_FROM && files_bytes > memory_bytes;
    let big = memory_bytes.saturating_add(files_bytes) >= HASH_PRE_COPY_FROM;
    let pick = |mode, first, why: String| AutoPick { mode, first, why };
    if *post_copy == AutoPostCopy::Yes {
        const ALLOWED: &str = "post-copy, as the inventory allows ([migrate] post_copy)";
        return match (both_track && !files_first, big) {
            (true, _) => pick(Mode::PostCopy, PostCopyFirst::SoftDirtyRounds, format!("{ALLOWED}; soft-dirty rounds first")),
            (false, true) => pick(Mode::PostCopy, PostCopyFirst::HashBase, format!("{held}: {ALLOWED}, on hash-pre-copy's base")),
            (false, false) => pick(Mode::PostCopy, PostCopyFirst::Nothing, format!("{held}: {ALLOWED}")),
        };
    }
    let mut chosen = match (both_track, files_first, big) {
        (true, true, _) => {
            pick(Mode::HashPreCopy, PostCopyFirst::Nothing, format!("{held}: content-addressed pre-copy ships the files before the freeze"))
        }
        (true, false, _) => pick(Mode::PreCopy, PostCopyFirst::Nothing, "both hosts track dirty memory".to_string()),
        (false, _, true) => pick(Mode::HashPreCopy, PostCopyFirst::Nothing, format!("{held}: content-addressed pre-copy")),
        (false, _, false) => pick(Mode::StopAndCopy, PostCopyFirst::Nothing, format!("{held}: stop-and-copy")),
    };
    if let AutoPostCopy::Cannot(why) = post_copy {
        chosen.why = format!("{}; the inventory allows post-copy, but {why}", chosen.why);
    }
    chosen
}

pub struct Plan<'a> {
    pub container: ContainerInfo,
    pub source: &'a HostState,
    pub source_name: String,
    pub target_name: String,
    pub mode: Mode,
    /// Why this mode (e.g. why pre-copy is unavailable).
    pub mode_note: String,
    /// Post-copy: what crosses before the freeze (soft-dirty rounds
    /// where both hosts track soft-dirty memory, else the base where
    /// asked), so the fill carries only what was written since.
    pub post_copy_first: PostCopyFirst,
    pub findings: Vec<Finding>,
}

impl Plan<'_> {
    pub fn blocked(&self) -> bool {
        compat::blocks(&self.findings)
    }

    /// The refusals `--force-compat` lifted.
    pub fn forced(&self) -> impl Iterator<Item = &Finding> {
        compat::forced(&self.findings)
    }

    /// The fields forced, for one line: "podman, oci runtime".
    pub fn forced_fields(&self) -> String {
        self.forced().map(|f| f.field.as_str()).collect::<Vec<_>>().join(", ")
    }

    /// A container going back to the host an evacuation moved it from
    /// (`tern return`): that host's cordon does not keep it out (its
    /// agent lets in what its evacuation record holds,
    /// `agent/src/evacuation.rs`); every other rule holds.
    pub fn returning(&mut self) {
        self.findings.retain(|f| f.field != "cordon");
    }
}

/// What the operator asked of one move, beside which container and where.
#[derive(Debug, Clone, Copy)]
pub struct Ask<'f> {
    pub mode: ModeArg,
    /// Move even when some connections cannot survive.
    pub allow_reset: bool,
    /// The inventory's `[migrate] post_copy`: `auto` may pick post-copy.
    pub auto_post_copy: bool,
    /// `--force-compat`.
    pub force: &'f [ForceField],
}

pub async fn plan<'a>(cluster: &'a Cluster, container: &str, target: &str, from: Option<&str>, ask: &Ask<'_>) -> anyhow::Result<Plan<'a>> {
    let Ask { mode, allow_reset, auto_post_copy, force } = *ask;
    let source_view = match from {
        Some(name) => cluster.get(name).with_context(|| format!("no host named {name} in the inventory"))?,
        // The source is never the target: a same-named container there is a
        // clash the checks report, not a second candidate.
        None => match cluster.find_container(container).into_iter().filter(|h| h.entry.name != target).collect::<Vec<_>>().as_slice() {
            [one] => *one,
            [] => {
                let down: Vec<String> =
                    cluster.hosts.iter().filter_map(|h| h.state.as_ref().err().map(|e| format!("{}: {e}", h.entry.name))).collect();
                if down.is_empty() {
                    bail!("no host has a container named {container}; `tern ps` lists them");
                }
                bail!("no reachable host has a container named {container}; unreachable: {}", down.join("; "));
            }
            many => bail!(
                "{container} exists on several hosts ({}); say which with --from",
                many.iter().map(|h| h.entry.name.as_str()).collect::<Vec<_>>().join(", ")
            ),
        },
    };
    let source_name = source_view.entry.name.clone();
    if source_name == target {
        bail!("{container} already is on {target}");
    }
    let source = source_view.state.as_ref().map_err(|e| anyhow::anyhow!("asking the source {source_name} about its containers failed: {e}"))?;
    let target_view = cluster.get(target).with_context(|| {
        format!(
            "no host named {target} in the inventory (known: {})",
            cluster.hosts.iter().map(|h| h.entry.name.as_str()).collect::<Vec<_>>().join(", ")
        )
    })?;
    let target_state = target_view
        .state
        .as_ref()
        .map_err(|e| anyhow::anyhow!("the target {target} is unreachable: {e}; is its agent running (`scripts/lab.sh status`)?"))?;
    let info = source
        .containers
        .iter()
        .find(|c| c.name == container)
        .cloned()
        .with_context(|| format!("no container named {container} on {source_name}"))?;

    let both_track = source.facts.dirty_tracking.supported && target_state.facts.dirty_tracking.supported;
    let why_not = if !source.facts.dirty_tracking.supported {
        format!("{source_name}: {}", source.facts.dirty_tracking.detail)
    } else {
        format!("{target}: {}", target_state.facts.dirty_tracking.detail)
    };
    // Post-copy's first steps: soft-dirty rounds where both hosts track
    // soft-dirty memory, else the base where asked (or where `auto` picks it).
    let as_asked = |mode, first, note: &str| (mode, first, note.to_string());
    let (mode, post_copy_first, mode_note) = match mode {
        ModeArg::StopAndCopy => as_asked(Mode::StopAndCopy, PostCopyFirst::Nothing, "as asked"),
        ModeArg::PreCopy => as_asked(Mode::PreCopy, PostCopyFirst::Nothing, "as asked"),
        ModeArg::HashPreCopy => as_asked(Mode::HashPreCopy, PostCopyFirst::Nothing, "as asked"),
        ModeArg::PostCopy | ModeArg::HashPostCopy if both_track => as_asked(
            Mode::PostCopy,
            PostCopyFirst::SoftDirtyRounds,
            "as asked; soft-dirty rounds first, so the fill after the restore carries only the pages written since the last",
        ),
        ModeArg::PostCopy => as_asked(Mode::PostCopy, PostCopyFirst::Nothing, "as asked"),
        ModeArg::HashPostCopy => as_asked(
            Mode::PostCopy,
            PostCopyFirst::HashBase,
            "as asked; hash-pre-copy's base first, so the fill after the restore carries only the pages written since",
        ),
        ModeArg::Auto => {
            let post_copy = match (auto_post_copy, compat::post_copy_unavailable(&source.facts, &target_state.facts)) {
                (false, _) => AutoPostCopy::No,
                (true, None) => AutoPostCopy::Yes,
                (true, Some(why)) => AutoPostCopy::Cannot(why),
            };
            let AutoPick { mode, first, why } = auto_mode(both_track, info.memory_bytes, info.files_bytes, &post_copy);
            let note = match mode {
                Mode::PreCopy | Mode::PostCopy => why,
                _ if both_track => format!("both hosts track dirty memory, but {why}"),
                _ => format!("soft-dirty pre-copy is unavailable ({why_not}); {why}"),
            };
            (mode, first, note)
        }
    };

    let mut findings = compat::compare_hosts(&source.facts, &target_state.facts, mode);
    if !info.is_running() {
        findings.push(Finding {
            field: "container state".into(),
            source: info.state.clone(),
            target: String::new(),
            severity: compat::Severity::Block,
            note: format!("{container} is not running; start it first (tern migrates running containers)"),
        });
    }
    findings.extend(compat::process_owners(&info, &source.facts));
    findings.extend(compat::service_manager(&info));
    findings.extend(compat::dependencies(&info));
    findings.push(tern_proto::network::connections_finding(&info, allow_reset));
    match target_state.session.request(&Request::CheckIncoming(info.clone())).await? {
        Response::IncomingCheck(f) => findings.extend(f),
        other => bail!("{target} answered {other:?} to CheckIncoming"),
    }
    // Last, over every row, the target agent's included: none of its rows
    // can be forced, so the target needs no word of it.
    compat::force(&mut findings, force);
    Ok(Plan { container: info, source, source_name, target_name: target.to_string(), mode, mode_note, post_copy_first, findings })
}

#[cfg(test)]
mod tests {
    use super::*;
    const MIB: u64 = 1 << 20;

    fn mode(both_track: bool, memory: u64, files: u64) -> Mode {
        auto_mode(both_track, memory, files, &AutoPostCopy::No).mode
    }

    #[test]
    fn auto_weighs_memory_and_files() {
        assert_eq!(mode(false, 10 * MIB, 0), Mode::StopAndCopy);
        assert_eq!(mode(false, 64 * MIB, 0), Mode::HashPreCopy);
        // Little memory, a big volume: its files are staged before the freeze.
        assert_eq!(mode(false, 2 * MIB, 500 * MIB), Mode::HashPreCopy);
        assert_eq!(mode(false, 40 * MIB, 30 * MIB), Mode::HashPreCopy);
        assert_eq!(mode(true, 512 * MIB, 100 * MIB), Mode::PreCopy);
        assert_eq!(mode(true, 10 * MIB, 40 * MIB), Mode::PreCopy);
        let pick = auto_mode(true, 10 * MIB, 300 * MIB, &AutoPostCopy::No);
        assert_eq!(pick.mode, Mode::HashPreCopy);
        assert!(pick.why.contains("300 MiB of files"), "{}", pick.why);
        assert!(!pick.why.contains("post-copy"), "{}", pick.why);
    }

    #[test]
    fn auto_picks_post_copy_only_where_allowed_and_possible() {
        let yes = AutoPostCopy::Yes;
        let first = |both, memory, files| {
            let p = auto_mode(both, memory, files, &yes);
            assert_eq!(p.mode, Mode::PostCopy, "{}", p.why);
            assert!(p.why.contains("[migrate] post_copy"), "{}", p.why);
            p.first
        };
        assert_eq!(first(false, 10 * MIB, 0), PostCopyFirst::Nothing);
        assert_eq!(first(false, 512 * MIB, 0), PostCopyFirst::HashBase);
        assert_eq!(first(false, 2 * MIB, 500 * MIB), PostCopyFirst::HashBase);
        assert_eq!(first(true, 10 * MIB, 0), PostCopyFirst::SoftDirtyRounds);
        assert_eq!(first(true, 512 * MIB, 100 * MIB), PostCopyFirst::SoftDirtyRounds);
        // Soft-dirty rounds carry memory only: the files go in a base.
        assert_eq!(first(true, 10 * MIB, 300 * MIB), PostCopyFirst::HashBase);

        // Allowed, but not here: the usual pick, saying why not.
        let cannot = AutoPostCopy::Cannot("post-copy needs runc on client1".into());
        let p = auto_mode(false, 512 * MIB, 0, &cannot);
        assert_eq!((p.mode, p.first), (Mode::HashPreCopy, PostCopyFirst::Nothing));
        assert!(p.why.ends_with("the inventory allows post-copy, but post-copy needs runc on client1"), "{}", p.why);
        assert_eq!(auto_mode(true, 10 * MIB, 0, &cannot).mode, Mode::PreCopy);
    }
}
