//! What a standby schedule does (the schedules are `crate::standby`):
//! each tick dumps the container while it runs on (paused only while CRIU
//! dumps), sends the checkpoint to the store as delta records against the
//! last one the store took (the content-addressed pre-copy's encoding), so
//! only what changed crosses, and drops the local copy. The store keeps
//! the `keep` latest of the series and drops older ones as new ones
//! arrive. After a restart of this agent the first checkpoint goes whole.

use super::{create, index_of, send_to, Store};
use crate::context::Agent;
use crate::standby::Base;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tern_proto::checkpoint::{self as cp, CreateCheckpoint, StandbyOrder, StandbyRun, StandbySpec, StandbyStatus};

/// `CheckpointRequest::Standby`.
pub async fn order(agent: &Agent, order: StandbyOrder) -> anyhow::Result<Vec<StandbyStatus>> {
    let registry = &agent.standby;
    match order {
        StandbyOrder::Set(spec) => {
            cp::check_standby(&spec).map_err(anyhow::Error::msg)?;
            anyhow::ensure!(spec.store.name != agent.cfg.name, "a standby is kept on another host than the container's");
            match agent.engine.inspect(&spec.container).await? {
                Some(c) if c.is_running() => {}
                Some(c) => anyhow::bail!("{} is {} on {}: a standby is for a running container", c.name, c.state, agent.cfg.name),
                None => anyhow::bail!("no container named {} on {}", spec.container, agent.cfg.name),
            }
            tracing::info!(container = %spec.container, store = %spec.store.name, every_secs = spec.every_secs, keep = spec.keep, "standby set");
            registry.set(&agent.cfg.state_dir, spec)
        }
        StandbyOrder::Stop { container } => {
            let gone = registry.stop(&agent.cfg.state_dir, &container)?;
            let gone = gone.ok_or_else(|| anyhow::anyhow!("{container} has no standby on {}", agent.cfg.name))?;
            tracing::info!(%container, "standby stopped; its checkpoints stay in the store");
            Ok(gone)
        }
        StandbyOrder::List => Ok(registry.statuses()),
        StandbyOrder::Invalid => anyhow::bail!("an invalid standby order"),
    }
}

/// Takes the checkpoints as they fall due, for the agent's life.
pub async fn run(agent: Arc<Agent>) {
    loop {
        match agent.standby.next_due() {
            Ok(spec) => {
                let r = tick(&agent, &spec).await;
                match &r {
                    Ok((run, _)) => tracing::info!(
                        container = %spec.container, name = %run.name, bytes = run.bytes, wire_bytes = run.wire_bytes,
                        pages_reused = run.pages_reused, ms = run.ms, store = %spec.store.name, "standby checkpoint stored"
                    ),
                    Err(e) => tracing::warn!(container = %spec.container, store = %spec.store.name, "standby checkpoint failed: {e}"),
                }
                agent.standby.done(&spec, r);
            }
            Err(wait) => {
                let wait = wait.unwrap_or(Duration::from_secs(3600));
                agent.standby.sleep(wait).await;
            }
        }
    }
}

/// One checkpoint of a schedule: dump here, send to the store (against the
/// last one it took), drop the copy here once the next base is hashed.
async fn tick(agent: &Agent, spec: &StandbySpec) -> Result<(StandbyRun, Arc<Base>), String> {
    let store = Store::of(agent);
    let t0 = Instant::now();
    let req = CreateCheckpoint { container: spec.container.clone(), name: None, leave_running: true, tcp_established: false, file_locks: false };
    let made = create(agent, &store, req, Some(spec.keep)).await.map_err(|e| format!("{e:#}"))?;
    let r = async {
        let (_, archive) = store.get(&made.name)?;
        let base = agent.standby.base_of(&spec.container);
        let (stored, shipped) = send_to(agent, &store, &made.name, &spec.store, base.as_deref()).await?;
        let index = index_of(&archive).await?;
        let run = StandbyRun {
            name: stored.name.clone(),
            at_unix: stored.created_unix,
            bytes: stored.bytes,
            wire_bytes: shipped.wire_bytes,
            pages_reused: shipped.pages_reused,
            ms: t0.elapsed().as_millis() as u64,
        };
        Ok::<_, anyhow::Error>((run, Arc::new(Base { name: stored.name, digest: stored.digest, index: Arc::new(index) })))
    }
    .await;
    if let Err(e) = store.remove(&made.name) {
        tracing::warn!(name = %made.name, "removing the local copy of a standby checkpoint: {e}");
    }
    r.map_err(|e| format!("{e:#}"))
}
