//! The way back after an evacuation: `tern return HOST` moves back what
//! evacuations moved away from HOST, as HOST's agent recorded it
//! (`agent/src/evacuation.rs`), and uncordons HOST.
//!
//! For each recorded container it looks where the evacuation put it: still
//! there and running (same container ID), it moves back; otherwise it is
//! skipped, saying why ([`decide`]: already back, removed since, moved by
//! hand elsewhere, stopped, its host unreachable). Every move back passes
//! the same check before the freeze as any migration, but for HOST's own
//! cordon: HOST stays cordoned while its containers come back (its agent
//! lets in what its record holds, and only that), and is uncordoned at the
//! end once every move tried completed. The moves run as an evacuation's
//! do (`evacuate::run_moves`: `--parallel`, `--fail-fast`, Ctrl-C).
//!
//! The record loses a container when it comes back (HOST's agent drops it
//! at the commit) and when this finds it will not (removed, moved by
//! hand, already back); one that is stopped, or whose host did not answer,
//! stays for a later `tern return`.

use crate::cluster::{self, Cluster};
use crate::command::{Ctx, Done, Exit};
use crate::evacuate::{self, Candidate, EvacuateAsk, MoveResult, Purpose, TargetRoom};
use crate::inventory::Inventory;
use crate::{maintenance, output, plan, view};
use anyhow::anyhow;
use std::collections::BTreeMap;
use tern_proto::facts::ContainerInfo;
use tern_proto::{Evacuated, EvacuationRecord, EvacuationRequest, Request, Response};
use tern_transport::rpc::Session;

/// A container as a host reported it, as [`decide`] needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seen {
    pub name: String,
    pub id: String,
    pub state: String,
    pub running: bool,
}

impl Seen {
    fn of(c: &ContainerInfo) -> Seen {
        Seen { name: c.name.clone(), id: c.id.clone(), state: c.state.clone(), running: c.is_running() }
    }
}

/// One host of the inventory: what it runs, or why it did not say.
#[derive(Debug, Clone)]
pub struct HostSeen {
    pub name: String,
    pub containers: Result<Vec<Seen>, String>,
}

/// What becomes of one recorded container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// It runs where the evacuation put it: it moves back from there.
    Return(Evacuated),
    /// It stays where it is, for `reason`; `keep`: it stays in the record
    /// (it may still come back), else the record forgets it.
    Skip { entry: Evacuated, reason: String, keep: bool },
}

/// For each recorded container, in the record's order, whether it moves
/// back to `host`, from what every host of the inventory reported.
pub fn decide(host: &str, record: &EvacuationRecord, hosts: &[HostSeen]) -> Vec<Decision> {
    fn find<'h>(h: &'h HostSeen, id: &str) -> Option<&'h Seen> {
        h.containers.as_ref().ok()?.iter().find(|c| c.id == id)
    }
    record
        .containers
        .iter()
        .map(|e| {
            let skip = |reason: String, keep: bool| Decision::Skip { entry: e.clone(), reason, keep };
            let t = &e.target;
            if let Some(c) = hosts.iter().find(|h| h.name == host).and_then(|h| find(h, &e.id)) {
                return skip(format!("already back on {host} ({})", c.state), false);
            }
            let Some(target) = hosts.iter().find(|h| h.name == *t) else {
                return skip(format!("moved to {t}, which is not in the inventory"), true);
            };
            let there = match &target.containers {
                Err(why) => return skip(format!("{t} is unreachable ({why}): cannot tell whether it still runs there"), true),
                Ok(cs) => cs,
            };
            if let Some(c) = find(target, &e.id) {
                return if c.running { Decision::Return(e.clone()) } else { skip(format!("on {t} but not running ({})", c.state), true) };
            }
            if let Some(h) = hosts.iter().find(|h| h.name != host && find(h, &e.id).is_some()) {
                return skip(format!("moved by hand to {}", h.name), false);
            }
            let other = there
                .iter()
                .find(|c| c.name == e.name)
                .map(|_| format!("; a different container named {} runs on {t} now", e.name))
                .unwrap_or_default();
            let down: Vec<&str> = hosts.iter().filter(|h| h.containers.is_err()).map(|h| h.name.as_str()).collect();
            if down.is_empty() {
                skip(format!("removed since: not on {t} nor on any other host{other}"), false)
            } else {
                skip(format!("not on {t} any more, nor on the hosts that answered (unreachable: {}){other}", down.join(", ")), true)
            }
        })
        .collect()
}

/// Reads `host`'s evacuation record after forgetting `forget`.
async fn record(session: &Session, forget: Vec<String>) -> anyhow::Result<EvacuationRecord> {
    match session.request(&Request::Evacuation(EvacuationRequest { forget })).await? {
        Response::Evacuation(r) => Ok(r),
        Response::Error(e) => Err(anyhow!("{}", e.message)),
        other => Err(session.unexpected("Evacuation", &other).into()),
    }
}

/// Plans, prints and carries out `tern return` (`ask.to` is unused).
pub async fn run(ctx: &Ctx, inv: &Inventory, cluster: &Cluster, ask: EvacuateAsk) -> Done {
    let host = ask.host.as_str();
    let known = evacuate::names(cluster);
    let host_view = cluster.get(host).ok_or_else(|| Exit::new(2, anyhow!("no host named {host} in the inventory (known: {})", known.join(", "))))?;
    let host_state = host_view.state.as_ref().map_err(|e| {
        Exit::new(
            1,
            anyhow!(
                "{host} is unreachable: {e}. Its agent keeps the record of what was evacuated from it, so nothing was moved: \
                 start it (`scripts/lab.sh status` in the lab; `systemctl status tern-agent` on {host}) and run `tern return {host}` again"
            ),
        )
    })?;
    let rec = record(&host_state.session, Vec::new())
        .await
        .map_err(|e| Exit::new(1, anyhow!("{host} could not say what was evacuated from it, so nothing was moved: {e:#}")))?;
    let decisions = decide(host, &rec, &seen_all(cluster));

    // Check every move back before anything is frozen, as evacuate does.
    let Checked { candidates, mut why_not, modes, from_of } = check_returns(cluster, host, &decisions, &ask).await;
    let room = TargetRoom {
        name: host.to_string(),
        held: host_state.containers.iter().filter(|c| c.is_running()).map(|c| c.memory_bytes).sum(),
        memory_available: host_state.facts.status.memory_available_bytes,
        disk_available: host_state.facts.status.disk_available_bytes,
    };
    let placement = evacuate::place(candidates, std::slice::from_ref(&room));
    for (c, why) in &placement.no_room {
        why_not.entry(c.clone()).or_default().extend(why.iter().cloned());
    }
    let from = |c: &str| from_of.get(c).map(|(f, _)| f.as_str()).unwrap_or("");
    let id = |c: &str| from_of.get(c).map(|(_, i)| i.as_str()).unwrap_or("");
    let info = |c: &str| running_on(cluster, from(c), id(c));
    let memory = |c: &str| info(c).map(|x| x.memory_bytes).unwrap_or(0);
    let skipped: Vec<(&Evacuated, &str, bool)> = decisions
        .iter()
        .filter_map(|d| match d {
            Decision::Skip { entry, reason, keep } => Some((entry, reason.as_str(), *keep)),
            Decision::Return(_) => None,
        })
        .collect();

    if !ctx.json {
        if rec.containers.is_empty() {
            println!("nothing is recorded as evacuated from {host}");
        } else {
            let since = rec.since_unix().map(tern_proto::facts::utc).unwrap_or_default();
            println!("{} container(s) recorded as evacuated from {host} (since {since}):", rec.containers.len());
            let mut rows: Vec<Vec<String>> = placement
                .moves
                .iter()
                .map(|(c, _)| vec![c.clone(), from(c).to_string(), output::bytes(memory(c)), modes.get(c).cloned().unwrap_or_default()])
                .collect();
            rows.extend(placement.stuck.iter().map(|c| {
                let why = why_not.get(c).map(|v| v.join("; ")).unwrap_or_default();
                vec![c.clone(), from(c).to_string(), output::bytes(memory(c)), format!("STAYS: {why}")]
            }));
            if !rows.is_empty() {
                print!("{}", output::table(&["container", "from", "memory", "mode / why not"], &rows));
            }
            for (e, reason, _) in &skipped {
                println!("{} skipped: {reason}", e.name);
            }
        }
    }
    let doc = |outcome: &'static str, uncordoned: bool| view::Return {
        host,
        outcome,
        recorded: rec.containers.len(),
        uncordoned,
        parallel: ask.parallel,
        plan: placement
            .moves
            .iter()
            .map(|(c, _)| view::ReturnPlanned {
                container: c,
                id: id(c),
                from: from(c),
                mode: modes.get(c).map(String::as_str),
                memory_bytes: memory(c),
            })
            .collect(),
        skipped: skipped
            .iter()
            .map(|(e, reason, kept)| view::Skipped { container: &e.name, id: &e.id, target: &e.target, reason, kept: *kept })
            .collect(),
        stuck: placement.stuck.iter().map(|c| view::Stuck { container: c, reasons: why_not.get(c).map(Vec::as_slice) }).collect(),
        moves: Vec::new(),
    };
    if !placement.stuck.is_empty() && !ask.skip_blocked {
        let e = anyhow!(
            "refused before anything was frozen: {} cannot move back to {host} (see STAYS above; `tern check NAME --to {host}` shows every rule). \
             Nothing was touched and {host} stays as it was. --skip-blocked moves the others back.",
            placement.stuck.join(", ")
        );
        return Err(Exit::new(3, e).with(&doc("refused", false)));
    }
    if ask.dry_run {
        if !ctx.json {
            println!("dry run: nothing was moved, forgotten or uncordoned");
        }
        return Ok(ctx.doc(&doc("dry-run", false)));
    }

    let sources: Vec<String> = placement.moves.iter().map(|(c, _)| from(c).to_string()).collect();
    let running: Vec<&ContainerInfo> = placement.moves.iter().filter_map(|(c, _)| info(c)).collect();
    let results = evacuate::run_moves(ctx, inv, &sources, &placement.moves, &running, &ask, Purpose::Return).await?;
    let all_ok = results.iter().all(MoveResult::completed);

    // What will not come back leaves the record; so does what came back
    // (its agent dropped it at the commit already).
    let forget: Vec<String> = skipped
        .iter()
        .filter(|(_, _, keep)| !keep)
        .map(|(e, _, _)| e.id.clone())
        .chain(placement.moves.iter().zip(&results).filter(|(_, r)| r.completed()).map(|((c, _), _)| id(c).to_string()))
        .collect();
    forget_in_record(inv, host, &host_view.entry, forget).await;
    let (uncordoned, uncordon_error) = if all_ok { uncordon(ctx, inv, host).await } else { (false, None) };
    if !ctx.json && !placement.moves.is_empty() {
        let moved_from: Vec<(String, String)> = placement.moves.iter().map(|(c, _)| (c.clone(), from(c).to_string())).collect();
        println!("{}", if all_ok { format!("back on {host}:") } else { format!("NOT all back on {host}:") });
        print!("{}", evacuate::results_table(&moved_from, &results, "from"));
    }
    let done = |outcome| view::Return {
        moves: placement
            .moves
            .iter()
            .zip(&results)
            .map(|((c, _), result)| view::ReturnMove { from: from(c), mv: evacuate::move_view(c, host, result) })
            .collect(),
        ..doc(outcome, uncordoned)
    };
    if let Some(e) = uncordon_error {
        let e = anyhow!("every container moved back, but {host} could not be uncordoned: {e:#}; `tern uncordon {host}` lifts it");
        return Err(Exit::new(1, e).with(&done("partial")));
    }
    if all_ok {
        if !ctx.json && !placement.stuck.is_empty() {
            println!("{} stay where they are (--skip-blocked) and in {host}'s record", placement.stuck.join(", "));
        }
        return Ok(ctx.doc(&done("completed")));
    }
    let left: Vec<&str> = placement.moves.iter().zip(&results).filter(|(_, r)| !r.completed()).map(|((c, _), _)| c.as_str()).collect();
    let e = anyhow!(
        "{} did not come back to {host} (each runs on where it was, see the table); {host} stays cordoned. \
         `tern return {host}` tries them again; `tern uncordon {host}` takes {host} back as it is",
        left.join(", ")
    );
    Err(Exit::new(1, e).with(&done("partial")))
}

/// The container with ID `id` on host `on`, as the survey saw it.
fn running_on<'a>(cluster: &'a Cluster, on: &str, id: &str) -> Option<&'a ContainerInfo> {
    cluster.get(on)?.state.as_ref().ok()?.containers.iter().find(|c| c.id == id)
}

/// What every host runs now, as [`decide`] needs it.
fn seen_all(cluster: &Cluster) -> Vec<HostSeen> {
    cluster
        .hosts
        .iter()
        .map(|h| HostSeen {
            name: h.entry.name.clone(),
            containers: h.state.as_ref().map(|s| s.containers.iter().map(Seen::of).collect()).map_err(Clone::clone),
        })
        .collect()
}

/// The check before the freeze of every move back.
struct Checked {
    candidates: Vec<Candidate>,
    why_not: BTreeMap<String, Vec<String>>,
    modes: BTreeMap<String, String>,
    /// Per container: the host it comes back from, and its ID.
    from_of: BTreeMap<String, (String, String)>,
}

async fn check_returns(cluster: &Cluster, host: &str, decisions: &[Decision], ask: &EvacuateAsk) -> Checked {
    let mut out = Checked { candidates: Vec::new(), why_not: BTreeMap::new(), modes: BTreeMap::new(), from_of: BTreeMap::new() };
    for d in decisions {
        let Decision::Return(e) = d else { continue };
        let Some(c) = running_on(cluster, &e.target, &e.id) else { continue };
        out.from_of.insert(e.name.clone(), (e.target.clone(), e.id.clone()));
        let mut allowed = Vec::new();
        match plan::plan(cluster, &e.name, host, Some(&e.target), &ask.opts.ask(ask.mode)).await {
            Ok(mut p) => {
                p.returning();
                if p.blocked() {
                    out.why_not.entry(e.name.clone()).or_default().push(evacuate::blockers(&p));
                } else {
                    out.modes.insert(e.name.clone(), p.mode.as_str().to_string());
                    allowed.push(host.to_string());
                }
            }
            Err(err) => out.why_not.entry(e.name.clone()).or_default().push(format!("{err:#}")),
        }
        out.candidates.push(Candidate { container: e.name.clone(), memory_bytes: c.memory_bytes, files_bytes: c.files_bytes, allowed });
    }
    out
}

/// Drops `forget` (container IDs) from `host`'s evacuation record; a
/// failure is only a warning (the next return skips them again).
async fn forget_in_record(inv: &Inventory, host: &str, entry: &crate::inventory::HostEntry, forget: Vec<String>) {
    if forget.is_empty() {
        return;
    }
    // A new connection: the survey's may have idled out during the moves.
    let forgot = async {
        let (_endpoint, session) = cluster::connect(inv, entry).await?;
        record(&session, forget).await
    };
    if let Err(e) = forgot.await {
        eprintln!("tern: warning: {host} could not drop what will not come back from its evacuation record ({e:#}); the next `tern return {host}` skips it again");
    }
}

/// Lifts `host`'s cordon: whether it was, and why not.
async fn uncordon(ctx: &Ctx, inv: &Inventory, host: &str) -> (bool, Option<anyhow::Error>) {
    match maintenance::set_cordon(inv, host, None).await {
        Ok(change) => {
            if !ctx.quiet {
                eprintln!("{}", maintenance::describe(host, &change));
            }
            (true, None)
        }
        Err(e) => (false, Some(e.error)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(name: &str, id: &str, target: &str) -> Evacuated {
        Evacuated { name: name.into(), id: id.into(), target: target.into(), migration: 1, moved_unix: 1 }
    }

    fn c(name: &str, id: &str, running: bool) -> Seen {
        Seen { name: name.into(), id: id.into(), state: if running { "running" } else { "exited" }.into(), running }
    }

    fn up(name: &str, containers: Vec<Seen>) -> HostSeen {
        HostSeen { name: name.into(), containers: Ok(containers) }
    }

    fn down(name: &str) -> HostSeen {
        HostSeen { name: name.into(), containers: Err("timed out".into()) }
    }

    /// (container, Some(reason) if skipped, keep).
    fn outline(d: &[Decision]) -> Vec<(String, Option<String>, bool)> {
        d.iter()
            .map(|d| match d {
                Decision::Return(e) => (e.name.clone(), None, true),
                Decision::Skip { entry, reason, keep } => (entry.name.clone(), Some(reason.clone()), *keep),
            })
            .collect()
    }

    #[test]
    fn what_still_runs_where_it_went_moves_back_and_the_rest_is_skipped_saying_why() {
        let record = EvacuationRecord {
            containers: vec![
                entry("web", "1", "client2"),
                entry("gone", "2", "client2"),
                entry("byhand", "3", "client2"),
                entry("stopped", "4", "client2"),
                entry("home", "5", "client2"),
                entry("renamed", "6", "client2"),
                entry("db", "7", "client3"),
                entry("far", "8", "client9"),
            ],
        };
        let hosts = vec![
            up("client1", vec![c("home", "5", true)]),
            up("client2", vec![c("web", "1", true), c("stopped", "4", false), c("renamed", "66", true), c("other", "0", true)]),
            up("client3", vec![c("db", "7", true), c("byhand", "3", true)]),
        ];
        let d = decide("client1", &record, &hosts);
        let reason = |n: &str| outline(&d).into_iter().find(|(c, _, _)| c == n).unwrap();
        assert_eq!(
            d.iter().filter_map(|d| if let Decision::Return(e) = d { Some(e.name.as_str()) } else { None }).collect::<Vec<_>>(),
            ["web", "db"]
        );
        assert_eq!(reason("gone"), ("gone".into(), Some("removed since: not on client2 nor on any other host".into()), false));
        assert_eq!(reason("byhand"), ("byhand".into(), Some("moved by hand to client3".into()), false));
        assert_eq!(reason("stopped"), ("stopped".into(), Some("on client2 but not running (exited)".into()), true));
        assert_eq!(reason("home"), ("home".into(), Some("already back on client1 (running)".into()), false));
        let (_, why, keep) = reason("renamed");
        assert!(
            !keep
                && why.as_deref()
                    == Some("removed since: not on client2 nor on any other host; a different container named renamed runs on client2 now"),
            "{why:?}"
        );
        assert_eq!(reason("far"), ("far".into(), Some("moved to client9, which is not in the inventory".into()), true));
        // The record's order is kept.
        assert_eq!(
            outline(&d).into_iter().map(|(c, _, _)| c).collect::<Vec<_>>(),
            ["web", "gone", "byhand", "stopped", "home", "renamed", "db", "far"]
        );
    }

    #[test]
    fn an_unreachable_host_leaves_its_containers_in_the_record() {
        let record = EvacuationRecord { containers: vec![entry("a", "1", "client2"), entry("b", "2", "client3"), entry("c", "3", "client3")] };
        let hosts = vec![up("client1", vec![]), down("client2"), up("client3", vec![c("b", "2", true)])];
        let d = outline(&decide("client1", &record, &hosts));
        assert_eq!(d[0], ("a".into(), Some("client2 is unreachable (timed out): cannot tell whether it still runs there".into()), true));
        assert_eq!(d[1], ("b".into(), None, true));
        // Not where it went, but it may be on the host that did not answer.
        assert_eq!(d[2], ("c".into(), Some("not on client3 any more, nor on the hosts that answered (unreachable: client2)".into()), true));
    }

    #[test]
    fn an_empty_record_moves_nothing() {
        assert!(decide("client1", &EvacuationRecord::default(), &[up("client1", vec![]), up("client2", vec![])]).is_empty());
    }
}
