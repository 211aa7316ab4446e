//! `tern-agent`: the daemon on every host (the library holds the logic).

use clap::Parser;
use std::path::PathBuf;
use std::sync::Arc;
use tern_agent::{config, context, facts};

/// tern's per-host agent: reports this host's facts and moves containers
/// to and from other agents over QUIC with mutual TLS.
#[derive(Parser)]
#[command(version)]
struct Args {
    /// The agent's configuration file.
    #[arg(long, short, default_value = "/etc/tern/agent.toml")]
    config: PathBuf,
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    // TERN_LOG, as for `tern` (RUST_LOG where it is not set): e.g. TERN_LOG=debug.
    let filter = tracing_subscriber::EnvFilter::try_from_env("TERN_LOG")
        .or_else(|_| tracing_subscriber::EnvFilter::try_from_default_env())
        .unwrap_or_else(|_| "info".into());
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
    match run(Args::parse()).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tern-agent: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> anyhow::Result<()> {
    tern_agent::tune_allocator();
    let mut cfg = config::AgentConfig::load(&args.config)?;
    std::fs::create_dir_all(&cfg.state_dir).map_err(|e| anyhow::anyhow!("cannot create the state folder {}: {e}", cfg.state_dir.display()))?;
    // First of all, before anything asks Podman: a predecessor's export
    // may still wait on its FIFO, holding the container's lock.
    tern_agent::source::release_orphaned_exports(&cfg.state_dir);
    // Staging and work folders of migrations are their process's alone
    // (what recovery needs is in the journal and the container's folder).
    for e in std::fs::read_dir(&cfg.state_dir).into_iter().flatten().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with("incoming-") || name.starts_with("outgoing-") {
            tracing::info!(folder = %e.path().display(), "removing a folder a predecessor's migration left");
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
    let mut ports = context::Ports::host(&cfg);
    // Check the overrides and Podman once at start, so a bad config fails now.
    let facts = facts::gather(&cfg.name, ports.engine.as_ref(), ports.criu.as_ref(), &cfg.facts_override).await?;
    // Pre-dumps go to the runtime itself (Podman has none): the one Podman
    // runs, where the configuration names plain `runc` and Podman crun
    // (runc does not know crun's containers).
    if cfg.runc.program == "runc" && facts.runtime_name == "crun" {
        tracing::info!("Podman runs crun: pre-dumps go to crun ([runc] program)");
        cfg.runc.program = "crun".into();
        ports = context::Ports::host(&cfg);
    }
    tracing::info!(
        podman = %facts.podman_version, runtime = %facts.runtime_name, criu = %facts.criu_version,
        kernel = %facts.kernel, dirty_tracking = facts.dirty_tracking.supported, "host facts"
    );
    // Folders a predecessor made for incoming migrations it did not finish,
    // tidied before the agent answers anyone.
    tern_agent::target::inplace::sweep(ports.engine.as_ref(), &ports.storage).await;
    tern_agent::recovery::release_unjournaled_ram(&cfg.state_dir, ports.storage.as_ref());
    tern_agent::netid::sweep_holds().await;
    tern_agent::checkpoints::sweep(&cfg.state_dir);
    tern_agent::cordon::log_at_start(&cfg.state_dir);
    let endpoint = tern_transport::server_endpoint(cfg.listen, &cfg.tls)?;
    tracing::info!(name = %cfg.name, listen = %cfg.listen, "agent ready");
    let leaving = cfg.self_evacuation.clone();
    let (name, state_dir) = (cfg.name.clone(), cfg.state_dir.clone());
    let agent = Arc::new(context::Agent::new(cfg, ports, endpoint));
    // Containers a predecessor left frozen mid-migration.
    tokio::spawn(tern_agent::recovery::recover(agent.clone()));
    tokio::spawn(tern_agent::checkpoints::standby::run(agent.clone()));
    // Listening: systemd may start what comes after the agent.
    tern_agent::notify::notify("READY=1\nSTATUS=serving");
    // The last stop evacuated this host: its containers come back.
    let returning = tokio::spawn(tern_agent::self_evacuation::return_after_start(
        leaving.clone(),
        name.clone(),
        state_dir.clone(),
        std::time::Duration::from_secs(30),
    ));
    let shutdown = async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("signal handler");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        tracing::info!("shutting down");
        tern_agent::notify::notify("STOPPING=1");
        returning.abort();
        // Still serving meanwhile: this host is the source of every move.
        if tern_agent::self_evacuation::wanted(&leaving).await {
            tern_agent::self_evacuation::evacuate(&leaving, &name, &state_dir).await;
        }
    };
    agent.serve(shutdown).await;
    Ok(())
}
