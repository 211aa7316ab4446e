//! Emptying a host before a reboot: every running container on it moves,
//! one after the other, to the other hosts.
//!
//! Every move is planned (compatibility rules on every candidate target)
//! before the first container is frozen, so an evacuation that cannot
//! finish is refused up front instead of half done. Containers then move
//! one at a time: two at once would share the link and the CPUs, and each
//! would be frozen longer. Each move is a normal migration with its own
//! rollback; a move that rolls back leaves that container running on the
//! source and the evacuation goes on with the next (a Ctrl-C stops it).

use crate::cluster::Cluster;
use crate::command::{Ctx, Done, Exit};
use crate::inventory::Inventory;
use crate::{migrate, output, plan, view};
use anyhow::anyhow;
use std::collections::BTreeMap;
use tern_proto::compat::Severity;
use tern_proto::facts::ContainerInfo;
use tern_proto::{MigrationReport, Outcome};

/// One container to place, and the targets its compatibility check allows.
#[derive(Debug, Clone)]
pub struct Candidate {
    pub container: String,
    pub memory_bytes: u64,
    /// Targets that accept it (no blocking finding).
    pub allowed: Vec<String>,
}

/// Where each container goes, or why it stays.
#[derive(Debug, PartialEq, Eq)]
pub struct Placement {
    /// (container, target), in the order to move them.
    pub moves: Vec<(String, String)>,
    /// Containers no target accepts.
    pub stuck: Vec<String>,
}

/// Spreads containers over targets by memory: the largest first, each onto
/// the allowed target holding the least memory so far (what it already runs
/// plus what this evacuation gave it); ties go to the first target named.
/// `load` lists every target with the memory of what it runs now.
pub fn place(mut containers: Vec<Candidate>, load: &[(String, u64)]) -> Placement {
    let mut held: BTreeMap<&str, u64> = load.iter().map(|(t, m)| (t.as_str(), *m)).collect();
    let order: Vec<&str> = load.iter().map(|(t, _)| t.as_str()).collect();
    containers.sort_by(|a, b| b.memory_bytes.cmp(&a.memory_bytes).then_with(|| a.container.cmp(&b.container)));
    let mut moves = Vec::new();
    let mut stuck = Vec::new();
    for c in containers {
        let best = order.iter().filter(|t| c.allowed.iter().any(|a| a == **t)).min_by_key(|t| held[**t]).copied();
        match best {
            Some(t) => {
                *held.get_mut(t).expect("target in load") += c.memory_bytes;
                moves.push((c.container, t.to_string()));
            }
            None => stuck.push(c.container),
        }
    }
    Placement { moves, stuck }
}

/// What became of one planned move.
enum MoveResult {
    /// Cancelled (Ctrl-C) before it started.
    NotStarted,
    /// Failed before the source agent could report (refused on the check
    /// right before the freeze, or contact lost).
    NotMoved(String),
    Reported(Box<MigrationReport>),
}

/// What `tern evacuate` was asked.
pub(crate) struct EvacuateAsk {
    pub(crate) host: String,
    pub(crate) to: Vec<String>,
    pub(crate) mode: plan::ModeArg,
    pub(crate) dry_run: bool,
    pub(crate) skip_blocked: bool,
    pub(crate) opts: migrate::Options,
}

/// Plans, prints and carries out `tern evacuate`.
pub async fn run(ctx: &Ctx, inv: &Inventory, cluster: &Cluster, ask: EvacuateAsk) -> Done {
    let host = ask.host.as_str();
    let source =
        cluster.get(host).ok_or_else(|| Exit::new(2, anyhow!("no host named {host} in the inventory (known: {})", names(cluster).join(", "))))?;
    let source_state = source
        .state
        .as_ref()
        .map_err(|e| Exit::new(1, anyhow!("{host} is unreachable: {e}; evacuating needs its agent (`scripts/lab.sh status`)")))?;
    let targets: Vec<String> = if ask.to.is_empty() {
        names(cluster).into_iter().filter(|n| n != host).collect()
    } else {
        for t in &ask.to {
            if t == host {
                return Err(Exit::new(2, anyhow!("--to names {host}, the host being emptied")));
            }
            if cluster.get(t).is_none() {
                return Err(Exit::new(2, anyhow!("--to {t}: no such host in the inventory (known: {})", names(cluster).join(", "))));
            }
        }
        ask.to.clone()
    };
    let mut load = Vec::new();
    let mut down = Vec::new();
    for t in &targets {
        match &cluster.get(t).expect("checked above").state {
            Ok(s) => load.push((t.clone(), s.containers.iter().filter(|c| c.is_running()).map(|c| c.memory_bytes).sum())),
            Err(e) => down.push(format!("{t}: {e}")),
        }
    }
    for d in &down {
        eprintln!("tern: skipping unreachable target {d}");
    }
    if load.is_empty() {
        return Err(Exit::new(1, anyhow!("no reachable host to evacuate {host} to{}", fmt_down(&down))));
    }

    // Plan every container on every target before anything is frozen.
    let running: Vec<&ContainerInfo> = source_state.containers.iter().filter(|c| c.is_running()).collect();
    let idle: Vec<String> = source_state.containers.iter().filter(|c| !c.is_running()).map(|c| c.name.clone()).collect();
    let mut candidates = Vec::new();
    let mut why_not: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut modes: BTreeMap<(String, String), String> = BTreeMap::new();
    for c in &running {
        let mut allowed = Vec::new();
        for (t, _) in &load {
            match plan::plan(cluster, &c.name, t, Some(host), ask.mode, ask.opts.allow_reset).await {
                Ok(p) if !p.blocked() => {
                    modes.insert((c.name.clone(), t.clone()), p.mode.as_str().to_string());
                    allowed.push(t.clone());
                }
                Ok(p) => why_not.entry(c.name.clone()).or_default().push(format!("{t}: {}", blockers(&p))),
                Err(e) => why_not.entry(c.name.clone()).or_default().push(format!("{t}: {e:#}")),
            }
        }
        candidates.push(Candidate { container: c.name.clone(), memory_bytes: c.memory_bytes, allowed });
    }
    let placement = place(candidates, &load);
    let memory = |name: &str| running.iter().find(|c| c.name == name).map(|c| c.memory_bytes).unwrap_or(0);

    if !ctx.json {
        if running.is_empty() {
            println!("{host} runs no container: nothing to move");
        } else {
            let mut rows: Vec<Vec<String>> = placement
                .moves
                .iter()
                .map(|(c, t)| {
                    let mode = modes.get(&(c.clone(), t.clone())).cloned().unwrap_or_default();
                    vec![c.clone(), output::bytes(memory(c)), t.clone(), mode]
                })
                .collect();
            for c in &placement.stuck {
                let reasons = why_not.get(c).map(|v| v.join("; ")).unwrap_or_default();
                rows.push(vec![c.clone(), output::bytes(memory(c)), "STAYS".into(), reasons]);
            }
            print!("{}", output::table(&["container", "memory", "to", "mode / why not"], &rows));
        }
        for c in &idle {
            println!("{c} is not running: it stays on {host} (tern moves running containers)");
        }
    }
    // Its moves are added once there are any.
    let doc = |outcome: &'static str| view::Evacuate {
        host,
        targets: &targets,
        outcome,
        plan: placement
            .moves
            .iter()
            .map(|(c, t)| view::PlannedMove {
                container: c,
                target: t,
                mode: modes.get(&(c.clone(), t.clone())).map(String::as_str),
                memory_bytes: memory(c),
            })
            .collect(),
        stuck: placement.stuck.iter().map(|c| view::Stuck { container: c, reasons: why_not.get(c).map(Vec::as_slice) }).collect(),
        not_running: &idle,
        unreachable_targets: &down,
        moves: Vec::new(),
    };
    if !placement.stuck.is_empty() && !ask.skip_blocked {
        let e = anyhow!(
            "refused before anything was frozen: {} cannot move to {} (see STAYS above; `tern check NAME --to HOST` shows every rule). \
             Nothing was touched. --skip-blocked moves the others.",
            placement.stuck.join(", "),
            load.iter().map(|(t, _)| t.as_str()).collect::<Vec<_>>().join(" or ")
        );
        return Err(Exit::new(3, e).with(&doc("refused")));
    }
    if ask.dry_run {
        if !ctx.json {
            println!("dry run: nothing was moved");
        }
        return Ok(ctx.doc(&doc("dry-run")));
    }

    // One move at a time, each checked again right before its freeze.
    let n = placement.moves.len();
    let signer = tern_transport::ticket::Signer::load(&inv.tls).map_err(|e| Exit::new(1, anyhow::Error::from(e)))?;
    let mut moved = Vec::new();
    let mut rows = Vec::new();
    let mut all_ok = placement.stuck.is_empty();
    for (i, (c, t)) in placement.moves.iter().enumerate() {
        if migrate::user_cancelled() {
            rows.push(vec![c.clone(), t.clone(), "-".into(), "not started (cancelled)".into(), "-".into(), "-".into()]);
            moved.push((c.clone(), t.clone(), MoveResult::NotStarted));
            all_ok = false;
            continue;
        }
        let result = move_one(inv, &signer, host, c, t, ask.mode, &ask.opts, ctx.quiet, i + 1, n).await;
        match result {
            Ok(report) => {
                if !matches!(report.outcome, Outcome::Completed) {
                    all_ok = false;
                }
                if !ctx.json {
                    print!("{}", output::report_text(&report));
                }
                rows.push(vec![
                    c.clone(),
                    t.clone(),
                    report.mode.as_str().to_string(),
                    output::outcome_word(&report.outcome).to_string(),
                    report.downtime_ms.map(output::ms).unwrap_or_else(|| "-".into()),
                    output::ms(report.total_ms),
                ]);
                moved.push((c.clone(), t.clone(), MoveResult::Reported(Box::new(report))));
            }
            Err(e) => {
                all_ok = false;
                eprintln!("tern: {c}: {e:#}");
                rows.push(vec![c.clone(), t.clone(), "-".into(), "not moved".into(), "-".into(), "-".into()]);
                moved.push((c.clone(), t.clone(), MoveResult::NotMoved(format!("{e:#}"))));
            }
        }
    }
    if !ctx.json && n > 0 {
        println!("{}", if all_ok { format!("{host} is empty of running containers:") } else { format!("{host} is NOT empty:") });
        print!("{}", output::table(&["container", "to", "mode", "outcome", "downtime", "total"], &rows));
        for c in &placement.stuck {
            println!("{c} stays on {host}: {}", why_not.get(c).map(|v| v.join("; ")).unwrap_or_default());
        }
    }
    let done = |outcome| view::Evacuate { moves: moved.iter().map(|(c, t, result)| move_view(c, t, result)).collect(), ..doc(outcome) };
    if all_ok {
        return Ok(ctx.doc(&done("completed")));
    }
    let left: Vec<&str> = moved
        .iter()
        .filter(|(_, _, r)| !matches!(r, MoveResult::Reported(report) if matches!(report.outcome, Outcome::Completed)))
        .map(|(c, _, _)| c.as_str())
        .chain(placement.stuck.iter().map(String::as_str))
        .collect();
    // The text output's last table says it.
    Err(Exit::new(1, anyhow!("{host} is NOT empty: {} still on it", left.join(", "))).with(&done("partial")).told())
}

fn move_view<'a>(container: &'a str, target: &'a str, result: &'a MoveResult) -> view::Move<'a> {
    let (report, outcome, error) = match result {
        MoveResult::NotStarted => (None, Some("not-started"), None),
        MoveResult::NotMoved(e) => (None, Some("not-moved"), Some(e.as_str())),
        MoveResult::Reported(r) => (Some(view::Report::new(r)), None, None),
    };
    view::Move { container, target, report, outcome, error }
}

/// Surveys the cluster and plans one move again (the cluster changed since
/// the first check, and agents close connections idle for a minute), then
/// runs it with a ticket of its own.
#[allow(clippy::too_many_arguments)]
async fn move_one(
    inv: &Inventory,
    signer: &tern_transport::ticket::Signer,
    host: &str,
    container: &str,
    target: &str,
    mode: plan::ModeArg,
    opts: &migrate::Options,
    quiet: bool,
    i: usize,
    n: usize,
) -> anyhow::Result<tern_proto::MigrationReport> {
    let cluster = Cluster::survey(inv).await?;
    let plan = plan::plan(&cluster, container, target, Some(host), mode, opts.allow_reset).await?;
    if plan.blocked() {
        anyhow::bail!("refused before the freeze, on the check right before it: {}", blockers(&plan));
    }
    let address = inv.host(target)?.address;
    if !quiet {
        eprintln!("[{i}/{n}] migrating {container} from {host} to {target} ({}: {})", plan.mode.as_str(), plan.mode_note);
    }
    migrate::run(&plan, address, opts, signer).await
}

fn names(cluster: &Cluster) -> Vec<String> {
    cluster.hosts.iter().map(|h| h.entry.name.clone()).collect()
}

fn fmt_down(down: &[String]) -> String {
    if down.is_empty() {
        String::new()
    } else {
        format!(" (unreachable: {})", down.join("; "))
    }
}

/// The blocking findings of a plan, on one line.
fn blockers(p: &plan::Plan<'_>) -> String {
    p.findings
        .iter()
        .filter(|f| f.severity == Severity::Block)
        .map(|f| {
            if f.target.is_empty() {
                format!("{} {}: {}", f.field, f.source, f.note)
            } else {
                format!("{} {} vs {}: {}", f.field, f.source, f.target, f.note)
            }
        })
        .collect::<Vec<_>>()
        .join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cand(name: &str, mib: u64, allowed: &[&str]) -> Candidate {
        Candidate { container: name.into(), memory_bytes: mib << 20, allowed: allowed.iter().map(|s| s.to_string()).collect() }
    }

    fn load(v: &[(&str, u64)]) -> Vec<(String, u64)> {
        v.iter().map(|(t, m)| (t.to_string(), m << 20)).collect()
    }

    #[test]
    fn largest_first_onto_the_least_loaded_target() {
        let p =
            place(vec![cand("small", 10, &["a", "b"]), cand("big", 500, &["a", "b"]), cand("mid", 200, &["a", "b"])], &load(&[("a", 0), ("b", 100)]));
        // big → a (0 < 100); mid → b (100 < 500); small → b (300 < 500).
        assert_eq!(p.moves, vec![("big".into(), "a".into()), ("mid".into(), "b".into()), ("small".into(), "b".into())]);
        assert!(p.stuck.is_empty());
    }

    #[test]
    fn a_container_goes_only_where_it_is_allowed() {
        let p = place(vec![cand("x", 100, &["b"]), cand("y", 50, &[])], &load(&[("a", 0), ("b", 900)]));
        assert_eq!(p.moves, vec![("x".into(), "b".into())]);
        assert_eq!(p.stuck, vec!["y".to_string()]);
    }

    #[test]
    fn ties_go_to_the_first_target_named() {
        let p = place(vec![cand("x", 1, &["b", "a"])], &load(&[("a", 0), ("b", 0)]));
        assert_eq!(p.moves, vec![("x".into(), "a".into())]);
    }

    #[test]
    fn nothing_to_move_is_an_empty_plan() {
        assert_eq!(place(vec![], &load(&[("a", 0)])), Placement { moves: vec![], stuck: vec![] });
    }
}
