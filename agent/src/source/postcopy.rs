//! Post-copy's freeze, on the source: everything but memory crosses now,
//! memory after the target's restore, from the frozen container.
//!
//! Podman cannot ask for a lazy dump, but runc reads CRIU options from the
//! file the container's `org.criu.config` names, and with `lazy-pages`,
//! `address` and `port` there CRIU dumps everything but the memory, then
//! serves the pages on that port until a `criu lazy-pages` has taken them
//! all, and only then ends (and Podman with it). Meanwhile its images are
//! already in the container's folder, beside the `config.dump` and
//! `spec.dump` Podman wrote before calling runc: this side packs those
//! into the archive the target restores from, and the page tunnel
//! (`tunnel.rs`) joins the target's lazy-pages daemon to the page server.
//!
//! ```text
//!  label org.criu.config -> <work>/tern-postcopy-criu.conf (lazy-pages, port P)
//!  podman checkpoint --export=FIFO ─▶ CRIU: images written, "Starting page server"
//!  archive: config.dump spec.dump network.status devshm-checkpoint.tar checkpoint/*
//!           (+ rootfs-diff.tar from the upper layer, rootfs.rs) ─▶ the target restores
//!  tunnel: 127.0.0.1:P ═ QUIC legs ═ target's daemon      (reconnects after a lost link)
//!  the daemon has every page ─▶ CRIU ends, the container here is gone, Podman writes
//!  its (memory-less) archive into the FIFO, drained and dropped
//! ```
//!
//! From the moment the target restores, the container runs there: this
//! side never restores its copy again, except where CRIU itself failed
//! while serving (then CRIU has already let the copy here run on, and the
//! target's, short of pages, must go: `Run::resolve`).

use super::error::{At, SourceError};
use super::{archive_pipe, FifoHolder, Run};
use crate::engine::CheckpointOpts;
use crate::transfer;
use crate::tunnel::{End, LegEnd, TunnelError};
use std::path::Path;
use std::time::{Duration, Instant};
use tern_proto::facts::ContainerInfo;
use tern_proto::postcopy::Decision;
use tern_proto::{DataKind, Digest, FillLink, MigrateEvent, Phase, Request};
use tern_transport::rpc::Session;

/// The pipe size CRIU's page server asks for (it serves pages from pipes
/// of up to this much); below it a lazy dump fails once it serves more
/// than a few pages.
const PIPE_MAX: u64 = 4 << 20;
/// What CRIU's log says once the page server listens.
const SERVING: &str = "Starting page server on port";
/// How long CRIU may take to dump everything but memory.
const DUMP_LIMIT: Duration = Duration::from_secs(120);

/// The fill under way: the dump that serves it, and the tunnel.
pub(super) struct Fill {
    /// Podman's checkpoint: it ends when the target has every page.
    pub checkpoint: tokio::task::JoinHandle<(crate::engine::Result<()>, Instant)>,
    /// The source's side of the tunnel: the bytes it carried, or why it failed.
    pub tunnel: tokio::task::JoinHandle<Result<u64, TunnelError>>,
    /// Cancelled to give the fill up (`Run::abandon_fill`).
    pub abandon: tokio_util::sync::CancellationToken,
    /// On top of a base: the pages the target took from it.
    pub from_base: Option<std::sync::Arc<std::sync::atomic::AtomicU64>>,
}

impl Run<'_> {
    /// The freeze of a post-copy migration (module docs): returns the
    /// archive's digest once it crossed and the tunnel runs.
    /// `with_previous`: the dump sits on the last soft-dirty round.
    pub(super) async fn dump_lazy(&mut self, in_ram: bool, with_previous: bool) -> Result<Digest, super::Fail> {
        let p = Phase::Checkpoint;
        let info = self.info()?;
        let fail = |m: String| SourceError::PostCopy(m).at(p);
        // Podman holds the container's lock for the whole dump, fill
        // included: what is asked of Podman is asked before.
        let folder = self.agent.engine.container_dir(&info.name).await.at(p)?;
        raise_pipe_max();
        let port = free_port().map_err(|e| fail(format!("no free local port for CRIU's page server: {e}")))?;
        let conf = self.work_dir.join("tern-postcopy-criu.conf");
        let mut text = std::fs::read_to_string("/etc/criu/runc.conf").unwrap_or_default();
        if !text.is_empty() && !text.ends_with('\n') {
            text.push('\n');
        }
        text.push_str(&format!("# tern post-copy: this dump only (agent/src/source/postcopy.rs)\nlazy-pages\naddress 127.0.0.1\nport {port}\n"));
        std::fs::write(&conf, text).map_err(|e| fail(format!("writing {}: {e}", conf.display())))?;
        self.agent.engine.set_criu_options(&info.id, &conf).await.at(p)?;
        let _ = std::fs::remove_file(folder.join("dump.log"));

        let fifo = self.work_dir.join("checkpoint.fifo");
        let (mut reader, hold) = archive_pipe(&fifo).map_err(|source| SourceError::Fifo { path: fifo.clone(), source }.at(p))?;
        let holder = FifoHolder::spawn(&fifo);
        // On top of soft-dirty rounds (`with_previous`), CRIU leaves the pages
        // unwritten since the last round to it (the target holds them) and
        // serves only the others.
        let opts = CheckpointOpts { tcp_established: self.req.options.tcp_established, lazy: true, with_previous, ..Default::default() };
        self.checkpoint_in_ram = in_ram;
        let frozen_at = Instant::now();
        self.frozen_at = Some(frozen_at);
        let (engine, name) = (self.agent.engine.clone(), info.name.clone());
        let mut checkpoint = tokio::spawn(async move {
            // Podman's own archive comes after the fill, without memory:
            // read and dropped, so that Podman can finish.
            let drain = tokio::spawn(async move { tokio::io::copy(&mut reader, &mut tokio::io::sink()).await });
            let r = engine.checkpoint_export(&name, &fifo, opts).await;
            drop(hold);
            let _ = drain.await;
            drop(holder);
            (r, Instant::now())
        });

        // Until CRIU serves, or fails.
        let started = Instant::now();
        let log = folder.join("dump.log");
        loop {
            if std::fs::read_to_string(&log).is_ok_and(|t| t.contains(SERVING)) {
                break;
            }
            if checkpoint.is_finished() {
                let (r, _) = (&mut checkpoint).await.at(p)?;
                r.map_err(SourceError::Checkpoint).at(p)?;
                return Err(fail("the dump ended before it served any page".into()));
            }
            if started.elapsed() > DUMP_LIMIT {
                return Err(fail(format!("CRIU did not serve pages within {} s; see {}", DUMP_LIMIT.as_secs(), log.display())));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let dumped = frozen_at.elapsed();
        // CRIU has read its options: later checkpoints of the container
        // find no file there and use the host's.
        let _ = std::fs::remove_file(&conf);
        // The page server's one client, before the archive leaves: should
        // anything fail from here on, closing it ends the dump, and CRIU
        // lets the container run here again.
        let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.map_err(|e| fail(format!("connecting to CRIU's page server: {e}")))?;
        let _ = tcp.set_nodelay(true);
        // Should this agent die mid-fill, the kernel resets the connection
        // instead of closing it: CRIU takes a reset for a failed transfer
        // and lets the container run here again, but a close between two
        // requests for a finished one, and kills it (`End::fail_page_server`).
        // A finished fill is closed by CRIU first, so the reset never
        // reaches a CRIU that completed.
        // (Deprecated for lingering that blocks the thread on drop; a zero
        // linger never blocks: it resets at once.)
        #[allow(deprecated)]
        let linger = tcp.set_linger(Some(Duration::ZERO));
        if let Err(e) = linger {
            tracing::warn!("SO_LINGER on CRIU's page-server connection: {e}; should this agent die mid-fill, CRIU would end the dump");
        }
        // On top of a base, pages the target holds from it cross as
        // their number there (`tunnel::Dedupe`).
        let end = match self.base_index.clone() {
            Some(index) => End::new(tcp, self.pace.cap(), true).with_index(index),
            None => End::new(tcp, self.pace.cap(), true),
        };

        let archive = pack(&folder, &info).map_err(|e| fail(format!("packing the images in {}: {e}", folder.display())))?;
        let (reader, completion) =
            crate::rootfs::completing(std::io::Cursor::new(archive), self.upper_dir.clone(), self.work_dir.join("rootfs-diff.spool"));
        let (send_started, throttled0) = (Instant::now(), self.pace.throttled());
        let sent = self.stream_frozen(DataKind::Checkpoint, reader, transfer::Encoding::Raw).await;
        completion.await.at(p)?.map_err(SourceError::CompleteArchive).at(p)?;
        let target = self.req.target.name.clone();
        let transfer::Sent { digest, stats, .. } = sent.map_err(|source| SourceError::StreamCheckpoint { target, source }.at(p))?;
        let shipped = send_started.elapsed();
        self.frozen_steps = vec![
            tern_proto::StepTime { step: tern_proto::FrozenStep::CriuDump, ms: dumped.as_millis() as u64 },
            tern_proto::StepTime { step: tern_proto::FrozenStep::Transfer, ms: shipped.as_millis() as u64 },
        ];
        self.checkpoint_bytes = digest.bytes;
        self.count_sent(&stats, shipped, self.pace.throttled().saturating_sub(throttled0));

        let events = self.events.clone();
        let route = Route {
            session: self.session().clone(),
            endpoint: self.agent.endpoint.clone(),
            addr: self.req.target.address.parse().ok(),
            target: self.req.target.name.clone(),
            me: self.agent.cfg.name.clone(),
            id: self.req.id,
            container: info.name.clone(),
            wait: self.agent.cfg.limits.post_copy_wait(),
            note: Box::new(move |note| {
                let _ = events.try_send(MigrateEvent::Notice(note));
            }),
        };
        let entry = self.agent.fills.register(self.req.id, &info.name, &self.req.target.name);
        let abandon = tokio_util::sync::CancellationToken::new();
        let from_base = end.from_base();
        let tunnel = tokio::spawn(serve_source(end, route, entry, abandon.clone()));
        self.fill = Some(Fill { checkpoint, tunnel, abandon, from_base });
        self.check_cancel(p)?;
        Ok(digest)
    }

    /// Waits for the fill to end, and says whether the container's copy
    /// here is gone (Ok: CRIU ended it once the target had every page) or
    /// runs again (Err: CRIU failed, or the tunnel, and CRIU let it run).
    /// Decided by the container's main process, not by Podman's exit
    /// status: only that says which copy is the container now.
    pub(super) async fn fill_done(&mut self) -> Option<Result<(), String>> {
        let fill = self.fill.as_mut()?;
        let dump = match (&mut fill.checkpoint).await {
            Ok((Ok(()), _)) => None,
            Ok((Err(e), _)) => Some(e.to_string()),
            Err(e) => Some(format!("its task: {e}")),
        };
        let fill = self.fill.take()?;
        let from_base = fill.from_base.clone();
        let tunnel = match fill.tunnel.await {
            Ok(Ok(bytes)) => {
                tracing::info!(id = self.req.id, bytes, "the page tunnel is done");
                None
            }
            Ok(Err(e)) => Some(e.to_string()),
            Err(e) if e.is_cancelled() => None,
            Err(e) => Some(format!("its task: {e}")),
        };
        if let Some(n) = from_base {
            // What the base spared the link, as hash-pre-copy reports it.
            let pages = n.load(std::sync::atomic::Ordering::Relaxed);
            tracing::info!(id = self.req.id, pages, "pages taken from the base on the target, not sent");
            self.saved_bytes = pages * crate::tunnel::PAGE as u64;
        }
        let pid = self.container.as_ref().map_or(0, |c| c.pid);
        let here = pid > 0 && process_runs(pid);
        let why = [dump.map(|e| format!("the dump: {e}")), tunnel.map(|e| format!("the page tunnel: {e}"))]
            .into_iter()
            .flatten()
            .collect::<Vec<_>>()
            .join("; ");
        match (here, why.is_empty()) {
            (false, true) => Some(Ok(())),
            (false, false) => {
                tracing::warn!(id = self.req.id, "{why}; but the container no longer runs here: the target has it");
                Some(Ok(()))
            }
            (true, _) => Some(Err(if why.is_empty() { "the container runs here again".to_string() } else { why })),
        }
    }

    /// Gives the fill up before the target ran the container: the tunnel
    /// fails the page server's transfer (`End::fail_page_server`), and
    /// CRIU lets the container run here again.
    pub(super) async fn abandon_fill(&mut self) {
        if let Some(fill) = self.fill.as_mut() {
            fill.abandon.cancel();
            let _ = self.fill_done().await;
        }
    }
}

/// Where the source's side of the tunnel goes, and who hears of it.
struct Route {
    session: Session,
    endpoint: quinn::Endpoint,
    addr: Option<std::net::SocketAddr>,
    target: String,
    me: String,
    id: tern_proto::MigrationId,
    container: String,
    /// How long a lost link is tried every second before the fill is
    /// reported stalled (`[limits] post_copy_wait_secs`).
    wait: Duration,
    /// Progress lines for the coordinator that started the move.
    note: Box<dyn Fn(String) + Send + Sync>,
}

/// The source's side of the tunnel: the first leg on the migration's own
/// connection, each later one on a new connection to the target, until
/// the fill is over, CRIU failed, or the operator gave the move up
/// (`tern_proto::postcopy`: a lost link is tried again for as long as the
/// fill lives, and never given up by this agent alone).
async fn serve_source(
    mut end: End,
    route: Route,
    entry: crate::fills::Entry,
    abandon: tokio_util::sync::CancellationToken,
) -> Result<u64, TunnelError> {
    // The operator's give-up hears it was carried out once CRIU has failed
    // the transfer (and runs the container here again), not before.
    let mut given_up = None;
    let r = tokio::select! {
        r = serve_legs(&mut end, route, entry, &mut given_up) => r,
        () = abandon.cancelled() => Err(TunnelError::GaveUp),
    };
    // Whatever ended the tunnel, CRIU's connection must not just close
    // (`End::fail_page_server`); a finished fill has closed it already.
    if r.is_err() {
        end.fail_page_server().await;
    }
    if let Some(done) = given_up {
        let _ = done.send(());
    }
    r
}

async fn serve_legs(
    end: &mut End,
    route: Route,
    mut entry: crate::fills::Entry,
    given_up: &mut Option<tokio::sync::oneshot::Sender<()>>,
) -> Result<u64, TunnelError> {
    let Route { session, endpoint, addr, target, me, id, container, wait, note } = route;
    end.read = entry.bytes.clone();
    let mut session = Some(session);
    // Since when the link is lost (and in Unix seconds), and whether the
    // operator was told the fill stalled.
    let mut lost: Option<(Instant, u64)> = None;
    let mut stall_told = false;
    let stall = |since: Instant| {
        let m = format!(
            "{target} has been out of reach for {} s; {container} waits there, paused, for its memory, kept here. \
             `tern post-copy resume {container}` tries the link now (it is tried every {} s); \
             `tern post-copy give-up {container}` runs it here again as of its freeze, and what it did on {target} is lost",
            since.elapsed().as_secs(),
            tern_proto::postcopy::STALLED_RETRY.as_secs()
        );
        tracing::error!(id, "{m}");
        note(m);
    };
    loop {
        // One try: a connection (the migration's own, first) and a page
        // stream on it. The operator may give up meanwhile, and the stall
        // is told when due, however long the try takes.
        let attempt = async {
            let s = match session.take() {
                Some(s) => s,
                None => match addr {
                    Some(addr) => Session::connect(&endpoint, addr, &target, &me).await.map_err(|e| e.to_string())?,
                    None => return Err(format!("{target} has no address to reconnect to")),
                },
            };
            s.open(&Request::Pages { id }).await.map_err(|e| format!("opening the page stream: {e}"))
        };
        tokio::pin!(attempt);
        let opened = loop {
            let stall_at = lost.map(|(since, _)| tokio::time::Instant::from_std(since + wait));
            tokio::select! {
                r = &mut attempt => break r,
                () = async { tokio::time::sleep_until(stall_at.unwrap()).await }, if stall_at.is_some() && !stall_told => {
                    stall_told = true;
                    let (since, since_unix) = lost.unwrap();
                    stall(since);
                    entry.set_link(FillLink::Stalled { since_unix, error: "a try is under way".into() });
                }
                order = entry.order(), if lost.is_some() => {
                    if let Some(done) = heed(order, id, &container, &target, &note) {
                        *given_up = Some(done);
                        return Err(TunnelError::GaveUp);
                    }
                }
            }
        };
        let (mut send, recv) = match opened {
            Ok(x) => x,
            Err(e) => {
                let (since, since_unix) = *lost.get_or_insert_with(|| (Instant::now(), crate::fills::now_unix()));
                let (link, retry) = tern_proto::postcopy::after_failed_try(since.elapsed(), wait, since_unix, e.clone());
                if matches!(link, FillLink::Stalled { .. }) && !stall_told {
                    stall_told = true;
                    stall(since);
                } else {
                    tracing::warn!(id, "reconnecting to {target} for the pages: {e}");
                }
                entry.set_link(link);
                tokio::select! {
                    _ = tokio::time::sleep(retry) => {}
                    order = entry.order() => {
                        if let Some(done) = heed(order, id, &container, &target, &note) {
                            *given_up = Some(done);
                            return Err(TunnelError::GaveUp);
                        }
                    }
                }
                continue;
            }
        };
        if lost.take().is_some() {
            tracing::info!(id, "the page tunnel to {target} resumes");
            note(format!("the link to {target} is back: {container}'s memory crosses again"));
            stall_told = false;
        }
        entry.link_back();
        match end.run_leg(&mut send, recv).await {
            LegEnd::Finished => return Ok(end.read.load(std::sync::atomic::Ordering::Relaxed)),
            LegEnd::Failed(e) => return Err(e),
            LegEnd::Lost(e) => {
                tracing::warn!(id, "the page tunnel to {target} lost its link: {e}; reconnecting");
                note(format!("the link to {target} is lost ({e}): {container} waits there, paused; trying again"));
                let now = (Instant::now(), crate::fills::now_unix());
                lost = Some(now);
                entry.set_link(FillLink::Lost { since_unix: now.1, error: e.to_string() });
            }
        }
    }
}

/// Carries out an operator's order while the link is lost. A retry only
/// wakes the tunnel (the next try starts now) and is answered at once; a
/// give-up ends it, and returns where to answer once the tunnel's end
/// failed the page server's transfer (`serve_source`) and CRIU let the
/// container run here again.
fn heed(
    order: crate::fills::Order,
    id: tern_proto::MigrationId,
    container: &str,
    target: &str,
    note: &(dyn Fn(String) + Send + Sync),
) -> Option<tokio::sync::oneshot::Sender<()>> {
    if order.decision != Decision::GiveUp {
        let _ = order.done.send(());
        return None;
    }
    tracing::error!(id, "the operator gave the move of {container} up: its dump ends, and CRIU runs it here again");
    note(format!("given up: {container} runs here again as of its freeze; {target} removes its copy once it hears"));
    Some(order.done)
}

/// Raises `fs.pipe-max-size` to what CRIU's page server needs, where it is
/// lower (module docs); a failure is logged, and the dump says the rest.
fn raise_pipe_max() {
    let path = "/proc/sys/fs/pipe-max-size";
    let now = std::fs::read_to_string(path).ok().and_then(|t| t.trim().parse::<u64>().ok()).unwrap_or(0);
    if now < PIPE_MAX {
        match std::fs::write(path, PIPE_MAX.to_string()) {
            Ok(()) => tracing::info!("raised fs.pipe-max-size from {now} to {PIPE_MAX} for CRIU's page server"),
            Err(e) => tracing::warn!("fs.pipe-max-size is {now} and cannot be raised ({e}): a post-copy dump may fail"),
        }
    }
}

/// Whether process `pid` exists and is not a zombie.
fn process_runs(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rsplit_once(") ").map(|(_, rest)| !rest.starts_with('Z')))
        .unwrap_or(false)
}

fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind(("127.0.0.1", 0))?.local_addr()?.port())
}

/// The archive a post-copy target restores from: what Podman's export
/// holds but memory and the files it writes after the dump (module docs).
fn pack(folder: &Path, info: &ContainerInfo) -> std::io::Result<Vec<u8>> {
    let mut b = tar::Builder::new(Vec::new());
    b.follow_symlinks(false);
    for name in ["config.dump", "spec.dump"] {
        b.append_path_with_name(folder.join(name), name)?;
    }
    let data = |b: &mut tar::Builder<Vec<u8>>, name: &str, bytes: &[u8]| {
        let mut h = tar::Header::new_ustar();
        h.set_size(bytes.len() as u64);
        h.set_mode(0o600);
        h.set_entry_type(tar::EntryType::Regular);
        h.set_mtime(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs()));
        b.append_data(&mut h, name, bytes)
    };
    data(&mut b, "network.status", &network_status(info))?;
    let shm = folder.join("shm");
    if shm.is_dir() {
        let mut inner = tar::Builder::new(Vec::new());
        inner.follow_symlinks(false);
        inner.append_dir_all(".", &shm)?;
        data(&mut b, "devshm-checkpoint.tar", &inner.into_inner()?)?;
    }
    // With soft-dirty rounds, CRIU's `parent` link (to `../pre-checkpoint`,
    // which the target makes from the rounds it holds) goes too.
    let mut names: Vec<_> =
        std::fs::read_dir(folder.join("checkpoint"))?.flatten().filter(|e| e.file_type().is_ok_and(|t| t.is_file() || t.is_symlink())).collect();
    names.sort_by_key(|e| e.file_name());
    for e in names {
        b.append_path_with_name(e.path(), Path::new("checkpoint").join(e.file_name()))?;
    }
    b.into_inner()
}

/// Podman's `network.status` (netavark's status blocks, by network): its
/// restore reads the addresses and MAC from it to keep them.
fn network_status(info: &ContainerInfo) -> Vec<u8> {
    let mut nets = serde_json::Map::new();
    for (i, a) in info.networks.iter().enumerate() {
        let subnets: Vec<_> =
            a.ips.iter().map(|ip| serde_json::json!({ "ipnet": format!("{ip}/{}", if ip.is_ipv4() { 32 } else { 128 }) })).collect();
        let mut iface = serde_json::json!({ "subnets": subnets });
        if !a.mac.is_empty() {
            iface["mac_address"] = serde_json::Value::String(a.mac.clone());
        }
        nets.insert(a.network.clone(), serde_json::json!({ "interfaces": { format!("eth{i}"): iface } }));
    }
    serde_json::to_vec(&nets).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn network_status_keeps_each_networks_address_and_mac() {
        let ip: std::net::IpAddr = "198.51.100.50".parse().unwrap();
        let info = ContainerInfo {
            name: "r".into(),
            id: "0123456789abcdef".into(),
            image: String::new(),
            image_id: String::new(),
            state: "running".into(),
            ips: vec![ip],
            memory_bytes: 0,
            files_bytes: 0,
            volumes: vec![],
            pid: 1,
            networks: vec![
                tern_proto::facts::Attachment { network: "lan".into(), driver: "macvlan".into(), ips: vec![ip], mac: "be:84:5d:24:96:3e".into() },
                tern_proto::facts::Attachment {
                    network: "podman".into(),
                    driver: "bridge".into(),
                    ips: vec!["fd00::2".parse().unwrap()],
                    mac: String::new(),
                },
            ],
            ports: vec![],
            connections: vec![],
            process_uids: vec![],
            systemd_unit: None,
            pod: None,
            dependencies: vec![],
        };
        let v: serde_json::Value = serde_json::from_slice(&network_status(&info)).unwrap();
        assert_eq!(v["lan"]["interfaces"]["eth0"]["subnets"][0]["ipnet"], "198.51.100.50/32");
        assert_eq!(v["lan"]["interfaces"]["eth0"]["mac_address"], "be:84:5d:24:96:3e");
        assert_eq!(v["podman"]["interfaces"]["eth1"]["subnets"][0]["ipnet"], "fd00::2/128");
        assert!(v["podman"]["interfaces"]["eth1"].get("mac_address").is_none());
    }
}
