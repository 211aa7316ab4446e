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
//! * **hash-pre-copy** (content-addressed): one full dump that leaves the
//!   container running; its pages files are shipped and hashed into a
//!   [`PageIndex`], against which the final archive is delta-encoded.
//!
//! The container runs during all of this: any failure or cancel here ends
//! as `Refused` with the container untouched, and the target drops what it
//! staged.

use super::{Fail, Run};
use crate::criu_stats;
use crate::engine::RunningDump;
use crate::pages::{is_pages_file, PageIndex};
use crate::transfer;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tern_proto::delta::PAGE;
use tern_proto::facts::ContainerInfo;
use tern_proto::frame::write_frame;
use tern_proto::policy::{decide, Decision, Round, StopReason};
use tern_proto::*;

/// What the rounds leave for the freeze.
pub(super) struct Precopied {
    /// Rounds stored on the target.
    pub rounds: u32,
    /// The last round's image folder here (the final dump's parent).
    pub last_dir: PathBuf,
    /// Content-addressed pre-copy: the base's page hashes.
    pub index: Option<PageIndex>,
}

/// Files of a round's image folder that the target needs: regular files
/// but CRIU's logs; for content-addressed pre-copy only the page data.
fn round_files(dir: &Path, pages_only: bool) -> std::io::Result<Vec<String>> {
    let mut names = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if !entry.file_type()?.is_file() {
            continue; // the `parent` link is made by the target itself
        }
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.ends_with(".log") || (pages_only && !is_pages_file(&name)) {
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
        .filter(|e| is_pages_file(&e.file_name().to_string_lossy()))
        .filter_map(|e| e.metadata().ok())
        .map(|m| m.len())
        .sum();
    bytes / PAGE as u64
}

impl Run<'_> {
    pub(super) async fn precopy(
        &mut self,
        info: &ContainerInfo,
        send: &mut quinn::SendStream,
        recv: &mut quinn::RecvStream,
    ) -> Result<Precopied, Fail> {
        let p = Phase::PreCopy;
        let mode = self.req.options.mode;
        let policy = self.req.options.policy.clone();
        self.enter(p, "copying memory while the container runs");
        // Soft-dirty rounds must sit where the final dump's chain can reach
        // them by relative links; the hash base is only read by tern.
        let rounds_dir = match mode {
            Mode::PreCopy => {
                let cdir = self.agent.engine.container_dir(&info.name).await.map_err(|e| Fail::new(p, e))?;
                let dir = cdir.join(crate::PRECOPY_DIR);
                let _ = tokio::fs::remove_dir_all(&dir).await; // a previous attempt's
                self.precopy_dir = Some(dir.clone());
                dir
            }
            _ => self.work_dir.join("rounds"),
        };
        let started = Instant::now();
        let mut history: Vec<Round> = Vec::new();
        let mut index = (mode == Mode::HashPreCopy).then(PageIndex::default);
        let mut prev_dump_start: Option<Instant> = None;
        let (mut sent_bytes, mut sent_time) = (0u64, Duration::ZERO);
        let mut n = 0u32;
        let stop = loop {
            n += 1;
            self.check_cancel(p)?;
            let dir = rounds_dir.join(n.to_string());
            tokio::fs::create_dir_all(&dir).await.map_err(|e| Fail::new(p, format!("cannot create {}: {e}", dir.display())))?;
            let kind = match mode {
                Mode::HashPreCopy => RunningDump::Full { tcp_established: self.req.options.tcp_established },
                _ => RunningDump::PreDump { parent: (n > 1).then(|| format!("../{}", n - 1)) },
            };
            self.progress(p, 0, &format!("round {n}: dumping"));
            let dump_start = Instant::now();
            // Never interrupted: killing runc mid-dump could leave CRIU's
            // freeze in place. A cancel takes effect right after.
            self.agent
                .engine
                .dump_running(&info.id, &dir, &kind)
                .await
                .map_err(|e| Fail::new(p, format!("round {n}: the dump failed (the container keeps running): {e}")))?;
            let dump_ms = dump_start.elapsed().as_millis() as u64;
            let stats = criu_stats::read(&dir);
            let pages = pages_written(&dir, stats);
            self.check_cancel(p)?;

            let names = round_files(&dir, mode == Mode::HashPreCopy)
                .map_err(|e| Fail::new(p, format!("reading round {n} in {}: {e}", dir.display())))?;
            let t0 = Instant::now();
            let done = Arc::new(AtomicU64::new(0));
            let header = DataHeader { id: self.req.id, kind: DataKind::Round(n) };
            let conn = self.session().conn.clone();
            let ship = transfer::send_fileset(&conn, &header, &dir, &names, &done, index.as_mut());
            let digest = self.with_ticker(p, &done, ship).await.map_err(|e| Fail::new(p, format!("shipping round {n}: {e}")))?;
            write_frame(send, &SourceMsg::RoundSent { round: n, digest }).await.map_err(|e| Fail::new(p, e))?;
            match self.read_target(recv, super::RESTORE_TIMEOUT).await.map_err(|e| Fail::new(p, e))? {
                TargetMsg::RoundStored { round } if round == n => {}
                TargetMsg::Failed(f) => return Err(Fail::new(p, format!("on {}: {}", self.req.target.name, f.message))),
                other => return Err(Fail::new(p, self.session().unexpected("RoundStored", &other))),
            }
            let transfer = t0.elapsed();
            sent_bytes += digest.bytes;
            sent_time += transfer;
            let window = prev_dump_start.map(|t| dump_start - t).unwrap_or(Duration::from_millis(dump_ms));
            prev_dump_start = Some(dump_start);
            let round = Round { pages, bytes: digest.bytes, duration: window };
            history.push(round);
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
            self.progress(
                p,
                done.load(Ordering::Relaxed),
                &format!("round {n}: {pages} pages, {:.1} MiB in {} ms", digest.bytes as f64 / 1048576.0, transfer.as_millis()),
            );
            tracing::info!(round = n, pages, bytes = digest.bytes, dump_ms, transfer_ms = transfer.as_millis() as u64, "pre-copy round");

            if mode == Mode::HashPreCopy {
                break StopReason::BaseShipped;
            }
            let link_rate = sent_bytes as f64 / sent_time.as_secs_f64().max(1e-3);
            match decide(&policy, &history, link_rate, started.elapsed()) {
                Decision::Continue => continue,
                Decision::Freeze(reason) => break reason,
                Decision::Cancel(reason) => {
                    self.stop_reason = Some(reason.to_string());
                    return Err(Fail::new(
                        p,
                        format!(
                            "{reason} after {n} round(s) ({} s); cancelled as asked (--on-timeout cancel); use --on-timeout switchover to freeze instead",
                            policy.timeout.as_secs()
                        ),
                    ));
                }
            }
        };
        tracing::info!(rounds = n, %stop, "pre-copy stops");
        self.stop_reason = Some(stop.to_string());
        if mode == Mode::PreCopy {
            self.progress(p, 0, &format!("the target packs the {n} rounds for the restore"));
            write_frame(send, &SourceMsg::RoundsDone { rounds: n }).await.map_err(|e| Fail::new(p, e))?;
            match self.read_target(recv, super::RESTORE_TIMEOUT).await.map_err(|e| Fail::new(p, e))? {
                TargetMsg::RoundsPrepared { .. } => {}
                TargetMsg::Failed(f) => return Err(Fail::new(p, format!("on {}: {}", self.req.target.name, f.message))),
                other => return Err(Fail::new(p, self.session().unexpected("RoundsPrepared", &other))),
            }
        }
        self.leave(p);
        Ok(Precopied { rounds: n, last_dir: rounds_dir.join(n.to_string()), index })
    }

    /// Points the container's `pre-checkpoint` at the last round (a
    /// relative link), so that Podman's `--with-previous` dump and a local
    /// rollback restore follow the chain of rounds.
    pub(super) async fn link_pre_checkpoint(&mut self, info: &ContainerInfo, last_dir: &Path) -> Result<(), Fail> {
        let p = Phase::PreCopy;
        let cdir = self.agent.engine.container_dir(&info.name).await.map_err(|e| Fail::new(p, e))?;
        let link = cdir.join("pre-checkpoint");
        match tokio::fs::symlink_metadata(&link).await {
            Ok(m) if m.file_type().is_symlink() => {
                tokio::fs::remove_file(&link).await.map_err(|e| Fail::new(p, e))?;
            }
            Ok(_) => {
                return Err(Fail::new(
                    p,
                    format!("{} holds a pre-checkpoint of Podman's own; remove it (`rm -r {}`) and migrate again", info.name, link.display()),
                ))
            }
            Err(_) => {}
        }
        let relative = last_dir.strip_prefix(&cdir).map_err(|_| {
            Fail::new(p, format!("the last round {} is not inside the container's folder {}", last_dir.display(), cdir.display()))
        })?;
        tokio::fs::symlink(relative, &link)
            .await
            .map_err(|e| Fail::new(p, format!("linking {} to {}: {e}", link.display(), relative.display())))?;
        self.pre_link = Some(link);
        Ok(())
    }
}
