//! Driving one migration from the CLI: ask the source agent, show its
//! progress, pass on the user's Ctrl-C, print the report.

use crate::plan::Plan;
use crate::progress::{Display, Shown};
use tern_proto::compat::{Finding, ForceField, Severity};
use tern_proto::frame::{read_frame, write_frame};
use tern_proto::{CoordinatorSignal, MigrateEvent, MigrateOptions, MigrateRequest, MigrationReport, Peer, Request};
use tern_transport::ticket::Signer;

#[derive(Clone)]
pub struct Options {
    pub tcp_established: bool,
    /// Move even when some connections cannot survive (checked again by
    /// the source right before the freeze).
    pub allow_reset: bool,
    pub compress: tern_proto::Compression,
    /// Restore lazily where the target can.
    pub lazy_restore: bool,
    /// Print progress lines (on stderr; not under `--quiet`).
    pub progress: bool,
    pub policy: tern_proto::policy::PolicyConfig,
    /// `--bandwidth`: a cap on the source's outgoing migration traffic,
    /// bytes per second (0: none asked; the source agent's own holds).
    pub bandwidth: u64,
    /// `--force-compat`: the refusals an operator lifted.
    pub force: Vec<ForceField>,
    /// The inventory's `[migrate] post_copy`: `auto` may pick post-copy.
    pub auto_post_copy: bool,
}

impl Options {
    /// What the planner is asked for one move in `mode`. `--no-lazy-restore`
    /// asks for all memory in place before the container resumes: `auto`
    /// then keeps off post-copy, whatever the inventory allows.
    pub fn ask(&self, mode: crate::plan::ModeArg) -> crate::plan::Ask<'_> {
        let auto_post_copy = self.auto_post_copy && self.lazy_restore;
        crate::plan::Ask { mode, allow_reset: self.allow_reset, auto_post_copy, force: &self.force }
    }
}

/// What a migration ended with: the source agent's report, and the
/// refusals `--force-compat` lifted for it (the report lists them).
#[derive(Debug)]
pub struct Moved {
    pub report: MigrationReport,
    pub forced: Vec<Finding>,
}

/// Cancels migrations under way when it turns true (Ctrl-C, or an
/// evacuation's `--fail-fast`).
pub type Cancel = tokio::sync::watch::Receiver<bool>;

/// Resolves once `cancel` is true; never, if its sender is gone first.
pub async fn until_cancelled(cancel: &mut Cancel) {
    loop {
        if *cancel.borrow_and_update() {
            return;
        }
        if cancel.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

/// The checks' rows about the container's clients, whose warnings the
/// report repeats.
const CLIENT_FIELDS: [&str; 2] = ["tcp connections", "published ports"];

fn new_id() -> u64 {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0);
    nanos ^ ((std::process::id() as u64) << 40)
}

/// Runs the migration the plan describes; returns the source agent's report.
/// `signer` signs the move's ticket: this container, as `plan` checked it,
/// from its source to its target, for ten minutes.
pub async fn run(plan: &Plan<'_>, target_address: std::net::SocketAddr, opts: &Options, signer: &Signer) -> anyhow::Result<Moved> {
    let (tx, cancel) = tokio::sync::watch::channel(false);
    let ctrl_c = tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            let _ = tx.send(true);
        }
    });
    let mut display = Display::new(opts.progress, plan.mode, plan.container.memory_bytes, plan.container.files_bytes);
    let result = run_with(plan, target_address, opts, signer, &mut display, cancel, false).await;
    ctrl_c.abort();
    result
}

/// [`run`], showing progress on `display` and cancelling when `cancel`
/// turns true; `evacuation`: a move of `tern evacuate`, which the source
/// agent records for `tern return` ([`tern_proto::evacuation`]).
pub async fn run_with(
    plan: &Plan<'_>,
    target_address: std::net::SocketAddr,
    opts: &Options,
    signer: &Signer,
    display: &mut dyn Shown,
    mut cancel: Cancel,
    evacuation: bool,
) -> anyhow::Result<Moved> {
    let id = new_id();
    let ticket = signer.issue_marked(id, &plan.source_name, &plan.target_name, &plan.container, tern_transport::ticket::now_secs(), evacuation);
    let req = MigrateRequest {
        id,
        container: plan.container.name.clone(),
        target: Peer { name: plan.target_name.clone(), address: target_address.to_string() },
        options: MigrateOptions {
            mode: plan.mode,
            compress: opts.compress,
            tcp_established: opts.tcp_established,
            allow_reset: opts.allow_reset,
            policy: opts.policy.clone(),
            lazy_restore: opts.lazy_restore,
            bandwidth: opts.bandwidth,
            post_copy_first: plan.post_copy_first,
        },
        ticket,
        evacuation,
    };
    let session = &plan.source.session;
    let (mut send, mut recv) = session.open(&Request::Migrate(req)).await?;
    let mut cancelled = false;
    loop {
        tokio::select! {
            ev = read_frame::<_, MigrateEvent>(&mut recv) => match ev {
                Ok(Some(MigrateEvent::Progress(p))) => display.progress(&p),
                Ok(Some(MigrateEvent::Notice(text))) => display.note(&format!("{}: {text}", plan.container.name)),
                Ok(Some(MigrateEvent::Done(mut report))) => {
                    display.finish();
                    // What the check said clients would lose goes into the
                    // report too: a reset is never silent.
                    let lost = plan
                        .findings
                        .iter()
                        .filter(|f| f.severity == Severity::Warn && CLIENT_FIELDS.contains(&f.field.as_str()))
                        .map(|f| format!("{}: {}", f.field, f.note));
                    report.warnings.splice(0..0, lost);
                    return Ok(Moved { report, forced: plan.forced().cloned().collect() });
                }
                Ok(Some(MigrateEvent::Refused(e))) => {
                    display.finish();
                    anyhow::bail!("{} refused the migration: {}. Nothing was touched", plan.source_name, e.message);
                }
                Ok(Some(MigrateEvent::Invalid)) | Ok(None) => {
                    display.finish();
                    anyhow::bail!(
                        "{} closed the migration stream without a report; check `tern ps` and the agent's log",
                        plan.source_name
                    );
                }
                Err(e) => {
                    display.finish();
                    anyhow::bail!(
                        "lost contact with {src} during the migration ({e}). If only the network failed, {src}'s agent \
                         finishes or rolls back on its own; if the agent died, {} stays frozen on {src} until the agent \
                         is restarted, which then asks {} and restores it on {src} or, if the switchover had happened, \
                         leaves it on {}. Check with `tern ps`",
                        plan.container.name, plan.target_name, plan.target_name,
                        src = plan.source_name
                    );
                }
            },
            _ = until_cancelled(&mut cancel), if !cancelled => {
                cancelled = true;
                display.note(&format!(
                    "cancelling: before the switchover {} goes back to running on {}; waiting for the agent",
                    plan.container.name, plan.source_name
                ));
                write_frame(&mut send, &CoordinatorSignal::Cancel).await?;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::ModeArg;

    #[test]
    fn an_eager_restore_keeps_auto_off_post_copy() {
        let opts = Options {
            tcp_established: true,
            allow_reset: true,
            compress: tern_proto::Compression::Auto,
            lazy_restore: true,
            progress: false,
            policy: Default::default(),
            bandwidth: 0,
            force: Vec::new(),
            auto_post_copy: true,
        };
        let ask = opts.ask(ModeArg::Auto);
        assert!(ask.auto_post_copy && ask.allow_reset && ask.mode == ModeArg::Auto);
        let eager = Options { lazy_restore: false, ..opts };
        assert!(!eager.ask(ModeArg::Auto).auto_post_copy);
    }
}
