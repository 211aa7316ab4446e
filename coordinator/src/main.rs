//! `tern`: the command line people use to move running containers.
//!
//! `cluster` talks to every agent of the `inventory`; `plan` runs the
//! compatibility rules before anything is frozen; `migrate` drives one
//! migration and shows its progress; `evacuate` places a host's containers
//! on the others; `output` formats what users read.

mod cluster;
mod evacuate;
mod inventory;
mod migrate;
mod output;
mod plan;

use clap::{Parser, Subcommand};
use serde_json::json;
use std::path::PathBuf;
use std::process::ExitCode;
use tern_proto::Outcome;

/// Live migration of running Podman containers between hosts.
#[derive(Parser)]
#[command(version, about, after_help = EXIT_CODES)]
struct Cli {
    /// The hosts inventory (default: $TERN_INVENTORY, ./.tern/inventory.toml,
    /// ~/.config/tern/inventory.toml, /etc/tern/inventory.toml).
    #[arg(long, global = true)]
    inventory: Option<PathBuf>,
    /// Print one JSON document on stdout instead of text.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    cmd: Cmd,
}

const EXIT_CODES: &str = "Exit codes: 0 success; 1 the operation failed (a migration rolled back or failed); \
2 bad usage or input; 3 refused by the compatibility check before anything was frozen.";

#[derive(Subcommand)]
enum Cmd {
    /// Every host's facts and whether its agent answers.
    Hosts,
    /// The containers on every host.
    Ps,
    /// Check whether a container can move to a host, without moving it.
    Check {
        #[command(flatten)]
        mv: MoveArgs,
    },
    /// Move a running container to another host.
    Migrate {
        #[command(flatten)]
        mv: MoveArgs,
        #[command(flatten)]
        transfer: TransferArgs,
        #[command(flatten)]
        precopy: PrecopyArgs,
    },
    /// Move every running container off a host (before a reboot), one at a
    /// time, each to the compatible target holding the least memory.
    Evacuate {
        /// The host to empty.
        host: String,
        /// The hosts that may take its containers (comma-separated or
        /// repeated; default: every other host in the inventory).
        #[arg(long, value_delimiter = ',')]
        to: Vec<String>,
        #[arg(long, value_enum, default_value = "auto")]
        mode: plan::ModeArg,
        /// Print where each container would go, and stop.
        #[arg(long)]
        dry_run: bool,
        /// Move what can move when some container has no compatible target
        /// (default: refuse the whole evacuation before freezing anything).
        #[arg(long)]
        skip_blocked: bool,
        /// Move containers even when some of their TCP connections cannot
        /// survive the move (as `tern migrate --allow-reset`).
        #[arg(long)]
        allow_reset: bool,
        #[command(flatten)]
        transfer: TransferArgs,
        #[command(flatten)]
        precopy: PrecopyArgs,
    },
    /// Measure the link between two hosts' agents (QUIC with mutual TLS, as a
    /// migration uses it): how fast a checkpoint can cross.
    Probe {
        /// The sending host.
        #[arg(long)]
        from: String,
        /// The receiving host.
        #[arg(long)]
        to: String,
        /// How much to send (B, KiB, MiB, GiB).
        #[arg(long, default_value = "256MiB", value_parser = output::parse_size)]
        bytes: u64,
    },
    /// Certificates for the cluster.
    Pki {
        #[command(subcommand)]
        cmd: PkiCmd,
    },
}

/// How the checkpoint crosses the wire.
#[derive(clap::Args)]
struct TransferArgs {
    /// Accepted for scripts written for earlier versions: established TCP
    /// connections are always checkpointed and restored (CRIU TCP repair).
    #[arg(long, hide = true)]
    tcp_established: bool,
    /// Compress what crosses the wire: auto (zstd's fastest level where a
    /// run shrinks by 10 % or more, off on links measured at 2 Gbit/s or
    /// faster), zstd (always try, level 3), none.
    #[arg(long, value_enum, default_value = "auto")]
    compress: CompressArg,
    /// Restore eagerly: copy all memory into place before the container
    /// resumes on the target. By default a target that can (userfaultfd,
    /// `tern hosts`) resumes it first and fills its memory from its own
    /// copy right after; the source keeps its checkpoint until it is full.
    #[arg(long)]
    no_lazy_restore: bool,
}

impl TransferArgs {
    fn options(&self, precopy: &PrecopyArgs) -> migrate::Options {
        let compress = match self.compress {
            CompressArg::Auto => tern_proto::Compression::Auto,
            CompressArg::None => tern_proto::Compression::None,
            CompressArg::Zstd => tern_proto::Compression::Zstd,
        };
        // TCP repair always: a container with an established connection
        // cannot be dumped without it, and whether a connection survives
        // is the network's doing (the "tcp connections" check).
        let _ = self.tcp_established;
        migrate::Options {
            tcp_established: true,
            allow_reset: false,
            compress,
            lazy_restore: !self.no_lazy_restore,
            progress: true,
            policy: precopy.policy(),
        }
    }
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum CompressArg {
    Auto,
    None,
    Zstd,
}

/// The columns of `tern hosts`.
const HOST_COLUMNS: [&str; 11] = ["host", "address", "agent", "podman", "runtime", "criu", "kernel", "cgroups", "pre-copy", "lazy", "containers"];

/// When pre-copy stops copying rounds and freezes.
#[derive(clap::Args)]
#[command(next_help_heading = "Pre-copy")]
struct PrecopyArgs {
    /// Freeze once the pages left to copy would cross the link within this
    /// (at the rate measured in the rounds so far). Dump and restore times
    /// add to the downtime.
    #[arg(long, value_name = "DURATION", default_value = "300ms", value_parser = humantime::parse_duration)]
    max_downtime: std::time::Duration,
    /// At most this many rounds before the freeze.
    #[arg(long, value_name = "N", default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=1000))]
    max_rounds: u32,
    /// Give pre-copy this long in all (checked after every round).
    #[arg(long, value_name = "DURATION", default_value = "10m", value_parser = humantime::parse_duration)]
    timeout: std::time::Duration,
    /// When the timeout expires: give up, leaving the container running on
    /// the source, or freeze now whatever the downtime.
    #[arg(long, value_enum, default_value = "cancel")]
    on_timeout: OnTimeoutArg,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum OnTimeoutArg {
    Cancel,
    Switchover,
}

impl PrecopyArgs {
    fn policy(&self) -> tern_proto::policy::PolicyConfig {
        tern_proto::policy::PolicyConfig {
            max_downtime: self.max_downtime,
            max_rounds: self.max_rounds,
            timeout: self.timeout,
            on_timeout: match self.on_timeout {
                OnTimeoutArg::Cancel => tern_proto::policy::OnTimeout::Cancel,
                OnTimeoutArg::Switchover => tern_proto::policy::OnTimeout::Switchover,
            },
            ..Default::default()
        }
    }
}

/// Which container goes where, shared by `check` and `migrate`.
#[derive(clap::Args)]
struct MoveArgs {
    container: String,
    /// The target host (a name from the inventory).
    #[arg(long)]
    to: String,
    /// The source host, when the name is ambiguous.
    #[arg(long)]
    from: Option<String>,
    #[arg(long, value_enum, default_value = "auto")]
    mode: plan::ModeArg,
    /// Move it even when some of its TCP connections cannot survive the
    /// move (they are reset); without it such a move is refused before
    /// anything is frozen. The inventory's `[migrate] allow_reset` sets it
    /// for every move.
    #[arg(long)]
    allow_reset: bool,
}

#[derive(Subcommand)]
enum PkiCmd {
    /// Create a cluster CA and a certificate for every host and the coordinator.
    Init {
        /// Folder for the PEM files.
        #[arg(long)]
        out: PathBuf,
        /// A host as NAME=IP[,IP...]; repeat for each host.
        #[arg(long = "host", required = true)]
        hosts: Vec<String>,
        /// Replace an existing CA (invalidates every certificate it signed).
        #[arg(long)]
        force: bool,
    },
}

/// An error with the exit code it deserves.
struct Exit(u8, anyhow::Error);

impl<E: Into<anyhow::Error>> From<E> for Exit {
    fn from(e: E) -> Self {
        Exit(1, e.into())
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("TERN_LOG").unwrap_or_else(|_| "warn".into()))
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match run(cli).await {
        Ok(code) => ExitCode::from(code),
        Err(Exit(code, e)) => {
            eprintln!("tern: {e:#}");
            ExitCode::from(code)
        }
    }
}

async fn run(cli: Cli) -> Result<u8, Exit> {
    match cli.cmd {
        Cmd::Pki { cmd: PkiCmd::Init { out, hosts, force } } => pki_init(&out, &hosts, force),
        Cmd::Hosts => hosts(cli.inventory, cli.json).await,
        Cmd::Ps => ps(cli.inventory, cli.json).await,
        Cmd::Check { mv } => check(cli.inventory, cli.json, mv).await,
        Cmd::Probe { from, to, bytes } => probe(cli.inventory, cli.json, &from, &to, bytes).await,
        Cmd::Migrate { mv, transfer, precopy } => migrate(cli.inventory, cli.json, mv, transfer.options(&precopy)).await,
        Cmd::Evacuate { host, to, mode, dry_run, skip_blocked, allow_reset, transfer, precopy } => {
            let opts = migrate::Options { allow_reset, ..transfer.options(&precopy) };
            let ask = EvacuateAsk { host, to, mode, dry_run, skip_blocked, opts };
            evacuate(cli.inventory, cli.json, ask).await
        }
    }
}

/// Loads the inventory and asks every host for its facts and containers.
async fn survey(inv: Option<PathBuf>) -> Result<(inventory::Inventory, cluster::Cluster), Exit> {
    let inv = inventory::Inventory::load(inv.as_deref()).map_err(|e| Exit(2, e))?;
    let cluster = cluster::Cluster::survey(&inv).await?;
    Ok((inv, cluster))
}

async fn check(inv: Option<PathBuf>, as_json: bool, mv: MoveArgs) -> Result<u8, Exit> {
    let (inv, cluster) = survey(inv).await?;
    let allow_reset = mv.allow_reset || inv.migrate.allow_reset;
    let plan = plan::plan(&cluster, &mv.container, &mv.to, mv.from.as_deref(), mv.mode, allow_reset).await.map_err(|e| Exit(2, e))?;
    if as_json {
        println!(
            "{}",
            json!({
                "container": plan.container.name, "source": plan.source_name, "target": plan.target_name,
                "mode": plan.mode.as_str(), "mode_note": plan.mode_note,
                "ok": !plan.blocked(), "findings": output::findings_json(&plan.findings),
            })
        );
    } else {
        println!("{} on {} → {}: mode {} ({})\n", plan.container.name, plan.source_name, plan.target_name, plan.mode.as_str(), plan.mode_note);
        print!("{}", output::findings(&plan.findings));
        println!("\n{}", if plan.blocked() { "BLOCKED: tern migrate would refuse (see BLOCK rows)." } else { "OK: tern migrate would proceed." });
    }
    Ok(if plan.blocked() { 3 } else { 0 })
}

async fn migrate(inv: Option<PathBuf>, as_json: bool, mv: MoveArgs, opts: migrate::Options) -> Result<u8, Exit> {
    let (inv, cluster) = survey(inv).await?;
    let (container, to) = (&mv.container, &mv.to);
    let target_addr = inv.host(to).map_err(|e| Exit(2, e))?.address;
    let opts = migrate::Options { allow_reset: mv.allow_reset || inv.migrate.allow_reset, ..opts };
    let plan = plan::plan(&cluster, container, to, mv.from.as_deref(), mv.mode, opts.allow_reset).await.map_err(|e| Exit(2, e))?;
    if plan.blocked() {
        let blockers: Vec<_> = plan.findings.iter().filter(|f| f.severity == tern_proto::compat::Severity::Block).cloned().collect();
        if as_json {
            println!(
                "{}",
                json!({"container": container, "source": plan.source_name, "target": to, "mode": plan.mode.as_str(),
                       "outcome": "refused", "running_on": plan.source_name, "findings": output::findings_json(&blockers)})
            );
        } else {
            eprint!("{}", output::findings(&blockers));
        }
        return Err(Exit(
            3,
            anyhow::anyhow!(
                "refused before the freeze: {container} cannot move to {to} (rows above; `tern check {container} --to {to}` shows all). Nothing was touched; {container} {} on {}.",
                if plan.container.is_running() { "still runs" } else { "stays as it was" },
                plan.source_name
            ),
        ));
    }
    if !as_json {
        eprintln!("migrating {container} from {} to {to} ({}: {})", plan.source_name, plan.mode.as_str(), plan.mode_note);
    }
    let report = migrate::run(&plan, target_addr, &opts).await?;
    if as_json {
        println!("{}", output::report_json(&report));
    } else {
        print!("{}", output::report_text(&report));
    }
    Ok(match report.outcome {
        Outcome::Completed => 0,
        _ => 1,
    })
}

/// What `tern evacuate` was asked.
struct EvacuateAsk {
    host: String,
    to: Vec<String>,
    mode: plan::ModeArg,
    dry_run: bool,
    skip_blocked: bool,
    opts: migrate::Options,
}

async fn evacuate(inv: Option<PathBuf>, as_json: bool, ask: EvacuateAsk) -> Result<u8, Exit> {
    let (inv, cluster) = survey(inv).await?;
    evacuate::run(&inv, &cluster, as_json, ask).await
}

fn pki_init(out: &std::path::Path, hosts: &[String], force: bool) -> Result<u8, Exit> {
    let mut specs = Vec::new();
    for h in hosts {
        let (name, ips) = h.split_once('=').ok_or_else(|| Exit(2, anyhow::anyhow!("--host {h}: expected NAME=IP[,IP...]")))?;
        let addresses = ips
            .split(',')
            .map(|ip| ip.trim().parse())
            .collect::<Result<Vec<std::net::IpAddr>, _>>()
            .map_err(|e| Exit(2, anyhow::anyhow!("--host {h}: {e}")))?;
        specs.push(tern_transport::pki::HostSpec { name: name.to_string(), addresses });
    }
    let files = tern_transport::pki::init(out, &specs, force)?;
    println!("wrote {} files to {}", files.len(), out.display());
    Ok(0)
}

async fn probe(inv: Option<PathBuf>, as_json: bool, from: &str, to: &str, bytes: u64) -> Result<u8, Exit> {
    let inv = inventory::Inventory::load(inv.as_deref()).map_err(|e| Exit(2, e))?;
    let target = inv.host(to).map_err(|e| Exit(2, e))?;
    let source = inv.host(from).map_err(|e| Exit(2, e))?;
    if from == to {
        return Err(Exit(2, anyhow::anyhow!("--from and --to name the same host")));
    }
    let (_endpoint, session) = cluster::connect(&inv, source).await?;
    let req = tern_proto::ProbeRequest { target: tern_proto::Peer { name: target.name.clone(), address: target.address.to_string() }, bytes };
    if !as_json {
        eprintln!("sending {} from {from} to {to} ...", output::bytes(bytes));
    }
    // As long as the slowest link worth measuring (1 MiB/s) needs.
    let limit = std::time::Duration::from_secs(90 + bytes / (1 << 20));
    let (mut send, mut recv) = session.open(&tern_proto::Request::Probe(req)).await?;
    let _ = send.finish();
    let r = match session.read::<tern_proto::Response>(&mut recv, limit).await? {
        tern_proto::Response::Probe(r) => r,
        tern_proto::Response::Error(e) => return Err(Exit(1, anyhow::anyhow!("{from}: {}", e.message))),
        other => return Err(Exit(1, anyhow::anyhow!("{from} answered {other:?}"))),
    };
    let secs = (r.ms as f64 / 1000.0).max(1e-3);
    let mbit = r.bytes as f64 * 8.0 / secs / 1e6;
    if as_json {
        println!(
            "{}",
            json!({"from": r.from, "to": r.to, "bytes": r.bytes, "ms": r.ms, "mbit_per_s": (mbit * 10.0).round() / 10.0,
                   "bytes_on_wire": r.bytes_on_wire, "lost_packets": r.lost_packets, "rtt_us": r.rtt_us})
        );
    } else {
        println!(
            "{} → {}: {} in {} = {:.0} Mbit/s ({}/s) of payload; {} on the wire, {} packets lost, rtt {:.2} ms",
            r.from,
            r.to,
            output::bytes(r.bytes),
            output::ms(r.ms),
            mbit,
            output::bytes((r.bytes as f64 / secs) as u64),
            output::bytes(r.bytes_on_wire),
            r.lost_packets,
            r.rtt_us as f64 / 1000.0
        );
    }
    Ok(0)
}

async fn hosts(inv: Option<PathBuf>, as_json: bool) -> Result<u8, Exit> {
    let (_, cluster) = survey(inv).await?;
    let down = cluster.hosts.iter().filter(|h| h.state.is_err()).count();
    if as_json {
        let v: Vec<_> = cluster
            .hosts
            .iter()
            .map(|h| match &h.state {
                Ok(s) => json!({"name": h.entry.name, "address": h.entry.address.to_string(), "reachable": true,
                                "facts": s.facts, "containers": s.containers.len()}),
                Err(e) => json!({"name": h.entry.name, "address": h.entry.address.to_string(), "reachable": false, "error": e}),
            })
            .collect();
        println!("{}", serde_json::Value::Array(v));
    } else {
        let rows: Vec<Vec<String>> = cluster
            .hosts
            .iter()
            .map(|h| match &h.state {
                Ok(s) => {
                    let f = &s.facts;
                    vec![
                        h.entry.name.clone(),
                        h.entry.address.to_string(),
                        "up".into(),
                        f.podman_version.clone(),
                        format!(
                            "{} {}",
                            f.runtime_name,
                            tern_proto::compat::version_numbers(&f.runtime_version).iter().map(|n| n.to_string()).collect::<Vec<_>>().join(".")
                        ),
                        f.criu_version.clone(),
                        f.kernel.clone(),
                        f.cgroups.to_string(),
                        if f.dirty_tracking.supported { "yes".into() } else { "no".into() },
                        if f.lazy_restore.supported { "yes".into() } else { "no".into() },
                        s.containers.len().to_string(),
                    ]
                }
                Err(e) => vec![h.entry.name.clone(), h.entry.address.to_string(), format!("DOWN: {e}")],
            })
            .map(|mut r| {
                r.resize(HOST_COLUMNS.len(), String::new());
                r
            })
            .collect();
        print!("{}", output::table(&HOST_COLUMNS, &rows));
    }
    Ok(if down > 0 { 1 } else { 0 })
}

async fn ps(inv: Option<PathBuf>, as_json: bool) -> Result<u8, Exit> {
    let (_, cluster) = survey(inv).await?;
    let mut rows = Vec::new();
    let mut all = Vec::new();
    for h in &cluster.hosts {
        match &h.state {
            Ok(s) => {
                for c in &s.containers {
                    let ips: Vec<String> = c.ips.iter().map(|i| i.to_string()).collect();
                    let mem = if c.memory_bytes > 0 { output::bytes(c.memory_bytes) } else { "-".into() };
                    let files = output::bytes(c.files_bytes);
                    let nets: Vec<String> = c.networks.iter().map(|n| format!("{} ({})", n.network, n.driver)).collect();
                    rows.push(vec![
                        h.entry.name.clone(),
                        c.name.clone(),
                        c.state.clone(),
                        ips.join(","),
                        nets.join(","),
                        c.connections.len().to_string(),
                        mem,
                        files,
                        c.image.clone(),
                    ]);
                    all.push(json!({"host": h.entry.name, "name": c.name, "id": c.id, "state": c.state, "ips": ips,
                                    "networks": c.networks, "ports": c.ports, "connections": c.connections,
                                    "memory_bytes": c.memory_bytes, "files_bytes": c.files_bytes, "image": c.image}));
                }
            }
            Err(e) => eprintln!("tern: {} is unreachable: {e}", h.entry.name),
        }
    }
    if as_json {
        println!("{}", serde_json::Value::Array(all));
    } else {
        print!("{}", output::table(&["host", "container", "state", "address", "network", "tcp", "memory", "files", "image"], &rows));
    }
    Ok(0)
}
