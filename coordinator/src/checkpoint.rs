//! `tern checkpoint create|ls|rm|inspect` and `tern restore`: checkpoints a
//! user keeps, in the store of a host's agent (`agent/src/checkpoints.rs`;
//! the wire types and rules are `tern_proto::checkpoint`).
//!
//! A restore is checked as a migration is, before anything runs: the
//! facts of the host the checkpoint was taken on against the target's
//! (`compat::compare_hosts`), and the target's incoming checks for each
//! container it will make. Restored as the container it was (same name,
//! ID and address), it must not run anywhere else: the command refuses
//! while it does, and while the host it was taken on does not answer,
//! unless the operator says that host is lost (`--host-lost`).

use crate::cluster::Cluster;
use crate::command::{Ctx, Done, Exit};
use crate::inventory::Inventory;
use crate::output;
use anyhow::{anyhow, bail};
use serde::Serialize;
use std::time::{Duration, Instant};
use tern_proto::checkpoint::{
    self as cp, CheckpointRequest, CreateCheckpoint, RestoreCheckpoint, RestoredContainer, StandbyOrder, StandbySpec, StoredCheckpoint,
};
use tern_proto::compat::{self, Finding, Severity};
use tern_proto::{Mode, Peer, Request, Response};
use tern_transport::rpc::Session;

/// A dump, a restore or a copy between stores may take this long.
const SLOW: Duration = Duration::from_secs(900);

/// One request with its own answer limit (the session's default is for
/// quick questions).
async fn ask(session: &Session, req: CheckpointRequest, limit: Duration) -> anyhow::Result<Response> {
    let (_send, mut recv) = session.open(&Request::Checkpoint(req)).await?;
    match session.read::<Response>(&mut recv, tern_transport::timeouts::scaled(limit)).await? {
        Response::Error(e) => Err(anyhow!("{}", e.message)),
        r => Ok(r),
    }
}

async fn stored(session: &Session, req: CheckpointRequest, limit: Duration) -> anyhow::Result<StoredCheckpoint> {
    match ask(session, req, limit).await? {
        Response::Checkpoints(mut v) if v.len() == 1 => Ok(v.remove(0)),
        other => bail!("unexpected answer {other:?}"),
    }
}

fn session<'a>(cluster: &'a Cluster, host: &str) -> anyhow::Result<&'a Session> {
    let view = cluster.get(host).ok_or_else(|| anyhow!("no host named {host} in the inventory"))?;
    view.state.as_ref().map(|s| &s.session).map_err(|e| anyhow!("{host} does not answer: {e}"))
}

fn peer(inv: &Inventory, host: &str) -> anyhow::Result<Peer> {
    let e = inv.host(host)?;
    Ok(Peer { name: e.name.clone(), address: e.address.to_string() })
}

/// A checkpoint and the host whose store holds it.
#[derive(Serialize)]
pub struct Row {
    pub store: String,
    #[serde(flatten)]
    pub checkpoint: StoredCheckpointView,
}

/// A stored checkpoint for `--json`: the digest in hex, the host facts it
/// needs in short.
#[derive(Serialize)]
pub struct StoredCheckpointView {
    pub name: String,
    pub container: String,
    pub container_id: String,
    pub image: String,
    pub taken_on: String,
    pub created_unix: u64,
    pub bytes: u64,
    pub digest: String,
    pub content: cp::Content,
    pub tcp_established: bool,
    pub file_locks: bool,
    pub left_running: bool,
    pub needs: Needs,
}

/// What the host it was taken on ran: what a restore is checked against.
#[derive(Serialize)]
pub struct Needs {
    pub arch: String,
    pub kernel: String,
    pub podman: String,
    pub runtime: String,
    pub criu: String,
    pub cgroups: String,
}

impl From<&StoredCheckpoint> for StoredCheckpointView {
    fn from(c: &StoredCheckpoint) -> Self {
        let f = &c.facts;
        StoredCheckpointView {
            name: c.name.clone(),
            container: c.container.name.clone(),
            container_id: c.container.id.clone(),
            image: c.container.image.clone(),
            taken_on: c.taken_on.clone(),
            created_unix: c.created_unix,
            bytes: c.bytes,
            digest: c.digest.iter().map(|b| format!("{b:02x}")).collect(),
            content: c.content.clone(),
            tcp_established: c.tcp_established,
            file_locks: c.file_locks,
            left_running: c.left_running,
            needs: Needs {
                arch: f.arch.clone(),
                kernel: f.kernel.clone(),
                podman: f.podman_version.clone(),
                // runc says "runc version 1.1.5", crun "crun version 1.8".
                runtime: if f.runtime_version.starts_with(&f.runtime_name) {
                    f.runtime_version.clone()
                } else {
                    format!("{} {}", f.runtime_name, f.runtime_version)
                },
                criu: f.criu_version.clone(),
                cgroups: format!("{:?}", f.cgroups),
            },
        }
    }
}

#[derive(Serialize)]
pub struct Created {
    pub checkpoint: Row,
    /// From the order until it was stored where asked, milliseconds.
    pub ms: u64,
}

/// `tern checkpoint create CONTAINER [--name N] [--store HOST] [--stop] [--file-locks]`.
pub async fn create(ctx: &Ctx, inv: &Inventory, cluster: &Cluster, container: &str, req: Create) -> Done {
    let view = create_one(ctx, inv, cluster, container, &req).await?;
    Ok(ctx.doc(&view))
}

#[derive(Serialize)]
pub struct AllCreated {
    pub host: String,
    pub checkpoints: Vec<Created>,
    /// Containers whose checkpoint failed, with why.
    pub failed: Vec<(String, String)>,
}

/// `tern checkpoint create --all HOST`: every running container of a host,
/// one after the other (before a reboot with nowhere to move them: with
/// `--stop`, then `tern restore` each afterwards).
pub async fn create_all(ctx: &Ctx, inv: &Inventory, cluster: &Cluster, host: &str, req: Create) -> Done {
    if req.name.is_some() {
        return Err(Exit::new(2, anyhow!("--all names each checkpoint after its container: drop --name")));
    }
    let view = cluster.get(host).ok_or_else(|| Exit::new(2, anyhow!("no host named {host} in the inventory")))?;
    let state = view.state.as_ref().map_err(|e| anyhow!("{host} does not answer: {e}"))?;
    let names: Vec<String> = state.containers.iter().filter(|c| c.is_running()).map(|c| c.name.clone()).collect();
    let mut all = AllCreated { host: host.to_string(), checkpoints: Vec::new(), failed: Vec::new() };
    for name in &names {
        match create_one(ctx, inv, cluster, name, &req).await {
            Ok(v) => all.checkpoints.push(v),
            Err(e) => {
                eprintln!("tern: {name}: {:#}", e.error);
                all.failed.push((name.clone(), format!("{:#}", e.error)));
            }
        }
    }
    if !ctx.json && names.is_empty() {
        println!("no container runs on {host}");
    }
    if !all.failed.is_empty() {
        let e = anyhow!("{} of {} checkpoints of {host}'s containers failed", all.failed.len(), names.len());
        return Err(Exit::new(1, e).with(&all));
    }
    Ok(ctx.doc(&all))
}

async fn create_one(ctx: &Ctx, inv: &Inventory, cluster: &Cluster, container: &str, req: &Create) -> Result<Created, Exit> {
    let hosts = cluster.find_container(container);
    let host = match hosts.as_slice() {
        [one] => one.entry.name.clone(),
        [] => return Err(Exit::new(2, anyhow!("no reachable host has a container named {container}; `tern ps` lists them"))),
        many => {
            let names: Vec<&str> = many.iter().map(|h| h.entry.name.as_str()).collect();
            return Err(Exit::new(2, anyhow!("{container} exists on several hosts ({})", names.join(", "))));
        }
    };
    if let Some(n) = &req.name {
        cp::check_name(n).map_err(|e| Exit::new(2, e))?;
    }
    let store = req.store.clone().unwrap_or_else(|| host.clone());
    let store_peer = peer(inv, &store).map_err(|e| Exit::new(2, e))?;
    if store != host {
        // The store says whether it has the room before anything is dumped.
        let c = hosts[0].state.as_ref().ok().and_then(|s| s.containers.iter().find(|c| c.name == container));
        let need = c.map_or(0, |c| c.memory_bytes + c.files_bytes);
        let s = session(cluster, &store).map_err(|e| Exit::new(1, e))?;
        match ask(s, CheckpointRequest::Room { bytes: need }, Duration::from_secs(30)).await {
            Ok(_) => {}
            Err(e) => return Err(Exit::new(1, anyhow!("{store}: {e:#}; nothing was dumped"))),
        }
    }
    let t0 = Instant::now();
    if !ctx.json && !ctx.quiet {
        let how = if req.leave_running { "it keeps running" } else { "it stops" };
        eprintln!("checkpointing {container} on {host} ({how})...");
    }
    let order = CreateCheckpoint {
        container: container.to_string(),
        name: req.name.clone(),
        leave_running: req.leave_running,
        tcp_established: false,
        file_locks: req.file_locks,
    };
    let s = session(cluster, &host)?;
    let mut made = stored(s, CheckpointRequest::Create(order), SLOW).await.map_err(|e| Exit::new(1, anyhow!("{host}: {e:#}")))?;
    if store != host {
        if !ctx.json && !ctx.quiet {
            eprintln!("sending {} ({}) to {store}...", made.name, output::bytes(made.bytes));
        }
        let sent = stored(s, CheckpointRequest::Send { name: made.name.clone(), to: store_peer }, SLOW).await;
        // The store's copy is the checkpoint; the host's goes either way
        // once the store has it, and stays if it does not.
        match sent {
            Ok(m) => {
                if let Err(e) = stored(s, CheckpointRequest::Remove { name: made.name.clone() }, SLOW).await {
                    eprintln!("tern: {} is stored on {store}, but removing the copy on {host} failed: {e:#}", made.name);
                }
                made = m;
            }
            // Running on, the container lost nothing: the copy goes. Stopped
            // by the dump, it stays where it is, with its checkpoint.
            Err(e) if req.leave_running => {
                let _ = stored(s, CheckpointRequest::Remove { name: made.name.clone() }, SLOW).await;
                return Err(Exit::new(
                    1,
                    anyhow!("sending {} to {store} failed: {e:#}; nothing is stored, and {container} runs on on {host}", made.name),
                ));
            }
            Err(e) => {
                return Err(Exit::new(1, anyhow!("{} was taken and kept on {host}, but sending it to {store} failed: {e:#}", made.name)));
            }
        }
    }
    let view = Created { checkpoint: Row { store: store.clone(), checkpoint: (&made).into() }, ms: t0.elapsed().as_millis() as u64 };
    if !ctx.json {
        let c = &made.content;
        println!(
            "checkpoint {} of {} stored on {store}: {} ({} of memory, {} processes) in {}",
            made.name,
            made.container.name,
            output::bytes(made.bytes),
            output::bytes(c.memory_bytes),
            c.processes,
            output::ms(view.ms)
        );
    }
    Ok(view)
}

/// What `tern checkpoint create` was asked.
pub struct Create {
    pub name: Option<String>,
    pub store: Option<String>,
    pub leave_running: bool,
    pub file_locks: bool,
}

#[derive(Serialize)]
pub struct Listing {
    pub checkpoints: Vec<Row>,
    /// Hosts that did not answer, with why.
    pub unreachable: Vec<(String, String)>,
}

/// Every store's checkpoints.
async fn list_all(cluster: &Cluster) -> (Vec<(String, StoredCheckpoint)>, Vec<(String, String)>) {
    let mut all = Vec::new();
    let mut down = Vec::new();
    for h in &cluster.hosts {
        let name = h.entry.name.clone();
        match &h.state {
            Err(e) => down.push((name, e.clone())),
            Ok(s) => match ask(&s.session, CheckpointRequest::List, Duration::from_secs(30)).await {
                Ok(Response::Checkpoints(v)) => all.extend(v.into_iter().map(|c| (name.clone(), c))),
                Ok(other) => down.push((name, format!("unexpected answer {other:?}"))),
                Err(e) => down.push((name, format!("{e:#}"))),
            },
        }
    }
    (all, down)
}

/// `tern checkpoint ls`.
pub async fn ls(ctx: &Ctx, cluster: &Cluster) -> Done {
    let (all, unreachable) = list_all(cluster).await;
    let view = Listing { checkpoints: all.iter().map(|(h, c)| Row { store: h.clone(), checkpoint: c.into() }).collect(), unreachable };
    if !ctx.json {
        for (h, e) in &view.unreachable {
            eprintln!("tern: {h} did not answer: {e}");
        }
        if all.is_empty() {
            println!("no checkpoint is stored");
        } else {
            let now = now_unix();
            let rows: Vec<Vec<String>> = all
                .iter()
                .map(|(h, c)| {
                    vec![
                        c.name.clone(),
                        c.container.name.clone(),
                        h.clone(),
                        c.taken_on.clone(),
                        age(now.saturating_sub(c.created_unix)),
                        output::bytes(c.bytes),
                        output::bytes(c.content.memory_bytes),
                        c.content.processes.to_string(),
                        c.container.image.clone(),
                    ]
                })
                .collect();
            print!("{}", output::table(&["name", "container", "stored on", "taken on", "age", "size", "memory", "procs", "image"], &rows));
        }
    }
    Ok(ctx.doc(&view))
}

fn now_unix() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// `42 s`, `5 min`, `3 h`, `2 d`.
pub fn age(s: u64) -> String {
    match s {
        0..=119 => format!("{s} s"),
        120..=7199 => format!("{} min", s / 60),
        7200..=172_799 => format!("{} h", s / 3600),
        _ => format!("{} d", s / 86_400),
    }
}

/// The one store holding `name` (`--on` says which when several do).
async fn find(cluster: &Cluster, name: &str, on: Option<&str>) -> Result<(String, StoredCheckpoint), Exit> {
    let (all, down) = list_all(cluster).await;
    let mut hits: Vec<(String, StoredCheckpoint)> = all.into_iter().filter(|(h, c)| c.name == name && on.is_none_or(|o| o == h)).collect();
    match hits.len() {
        1 => Ok(hits.remove(0)),
        0 => {
            let also = if down.is_empty() {
                String::new()
            } else {
                format!(" ({} did not answer)", down.iter().map(|(h, _)| h.as_str()).collect::<Vec<_>>().join(", "))
            };
            Err(Exit::new(2, anyhow!("no store holds a checkpoint named {name}{also}; `tern checkpoint ls` lists them")))
        }
        _ => {
            let hosts: Vec<&str> = hits.iter().map(|(h, _)| h.as_str()).collect();
            Err(Exit::new(2, anyhow!("{name} is stored on several hosts ({}): say which with --store", hosts.join(", "))))
        }
    }
}

/// `tern checkpoint rm NAME [--store HOST]`.
pub async fn rm(ctx: &Ctx, cluster: &Cluster, name: &str, on: Option<&str>) -> Done {
    let (host, _) = find(cluster, name, on).await?;
    let gone =
        stored(session(cluster, &host)?, CheckpointRequest::Remove { name: name.to_string() }, SLOW).await.map_err(|e| anyhow!("{host}: {e:#}"))?;
    if !ctx.json {
        println!("removed checkpoint {name} from {host} ({} freed)", output::bytes(gone.bytes));
    }
    Ok(ctx.doc(&Row { store: host, checkpoint: (&gone).into() }))
}

/// `tern checkpoint inspect NAME [--store HOST]`.
pub async fn inspect(ctx: &Ctx, cluster: &Cluster, name: &str, on: Option<&str>) -> Done {
    let (host, c) = find(cluster, name, on).await?;
    let row = Row { store: host.clone(), checkpoint: (&c).into() };
    if !ctx.json {
        let v = &row.checkpoint;
        let ips: Vec<String> = c.container.ips.iter().map(ToString::to_string).collect();
        let when = if c.left_running { "it kept running" } else { "it was stopped" };
        println!("checkpoint {} (stored on {host})", v.name);
        println!("  container   {} ({}), image {}", c.container.name, &c.container.id[..c.container.id.len().min(12)], c.container.image);
        println!("  address     {}", if ips.is_empty() { "-".into() } else { ips.join(", ") });
        println!("  taken       on {}, {} ago; {when}", c.taken_on, age(now_unix().saturating_sub(c.created_unix)));
        println!("  size        {} (digest blake3 {}…)", output::bytes(c.bytes), &v.digest[..16]);
        println!(
            "  processes   {} ({} threads), {} of memory, {} of CRIU images",
            c.content.processes,
            c.content.threads,
            output::bytes(c.content.memory_bytes),
            output::bytes(c.content.images_bytes)
        );
        println!("  files       {} (root file system changes and volumes)", output::bytes(c.content.files_bytes));
        let tcp = if c.content.tcp_connections > 0 {
            format!("{} established (kept when restored as {}; replicas are refused)", c.content.tcp_connections, c.container.name)
        } else {
            "none established".into()
        };
        println!("  tcp         {tcp}");
        println!("  file locks  {}", if c.file_locks { "dumped" } else { "not dumped" });
        let n = &v.needs;
        println!("  needs       {} kernel {}, Podman {}, {}, CRIU {}, cgroups {}", n.arch, n.kernel, n.podman, n.runtime, n.criu, n.cgroups);
    }
    Ok(ctx.doc(&row))
}

#[derive(Serialize)]
pub struct Restored<'a> {
    pub checkpoint: &'a str,
    pub store: &'a str,
    pub on: &'a str,
    pub findings: &'a [Finding],
    pub containers: Vec<RestoredContainer>,
    /// From the order until every container ran, milliseconds.
    pub ms: u64,
    /// What the operator should know of the result (an address Podman gave
    /// a replica that a container elsewhere holds too).
    pub warnings: Vec<String>,
}

/// A replica's address is Podman's choice on its host, which knows only its
/// own containers: one that another host's running container holds too is
/// worth a warning (hosts sharing a subnet should each allocate from a
/// range of their own, `podman network create --ip-range`).
pub fn address_clashes(cluster: &Cluster, target: &str, made: &[RestoredContainer]) -> Vec<String> {
    let mut out = Vec::new();
    for r in made {
        for h in cluster.hosts.iter().filter(|h| h.entry.name != target) {
            let Ok(s) = &h.state else { continue };
            for c in s.containers.iter().filter(|c| c.is_running()) {
                if let Some(ip) = r.ips.iter().find(|ip| c.ips.contains(ip)) {
                    out.push(format!(
                        "{} got {ip} on {target}, which {} on {} holds too: give each host its own --ip-range of the subnet",
                        r.name, c.name, h.entry.name
                    ));
                }
            }
        }
    }
    out
}

/// What `tern restore` was asked.
pub struct RestoreArgs {
    pub on: String,
    pub names: Vec<String>,
    pub store: Option<String>,
    pub host_lost: bool,
    pub replace: bool,
}

/// The findings before a restore: the hosts as a migration from where it
/// was taken would compare them, each container's incoming checks, and,
/// restored as it was, that it runs nowhere else.
async fn restore_findings(cluster: &Cluster, c: &StoredCheckpoint, target: &str, args: &RestoreArgs) -> anyhow::Result<Vec<Finding>> {
    let t = cluster.get(target).ok_or_else(|| anyhow!("no host named {target} in the inventory"))?;
    let t = t.state.as_ref().map_err(|e| anyhow!("{target} does not answer: {e}"))?;
    // A cordoned target blocks here as it does a migration.
    let mut findings = compat::compare_hosts(&c.facts, &t.facts, Mode::StopAndCopy);
    // A restore has no rounds: dirty tracking is a migration's concern.
    findings.retain(|f| f.field != "dirty tracking");
    let names: Vec<Option<&str>> = if args.names.is_empty() { vec![None] } else { args.names.iter().map(|n| Some(n.as_str())).collect() };
    for n in names {
        let incoming = cp::as_restored(&c.container, n);
        match t.session.request(&Request::CheckIncoming(incoming)).await? {
            Response::IncomingCheck(f) => {
                let name = n.unwrap_or(&c.container.name);
                // --replace: a stopped container of that name goes first.
                let stopped = args.replace && t.containers.iter().any(|x| x.name == name && !x.is_running());
                // A replica's address is its host's Podman's choice.
                let waived = |f: &Finding| (n.is_some() && f.field == "address") || (stopped && f.field == "container name");
                findings.extend(f.into_iter().filter(|f| !waived(f)))
            }
            other => bail!("{target} answered {other:?} to CheckIncoming"),
        }
    }
    if args.names.is_empty() {
        findings.extend(elsewhere(cluster, c, target, args.host_lost));
    }
    Ok(findings)
}

/// Restored as it was, the container must not run anywhere else: one
/// finding per host where it does, and one when the host it was taken on
/// cannot say (unless the operator says that host is lost).
pub fn elsewhere(cluster: &Cluster, c: &StoredCheckpoint, target: &str, host_lost: bool) -> Vec<Finding> {
    let mut out = Vec::new();
    for h in cluster.hosts.iter().filter(|h| h.entry.name != target) {
        let name = &h.entry.name;
        match &h.state {
            Ok(s) => {
                if let Some(other) = s.containers.iter().find(|x| x.id == c.container.id || x.name == c.container.name) {
                    let sev = if other.is_running() { Severity::Block } else { Severity::Warn };
                    out.push(Finding {
                        field: "runs elsewhere".into(),
                        source: format!("{name}: {} ({})", other.name, other.state),
                        target: String::new(),
                        severity: sev,
                        note: if other.is_running() {
                            format!("{} runs on {name}: restored as itself it would run twice; restore replicas with --name, or remove it there", other.name)
                        } else {
                            format!("{} exists on {name} ({}); it is not started by this", other.name, other.state)
                        },
                    });
                }
            }
            Err(e) if *name == c.taken_on && !host_lost => out.push(Finding {
                field: "runs elsewhere".into(),
                source: format!("{name}: does not answer"),
                target: String::new(),
                severity: Severity::Block,
                note: format!(
                    "{name}, where it was taken, does not answer ({e}): it may still run there. If {name} is lost, say so with --host-lost; else restore replicas with --name"
                ),
            }),
            Err(_) => {}
        }
    }
    out
}

/// `tern restore CHECKPOINT --on HOST [--name NEW]... [--store HOST] [--host-lost]`.
pub async fn restore(ctx: &Ctx, inv: &Inventory, cluster: &Cluster, name: &str, args: RestoreArgs) -> Done {
    let (store, c) = find(cluster, name, args.store.as_deref()).await?;
    let target = args.on.clone();
    cp::check_replicas(&c.container, &args.names).map_err(|e| Exit::new(2, e))?;
    let findings = restore_findings(cluster, &c, &target, &args).await.map_err(|e| Exit::new(2, e))?;
    let mut view =
        Restored { checkpoint: name, store: &store, on: &target, findings: &findings, containers: Vec::new(), ms: 0, warnings: Vec::new() };
    if compat::blocks(&findings) {
        if !ctx.json {
            print!("{}", output::findings(&findings));
        }
        let e = anyhow!("BLOCKED: {name} is not restored on {target} (see the blocking findings)");
        return Err(Exit::new(3, e).with(&view).told());
    }
    let t0 = Instant::now();
    let on = session(cluster, &target)?;
    // Carried to the target's store for the restore, and dropped there after.
    let shipped = store != target;
    if shipped {
        if !ctx.json && !ctx.quiet {
            eprintln!("sending {name} ({}) from {store} to {target}...", output::bytes(c.bytes));
        }
        let to = peer(inv, &target).map_err(|e| Exit::new(2, e))?;
        stored(session(cluster, &store)?, CheckpointRequest::Send { name: name.to_string(), to }, SLOW)
            .await
            .map_err(|e| anyhow!("sending {name} from {store} to {target}: {e:#}"))?;
    }
    let order = RestoreCheckpoint { name: name.to_string(), digest: c.digest, as_names: args.names.clone(), replace: args.replace };
    let r = ask(on, CheckpointRequest::Restore(order), SLOW).await;
    if shipped {
        if let Err(e) = ask(on, CheckpointRequest::Remove { name: name.to_string() }, SLOW).await {
            eprintln!("tern: the copy of {name} sent to {target} for the restore stays there: {e:#}");
        }
    }
    view.containers = match r.map_err(|e| anyhow!("{target}: {e:#}"))? {
        Response::RestoredAs(v) => v,
        other => return Err(anyhow!("{target} answered {other:?} to a restore").into()),
    };
    view.ms = t0.elapsed().as_millis() as u64;
    if !args.names.is_empty() {
        view.warnings = address_clashes(cluster, &target, &view.containers);
    }
    if !ctx.json {
        for w in &view.warnings {
            eprintln!("tern: warning: {w}");
        }
        for r in &view.containers {
            let ips: Vec<String> = r.ips.iter().map(ToString::to_string).collect();
            println!("{} runs on {target} ({}), restored from {name} in {}", r.name, ips.join(", "), output::ms(r.ms));
        }
        let age = age(now_unix().saturating_sub(c.created_unix));
        println!("state as of {name}, taken on {} {age} ago", c.taken_on);
    }
    Ok(ctx.doc(&view))
}

#[derive(Serialize)]
pub struct Imaged {
    pub store: String,
    pub checkpoint: String,
    pub image: String,
}

/// The image name a checkpoint gets unless told: image names are lowercase.
pub fn default_image(checkpoint: &str) -> String {
    format!("localhost/tern-checkpoint-{}:latest", checkpoint.to_lowercase())
}

/// `tern checkpoint image NAME [--as IMAGE] [--store HOST]`.
pub async fn image(ctx: &Ctx, cluster: &Cluster, name: &str, image: Option<String>, on: Option<&str>) -> Done {
    let (host, _) = find(cluster, name, on).await?;
    let image = image.unwrap_or_else(|| default_image(name));
    let req = CheckpointRequest::Image { name: name.to_string(), image: image.clone() };
    stored(session(cluster, &host)?, req, SLOW).await.map_err(|e| anyhow!("{host}: {e:#}"))?;
    if !ctx.json {
        println!(
            "{name} is image {image} on {host}: `podman push {image} REGISTRY/...` there sends it on; `podman container restore {image}` restores it"
        );
    }
    Ok(ctx.doc(&Imaged { store: host, checkpoint: name.to_string(), image }))
}

#[derive(Serialize)]
pub struct StandbyRow {
    /// The container's host, whose agent takes the checkpoints.
    pub host: String,
    pub container: String,
    pub store: String,
    pub every_secs: u64,
    pub keep: u32,
    pub last: Option<tern_proto::checkpoint::StandbyRun>,
    /// When the last attempt failed, and why; `null` when it did not.
    pub failing: Option<(u64, String)>,
    pub next_in_secs: u64,
}

#[derive(Serialize)]
pub struct StandbyView {
    pub standbys: Vec<StandbyRow>,
    pub unreachable: Vec<(String, String)>,
}

fn standby_rows(host: &str, v: Vec<tern_proto::checkpoint::StandbyStatus>) -> Vec<StandbyRow> {
    v.into_iter()
        .map(|s| StandbyRow {
            host: host.to_string(),
            container: s.spec.container,
            store: s.spec.store.name,
            every_secs: s.spec.every_secs,
            keep: s.spec.keep,
            last: s.last,
            failing: s.failing,
            next_in_secs: s.next_in_secs,
        })
        .collect()
}

async fn standby_order(session: &Session, order: StandbyOrder) -> anyhow::Result<Vec<tern_proto::checkpoint::StandbyStatus>> {
    match ask(session, CheckpointRequest::Standby(order), Duration::from_secs(30)).await? {
        Response::Standby(v) => Ok(v),
        other => bail!("unexpected answer {other:?}"),
    }
}

/// `tern standby CONTAINER --on HOST --every INTERVAL [--keep N]`.
pub async fn standby_set(ctx: &Ctx, inv: &Inventory, cluster: &Cluster, container: &str, on: &str, every: Duration, keep: u32) -> Done {
    let host = match cluster.find_container(container).as_slice() {
        [one] => one.entry.name.clone(),
        [] => return Err(Exit::new(2, anyhow!("no reachable host has a container named {container}; `tern ps` lists them"))),
        _ => return Err(Exit::new(2, anyhow!("{container} exists on several hosts"))),
    };
    if host == on {
        return Err(Exit::new(2, anyhow!("{container} runs on {on}: a standby is kept on another host, one that survives the loss of {on}")));
    }
    session(cluster, on).map_err(|e| Exit::new(1, e))?;
    let spec =
        StandbySpec { container: container.to_string(), store: peer(inv, on).map_err(|e| Exit::new(2, e))?, every_secs: every.as_secs(), keep };
    cp::check_standby(&spec).map_err(|e| Exit::new(2, anyhow!(e)))?;
    let v = standby_order(session(cluster, &host)?, StandbyOrder::Set(spec)).await.map_err(|e| anyhow!("{host}: {e:#}"))?;
    let view = StandbyView { standbys: standby_rows(&host, v), unreachable: Vec::new() };
    if !ctx.json {
        println!(
            "{container} on {host}: a checkpoint every {} s kept on {on} (the latest {keep}), the first now; after the first, only what changed crosses. If {host} is lost: `tern restore <latest> --on {on} --host-lost` (`tern checkpoint ls` names it)",
            every.as_secs()
        );
    }
    Ok(ctx.doc(&view))
}

/// `tern standby ls` and `tern standby stop CONTAINER`.
pub async fn standby_list(ctx: &Ctx, cluster: &Cluster, stop: Option<&str>) -> Done {
    let mut view = StandbyView { standbys: Vec::new(), unreachable: Vec::new() };
    for h in &cluster.hosts {
        let name = h.entry.name.clone();
        match &h.state {
            Err(e) => view.unreachable.push((name, e.clone())),
            Ok(s) => match standby_order(&s.session, StandbyOrder::List).await {
                Ok(v) => view.standbys.extend(standby_rows(&name, v)),
                Err(e) => view.unreachable.push((name, format!("{e:#}"))),
            },
        }
    }
    if let Some(c) = stop {
        let host = match view.standbys.iter().find(|r| r.container == c) {
            Some(r) => r.host.clone(),
            None => return Err(Exit::new(2, anyhow!("no reachable host keeps a standby of {c}")).with(&view)),
        };
        let gone =
            standby_order(session(cluster, &host)?, StandbyOrder::Stop { container: c.to_string() }).await.map_err(|e| anyhow!("{host}: {e:#}"))?;
        view.standbys = standby_rows(&host, gone);
        if !ctx.json {
            println!("{c}'s standby on {host} is stopped; its checkpoints stay where they are (`tern checkpoint ls`)");
        }
        return Ok(ctx.doc(&view));
    }
    if !ctx.json {
        for (h, e) in &view.unreachable {
            eprintln!("tern: {h} did not answer: {e}");
        }
        if view.standbys.is_empty() {
            println!("no standby is set");
        }
        let now = now_unix();
        let rows: Vec<Vec<String>> = view
            .standbys
            .iter()
            .map(|r| {
                let last = r.last.as_ref().map_or("-".to_string(), |l| {
                    format!("{} ago, {} sent of {}", age(now.saturating_sub(l.at_unix)), output::bytes(l.wire_bytes), output::bytes(l.bytes))
                });
                let state = r.failing.as_ref().map_or("ok".to_string(), |(at, why)| format!("FAILING {} ago: {why}", age(now.saturating_sub(*at))));
                vec![r.container.clone(), r.host.clone(), r.store.clone(), format!("{} s", r.every_secs), r.keep.to_string(), last, state]
            })
            .collect();
        if !rows.is_empty() {
            print!("{}", output::table(&["container", "on", "kept on", "every", "keep", "last", "state"], &rows));
        }
    }
    Ok(ctx.doc(&view))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_read_at_a_glance() {
        assert_eq!(age(5), "5 s");
        assert_eq!(age(600), "10 min");
        assert_eq!(age(3 * 3600), "3 h");
        assert_eq!(age(3 * 86_400), "3 d");
    }

    #[test]
    fn image_names_are_lowercase() {
        assert_eq!(default_image("DB-20261130-101500"), "localhost/tern-checkpoint-db-20261130-101500:latest");
    }
}
