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
    /// only pays off when there is data to spare at the freeze).
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
    /// link (never chosen by `auto`).
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

/// `auto`'s choice from what the container holds, and why. Soft-dirty
/// pre-copy copies memory only: a container whose files (root file system
/// changes, volumes) outweigh its memory goes content-addressed, the one
/// mode that ships files before the freeze. Without soft-dirty, a base is
/// worth its pause and extra copy from [`HASH_PRE_COPY_FROM`] on.
pub fn auto_mode(both_track: bool, memory_bytes: u64, files_bytes: u64) -> (Mode, String) {
    let held = format!("{} MiB of memory and {} MiB of files", memory_bytes >> 20, files_bytes >> 20);
    if both_track {
        if files_bytes >= HASH_PRE_COPY_FROM && files_bytes > memory_bytes {
            return (Mode::HashPreCopy, format!("{held}: content-addressed pre-copy ships the files before the freeze"));
        }
        return (Mode::PreCopy, "both hosts track dirty memory".to_string());
    }
    if memory_bytes.saturating_add(files_bytes) >= HASH_PRE_COPY_FROM {
        (Mode::HashPreCopy, format!("{held}: content-addressed pre-copy"))
    } else {
        (Mode::StopAndCopy, format!("{held}: stop-and-copy"))
    }
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

pub async fn plan<'a>(
    cluster: &'a Cluster,
    container: &str,
    target: &str,
    from: Option<&str>,
    mode: ModeArg,
    allow_reset: bool,
    force: &[ForceField],
) -> anyhow::Result<Plan<'a>> {
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
    let wants_base = mode == ModeArg::HashPostCopy;
    let (mode, mode_note) = match mode {
        ModeArg::StopAndCopy => (Mode::StopAndCopy, "as asked".to_string()),
        ModeArg::PreCopy => (Mode::PreCopy, "as asked".to_string()),
        ModeArg::HashPreCopy => (Mode::HashPreCopy, "as asked".to_string()),
        ModeArg::PostCopy | ModeArg::HashPostCopy if both_track => (
            Mode::PostCopy,
            "as asked; soft-dirty rounds first, so the fill after the restore carries only the pages written since the last".to_string(),
        ),
        ModeArg::PostCopy => (Mode::PostCopy, "as asked".to_string()),
        ModeArg::HashPostCopy => {
            (Mode::PostCopy, "as asked; hash-pre-copy's base first, so the fill after the restore carries only the pages written since".to_string())
        }
        ModeArg::Auto => {
            let (mode, why) = auto_mode(both_track, info.memory_bytes, info.files_bytes);
            let note = match mode {
                Mode::PreCopy => why,
                _ if both_track => format!("both hosts track dirty memory, but {why}"),
                _ => format!("soft-dirty pre-copy is unavailable ({why_not}); {why}"),
            };
            (mode, note)
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
    let post_copy_first = match mode {
        Mode::PostCopy if both_track => PostCopyFirst::SoftDirtyRounds,
        Mode::PostCopy if wants_base => PostCopyFirst::HashBase,
        _ => PostCopyFirst::Nothing,
    };
    Ok(Plan { container: info, source, source_name, target_name: target.to_string(), mode, mode_note, post_copy_first, findings })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_weighs_memory_and_files() {
        const MIB: u64 = 1 << 20;
        assert_eq!(auto_mode(false, 10 * MIB, 0).0, Mode::StopAndCopy);
        assert_eq!(auto_mode(false, 64 * MIB, 0).0, Mode::HashPreCopy);
        // Little memory, a big volume: its files are staged before the freeze.
        assert_eq!(auto_mode(false, 2 * MIB, 500 * MIB).0, Mode::HashPreCopy);
        assert_eq!(auto_mode(false, 40 * MIB, 30 * MIB).0, Mode::HashPreCopy);
        assert_eq!(auto_mode(true, 512 * MIB, 100 * MIB).0, Mode::PreCopy);
        assert_eq!(auto_mode(true, 10 * MIB, 40 * MIB).0, Mode::PreCopy);
        let (mode, why) = auto_mode(true, 10 * MIB, 300 * MIB);
        assert_eq!(mode, Mode::HashPreCopy);
        assert!(why.contains("300 MiB of files"), "{why}");
    }
}
