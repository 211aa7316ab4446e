//! A container brought back to run here from the checkpoint this host
//! kept, and its address reclaimed: how a migration that did not switch
//! over ends, whether the source rolls back itself (`source.rs`) or the
//! agent finds the migration in its journal after it died mid-way
//! (`recovery.rs`).

use crate::context::Agent;
use crate::engine::CheckpointOpts;

/// After a container was brought back here from its checkpoint: its
/// address announced from here again, its peers woken, the hook told it
/// arrived (netid.rs). Returns what went wrong, as warnings: the container
/// runs here whatever they say.
pub async fn reclaim_address(agent: &Agent, name: &str, peer: &str, migration: u64) -> Vec<String> {
    let mut problems = Vec::new();
    let info = match agent.engine.inspect(name).await {
        Ok(Some(i)) => i,
        Ok(None) => return problems,
        Err(e) => return vec![format!("its address was not announced again here: {e}")],
    };
    let peers = match agent.engine.container_dir(name).await {
        Ok(dir) => crate::netid::peers_in(&crate::netid::checkpoint_dir(&dir)).unwrap_or_else(|e| {
            problems.push(format!("its TCP peers were not woken: {e}"));
            Vec::new()
        }),
        Err(e) => {
            problems.push(format!("its TCP peers were not woken: {e}"));
            Vec::new()
        }
    };
    let done = crate::netid::announce(info.pid, peers).await;
    tracing::info!(addresses = ?done.addresses, peers_woken = done.peers_woken, "address announced again after the rollback");
    problems.extend(done.problems.into_iter().map(|p| format!("network: {p}")));
    let ctx = crate::netid::HookContext { event: crate::netid::HookEvent::Arrived, container: &info, host: &agent.cfg.name, peer, migration };
    if let Err(e) = crate::netid::run_hook(&agent.cfg.network, &ctx).await {
        problems.push(format!("{e}; the container runs here again regardless"));
    }
    problems
}

/// Brings a checkpointed container back here, unless it already runs (a
/// failed dump leaves it running).
pub async fn restore_here(agent: &Agent, name: &str, tcp_established: bool) -> anyhow::Result<()> {
    let engine = &agent.engine;
    if engine.inspect(name).await?.is_some_and(|c| c.is_running()) {
        return Ok(());
    }
    engine.restore_local(name, CheckpointOpts { tcp_established, ..Default::default() }).await?;
    match engine.inspect(name).await? {
        Some(c) if c.is_running() => Ok(()),
        Some(c) => anyhow::bail!("after the local restore {name} is {}", c.state),
        None => anyhow::bail!("{name} disappeared during the local restore"),
    }
}
