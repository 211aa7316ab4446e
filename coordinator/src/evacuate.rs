//! Emptying a host before maintenance: the host is cordoned first (so
//! nothing lands on it meanwhile), then every running container on it
//! moves to the other hosts, up to `--parallel N` at once.
//!
//! Every move is planned (compatibility rules on every candidate target,
//! room on each) before the first container is frozen, so an evacuation
//! that cannot finish is refused up front instead of half done.
//! Placement counts, for each target, the memory and disk of the moves
//! already planned there against what the target reported free, and
//! before each move starts it checks the target's fresh figures against
//! the moves still under way there. Each move is a normal migration with
//! its own rollback; a move that fails leaves that container running on
//! the source and the others go on (`--fail-fast`: the first failure
//! cancels the moves under way and starts no more). A Ctrl-C cancels the
//! moves under way (each rolls back, or completes if past its
//! switchover) and starts no more.

use crate::cluster::Cluster;
use crate::command::{Ctx, Done, Exit};
use crate::inventory::Inventory;
use crate::progress::{Board, Display, Shown};
use crate::{maintenance, migrate, output, plan, view};
use anyhow::anyhow;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use tern_proto::compat::Severity;
use tern_proto::facts::ContainerInfo;
use tern_proto::Outcome;

/// The reason an evacuation's cordon records.
pub const CORDON_REASON: &str = "evacuating (tern evacuate)";

/// One container to place, and the targets its compatibility check allows.
#[derive(Debug, Clone)]
pub struct Candidate {
    pub container: String,
    pub memory_bytes: u64,
    pub files_bytes: u64,
    /// Targets that accept it (no blocking finding).
    pub allowed: Vec<String>,
}

impl Candidate {
    /// What it takes on a target: memory, and disk for its checkpoint and
    /// files (should the checkpoint not fit in RAM).
    fn need(&self) -> Need {
        Need { memory: self.memory_bytes, disk: self.memory_bytes.saturating_add(self.files_bytes) }
    }
}

/// Memory and disk, in bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Need {
    pub memory: u64,
    pub disk: u64,
}

/// A target as placement sees it.
#[derive(Debug, Clone)]
pub struct TargetRoom {
    pub name: String,
    /// Memory of what it runs now: placement spreads by it.
    pub held: u64,
    /// What it reported free (`HostFacts::status`); 0: unknown, no limit.
    pub memory_available: u64,
    pub disk_available: u64,
}

/// Whether `need` fits in what a target has free once the moves already
/// headed there (`headed`) have landed; why not, if not. 0 free means
/// unknown: no limit.
pub fn fits(target: &str, memory_available: u64, disk_available: u64, headed: Need, need: Need) -> Result<(), String> {
    let check = |what: &str, free: u64, taken: u64, want: u64| {
        if free == 0 || taken.saturating_add(want) <= free {
            Ok(())
        } else {
            Err(format!(
                "{target}: no room: {} of {what} needed, {} free{}",
                output::bytes(want),
                output::bytes(free),
                if taken > 0 { format!(" and {} of it taken by moves headed there", output::bytes(taken)) } else { String::new() }
            ))
        }
    };
    check("memory", memory_available, headed.memory, need.memory)?;
    check("disk", disk_available, headed.disk, need.disk)
}

/// Where each container goes, or why it stays.
#[derive(Debug, PartialEq, Eq)]
pub struct Placement {
    /// (container, target), in the order to move them.
    pub moves: Vec<(String, String)>,
    /// Containers no target accepts, or none has room for.
    pub stuck: Vec<String>,
    /// Why each target with no room was passed over, for containers some
    /// target accepts but none has room for.
    pub no_room: BTreeMap<String, Vec<String>>,
}

/// Spreads containers over targets by memory: the largest first, each onto
/// the allowed target holding the least memory so far (what it already runs
/// plus what this evacuation gave it) that still has room for it once the
/// moves placed there before it have landed; ties go to the first target
/// named.
pub fn place(mut containers: Vec<Candidate>, targets: &[TargetRoom]) -> Placement {
    let mut held: BTreeMap<&str, u64> = targets.iter().map(|t| (t.name.as_str(), t.held)).collect();
    let mut headed: BTreeMap<&str, Need> = targets.iter().map(|t| (t.name.as_str(), Need::default())).collect();
    containers.sort_by(|a, b| b.memory_bytes.cmp(&a.memory_bytes).then_with(|| a.container.cmp(&b.container)));
    let mut moves = Vec::new();
    let mut stuck = Vec::new();
    let mut no_room: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for c in containers {
        let need = c.need();
        let mut why = Vec::new();
        let roomy: Vec<&TargetRoom> = targets
            .iter()
            .filter(|t| c.allowed.contains(&t.name))
            .filter(|t| match fits(&t.name, t.memory_available, t.disk_available, headed[t.name.as_str()], need) {
                Ok(()) => true,
                Err(e) => {
                    why.push(e);
                    false
                }
            })
            .collect();
        match roomy.into_iter().min_by_key(|t| held[t.name.as_str()]) {
            Some(t) => {
                let t = t.name.as_str();
                *held.get_mut(t).expect("a target") += c.memory_bytes;
                let h = headed.get_mut(t).expect("a target");
                *h = Need { memory: h.memory + need.memory, disk: h.disk + need.disk };
                moves.push((c.container, t.to_string()));
            }
            None => {
                if !why.is_empty() {
                    no_room.insert(c.container.clone(), why);
                }
                stuck.push(c.container);
            }
        }
    }
    Placement { moves, stuck, no_room }
}

/// What became of one planned move.
pub(crate) enum MoveResult {
    /// Cancelled (Ctrl-C, `--fail-fast`) before it started.
    NotStarted,
    /// Failed before the source agent could report (refused on the check
    /// right before the freeze, no room, or contact lost).
    NotMoved(String),
    Reported(Box<migrate::Moved>),
}

impl MoveResult {
    pub(crate) fn completed(&self) -> bool {
        matches!(self, MoveResult::Reported(m) if matches!(m.report.outcome, Outcome::Completed))
    }
}

/// What `tern evacuate` was asked.
pub(crate) struct EvacuateAsk {
    pub(crate) host: String,
    pub(crate) to: Vec<String>,
    pub(crate) mode: plan::ModeArg,
    pub(crate) dry_run: bool,
    pub(crate) skip_blocked: bool,
    /// At most this many moves at once (1 or more).
    pub(crate) parallel: usize,
    /// The first failed move cancels the others and starts no more.
    pub(crate) fail_fast: bool,
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
    let targets = targets_of(cluster, host, &ask.to)?;
    // Nothing lands on the host while it empties (and after, until
    // `tern uncordon`); a dry run changes nothing.
    let mut cordoned = false;
    if !ask.dry_run {
        let change = maintenance::set_cordon(inv, host, Some(CORDON_REASON.to_string()))
            .await
            .map_err(|e| Exit::new(e.code, anyhow!("could not cordon {host} before evacuating it, so nothing was moved: {:#}", e.error)))?;
        cordoned = true;
        if !ctx.quiet {
            eprintln!("{}", maintenance::describe(host, &change));
        }
    }
    let (rooms, down) = rooms_of(cluster, &targets);
    for d in &down {
        eprintln!("tern: skipping target {d}");
    }
    if rooms.is_empty() {
        return Err(Exit::new(1, anyhow!("no reachable, uncordoned host to evacuate {host} to{}", fmt_down(&down))));
    }

    // Plan every container on every target before anything is frozen.
    let running: Vec<&ContainerInfo> = source_state.containers.iter().filter(|c| c.is_running()).collect();
    let idle: Vec<String> = source_state.containers.iter().filter(|c| !c.is_running()).map(|c| c.name.clone()).collect();
    let Checked { candidates, mut why_not, modes } = check_all(cluster, host, &running, &rooms, &ask).await;
    let placement = place(candidates, &rooms);
    for (c, why) in &placement.no_room {
        why_not.entry(c.clone()).or_default().extend(why.iter().cloned());
    }
    let info = |name: &str| running.iter().find(|c| c.name == name).copied();
    let memory = |name: &str| info(name).map(|c| c.memory_bytes).unwrap_or(0);

    if !ctx.json {
        print_plan(host, &placement, &modes, &why_not, &memory, &idle, running.is_empty());
    }
    let targets_left: Vec<String> = rooms.iter().map(|t| t.name.clone()).collect();
    // Its moves are added once there are any.
    let doc = |outcome: &'static str| view::Evacuate {
        host,
        targets: &targets,
        outcome,
        cordoned,
        parallel: ask.parallel,
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
    let still_cordoned = || if cordoned { format!(" {host} stays cordoned (`tern uncordon {host}` lifts it).") } else { String::new() };
    if !placement.stuck.is_empty() && !ask.skip_blocked {
        let e = anyhow!(
            "refused before anything was frozen: {} cannot move to {} (see STAYS above; `tern check NAME --to HOST` shows every rule). \
             Nothing was touched. --skip-blocked moves the others.{}",
            placement.stuck.join(", "),
            targets_left.join(" or "),
            still_cordoned()
        );
        return Err(Exit::new(3, e).with(&doc("refused")));
    }
    if ask.dry_run {
        if !ctx.json {
            println!("dry run: nothing was moved (nor {host} cordoned)");
        }
        return Ok(ctx.doc(&doc("dry-run")));
    }

    let sources = vec![host.to_string(); placement.moves.len()];
    let results = run_moves(ctx, inv, &sources, &placement.moves, &running, &ask, Purpose::Evacuate).await?;
    let n = placement.moves.len();
    let all_ok = placement.stuck.is_empty() && results.iter().all(MoveResult::completed);
    if !ctx.json && n > 0 {
        println!("{}", if all_ok { format!("{host} is empty of running containers:") } else { format!("{host} is NOT empty:") });
        print!("{}", results_table(&placement.moves, &results, "to"));
        for c in &placement.stuck {
            println!("{c} stays on {host}: {}", why_not.get(c).map(|v| v.join("; ")).unwrap_or_default());
        }
        println!(
            "{host} stays cordoned: `tern return {host}` moves its containers back and uncordons it (`tern uncordon {host}` only lifts the cordon)"
        );
    }
    let done = |outcome| view::Evacuate {
        moves: placement.moves.iter().zip(&results).map(|((c, t), result)| move_view(c, t, result)).collect(),
        ..doc(outcome)
    };
    if all_ok {
        return Ok(ctx.doc(&done("completed")));
    }
    let left: Vec<&str> = placement
        .moves
        .iter()
        .zip(&results)
        .filter(|(_, r)| !r.completed())
        .map(|((c, _), _)| c.as_str())
        .chain(placement.stuck.iter().map(String::as_str))
        .collect();
    // The text output's last table says it.
    Err(Exit::new(1, anyhow!("{host} is NOT empty: {} still on it.{}", left.join(", "), still_cordoned())).with(&done("partial")).told())
}

/// The hosts to evacuate `host` to: `to`, checked, or every other host.
fn targets_of(cluster: &Cluster, host: &str, to: &[String]) -> Result<Vec<String>, Exit> {
    if to.is_empty() {
        return Ok(names(cluster).into_iter().filter(|n| n != host).collect());
    }
    for t in to {
        if t == host {
            return Err(Exit::new(2, anyhow!("--to names {host}, the host being emptied")));
        }
        if cluster.get(t).is_none() {
            return Err(Exit::new(2, anyhow!("--to {t}: no such host in the inventory (known: {})", names(cluster).join(", "))));
        }
    }
    Ok(to.to_vec())
}

/// The room on each target that may take containers, and why the others
/// may not (unreachable, cordoned).
fn rooms_of(cluster: &Cluster, targets: &[String]) -> (Vec<TargetRoom>, Vec<String>) {
    let mut rooms = Vec::new();
    let mut down = Vec::new();
    for t in targets {
        match cluster.get(t).map(|h| &h.state) {
            Some(Ok(s)) => match &s.facts.status.cordon {
                // The check would refuse it for each container: said once.
                Some(c) => down.push(format!("{t}: cordoned {}", c.describe())),
                None => rooms.push(TargetRoom {
                    name: t.clone(),
                    held: s.containers.iter().filter(|c| c.is_running()).map(|c| c.memory_bytes).sum(),
                    memory_available: s.facts.status.memory_available_bytes,
                    disk_available: s.facts.status.disk_available_bytes,
                }),
            },
            Some(Err(e)) => down.push(format!("{t}: {e}")),
            None => down.push(format!("{t}: not in the inventory")),
        }
    }
    (rooms, down)
}

/// What the compatibility check said of every container on every target.
struct Checked {
    candidates: Vec<Candidate>,
    /// Per container, why each target refused it.
    why_not: BTreeMap<String, Vec<String>>,
    /// The mode each (container, target) pair would move in.
    modes: BTreeMap<(String, String), String>,
}

/// Runs the check before the freeze for every container on every target.
async fn check_all(cluster: &Cluster, host: &str, running: &[&ContainerInfo], rooms: &[TargetRoom], ask: &EvacuateAsk) -> Checked {
    let mut out = Checked { candidates: Vec::new(), why_not: BTreeMap::new(), modes: BTreeMap::new() };
    for c in running {
        let mut allowed = Vec::new();
        for t in rooms {
            let t = &t.name;
            match plan::plan(cluster, &c.name, t, Some(host), &ask.opts.ask(ask.mode)).await {
                Ok(p) if !p.blocked() => {
                    out.modes.insert((c.name.clone(), t.clone()), p.mode.as_str().to_string());
                    allowed.push(t.clone());
                }
                Ok(p) => out.why_not.entry(c.name.clone()).or_default().push(format!("{t}: {}", blockers(&p))),
                Err(e) => out.why_not.entry(c.name.clone()).or_default().push(format!("{t}: {e:#}")),
            }
        }
        out.candidates.push(Candidate { container: c.name.clone(), memory_bytes: c.memory_bytes, files_bytes: c.files_bytes, allowed });
    }
    out
}

/// The plan, for people: each move, and each container that stays and why.
fn print_plan(
    host: &str,
    placement: &Placement,
    modes: &BTreeMap<(String, String), String>,
    why_not: &BTreeMap<String, Vec<String>>,
    memory: &dyn Fn(&str) -> u64,
    idle: &[String],
    nothing_runs: bool,
) {
    if nothing_runs {
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
    for c in idle {
        println!("{c} is not running: it stays on {host} (tern moves running containers)");
    }
}

/// What became of each move, as a table for people; `other` heads the
/// column of each move's second host (`to`, or `from` for a return).
pub(crate) fn results_table(moves: &[(String, String)], results: &[MoveResult], other: &str) -> String {
    let rows: Vec<Vec<String>> = moves
        .iter()
        .zip(results)
        .map(|((c, t), r)| match r {
            MoveResult::Reported(moved) => vec![
                c.clone(),
                t.clone(),
                moved.report.mode.as_str().to_string(),
                output::outcome_word(&moved.report.outcome).to_string(),
                moved.report.downtime_ms.map(output::ms).unwrap_or_else(|| "-".into()),
                output::ms(moved.report.total_ms),
            ],
            MoveResult::NotStarted => vec![c.clone(), t.clone(), "-".into(), "not started (cancelled)".into(), "-".into(), "-".into()],
            MoveResult::NotMoved(_) => vec![c.clone(), t.clone(), "-".into(), "not moved".into(), "-".into(), "-".into()],
        })
        .collect();
    output::table(&["container", other, "mode", "outcome", "downtime", "total"], &rows)
}

/// Why moves run: the source agent records an evacuation's moves, and a
/// return's may land on their cordoned host ([`plan::Plan::returning`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Purpose {
    Evacuate,
    Return,
}

/// Runs the planned moves (`moves[i]`: container and target, from
/// `sources[i]`), up to `ask.parallel` at once; a result for each, in the
/// plan's order.
pub(crate) async fn run_moves(
    ctx: &Ctx,
    inv: &Inventory,
    sources: &[String],
    moves: &[(String, String)],
    running: &[&ContainerInfo],
    ask: &EvacuateAsk,
    purpose: Purpose,
) -> Result<Vec<MoveResult>, Exit> {
    let n = moves.len();
    let signer = Arc::new(tern_transport::ticket::Signer::load(&inv.tls).map_err(|e| Exit::new(1, anyhow::Error::from(e)))?);
    let inv = Arc::new(inv.clone());
    let (cancel_tx, cancel) = tokio::sync::watch::channel(false);
    // Memory and disk of the moves under way, by target.
    let headed: Arc<Mutex<HashMap<String, Need>>> = Arc::default();
    let board = (ask.parallel > 1).then(|| Board::new(!ctx.quiet));
    let say = |text: &str| match &board {
        Some(b) => b.say(text),
        None => eprintln!("{text}"),
    };
    let mut results: Vec<Option<MoveResult>> = (0..n).map(|_| None).collect();
    let mut set = tokio::task::JoinSet::new();
    let mut next = 0;
    let mut stop = false;
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    loop {
        while !stop && set.len() < ask.parallel.max(1) && next < n {
            let i = next;
            next += 1;
            let (c, t) = moves[i].clone();
            let c_info = running.iter().find(|x| x.name == c);
            let need = Need {
                memory: c_info.map(|x| x.memory_bytes).unwrap_or(0),
                disk: c_info.map(|x| x.memory_bytes.saturating_add(x.files_bytes)).unwrap_or(0),
            };
            let job = Move {
                board: board.clone(),
                progress: !ctx.quiet,
                files_bytes: c_info.map(|x| x.files_bytes).unwrap_or(0),
                inv: inv.clone(),
                signer: signer.clone(),
                host: sources[i].clone(),
                container: c,
                target: t,
                need,
                headed: headed.clone(),
                mode: ask.mode,
                opts: ask.opts.clone(),
                purpose,
                quiet: ctx.quiet || board.is_some(),
                i: i + 1,
                n,
            };
            let cancel = cancel.clone();
            set.spawn(async move { (i, job.run(cancel).await) });
        }
        if set.is_empty() {
            break;
        }
        tokio::select! {
            Some(joined) = set.join_next() => {
                let (i, result) = joined.map_err(|e| Exit::new(1, anyhow!("a move's task failed: {e}")))?;
                let (c, t) = &moves[i];
                let result = match result {
                    Ok(Some(moved)) => MoveResult::Reported(Box::new(moved)),
                    Ok(None) => MoveResult::NotStarted,
                    Err(e) => MoveResult::NotMoved(format!("{e:#}")),
                };
                match &result {
                    MoveResult::Reported(moved) => {
                        let report = &moved.report;
                        if !ctx.json && board.is_none() {
                            print!("{}", output::report_text(report, &moved.forced));
                        }
                        let downtime = report.downtime_ms.map(|d| format!(", downtime {}", output::ms(d))).unwrap_or_default();
                        say(&format!("[{}/{n}] {c} → {t}: {}{downtime}", i + 1, output::outcome_word(&report.outcome)));
                    }
                    MoveResult::NotMoved(e) => say(&format!("[{}/{n}] {c} → {t}: not moved: {e}", i + 1)),
                    MoveResult::NotStarted => {}
                }
                if !result.completed() && !matches!(result, MoveResult::NotStarted) && ask.fail_fast && !stop {
                    stop = true;
                    let _ = cancel_tx.send(true);
                    say("--fail-fast: a move failed; cancelling the moves under way (each rolls back) and starting no more");
                }
                results[i] = Some(result);
            }
            _ = &mut ctrl_c, if !stop => {
                stop = true;
                let _ = cancel_tx.send(true);
                say("cancelling: the moves under way roll back (those past their switchover complete); no more start");
            }
        }
    }
    Ok(results.into_iter().map(|r| r.unwrap_or(MoveResult::NotStarted)).collect())
}

pub(crate) fn move_view<'a>(container: &'a str, target: &'a str, result: &'a MoveResult) -> view::Move<'a> {
    let (report, outcome, error) = match result {
        MoveResult::NotStarted => (None, Some("not-started"), None),
        MoveResult::NotMoved(e) => (None, Some("not-moved"), Some(e.as_str())),
        MoveResult::Reported(m) => (Some(view::Report::new(&m.report, &m.forced)), None, None),
    };
    view::Move { container, target, report, outcome, error }
}

/// One move of an evacuation, run on a task of its own.
struct Move {
    /// The shared view, when moves run side by side; else the move's own lines.
    board: Option<Board>,
    /// Show progress (not under `--quiet`).
    progress: bool,
    files_bytes: u64,
    inv: Arc<Inventory>,
    signer: Arc<tern_transport::ticket::Signer>,
    host: String,
    container: String,
    target: String,
    need: Need,
    headed: Arc<Mutex<HashMap<String, Need>>>,
    mode: plan::ModeArg,
    opts: migrate::Options,
    purpose: Purpose,
    /// No line of its own ("migrating ..."): under `--quiet`, or when a
    /// shared view shows the move.
    quiet: bool,
    i: usize,
    n: usize,
}

impl Move {
    /// Surveys the cluster and plans the move again (the cluster changed
    /// since the first check, and agents close connections idle for a
    /// minute), checks the target's room against the moves under way
    /// there, then runs it with a ticket of its own. `Ok(None)`: cancelled
    /// before it started.
    async fn run(self, cancel: migrate::Cancel) -> anyhow::Result<Option<migrate::Moved>> {
        let (host, container, target) = (self.host.as_str(), self.container.as_str(), self.target.as_str());
        let cluster = Cluster::survey(&self.inv).await?;
        if *cancel.borrow() {
            return Ok(None);
        }
        let mut plan = plan::plan(&cluster, container, target, Some(host), &self.opts.ask(self.mode)).await?;
        if self.purpose == Purpose::Return {
            plan.returning();
        }
        if plan.blocked() {
            anyhow::bail!("refused before the freeze, on the check right before it: {}", blockers(&plan));
        }
        // Room now, less what the moves under way there will take.
        let status = &cluster.get(target).and_then(|h| h.state.as_ref().ok()).map(|s| s.facts.status.clone()).unwrap_or_default();
        let _reserved = {
            let mut headed = self.headed.lock().unwrap();
            let there = headed.entry(target.to_string()).or_default();
            fits(target, status.memory_available_bytes, status.disk_available_bytes, *there, self.need)
                .map_err(|e| anyhow!("not started, {e} (the plan's figures changed)"))?;
            *there = Need { memory: there.memory + self.need.memory, disk: there.disk + self.need.disk };
            Reserved { headed: self.headed.clone(), target: target.to_string(), need: self.need }
        };
        let address = self.inv.host(target)?.address;
        if !self.quiet {
            eprintln!("[{}/{}] migrating {container} from {host} to {target} ({}: {})", self.i, self.n, plan.mode.as_str(), plan.mode_note);
        }
        let (memory, files) = (plan.container.memory_bytes, plan.container.files_bytes.max(self.files_bytes));
        let mut shown: Box<dyn Shown> = match &self.board {
            Some(b) => Box::new(b.slot(format!("[{}/{}] {container} → {target}", self.i, self.n), plan.mode, memory, files)),
            None => Box::new(Display::new(self.progress, plan.mode, memory, files)),
        };
        let evacuation = self.purpose == Purpose::Evacuate;
        let result = migrate::run_with(&plan, address, &self.opts, &self.signer, shown.as_mut(), cancel, evacuation).await;
        shown.finish();
        result.map(Some)
    }
}

/// A move's share of its target, counted while it runs.
struct Reserved {
    headed: Arc<Mutex<HashMap<String, Need>>>,
    target: String,
    need: Need,
}

impl Drop for Reserved {
    fn drop(&mut self) {
        if let Some(h) = self.headed.lock().unwrap().get_mut(&self.target) {
            *h = Need { memory: h.memory.saturating_sub(self.need.memory), disk: h.disk.saturating_sub(self.need.disk) };
        }
    }
}

pub(crate) fn names(cluster: &Cluster) -> Vec<String> {
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
pub(crate) fn blockers(p: &plan::Plan<'_>) -> String {
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

    const MIB: u64 = 1 << 20;

    fn cand(name: &str, mib: u64, allowed: &[&str]) -> Candidate {
        Candidate { container: name.into(), memory_bytes: mib * MIB, files_bytes: 0, allowed: allowed.iter().map(|s| s.to_string()).collect() }
    }

    /// Targets holding so much memory, with no limit known.
    fn load(v: &[(&str, u64)]) -> Vec<TargetRoom> {
        v.iter().map(|(t, m)| TargetRoom { name: t.to_string(), held: m * MIB, memory_available: 0, disk_available: 0 }).collect()
    }

    fn room(name: &str, held: u64, memory: u64, disk: u64) -> TargetRoom {
        TargetRoom { name: name.into(), held: held * MIB, memory_available: memory * MIB, disk_available: disk * MIB }
    }

    fn moves(v: &[(&str, &str)]) -> Vec<(String, String)> {
        v.iter().map(|(c, t)| (c.to_string(), t.to_string())).collect()
    }

    #[test]
    fn largest_first_onto_the_least_loaded_target() {
        let p =
            place(vec![cand("small", 10, &["a", "b"]), cand("big", 500, &["a", "b"]), cand("mid", 200, &["a", "b"])], &load(&[("a", 0), ("b", 100)]));
        // big → a (0 < 100); mid → b (100 < 500); small → b (300 < 500).
        assert_eq!(p.moves, moves(&[("big", "a"), ("mid", "b"), ("small", "b")]));
        assert!(p.stuck.is_empty());
    }

    #[test]
    fn a_container_goes_only_where_it_is_allowed() {
        let p = place(vec![cand("x", 100, &["b"]), cand("y", 50, &[])], &load(&[("a", 0), ("b", 900)]));
        assert_eq!(p.moves, moves(&[("x", "b")]));
        assert_eq!(p.stuck, vec!["y".to_string()]);
        assert!(p.no_room.is_empty(), "y is refused, not short of room");
    }

    #[test]
    fn ties_go_to_the_first_target_named() {
        let p = place(vec![cand("x", 1, &["b", "a"])], &load(&[("a", 0), ("b", 0)]));
        assert_eq!(p.moves, moves(&[("x", "a")]));
    }

    #[test]
    fn nothing_to_move_is_an_empty_plan() {
        assert_eq!(place(vec![], &load(&[("a", 0)])), Placement { moves: vec![], stuck: vec![], no_room: BTreeMap::new() });
    }

    #[test]
    fn the_moves_headed_to_a_target_count_against_its_room() {
        // a holds less, but 1000 MiB free fit 600 + 300 and not the third.
        let p = place(
            vec![cand("x", 600, &["a", "b"]), cand("y", 300, &["a", "b"]), cand("z", 200, &["a", "b"])],
            &[room("a", 0, 1000, 0), room("b", 2000, 0, 0)],
        );
        // x → a (0 < 2000); y → a (600 < 2000, 600 + 300 <= 1000); z: a has 100 left, so b.
        assert_eq!(p.moves, moves(&[("x", "a"), ("y", "a"), ("z", "b")]));
        assert!(p.stuck.is_empty());
    }

    #[test]
    fn disk_counts_memory_and_files_and_a_container_with_no_room_anywhere_stays_saying_why() {
        let mut big = cand("big", 100, &["a"]);
        big.files_bytes = 50 * MIB;
        // 120 MiB of disk: enough for its memory, not for memory and files.
        let p = place(vec![big, cand("ok", 10, &["a"])], &[room("a", 0, 0, 120)]);
        assert_eq!(p.moves, moves(&[("ok", "a")]));
        assert_eq!(p.stuck, vec!["big".to_string()]);
        let why = &p.no_room["big"];
        assert!(why.len() == 1 && why[0].starts_with("a: no room: 150.0 MiB of disk needed, 120.0 MiB free"), "{why:?}");
    }

    #[test]
    fn fits_weighs_what_is_headed_there_and_unknown_room_is_no_limit() {
        let need = Need { memory: 100 * MIB, disk: 150 * MIB };
        assert_eq!(fits("a", 0, 0, Need { memory: u64::MAX / 2, disk: 0 }, need), Ok(()));
        assert_eq!(fits("a", 200 * MIB, 200 * MIB, Need { memory: 100 * MIB, disk: 50 * MIB }, need), Ok(()));
        let e = fits("a", 200 * MIB, 0, Need { memory: 101 * MIB, disk: 0 }, need).unwrap_err();
        assert_eq!(e, "a: no room: 100.0 MiB of memory needed, 200.0 MiB free and 101.0 MiB of it taken by moves headed there");
        let e = fits("a", 0, 100 * MIB, Need::default(), need).unwrap_err();
        assert_eq!(e, "a: no room: 150.0 MiB of disk needed, 100.0 MiB free");
    }

    #[test]
    fn a_reservation_is_given_back_when_its_move_ends() {
        let headed: Arc<Mutex<HashMap<String, Need>>> = Arc::default();
        headed.lock().unwrap().insert("a".into(), Need { memory: 300, disk: 400 });
        drop(Reserved { headed: headed.clone(), target: "a".into(), need: Need { memory: 100, disk: 150 } });
        assert_eq!(headed.lock().unwrap()["a"], Need { memory: 200, disk: 250 });
    }
}
