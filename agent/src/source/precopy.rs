//! Pre-copy rounds on the source, while the container keeps running.
//!
//! ```text
//!  round n:  runc dump (leave running) ─▶ ship the image folder ─▶ RoundSent(n) ─▶ RoundStored(n)
//!            └──────────────────── policy::decide: another round, freeze, or give up ─┘
//! ```
//!
//! * **pre-copy** (soft-dirty): each round is a `runc checkpoint --pre-dump`
//!   whose parent is the previous round, so it holds only the pages written
//!   since. The final dump (Podman's `--with-previous`) sits on top of the
//!   last round through the container's `pre-checkpoint` link.
//!
//!   Every link in the chain is relative and the rounds live inside the
//!   container's own folder: CRIU follows `parent` from inside the
//!   restored task's mount namespace, where an absolute path outside the
//!   container does not exist ("Can't open parent path").
//!
//!   ```text
//!   <container dir>/checkpoint/parent -> ../pre-checkpoint     (Podman's)
//!   <container dir>/pre-checkpoint    -> tern-precopy/3        (ours)
//!   <container dir>/tern-precopy/3/parent -> ../2, 2/parent -> ../1
//!   ```
//! * **hash-pre-copy** (content-addressed): one full checkpoint archive
//!   taken while the container runs (Podman's `--leave-running --export`),
//!   streamed to the target and cut into pages hashed into a [`PageIndex`].
//!   The final archive is delta-encoded against it: memory, root file
//!   system changes and volumes that did not change since do not cross the
//!   wire again.
//!
//! The container runs during all of this: any failure or cancel here ends
//! as `Refused` with the container untouched, and the target drops what it
//! staged.

use super::error::{At, Fail, SourceError};
use super::{archive_pipe, Run};
use crate::criu_stats;
use crate::engine::CheckpointOpts;
use crate::pages::PageIndex;
use crate::transfer::{self, Encoding};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tern_proto::delta::PAGE;
use tern_proto::policy::{decide, Decision, PolicyConfig, Round, StopReason};
use tern_proto::source_state::Event;
use tern_proto::*;

/// The rounds so far, for the policy's decision.
pub(super) struct Book {
    policy: PolicyConfig,
    started: Instant,
    history: Vec<Round>,
    prev_dump_start: Option<Instant>,
    sent_bytes: u64,
    sent_time: Duration,
    /// Of `sent_time`, waiting for the host's bandwidth cap.
    throttled: Duration,
    /// The round dumped and sent, until the target stored it.
    pending: Option<Pending>,
}

impl Book {
    pub(super) fn new(policy: PolicyConfig) -> Self {
        Book {
            policy,
            started: Instant::now(),
            history: Vec::new(),
            prev_dump_start: None,
            sent_bytes: 0,
            sent_time: Duration::ZERO,
            throttled: Duration::ZERO,
            pending: None,
        }
    }
}

/// What a round's dump and transfer measured, for its report.
struct Pending {
    dump_start: Instant,
    dump_ms: u64,
    stats: Option<criu_stats::DumpStats>,
    pages: u64,
    /// When the transfer began: it ends when the target stored the round.
    t0: Instant,
    /// How long the migration had waited for the bandwidth cap by then.
    throttled0: Duration,
    digest: Digest,
    shipped: u64,
}

/// Files of a round's image folder that the target needs: regular files
/// but CRIU's logs.
fn round_files(dir: &Path) -> std::io::Result<Vec<String>> {
    let mut names = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if !entry.file_type()?.is_file() {
            continue; // the `parent` link is made by the target itself
        }
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.ends_with(".log") {
            continue;
        }
        names.push(name);
    }
    names.sort();
    Ok(names)
}

/// Pages written by a dump: CRIU's count, else the size of its pages files.
fn pages_written(dir: &Path, stats: Option<criu_stats::DumpStats>) -> u64 {
    if let Some(s) = stats {
        return s.pages_written;
    }
    let bytes: u64 = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| {
            let n = e.file_name().to_string_lossy().into_owned();
            n.starts_with("pages-") && n.ends_with(".img")
        })
        .filter_map(|e| e.metadata().ok())
        .map(|m| m.len())
        .sum();
    bytes / PAGE as u64
}

impl Run<'_> {
    /// The soft-dirty rounds' folder, emptied of a previous attempt's. The
    /// rounds sit where the final dump's chain reaches them by relative
    /// links: inside the container's folder.
    pub(super) async fn make_rounds_dir(&mut self) -> Result<PathBuf, Fail> {
        let info = self.info()?;
        let cdir = self.agent.engine.container_dir(&info.name).await.at(Phase::PreCopy)?;
        let rounds_dir = cdir.join(crate::PRECOPY_DIR);
        let _ = tokio::fs::remove_dir_all(&rounds_dir).await; // a previous attempt's
        self.book = Book::new(self.req.options.policy.clone());
        Ok(rounds_dir)
    }

    /// Round `n`: a pre-dump into `rounds_dir`'s `n` on top of round n-1,
    /// sent as a file set.
    pub(super) async fn dump_round(&mut self, n: u32, rounds_dir: &Path, kind: DataKind) -> Result<Digest, Fail> {
        let p = Phase::PreCopy;
        let info = self.info()?;
        self.check_cancel(p)?;
        let dir = rounds_dir.join(n.to_string());
        tokio::fs::create_dir_all(&dir).await.map_err(|source| SourceError::CreateDir { path: dir.clone(), source }.at(p))?;
        let parent = (n > 1).then(|| format!("../{}", n - 1));
        self.progress(p, 0, &format!("round {n}: dumping"));
        let dump_start = Instant::now();
        // Never interrupted: killing runc mid-dump could leave CRIU's
        // freeze in place. A cancel takes effect right after.
        self.agent.engine.pre_dump(&info.id, &dir, parent.as_deref()).await.map_err(|source| SourceError::RoundDump { n, source }.at(p))?;
        let dump_ms = dump_start.elapsed().as_millis() as u64;
        let stats = criu_stats::read(&dir);
        let pages = pages_written(&dir, stats);
        self.check_cancel(p)?;

        let names = round_files(&dir).map_err(|source| SourceError::ReadRound { n, dir: dir.clone(), source }.at(p))?;
        let (t0, throttled0) = (Instant::now(), self.pace.throttled());
        let done = Arc::new(AtomicU64::new(0));
        let header = DataHeader { id: self.req.id, kind };
        let conn = self.session().conn.clone();
        let ship = transfer::send_fileset(&conn, &header, &dir, &names, &done, &self.pace);
        let digest = self.with_ticker(p, &done, ship).await.map_err(|source| SourceError::ShipRound { n, source }.at(p))?;
        let shipped = done.load(Ordering::Relaxed);
        self.book.pending = Some(Pending { dump_start, dump_ms, stats, pages, t0, throttled0, digest, shipped });
        Ok(digest)
    }

    /// The target stored round `n`: account it, then ask the policy.
    pub(super) fn judge_round(&mut self, n: u32) -> Event {
        let p = Phase::PreCopy;
        let Some(Pending { dump_start, dump_ms, stats, pages, t0, throttled0, digest, shipped }) = self.book.pending.take() else {
            return Event::Failed(SourceError::RoundNeverSent(n).at(p).failure());
        };
        let transfer = t0.elapsed();
        let book = &mut self.book;
        book.sent_bytes += digest.bytes;
        book.sent_time += transfer;
        book.throttled += self.pace.throttled().saturating_sub(throttled0);
        let window = book.prev_dump_start.map(|t| dump_start - t).unwrap_or(Duration::from_millis(dump_ms));
        book.prev_dump_start = Some(dump_start);
        let round = Round { pages, bytes: digest.bytes, duration: window };
        book.history.push(round);
        self.rounds.push(RoundReport {
            round: n,
            pages,
            bytes: digest.bytes,
            dump_ms,
            frozen_ms: stats.map(|s| s.frozen_us / 1000).unwrap_or(0),
            transfer_ms: transfer.as_millis() as u64,
            duration_ms: dump_ms + transfer.as_millis() as u64,
            dirty_pages_per_s: if n > 1 { round.dirty_rate().round() as u64 } else { 0 },
        });
        self.progress(p, shipped, &format!("round {n}: {pages} pages, {:.1} MiB in {} ms", digest.bytes as f64 / 1048576.0, transfer.as_millis()));
        tracing::info!(round = n, pages, bytes = digest.bytes, dump_ms, transfer_ms = transfer.as_millis() as u64, "pre-copy round");
        self.decide(n)
    }

    /// What the policy says after `n` rounds: another, freeze, or give up.
    /// It estimates the final dump's transfer at the rate the rounds
    /// crossed, and never above the host's bandwidth cap now (the frozen
    /// checkpoint goes through it too).
    fn decide(&mut self, n: u32) -> Event {
        let p = Phase::PreCopy;
        let book = &self.book;
        let measured = book.sent_bytes as f64 / book.sent_time.as_secs_f64().max(1e-3);
        if book.sent_bytes >= 32 << 20 {
            if let Some(rate) = tern_proto::bandwidth::link_sample(book.sent_bytes, book.sent_time, book.throttled) {
                self.agent.note_link_rate(&self.req.target.name, rate);
            }
        }
        let link_rate = tern_proto::bandwidth::capped_link_rate(Some(measured), self.pace.rate_now()).unwrap_or(measured);
        match decide(&book.policy, &book.history, link_rate, book.started.elapsed()) {
            Decision::Continue => Event::NextRound,
            Decision::Freeze(stop) => {
                tracing::info!(rounds = n, %stop, "pre-copy stops");
                self.stop_reason = Some(stop.to_string());
                self.progress(p, 0, &format!("the target closes the archive of the {n} rounds"));
                Event::RoundsEnough
            }
            Decision::Cancel(reason) => {
                self.stop_reason = Some(reason.to_string());
                let cancelled = SourceError::PolicyCancelled { reason, rounds: n, secs: book.policy.timeout.as_secs() };
                Event::Failed(cancelled.at(p).failure())
            }
        }
    }

    /// Content-addressed pre-copy's single round: a full checkpoint archive
    /// taken while the container runs, streamed to the target as Podman
    /// writes it and indexed page by page on the way. `ram` is the
    /// checkpoint folder when it is in RAM.
    pub(super) async fn ship_base(&mut self, kind: DataKind, ram: Option<&Path>) -> Result<Digest, Fail> {
        let p = Phase::PreCopy;
        let info = self.info()?;
        tokio::fs::create_dir_all(&self.work_dir).await.map_err(SourceError::WorkDir).at(p)?;
        let fifo = self.work_dir.join("base.fifo");
        let (reader, hold) = archive_pipe(&fifo).map_err(|source| SourceError::Fifo { path: fifo.clone(), source }.at(p))?;
        let opts = CheckpointOpts { tcp_established: self.req.options.tcp_established, leave_running: true, ..Default::default() };
        let (started, throttled0) = (Instant::now(), self.pace.throttled());
        let (engine, name) = (self.agent.engine.clone(), info.name.clone());
        let dump = tokio::spawn(async move {
            let r = engine.checkpoint_export(&name, &fifo, opts).await;
            drop(hold); // Podman is done: the reader sees the end
            (r, Instant::now())
        });
        let done = Arc::new(AtomicU64::new(0));
        let header = DataHeader { id: self.req.id, kind };
        let conn = self.session().conn.clone();
        let zstd = self.zstd_level();
        let ship = async {
            // Memory, plus an eighth for the file system and images'
            // overhead; a hint only, capped (16 GiB of pages) against a bad reading.
            let pages = (info.memory_bytes / PAGE as u64).min(1 << 22) as usize;
            let index = PageIndex::with_capacity(pages + pages / 8);
            let wire = transfer::Wire { zstd, pace: &self.pace, stop: &self.cancel };
            transfer::send_encoded(&conn, &header, reader, &done, Encoding::Index(index), wire).await
        };
        // The FIFO is always drained (so Podman finishes); a cancel stops
        // the sending at once.
        let sent = self.with_ticker(p, &done, ship).await;
        let (dumped, dumped_at) = dump.await.at(p)?;
        let dump_ms = (dumped_at - started).as_millis() as u64;
        dumped.map_err(SourceError::BaseCheckpoint).at(p)?;
        let transfer::Sent { digest, stats, index, .. } = sent.map_err(SourceError::ShipBase).at(p)?;
        // Always there: an Index encoding hands its index back.
        let index = index.unwrap_or_default();
        self.count_sent(&stats, started.elapsed(), self.pace.throttled().saturating_sub(throttled0));
        // CRIU's statistics, then the base's images: the final dump writes
        // a fresh set, and stale files must not ride along in its archive.
        let cdir = self.agent.engine.container_dir(&info.name).await.at(p)?;
        let stats = criu_stats::read(&cdir);
        self.clear_base_images(&info, &cdir.join("checkpoint"), ram).await?;
        let pages = stats.map(|s| s.pages_written).unwrap_or(index.pages() as u64);
        tracing::info!(bytes = digest.bytes, pages = index.pages(), dump_ms, "hash pre-copy base shipped");
        self.base_index = Some(Arc::new(index));
        let t0 = started; // the archive streams as Podman writes it: transfer and dump overlap
        self.book.pending = Some(Pending { dump_start: started, dump_ms, stats, pages, t0, throttled0, digest, shipped: 0 });
        Ok(digest)
    }

    /// Wakes the peers of the base dump, then empties the checkpoint folder
    /// (`ram` when it is a tmpfs, which stays mounted).
    async fn clear_base_images(&self, info: &tern_proto::facts::ContainerInfo, images: &Path, ram: Option<&Path>) -> Result<(), Fail> {
        // CRIU locked the container's network while it dumped: peers whose
        // packets it dropped are backing off; wake them (netid.rs).
        if let Ok(peers) = crate::netid::peers_in(images) {
            if !peers.is_empty() {
                let done = crate::netid::wake_only(info.pid, peers).await;
                tracing::debug!(peers_woken = done.peers_woken, problems = ?done.problems, "peers woken after the base dump");
            }
        }
        if ram == Some(images) {
            crate::ramdir::empty(images).map_err(|source| SourceError::EmptyRam { dir: images.to_path_buf(), source }.at(Phase::PreCopy))?;
        } else {
            let _ = tokio::fs::remove_dir_all(images).await;
        }
        Ok(())
    }

    /// The target stored the base: account it.
    pub(super) fn note_base(&mut self) -> Option<Event> {
        let Pending { dump_ms, stats, pages, t0, digest, .. } = self.book.pending.take()?;
        let total_ms = t0.elapsed().as_millis() as u64;
        self.rounds.push(RoundReport {
            round: 1,
            pages,
            bytes: digest.bytes,
            dump_ms,
            frozen_ms: stats.map(|s| s.frozen_us / 1000).unwrap_or(0),
            // The archive streams as Podman writes it: transfer and dump overlap.
            transfer_ms: total_ms,
            duration_ms: total_ms,
            dirty_pages_per_s: 0,
        });
        self.stop_reason = Some(StopReason::BaseShipped.to_string());
        None
    }

    /// Points the container's `pre-checkpoint` at the last round (a
    /// relative link), so that Podman's `--with-previous` dump and a local
    /// rollback restore follow the chain of rounds. Returns the link.
    pub(super) async fn link_pre_checkpoint(&mut self, last_dir: &Path) -> Result<PathBuf, Fail> {
        let p = Phase::PreCopy;
        let info = self.info()?;
        let cdir = self.agent.engine.container_dir(&info.name).await.at(p)?;
        let link = cdir.join("pre-checkpoint");
        match tokio::fs::symlink_metadata(&link).await {
            Ok(m) if m.file_type().is_symlink() => {
                tokio::fs::remove_file(&link).await.map_err(SourceError::Unlink).at(p)?;
            }
            Ok(_) => return Err(SourceError::PodmanPreCheckpoint { container: info.name, link }.at(p)),
            Err(_) => {}
        }
        let relative =
            last_dir.strip_prefix(&cdir).map_err(|_| SourceError::RoundOutside { last: last_dir.to_path_buf(), dir: cdir.clone() }.at(p))?;
        tokio::fs::symlink(relative, &link)
            .await
            .map_err(|source| SourceError::Link { link: link.clone(), to: relative.to_path_buf(), source }.at(p))?;
        Ok(link)
    }
}
