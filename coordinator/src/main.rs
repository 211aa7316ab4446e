//! `tern`: the command line people use to move running containers.
//!
//! `cluster` talks to every agent of the `inventory`; `plan` runs the
//! compatibility rules before anything is frozen; `migrate` drives one
//! migration and `progress` shows how it goes; `evacuate` places a host's
//! containers on the others and `ret` brings them back; `maintenance`
//! cordons and uncordons hosts;
//! `output` formats what users read and `view`
//! what `--json` prints; `command` holds what every command shares (the
//! global flags, the result, the exit code).

mod checkpoint;
mod cluster;
mod command;
mod evacuate;
mod inventory;
mod maintenance;
mod migrate;
mod output;
mod plan;
mod postcopy;
mod progress;
mod ret;
mod view;

use anyhow::anyhow;
use clap::{CommandFactory, Parser, Subcommand};
use command::{Ctx, Done, Exit};
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use tern_proto::Outcome;

/// Live migration of running Podman containers between hosts.
#[derive(Parser)]
#[command(name = "tern", version, about, after_help = EXIT_CODES)]
struct Cli {
    /// The hosts inventory (default: $TERN_INVENTORY, ./.tern/inventory.toml,
    /// ~/.config/tern/inventory.toml, /etc/tern/inventory.toml).
    #[arg(long, global = true)]
    inventory: Option<PathBuf>,
    /// Print one JSON document on stdout instead of text, `"schema": 1` at
    /// its top; a failure prints one too, with "error" and "exit_code".
    /// Progress still goes to stderr.
    #[arg(long, global = true)]
    json: bool,
    /// No progress lines on stderr: only the report, or the error.
    #[arg(long, short, global = true)]
    quiet: bool,
    #[command(subcommand)]
    cmd: Cmd,
}

const EXIT_CODES: &str = "Exit codes: 0 success; 1 the operation failed (a migration rolled back or failed); \
2 bad usage or input; 3 refused by the compatibility check before anything was frozen.\n\
Logging: TERN_LOG (else RUST_LOG) filters the log on stderr, e.g. TERN_LOG=debug (default: warn).";

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
    /// Move every running container off a host (before a reboot): cordon it
    /// first, then move each container to the compatible target holding the
    /// least memory that has room for it, up to --parallel at once.
    Evacuate {
        /// The host to empty.
        host: String,
        /// The hosts that may take its containers (comma-separated or
        /// repeated; default: every other host in the inventory).
        #[arg(long, value_delimiter = ',')]
        to: Vec<String>,
        #[command(flatten)]
        batch: BatchArgs,
        #[command(flatten)]
        transfer: TransferArgs,
        #[command(flatten)]
        precopy: PrecopyArgs,
    },
    /// Keep migrations off a host (before maintenance): its agent refuses
    /// every incoming move and keeps the cordon across restarts; `tern
    /// hosts` shows it.
    Cordon {
        host: String,
        /// Why, for `tern hosts` and every refusal (kept with the time).
        #[arg(long, default_value = maintenance::DEFAULT_REASON)]
        reason: String,
    },
    /// Let migrations land on a cordoned host again.
    Uncordon { host: String },
    /// After maintenance: move back what `tern evacuate` moved off a host
    /// (as its agent recorded it), skipping what was since removed, stopped
    /// or moved by hand, then uncordon it once every move back completed.
    Return {
        /// The host that was evacuated.
        host: String,
        #[command(flatten)]
        batch: BatchArgs,
        #[command(flatten)]
        transfer: TransferArgs,
        #[command(flatten)]
        precopy: PrecopyArgs,
    },
    /// Post-copy moves whose memory is still crossing: how each stands
    /// (the default), and what to do with one whose link to its target is
    /// lost. Until then the container waits on the target, paused, and its
    /// source keeps its memory and tries the link again by itself.
    PostCopy {
        #[command(subcommand)]
        cmd: Option<PostCopyCmd>,
    },
    /// Checkpoints kept as things of their own: taken from a running
    /// container, stored by a host's agent, listed, inspected, removed;
    /// `tern restore` brings one back on any compatible host.
    Checkpoint {
        #[command(subcommand)]
        cmd: CheckpointCmd,
    },
    /// Checkpoints of a container taken on a schedule by its host's agent
    /// and kept on another host, so that it can be brought back there when
    /// its host is lost (`tern restore LATEST --on HOST --host-lost`), as
    /// of its latest checkpoint. After the first, only what changed
    /// crosses. `tern standby ls` shows them, `tern standby stop C` ends one.
    #[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
    Standby {
        #[command(subcommand)]
        cmd: Option<StandbyCmd>,
        /// The container.
        #[arg(required = true)]
        container: Option<String>,
        /// The host whose store keeps the checkpoints.
        #[arg(long, required = true)]
        on: Option<String>,
        /// How often (e.g. 30s, 5m, 1h; at least 10s).
        #[arg(long, value_name = "INTERVAL", value_parser = humantime::parse_duration, required = true)]
        every: Option<std::time::Duration>,
        /// How many of the latest the store keeps.
        #[arg(long, default_value_t = 3)]
        keep: u32,
    },
    /// Restore a stored checkpoint on a host: as the container it was
    /// (refused while that container runs anywhere), or as one or more
    /// replicas under new names, with new IDs and addresses. Checked as a
    /// migration is, before anything runs.
    Restore {
        /// The checkpoint's name (`tern checkpoint ls`).
        checkpoint: String,
        /// The host to restore it on.
        #[arg(long)]
        on: String,
        /// A new name for a container restored from it; repeat for
        /// replicas. Without it, the container as it was.
        #[arg(long = "name", value_name = "NAME")]
        names: Vec<String>,
        /// The store holding the checkpoint, when several hold one of
        /// that name.
        #[arg(long)]
        store: Option<String>,
        /// The host it was taken on is lost: restore the container as it
        /// was although that host cannot say it no longer runs there.
        #[arg(long)]
        host_lost: bool,
        /// Replace a stopped container of the same name on the host (after
        /// `tern checkpoint create --all HOST --stop` and a reboot); a
        /// running one is never replaced.
        #[arg(long)]
        replace: bool,
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
    /// Print a shell's completion script on stdout, e.g.
    /// `tern completions bash > /etc/bash_completion.d/tern`.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Write the manual pages: tern.1 and one per subcommand
    /// (tern-migrate.1, ...); prints the files written.
    Man {
        /// The folder to write them into (made if missing).
        #[arg(long, value_name = "DIR", default_value = ".")]
        dir: PathBuf,
    },
}

/// How a batch of moves runs (`evacuate`, `return`).
#[derive(clap::Args)]
struct BatchArgs {
    #[arg(long, value_enum, default_value = "auto")]
    mode: plan::ModeArg,
    /// Print the plan (each container, where it would go, or why it
    /// stays), and stop.
    #[arg(long)]
    dry_run: bool,
    /// Move what can move when the check refuses some container (default:
    /// refuse the whole batch before freezing anything).
    #[arg(long)]
    skip_blocked: bool,
    /// Move containers even when some of their TCP connections cannot
    /// survive the move (as `tern migrate --allow-reset`).
    #[arg(long)]
    allow_reset: bool,
    #[command(flatten)]
    force: ForceArgs,
    /// Run up to N moves at once (one progress view for all).
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=64))]
    parallel: u16,
    /// Stop at the first failed move: cancel the moves under way (each
    /// rolls back) and start no more. By default the others go on.
    #[arg(long)]
    fail_fast: bool,
}

impl BatchArgs {
    /// What `evacuate` (and `return`, with no `to`) is asked.
    fn ask(self, host: String, to: Vec<String>, opts: migrate::Options) -> evacuate::EvacuateAsk {
        let opts = migrate::Options { allow_reset: self.allow_reset, force: self.force.force_compat, ..opts };
        let BatchArgs { mode, dry_run, skip_blocked, parallel, fail_fast, .. } = self;
        evacuate::EvacuateAsk { host, to, mode, dry_run, skip_blocked, parallel: parallel.into(), fail_fast, opts }
    }
}

/// How the checkpoint crosses the wire.
#[derive(clap::Args)]
struct TransferArgs {
    /// Accepted for scripts written for earlier versions: established TCP
    /// connections are always checkpointed and restored (CRIU TCP repair).
    #[arg(long, hide = true)]
    tcp_established: bool,
    /// Compress what crosses the wire: auto (zstd's fastest level where a
    /// run shrinks by 10 % or more, backing off on incompressible data; off
    /// on links measured at 2 Gbit/s or faster per compressing thread),
    /// zstd (level 3, the same way, on any link), none.
    #[arg(long, value_enum, default_value = "auto")]
    compress: CompressArg,
    /// Restore eagerly: copy all memory into place before the container
    /// resumes on the target. By default a target that can (userfaultfd,
    /// `tern hosts`) resumes it first and fills its memory from its own
    /// copy right after; the source keeps its checkpoint until it is full.
    /// `auto` then never picks post-copy, whatever the inventory allows.
    #[arg(long)]
    no_lazy_restore: bool,
    /// Cap the source host's outgoing migration traffic at RATE, shared by
    /// every move under way from it: e.g. 200Mbit, 1.5Gbit, 50MB, 20MiB
    /// (bits per second: bit, kbit, Mbit, Gbit; bytes per second: B, kB,
    /// MB, GB, KiB, MiB, GiB; "/s" optional; at least 1Mbit). It may only
    /// lower the cap the source's agent sets ([limits] bandwidth), never
    /// raise it. The frozen checkpoint crosses at the cap too: a low one
    /// lengthens the downtime.
    #[arg(long, value_name = "RATE", value_parser = tern_proto::bandwidth::parse_rate)]
    bandwidth: Option<u64>,
}

impl TransferArgs {
    fn options(&self, precopy: &PrecopyArgs, quiet: bool) -> migrate::Options {
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
            progress: !quiet,
            policy: precopy.policy(),
            bandwidth: self.bandwidth.unwrap_or(0),
            force: Vec::new(),
            auto_post_copy: false,
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
const HOST_COLUMNS: [&str; 12] =
    ["host", "address", "agent", "podman", "runtime", "criu", "kernel", "cgroups", "pre-copy", "lazy", "containers", "cordon"];

/// When pre-copy stops copying rounds and freezes.
#[derive(clap::Args)]
#[command(next_help_heading = "Pre-copy")]
struct PrecopyArgs {
    /// Freeze once the pages left to copy would cross the link within this
    /// (at the rate measured in the rounds so far, or the bandwidth cap if
    /// lower). Dump and restore times add to the downtime.
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
    #[command(flatten)]
    force: ForceArgs,
}

/// `--force-compat`, on every command that checks or moves.
#[derive(clap::Args)]
struct ForceArgs {
    /// Move even though the check refuses FIELD, where that refusal is a
    /// judgement call (repeatable or comma-separated): podman, oci-runtime,
    /// cgroups, criu, cpu-flags, network-backend. The row shows FORCED and
    /// the report lists it; other rows (arch, a name or address in use, a
    /// cordon, a missing CRIU, ...) cannot be forced.
    #[arg(long = "force-compat", value_name = "FIELD", value_delimiter = ',', value_parser = force_field)]
    force_compat: Vec<tern_proto::compat::ForceField>,
}

/// `--force-compat FIELD`: a field that can be forced, else clap's error
/// says why not, or which can.
fn force_field(s: &str) -> Result<tern_proto::compat::ForceField, String> {
    s.parse()
}

#[derive(Subcommand)]
enum StandbyCmd {
    /// Every standby of every host: when the last checkpoint was stored,
    /// what crossed for it, and whether the last attempt failed.
    Ls,
    /// End a container's standby; its checkpoints stay in the store.
    Stop { container: String },
}

#[derive(Subcommand)]
enum CheckpointCmd {
    /// Checkpoint a running container into a host's store. It keeps
    /// running (paused only while CRIU dumps) unless --stop.
    #[command(group = clap::ArgGroup::new("what").required(true).args(["container", "all"]))]
    Create {
        container: Option<String>,
        /// Every running container of this host, each under its default
        /// name (before a reboot with nowhere to move them: with --stop,
        /// then `tern restore` each).
        #[arg(long, value_name = "HOST", conflicts_with = "container")]
        all: Option<String>,
        /// The checkpoint's name (default: CONTAINER-YYYYMMDD-HHMMSS, UTC).
        #[arg(long)]
        name: Option<String>,
        /// The host whose agent keeps it (default: the container's host).
        #[arg(long)]
        store: Option<String>,
        /// Stop the container after the dump, as `podman container
        /// checkpoint` does without --leave-running.
        #[arg(long)]
        stop: bool,
        /// Dump file locks too (databases that lock their files need it).
        #[arg(long)]
        file_locks: bool,
    },
    /// Every checkpoint of every host's store.
    Ls,
    /// What a checkpoint holds and what restoring it needs.
    Inspect {
        name: String,
        /// The store holding it, when several hold one of that name.
        #[arg(long)]
        store: Option<String>,
    },
    /// Make a stored checkpoint an OCI image in its store host's Podman,
    /// as Podman's `checkpoint --create-image` would: `podman push` sends
    /// it to a registry, `podman container restore IMAGE` restores it.
    Image {
        name: String,
        /// The image's name (default localhost/tern-checkpoint-NAME:latest).
        #[arg(long = "as", value_name = "IMAGE")]
        image: Option<String>,
        /// The store holding it, when several hold one of that name.
        #[arg(long)]
        store: Option<String>,
    },
    /// Remove a checkpoint from its store.
    Rm {
        name: String,
        /// The store holding it, when several hold one of that name.
        #[arg(long)]
        store: Option<String>,
    },
}

#[derive(Subcommand)]
enum PostCopyCmd {
    /// Every fill under way on every host, or CONTAINER's.
    Status { container: Option<String> },
    /// Try the lost link to the target again now (it is tried every few
    /// seconds anyway).
    Resume {
        container: String,
        /// The source host, when the name is ambiguous.
        #[arg(long)]
        from: Option<String>,
    },
    /// Give the move up: the container runs on its source again as of its
    /// freeze, and whatever it did on the target since is lost; the
    /// target removes its paused copy once it hears. Only while the link
    /// is lost.
    GiveUp {
        container: String,
        /// The source host, when the name is ambiguous.
        #[arg(long)]
        from: Option<String>,
    },
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
        /// How long the hosts' and the coordinator's certificates last (the CA: ten years).
        #[arg(long, default_value_t = tern_transport::pki::LEAF_DAYS)]
        days: u32,
    },
    /// Add a host, or renew its certificate, with the existing CA (the other hosts keep theirs).
    Issue {
        /// The host's name (its agent's `name`).
        name: String,
        /// The folder `tern pki init` wrote (holding ca.pem and ca.key).
        #[arg(long, visible_alias = "out")]
        dir: PathBuf,
        /// An IP address of the host; repeat for each.
        #[arg(long = "address")]
        addresses: Vec<std::net::IpAddr>,
        /// How long the certificate lasts.
        #[arg(long, default_value_t = tern_transport::pki::LEAF_DAYS)]
        days: u32,
        /// Issue NAME's evacuator certificate instead (NAME.evacuator.pem
        /// and .key): with it, NAME's agent may evacuate NAME itself (when
        /// the host shuts down, `[self_evacuation]`) and bring back what
        /// left it, and nothing else.
        #[arg(long, conflicts_with = "addresses")]
        evacuator: bool,
    },
    /// Revoke every certificate issued to NAME: crl.pem is rewritten, and
    /// agents refuse it from their next handshake on.
    Revoke {
        name: String,
        /// Only NAME's evacuator certificate (the host keeps its own).
        #[arg(long)]
        evacuator: bool,
        /// The folder `tern pki init` wrote.
        #[arg(long, visible_alias = "out")]
        dir: PathBuf,
    },
}

#[tokio::main]
async fn main() -> ExitCode {
    // `tern ps | head`: a reader that goes ends tern quietly, as it ends
    // any other command, not with a panic over a broken pipe (Rust ignores
    // SIGPIPE by default). tern writes to no other pipe or socket that
    // could raise it: the agents are reached over QUIC, on UDP.
    // SAFETY: SIG_DFL runs no code of ours, and nothing in tern handles
    // SIGPIPE otherwise.
    let _ = unsafe { nix::sys::signal::signal(nix::sys::signal::Signal::SIGPIPE, nix::sys::signal::SigHandler::SigDfl) };
    tracing_subscriber::fmt().with_env_filter(log_filter()).with_writer(std::io::stderr).init();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => usage_error(e),
    };
    let as_json = cli.json;
    let result = run(cli).await;
    cluster::close_all().await;
    match result {
        Ok(doc) => {
            if let (true, Some(doc)) = (as_json, doc) {
                print_json(&view::Doc::ok(doc));
            }
            ExitCode::SUCCESS
        }
        Err(Exit { code, error, partial, told }) => {
            if !told {
                eprintln!("tern: {error:#}");
            }
            if as_json {
                print_json(&view::Doc::failed(format!("{error:#}"), code, partial));
            }
            ExitCode::from(code)
        }
    }
}

/// The log filter: `$TERN_LOG` (what the agent reads too), else
/// `$RUST_LOG`, else warnings only.
fn log_filter() -> tracing_subscriber::EnvFilter {
    let spec = log_spec(std::env::var("TERN_LOG").ok(), std::env::var("RUST_LOG").ok());
    tracing_subscriber::EnvFilter::try_new(spec).unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"))
}

fn log_spec(tern: Option<String>, rust: Option<String>) -> String {
    [tern, rust].into_iter().flatten().find(|s| !s.trim().is_empty()).unwrap_or_else(|| "warn".into())
}

fn print_json<T: Serialize>(doc: &view::Doc<T>) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    // A closed pipe is the reader's choice; nothing to tell it.
    let _ = serde_json::to_writer(&mut out, doc);
    let _ = writeln!(out);
    let _ = out.flush();
}

/// Bad usage: clap says why on stderr and exits with 2; under `--json`
/// stdout gets the failure document first. Help and `--version` are no
/// failures.
fn usage_error(e: clap::Error) -> ! {
    if e.use_stderr() && json_asked(std::env::args_os().skip(1)) {
        print_json(&view::Doc::<serde_json::Value>::failed(usage_message(&e), e.exit_code() as u8, None));
    }
    e.exit()
}

/// Whether `--json` is among the arguments (before a `--`).
fn json_asked(args: impl Iterator<Item = std::ffi::OsString>) -> bool {
    args.take_while(|a| a != "--").any(|a| a == "--json")
}

/// clap's error in one line, without its "error: " and usage.
fn usage_message(e: &clap::Error) -> String {
    use clap::error::ErrorKind;
    if matches!(e.kind(), ErrorKind::MissingSubcommand | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand) {
        return "a subcommand is required (`tern --help` lists them)".into();
    }
    let text = e.to_string();
    let first = text.lines().find(|l| !l.trim().is_empty()).unwrap_or("bad usage");
    first.trim().trim_start_matches("error:").trim().to_string()
}

async fn run(cli: Cli) -> Done {
    let ctx = Ctx { inventory: cli.inventory, json: cli.json, quiet: cli.quiet };
    match cli.cmd {
        Cmd::Pki { cmd: PkiCmd::Init { out, hosts, force, days } } => pki_init(&ctx, &out, &hosts, force, days),
        Cmd::Pki { cmd: PkiCmd::Issue { name, dir, addresses, days, evacuator } } => {
            let files = if evacuator {
                tern_transport::pki::issue_evacuator(&dir, &name, days)
            } else {
                tern_transport::pki::issue_with(&dir, &tern_transport::pki::HostSpec { name, addresses }, days)
            }
            .map_err(|e| Exit::new(2, anyhow::Error::from(e)))?;
            if !ctx.json {
                println!("wrote {}", files.iter().map(|f| f.display().to_string()).collect::<Vec<_>>().join(", "));
            }
            Ok(ctx.doc(&view::Written { dir: &dir, files: &files }))
        }
        Cmd::Pki { cmd: PkiCmd::Revoke { name, dir, evacuator } } => {
            let role = evacuator.then_some(tern_transport::Role::Evacuator);
            let serials = tern_transport::pki::revoke(&dir, &name, role).map_err(|e| Exit::new(2, anyhow::Error::from(e)))?;
            let crl = dir.join("crl.pem");
            if !ctx.json {
                println!(
                    "revoked {name} (serial {}); {} rewritten: agents refuse it from their next handshake. Copy it to every host if the PKI folder is not shared",
                    serials.join(", "),
                    crl.display()
                );
            }
            Ok(ctx.doc(&view::Revoked { name: &name, serials: &serials, crl: &crl }))
        }
        Cmd::Completions { shell } => completions(shell),
        Cmd::Man { dir } => man(&ctx, &dir),
        Cmd::Hosts => hosts(&ctx).await,
        Cmd::Cordon { host, reason } => maintenance::cordon(&ctx, &host, Some(reason)).await,
        Cmd::Uncordon { host } => maintenance::cordon(&ctx, &host, None).await,
        Cmd::Return { host, batch, transfer, precopy } => {
            let mut ask = batch.ask(host, Vec::new(), transfer.options(&precopy, ctx.quiet));
            let (inv, cluster) = survey(&ctx).await?;
            ask.opts = with_defaults(&inv.migrate, ask.opts);
            maintenance::only_own_host(&inv, &ask.host)?;
            ret::run(&ctx, &inv, &cluster, ask).await
        }
        Cmd::Ps => ps(&ctx).await,
        Cmd::PostCopy { cmd } => {
            use tern_proto::PostCopyAction as A;
            let (action, container, from) = match cmd.unwrap_or(PostCopyCmd::Status { container: None }) {
                PostCopyCmd::Status { container } => (A::Status, container, None),
                PostCopyCmd::Resume { container, from } => (A::Resume, Some(container), from),
                PostCopyCmd::GiveUp { container, from } => (A::GiveUp, Some(container), from),
            };
            postcopy::run(&ctx, action, container, from).await
        }
        Cmd::Checkpoint { cmd } => {
            let (inv, cluster) = survey(&ctx).await?;
            match cmd {
                CheckpointCmd::Create { container, all, name, store, stop, file_locks } => {
                    let req = checkpoint::Create { name, store, leave_running: !stop, file_locks };
                    match (container, all) {
                        (_, Some(host)) => checkpoint::create_all(&ctx, &inv, &cluster, &host, req).await,
                        (Some(c), None) => checkpoint::create(&ctx, &inv, &cluster, &c, req).await,
                        (None, None) => Err(Exit::new(2, anyhow!("name a container, or --all HOST"))),
                    }
                }
                CheckpointCmd::Ls => checkpoint::ls(&ctx, &cluster).await,
                CheckpointCmd::Inspect { name, store } => checkpoint::inspect(&ctx, &cluster, &name, store.as_deref()).await,
                CheckpointCmd::Image { name, image, store } => checkpoint::image(&ctx, &cluster, &name, image, store.as_deref()).await,
                CheckpointCmd::Rm { name, store } => checkpoint::rm(&ctx, &cluster, &name, store.as_deref()).await,
            }
        }
        Cmd::Standby { cmd, container, on, every, keep } => {
            let (inv, cluster) = survey(&ctx).await?;
            match (cmd, container, on, every) {
                (Some(StandbyCmd::Ls), ..) => checkpoint::standby_list(&ctx, &cluster, None).await,
                (Some(StandbyCmd::Stop { container }), ..) => checkpoint::standby_list(&ctx, &cluster, Some(&container)).await,
                (None, Some(c), Some(on), Some(every)) => checkpoint::standby_set(&ctx, &inv, &cluster, &c, &on, every, keep).await,
                _ => Err(Exit::new(2, anyhow!("tern standby CONTAINER --on HOST --every INTERVAL [--keep N], or tern standby ls|stop"))),
            }
        }
        Cmd::Restore { checkpoint: name, on, names, store, host_lost, replace } => {
            let (inv, cluster) = survey(&ctx).await?;
            checkpoint::restore(&ctx, &inv, &cluster, &name, checkpoint::RestoreArgs { on, names, store, host_lost, replace }).await
        }
        Cmd::Check { mv } => check(&ctx, mv).await,
        Cmd::Probe { from, to, bytes } => probe(&ctx, &from, &to, bytes).await,
        Cmd::Migrate { mv, transfer, precopy } => {
            let opts = transfer.options(&precopy, ctx.quiet);
            migrate(&ctx, mv, opts).await
        }
        Cmd::Evacuate { host, to, batch, transfer, precopy } => {
            let mut ask = batch.ask(host, to, transfer.options(&precopy, ctx.quiet));
            let (inv, cluster) = survey(&ctx).await?;
            ask.opts = with_defaults(&inv.migrate, ask.opts);
            maintenance::only_own_host(&inv, &ask.host)?;
            evacuate::run(&ctx, &inv, &cluster, ask).await
        }
    }
}

/// The inventory's defaults over what a command asked: `allow_reset`
/// adds to `--allow-reset`; `post_copy` is the inventory's alone.
fn with_defaults(d: &inventory::MigrateDefaults, opts: migrate::Options) -> migrate::Options {
    migrate::Options { allow_reset: opts.allow_reset || d.allow_reset, auto_post_copy: d.post_copy, ..opts }
}

/// Loads the inventory and asks every host for its facts and containers.
async fn survey(ctx: &Ctx) -> Result<(inventory::Inventory, cluster::Cluster), Exit> {
    let inv = inventory::Inventory::load(ctx.inventory.as_deref()).map_err(|e| Exit::new(2, e))?;
    let cluster = cluster::Cluster::survey(&inv).await?;
    Ok((inv, cluster))
}

async fn check(ctx: &Ctx, mv: MoveArgs) -> Done {
    let (inv, cluster) = survey(ctx).await?;
    let ask = plan::Ask {
        mode: mv.mode,
        allow_reset: mv.allow_reset || inv.migrate.allow_reset,
        auto_post_copy: inv.migrate.post_copy,
        force: &mv.force.force_compat,
    };
    let plan = plan::plan(&cluster, &mv.container, &mv.to, mv.from.as_deref(), &ask).await.map_err(|e| Exit::new(2, e))?;
    let view = view::Check {
        container: &plan.container.name,
        source: &plan.source_name,
        target: &plan.target_name,
        mode: plan.mode,
        mode_note: &plan.mode_note,
        ok: !plan.blocked(),
        findings: &plan.findings,
        forced: plan.forced().map(|f| f.field.as_str()).collect(),
        bandwidth: plan.source.facts.status.bandwidth_cap,
    };
    if !ctx.json {
        println!("{} on {} → {}: mode {} ({})", plan.container.name, plan.source_name, plan.target_name, plan.mode.as_str(), plan.mode_note);
        println!("{}\n", output::bandwidth_note(&plan.source_name, plan.source.facts.status.bandwidth_cap, &plan.container, plan.mode));
        print!("{}", output::findings(&plan.findings));
        let verdict = match (plan.blocked(), plan.forced_fields()) {
            (true, _) => "BLOCKED: tern migrate would refuse (see BLOCK rows).".to_string(),
            (false, forced) if forced.is_empty() => "OK: tern migrate would proceed.".to_string(),
            (false, forced) => format!("OK: tern migrate would proceed, forcing {forced} (FORCED rows)."),
        };
        println!("\n{verdict}");
    }
    if plan.blocked() {
        let e = anyhow!("BLOCKED: tern migrate would refuse to move {} to {} (see the blocking findings)", plan.container.name, plan.target_name);
        return Err(Exit::new(3, e).with(&view).told());
    }
    Ok(ctx.doc(&view))
}

async fn migrate(ctx: &Ctx, mv: MoveArgs, opts: migrate::Options) -> Done {
    let (inv, cluster) = survey(ctx).await?;
    let (container, to) = (&mv.container, &mv.to);
    let target_addr = inv.host(to).map_err(|e| Exit::new(2, e))?.address;
    let opts = with_defaults(&inv.migrate, migrate::Options { allow_reset: mv.allow_reset, force: mv.force.force_compat.clone(), ..opts });
    let plan = plan::plan(&cluster, container, to, mv.from.as_deref(), &opts.ask(mv.mode)).await.map_err(|e| Exit::new(2, e))?;
    if plan.blocked() {
        let blockers: Vec<_> = plan.findings.iter().filter(|f| f.severity == tern_proto::compat::Severity::Block).cloned().collect();
        eprint!("{}", output::findings(&blockers));
        let e = anyhow!(
            "refused before the freeze: {container} cannot move to {to} (rows above; `tern check {container} --to {to}` shows all). Nothing was touched; {container} {} on {}.",
            if plan.container.is_running() { "still runs" } else { "stays as it was" },
            plan.source_name
        );
        let refused = view::Refused {
            container,
            source: &plan.source_name,
            target: to,
            mode: plan.mode,
            outcome: "refused",
            running_on: &plan.source_name,
            findings: &blockers,
        };
        return Err(Exit::new(3, e).with(&refused));
    }
    if !ctx.quiet {
        eprintln!("migrating {container} from {} to {to} ({}: {})", plan.source_name, plan.mode.as_str(), plan.mode_note);
        let forced = plan.forced_fields();
        if !forced.is_empty() {
            eprintln!("forcing {forced}: the check refused it, --force-compat lifts it (`tern check` shows why)");
        }
    }
    let signer = tern_transport::ticket::Signer::load(&inv.tls)?;
    let moved = migrate::run(&plan, target_addr, &opts, &signer).await?;
    if !ctx.json {
        print!("{}", output::report_text(&moved.report, &moved.forced));
    }
    let view = view::Report::new(&moved.report, &moved.forced);
    match moved.report.outcome {
        Outcome::Completed => Ok(ctx.doc(&view)),
        _ => Err(Exit::new(1, anyhow!(output::failure_text(&moved.report).unwrap_or_default())).with(&view).told()),
    }
}

fn pki_init(ctx: &Ctx, out: &Path, hosts: &[String], force: bool, days: u32) -> Done {
    let mut specs = Vec::new();
    for h in hosts {
        let (name, ips) = h.split_once('=').ok_or_else(|| Exit::new(2, anyhow!("--host {h}: expected NAME=IP[,IP...]")))?;
        let addresses = ips
            .split(',')
            .map(|ip| ip.trim().parse())
            .collect::<Result<Vec<std::net::IpAddr>, _>>()
            .map_err(|e| Exit::new(2, anyhow!("--host {h}: {e}")))?;
        specs.push(tern_transport::pki::HostSpec { name: name.to_string(), addresses });
    }
    let files = tern_transport::pki::init_with(out, &specs, force, days).map_err(|e| match e {
        e @ (tern_transport::pki::PkiError::BadName(_) | tern_transport::pki::PkiError::Reserved(_) | tern_transport::pki::PkiError::BadDays(_)) => {
            Exit::new(2, anyhow::Error::from(e))
        }
        e => Exit::new(1, anyhow::Error::from(e)),
    })?;
    if !ctx.json {
        println!("wrote {} files to {}", files.len(), out.display());
    }
    Ok(ctx.doc(&view::Written { dir: out, files: &files }))
}

/// `tern completions SHELL`: clap_complete's script for the command line's
/// own definitions (not a `--json` document: the script is the output).
fn completions(shell: clap_complete::Shell) -> Done {
    use std::io::Write;
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut Cli::command(), "tern", &mut script);
    match std::io::stdout().lock().write_all(&script) {
        // `tern completions bash | head`: the reader had enough.
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(Exit::new(1, anyhow!("writing the script: {e}"))),
        _ => Ok(None),
    }
}

/// `tern man`: a page for `tern` and for every subcommand, as clap_mangen
/// renders the command line's own definitions.
fn man(ctx: &Ctx, dir: &Path) -> Done {
    let files = man_pages(dir).map_err(|e| Exit::new(1, anyhow!("writing the manual pages into {}: {e}", dir.display())))?;
    if !ctx.json {
        for f in &files {
            println!("{}", f.display());
        }
    }
    Ok(ctx.doc(&view::Written { dir, files: &files }))
}

fn man_pages(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    fn write(cmd: &clap::Command, dir: &Path, files: &mut Vec<PathBuf>) -> std::io::Result<()> {
        let source = format!("tern {}", env!("CARGO_PKG_VERSION"));
        files.push(clap_mangen::Man::new(cmd.clone()).source(source).generate_to(dir)?);
        for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
            write(sub, dir, files)?;
        }
        Ok(())
    }
    std::fs::create_dir_all(dir)?;
    let mut cmd = Cli::command().disable_help_subcommand(true);
    cmd.build();
    let mut files = Vec::new();
    write(&cmd, dir, &mut files)?;
    Ok(files)
}

async fn probe(ctx: &Ctx, from: &str, to: &str, bytes: u64) -> Done {
    let inv = inventory::Inventory::load(ctx.inventory.as_deref()).map_err(|e| Exit::new(2, e))?;
    let target = inv.host(to).map_err(|e| Exit::new(2, e))?;
    let source = inv.host(from).map_err(|e| Exit::new(2, e))?;
    if from == to {
        return Err(Exit::new(2, anyhow!("--from and --to name the same host")));
    }
    let (_endpoint, session) = cluster::connect(&inv, source).await?;
    let req = tern_proto::ProbeRequest { target: tern_proto::Peer { name: target.name.clone(), address: target.address.to_string() }, bytes };
    if !ctx.quiet {
        eprintln!("sending {} from {from} to {to} ...", output::bytes(bytes));
    }
    // As long as the slowest link worth measuring (1 MiB/s) needs.
    let limit = std::time::Duration::from_secs(90 + bytes / (1 << 20));
    let (mut send, mut recv) = session.open(&tern_proto::Request::Probe(req)).await?;
    let _ = send.finish();
    let r = match session.read::<tern_proto::Response>(&mut recv, limit).await? {
        tern_proto::Response::Probe(r) => r,
        tern_proto::Response::Error(e) => return Err(Exit::new(1, anyhow!("{from}: {}", e.message))),
        other => return Err(Exit::new(1, anyhow!("{from} answered {other:?}"))),
    };
    let secs = (r.ms as f64 / 1000.0).max(1e-3);
    let mbit = r.bytes as f64 * 8.0 / secs / 1e6;
    if !ctx.json {
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
    Ok(ctx.doc(&view::Probe { report: &r, mbit_per_s: (mbit * 10.0).round() / 10.0 }))
}

async fn hosts(ctx: &Ctx) -> Done {
    let (_, cluster) = survey(ctx).await?;
    let down: Vec<String> = cluster.hosts.iter().filter_map(|h| h.state.as_ref().err().map(|e| format!("{}: {e}", h.entry.name))).collect();
    let view = view::Hosts {
        hosts: cluster
            .hosts
            .iter()
            .map(|h| {
                let (name, address) = (h.entry.name.as_str(), h.entry.address);
                match &h.state {
                    Ok(s) => view::HostRow {
                        name,
                        address,
                        reachable: true,
                        facts: Some(&s.facts),
                        containers: Some(s.containers.len()),
                        cordoned: Some(s.facts.status.cordon.is_some()),
                        cordon: s.facts.status.cordon.as_ref().map(view::CordonJson::new),
                        error: None,
                    },
                    Err(e) => {
                        view::HostRow { name, address, reachable: false, facts: None, containers: None, cordoned: None, cordon: None, error: Some(e) }
                    }
                }
            })
            .collect(),
    };
    if !ctx.json {
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
                        maintenance::column(f.status.cordon.as_ref()),
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
        for h in &cluster.hosts {
            if let Ok(Some(c)) = h.state.as_ref().map(|s| s.facts.status.cordon.as_ref()) {
                println!("{} is cordoned {}: `tern uncordon {}` lets migrations land there again", h.entry.name, c.describe(), h.entry.name);
            }
        }
    }
    if !down.is_empty() {
        // The table's DOWN rows say it.
        return Err(Exit::new(1, anyhow!("not every agent answered: {}", down.join("; "))).with(&view).told());
    }
    Ok(ctx.doc(&view))
}

async fn ps(ctx: &Ctx) -> Done {
    let (_, cluster) = survey(ctx).await?;
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
                    all.push(view::ContainerRow { host: &h.entry.name, container: c });
                }
            }
            Err(e) => eprintln!("tern: {} is unreachable: {e}", h.entry.name),
        }
    }
    if !ctx.json {
        print!("{}", output::table(&["host", "container", "state", "address", "network", "tcp", "memory", "files", "image"], &rows));
    }
    Ok(ctx.doc(&view::Ps { containers: all }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_line_is_well_formed_and_named_tern() {
        Cli::command().debug_assert();
        assert_eq!(Cli::command().get_name(), "tern");
        let v = Cli::command().render_version();
        assert!(v.starts_with("tern "), "{v}");
    }

    #[test]
    fn quiet_and_json_are_global() {
        let cli = Cli::try_parse_from(["tern", "migrate", "c", "--to", "b", "-q", "--json"]).unwrap();
        assert!(cli.quiet && cli.json);
        let cli = Cli::try_parse_from(["tern", "--quiet", "hosts"]).unwrap();
        assert!(cli.quiet && !cli.json);
        assert!(Cli::try_parse_from(["tern", "completions", "fish"]).is_ok());
        assert!(Cli::try_parse_from(["tern", "completions", "tcsh"]).is_err());
        let cli = Cli::try_parse_from(["tern", "man"]).unwrap();
        assert!(matches!(cli.cmd, Cmd::Man { ref dir } if dir == Path::new(".")));
    }

    #[test]
    fn cordon_and_uncordon_take_a_host_and_a_reason() {
        let cli = Cli::try_parse_from(["tern", "cordon", "client2", "--reason", "kernel upgrade"]).unwrap();
        assert!(matches!(cli.cmd, Cmd::Cordon { ref host, ref reason } if host == "client2" && reason == "kernel upgrade"));
        let cli = Cli::try_parse_from(["tern", "cordon", "client2"]).unwrap();
        assert!(matches!(cli.cmd, Cmd::Cordon { ref reason, .. } if reason == maintenance::DEFAULT_REASON));
        let cli = Cli::try_parse_from(["tern", "uncordon", "client2", "--json"]).unwrap();
        assert!(cli.json && matches!(cli.cmd, Cmd::Uncordon { ref host } if host == "client2"));
        assert!(Cli::try_parse_from(["tern", "cordon"]).is_err());
        assert!(Cli::try_parse_from(["tern", "uncordon", "a", "b"]).is_err());
    }

    #[test]
    fn post_copy_takes_an_action_and_a_container() {
        let cli = Cli::try_parse_from(["tern", "post-copy"]).unwrap();
        assert!(matches!(cli.cmd, Cmd::PostCopy { cmd: None }));
        let cli = Cli::try_parse_from(["tern", "post-copy", "give-up", "db", "--from", "client1"]).unwrap();
        assert!(
            matches!(cli.cmd, Cmd::PostCopy { cmd: Some(PostCopyCmd::GiveUp { ref container, ref from }) } if container == "db" && from.as_deref() == Some("client1"))
        );
        assert!(Cli::try_parse_from(["tern", "post-copy", "resume"]).is_err());
    }

    #[test]
    fn evacuate_takes_parallel_and_fail_fast() {
        let cli = Cli::try_parse_from(["tern", "evacuate", "client1"]).unwrap();
        assert!(matches!(cli.cmd, Cmd::Evacuate { batch: BatchArgs { parallel: 1, fail_fast: false, .. }, .. }));
        let cli = Cli::try_parse_from(["tern", "evacuate", "client1", "--parallel", "4", "--fail-fast", "--json"]).unwrap();
        assert!(matches!(cli.cmd, Cmd::Evacuate { ref host, batch: BatchArgs { parallel: 4, fail_fast: true, .. }, .. } if host == "client1"));
        assert!(Cli::try_parse_from(["tern", "evacuate", "client1", "--parallel", "0"]).is_err());
        assert!(Cli::try_parse_from(["tern", "evacuate", "client1", "--parallel", "x"]).is_err());
    }

    #[test]
    fn return_takes_a_host_parallel_and_dry_run() {
        let cli = Cli::try_parse_from(["tern", "return", "client1"]).unwrap();
        assert!(
            matches!(cli.cmd, Cmd::Return { ref host, batch: BatchArgs { parallel: 1, dry_run: false, fail_fast: false, .. }, .. } if host == "client1")
        );
        let cli = Cli::try_parse_from(["tern", "return", "client1", "--parallel", "3", "--dry-run", "--json"]).unwrap();
        assert!(cli.json && matches!(cli.cmd, Cmd::Return { batch: BatchArgs { parallel: 3, dry_run: true, .. }, .. }));
        assert!(Cli::try_parse_from(["tern", "return"]).is_err());
        assert!(Cli::try_parse_from(["tern", "return", "client1", "--parallel", "0"]).is_err());
    }

    #[test]
    fn migrate_and_evacuate_take_a_bandwidth_cap() {
        let bw = |args: &[&str]| match Cli::try_parse_from(args).map(|c| c.cmd) {
            Ok(Cmd::Migrate { transfer, precopy, .. } | Cmd::Evacuate { transfer, precopy, .. }) => Ok(transfer.options(&precopy, true).bandwidth),
            Ok(_) => unreachable!(),
            Err(e) => Err(e.to_string()),
        };
        assert_eq!(bw(&["tern", "migrate", "c", "--to", "b"]), Ok(0));
        assert_eq!(bw(&["tern", "migrate", "c", "--to", "b", "--bandwidth", "200Mbit"]), Ok(25_000_000));
        assert_eq!(bw(&["tern", "evacuate", "client1", "--bandwidth", "1Gbit"]), Ok(125_000_000));
        let e = bw(&["tern", "migrate", "c", "--to", "b", "--bandwidth", "200Mbps"]).unwrap_err();
        assert!(e.contains("Mbps") && e.contains("Mbit"), "{e}");
        assert!(bw(&["tern", "migrate", "c", "--to", "b", "--bandwidth", "200"]).is_err(), "a unit is needed");
    }

    #[test]
    fn force_compat_is_repeatable_on_every_moving_command_and_names_what_it_refuses() {
        use tern_proto::compat::ForceField::{Cgroups, OciRuntime, Podman};
        let forced = |args: &[&str]| match Cli::try_parse_from(args).map(|c| c.cmd) {
            Ok(Cmd::Check { mv } | Cmd::Migrate { mv, .. }) => Ok(mv.force.force_compat),
            Ok(Cmd::Evacuate { batch, .. } | Cmd::Return { batch, .. }) => Ok(batch.force.force_compat),
            Ok(_) => unreachable!(),
            Err(e) => Err(e.to_string()),
        };
        for cmd in
            [&["tern", "check", "c", "--to", "b"][..], &["tern", "migrate", "c", "--to", "b"], &["tern", "evacuate", "a"], &["tern", "return", "a"]]
        {
            let with = |extra: &[&str]| forced(&[cmd, extra].concat());
            assert_eq!(with(&[]), Ok(vec![]));
            assert_eq!(with(&["--force-compat", "podman", "--force-compat", "oci-runtime,cgroups"]), Ok(vec![Podman, OciRuntime, Cgroups]));
            let e = with(&["--force-compat", "arch"]).unwrap_err();
            assert!(e.contains("arch cannot be forced: process images hold machine code"), "{e}");
            let e = with(&["--force-compat", "podmn"]).unwrap_err();
            assert!(e.contains("the fields that can: podman, oci-runtime, cgroups, criu, cpu-flags, network-backend"), "{e}");
        }
        // Evacuate and return carry it into every move's options.
        let Ok(Cmd::Evacuate { batch, transfer, precopy, .. }) =
            Cli::try_parse_from(["tern", "evacuate", "a", "--force-compat", "criu"]).map(|c| c.cmd)
        else {
            unreachable!()
        };
        let ask = batch.ask("a".into(), vec![], transfer.options(&precopy, true));
        assert_eq!(ask.opts.force, vec![tern_proto::compat::ForceField::Criu]);
    }

    #[test]
    fn json_is_asked_before_a_double_dash_only() {
        let args = |v: &[&str]| v.iter().map(std::ffi::OsString::from).collect::<Vec<_>>().into_iter();
        assert!(json_asked(args(&["migrate", "--bogus", "--json"])));
        assert!(!json_asked(args(&["migrate", "--", "--json"])));
        assert!(!json_asked(args(&["hosts"])));
    }

    #[test]
    fn usage_errors_read_in_one_line() {
        let e = Cli::try_parse_from(["tern", "hosts", "--bogus"]).err().unwrap();
        let msg = usage_message(&e);
        assert!(msg.contains("--bogus") && !msg.starts_with("error") && !msg.contains('\n'), "{msg}");
        assert_eq!(e.exit_code(), 2);
        let e = Cli::try_parse_from(["tern", "--json"]).err().unwrap();
        assert!(usage_message(&e).contains("subcommand"), "{}", usage_message(&e));
    }

    #[test]
    fn tern_log_before_rust_log() {
        assert_eq!(log_spec(Some("debug".into()), Some("trace".into())), "debug");
        assert_eq!(log_spec(None, Some("trace".into())), "trace");
        assert_eq!(log_spec(Some(" ".into()), Some("info".into())), "info");
        assert_eq!(log_spec(None, None), "warn");
    }

    #[test]
    fn man_pages_for_tern_and_every_subcommand() {
        let dir = std::env::temp_dir().join(format!("tern-man-{}", std::process::id()));
        let files = man_pages(&dir).unwrap();
        let names: Vec<String> = files.iter().map(|f| f.file_name().unwrap().to_string_lossy().into_owned()).collect();
        for want in [
            "tern.1",
            "tern-migrate.1",
            "tern-evacuate.1",
            "tern-pki.1",
            "tern-pki-init.1",
            "tern-pki-issue.1",
            "tern-pki-revoke.1",
            "tern-completions.1",
            "tern-cordon.1",
            "tern-uncordon.1",
            "tern-return.1",
            "tern-man.1",
        ] {
            assert!(names.iter().any(|n| n == want), "{want} missing: {names:?}");
        }
        assert!(!names.iter().any(|n| n.contains("help")), "{names:?}");
        let page = std::fs::read_to_string(dir.join("tern-migrate.1")).unwrap();
        assert!(page.contains("max\\-downtime") && page.contains("quiet"), "{page}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn completions_name_tern_and_its_subcommands() {
        let mut out = Vec::new();
        clap_complete::generate(clap_complete::Shell::Bash, &mut Cli::command(), "tern", &mut out);
        let script = String::from_utf8(out).unwrap();
        assert!(script.contains("_tern()") && script.contains("evacuate") && script.contains("--quiet"), "{script}");
    }
}
