//! The seam between migration logic and the container engine.
//!
//! [`Engine`] is everything the agent asks of Podman (and, through it, of
//! runc and CRIU). [`PodmanCli`] drives the real `podman` binary; unit tests
//! put a fake behind the same trait.

use async_trait::async_trait;
use serde::Deserialize;
use std::net::IpAddr;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};
use tern_proto::facts::{Attachment, ContainerInfo, PublishedPort, TcpConnection};
use tern_proto::network::NetworkDef;
use tokio::process::Command;

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The command ran and exited unsuccessfully. `code` is its exit code
    /// (`None` when a signal ended it), the fact callers decide on;
    /// `status` and `stderr` are only for people to read.
    #[error("`{cmd}` failed ({status}): {stderr}")]
    Failed { cmd: String, code: Option<i32>, status: String, stderr: String },
    #[error("`{cmd}` did not finish within {secs} s and was killed")]
    Timeout { cmd: String, secs: u64 },
    #[error("cannot run `{cmd}`: {source}; is podman installed (scripts/install-deps.sh)?")]
    Spawn { cmd: String, source: std::io::Error },
    #[error("`{cmd}` printed output that could not be parsed: {detail}")]
    Parse { cmd: String, detail: String },
}

pub type Result<T> = std::result::Result<T, EngineError>;

/// The annotation runc reads a container's CRIU options file from.
pub const CRIU_OPTIONS_ANNOTATION: &str = "org.criu.config";

/// Options for a checkpoint.
#[derive(Debug, Clone, Copy, Default)]
pub struct CheckpointOpts {
    pub tcp_established: bool,
    /// Dump on top of the container's `pre-checkpoint` folder (Podman's
    /// `--with-previous`): only pages written since it are dumped.
    pub with_previous: bool,
    /// The container goes on running after the dump (Podman's
    /// `--leave-running`); it is paused only while CRIU dumps.
    pub leave_running: bool,
    /// A lazy dump (post-copy): it lasts until the target has every page,
    /// however long a lost link keeps it waiting; the agent bounds it.
    pub lazy: bool,
    /// Dump and restore file locks (Podman's `--file-locks`): databases
    /// that lock their files need it.
    pub file_locks: bool,
}

/// What the agent needs from the container engine.
#[async_trait]
pub trait Engine: Send + Sync + 'static {
    /// Every container on this host.
    async fn list(&self) -> Result<Vec<ContainerInfo>>;
    /// One container, or `None` when no container has that name or ID.
    async fn inspect(&self, name: &str) -> Result<Option<ContainerInfo>>;
    async fn image_exists(&self, image_id: &str) -> Result<bool>;
    /// Writes the image as an archive to `path`.
    async fn image_save(&self, image_id: &str, path: &Path) -> Result<()>;
    async fn image_load(&self, path: &Path) -> Result<()>;
    /// Gives the image `id` the name `name` (restore looks images up by the
    /// name the container was created from).
    async fn image_tag(&self, id: &str, name: &str) -> Result<()>;
    /// Freezes and dumps the container, writing the archive to `path` (which
    /// may be a FIFO) and keeping the checkpoint so [`Engine::restore_local`]
    /// can bring the container back.
    async fn checkpoint_export(&self, name: &str, path: &Path, opts: CheckpointOpts) -> Result<()>;
    /// Restores a checkpointed container from the checkpoint kept on this host.
    async fn restore_local(&self, name: &str, opts: CheckpointOpts) -> Result<()>;
    /// Creates and restores a container from an exported archive. Podman
    /// keeps what the container's folder ([`Engine::bundle_dir`]) already
    /// holds: the images may be there and the archive hold only the rest.
    async fn restore_import(&self, path: &Path, opts: CheckpointOpts) -> Result<()>;
    /// Creates and restores a container from a stored checkpoint's archive
    /// at `path`: as the container it was, or under `name` with a new ID and
    /// address (a replica). The default cannot.
    async fn restore_archive(&self, path: &Path, name: Option<&str>, opts: CheckpointOpts) -> Result<()> {
        let _ = (name, opts);
        Err(EngineError::Parse { cmd: format!("restore_archive {}", path.display()), detail: "this engine cannot restore stored checkpoints".into() })
    }
    /// A soft-dirty pre-dump of the running container `id` into `dir`
    /// (memory only; it goes on running), through the OCI runtime since
    /// Podman keeps one pre-checkpoint level only. With `parent` (a path
    /// relative to `dir`, as runc requires) it holds only the pages written
    /// since the parent's dump.
    async fn pre_dump(&self, id: &str, dir: &Path, parent: Option<&str>) -> Result<()>;
    /// The container's own folder (Podman's `StaticDir`, "userdata"), where
    /// its checkpoint and pre-checkpoint live.
    async fn container_dir(&self, name: &str) -> Result<std::path::PathBuf>;
    /// The folder Podman will give a container with this ID once it is
    /// created here (its `StaticDir`); `restore --import` keeps what that
    /// folder already holds (`target/inplace.rs`).
    async fn bundle_dir(&self, id: &str) -> Result<std::path::PathBuf>;
    /// Removes a container and its kept checkpoint.
    async fn remove(&self, name: &str, force: bool) -> Result<()>;
    /// Every named volume on this host.
    async fn volumes(&self) -> Result<Vec<String>>;
    /// Removes a named volume no container uses.
    async fn volume_remove(&self, name: &str) -> Result<()>;
    /// What tern reads of `podman info`, for the host facts.
    async fn info(&self) -> Result<PodmanInfo>;
    /// The Podman networks this host defines.
    async fn networks(&self) -> Result<Vec<NetworkDef>>;
    /// The main process of a running container (0 when it has none): one
    /// quick call, for the moment right after a restore.
    async fn main_pid(&self, name: &str) -> Result<u32>;
    /// Points the runtime's CRIU options file for container `id` at
    /// `conf`: runc reads it at the container's next checkpoint (post-copy
    /// puts its lazy dump's options there). The default cannot.
    async fn set_criu_options(&self, id: &str, conf: &Path) -> Result<()> {
        let _ = conf;
        Err(EngineError::Parse { cmd: format!("set_criu_options {id}"), detail: "this engine has no per-container CRIU options".into() })
    }
    /// Pauses (`on`) or unpauses a running container (cgroup freezer).
    async fn pause(&self, name: &str, on: bool) -> Result<()> {
        let _ = on;
        Err(EngineError::Parse { cmd: format!("pause {name}"), detail: "this engine cannot pause".into() })
    }
    /// [`Engine::inspect`], with what only this host needs to know of the
    /// container: its overlay upper layer. The default knows no layer.
    async fn inspect_here(&self, name: &str) -> Result<Option<Inspected>> {
        Ok(self.inspect(name).await?.map(|info| Inspected { info, upper_dir: None }))
    }
}

/// A container as inspected here: what peers may learn of it, and what is
/// this host's alone.
#[derive(Debug, Clone)]
pub struct Inspected {
    pub info: ContainerInfo,
    /// Its overlay upper layer (its file system changes), where its storage
    /// has one (`rootfs.rs`).
    pub upper_dir: Option<std::path::PathBuf>,
}

/// The real thing: the `podman` command line, and `runc` for what Podman
/// cannot do (chained pre-dumps, dumps that leave the container running).
pub struct PodmanCli {
    program: String,
    args: Vec<String>,
    runc: String,
    runc_args: Vec<String>,
}

/// Long operations (dumps and restores of large containers) get this long.
const SLOW: Duration = Duration::from_secs(600);
/// Everything else.
const QUICK: Duration = Duration::from_secs(60);

impl PodmanCli {
    pub fn new(program: String, args: Vec<String>, runc: String, runc_args: Vec<String>) -> Self {
        PodmanCli { program, args, runc, runc_args }
    }

    async fn run(&self, args: &[&str], limit: Duration) -> Result<Vec<u8>> {
        self.exec(&self.program, &self.args, args, limit).await
    }

    async fn exec(&self, program: &str, global: &[String], args: &[&str], limit: Duration) -> Result<Vec<u8>> {
        let cmd_text = format!("{program} {}", args.join(" "));
        let started = Instant::now();
        let mut cmd = Command::new(program);
        cmd.args(global).args(args).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).kill_on_drop(true);
        let child = cmd.spawn().map_err(|source| EngineError::Spawn { cmd: cmd_text.clone(), source })?;
        let limit = tern_transport::timeouts::scaled(limit);
        let out = match tokio::time::timeout(limit, child.wait_with_output()).await {
            Ok(out) => out.map_err(|source| EngineError::Spawn { cmd: cmd_text.clone(), source })?,
            Err(_) => return Err(EngineError::Timeout { cmd: cmd_text, secs: limit.as_secs() }),
        };
        tracing::debug!(cmd = %cmd_text, ms = started.elapsed().as_millis() as u64, status = %out.status, "ran");
        if !out.status.success() {
            let stderr = String::from_utf8_lossy(&out.stderr);
            let mut text = last_lines(&stderr, 6);
            // CRIU's own reason is in the log runc names, not in stderr.
            if let Some(why) = criu_log_errors(&stderr) {
                text.push_str(&format!("\nCRIU: {why}"));
            }
            return Err(EngineError::Failed { cmd: cmd_text, code: out.status.code(), status: out.status.to_string(), stderr: text });
        }
        Ok(out.stdout)
    }

    async fn run_json<T: serde::de::DeserializeOwned>(&self, args: &[&str]) -> Result<T> {
        let out = self.run(args, QUICK).await?;
        serde_json::from_slice(&out).map_err(|e| EngineError::Parse { cmd: format!("{} {}", self.program, args.join(" ")), detail: e.to_string() })
    }

    /// `podman ... exists`: exit code 0 when the object is there, 1 when it
    /// is not; anything else is an error.
    async fn exists(&self, args: &[&str]) -> Result<bool> {
        match self.run(args, QUICK).await {
            Ok(_) => Ok(true),
            Err(EngineError::Failed { code: Some(1), .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Whether a container has this name or ID.
    async fn container_exists(&self, name: &str) -> Result<bool> {
        self.exists(&["container", "exists", "--", name]).await
    }

    async fn inspect_many(&self, ids: &[String]) -> Result<Vec<Inspected>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut args = vec!["container", "inspect", "--format", "json", "--"];
        args.extend(ids.iter().map(String::as_str));
        let raw: Vec<InspectJson> = self.run_json(&args).await?;
        let nets = self.networks().await?;
        // Sizing their files walks directories: off the async threads.
        tokio::task::spawn_blocking(move || raw.into_iter().map(|r| r.into_info(&nets)).collect())
            .await
            .map_err(|e| EngineError::Parse { cmd: "podman container inspect".into(), detail: format!("sizing the containers' files: {e}") })
    }
}

/// containers/storage's layout: `<graph root>/<driver>-containers/<id>/userdata`.
/// `None` unless `id` is a container ID (hex digits): it comes from the
/// source, and must never name a path of its choosing.
pub fn bundle_path(graph_root: &str, driver: &str, id: &str) -> Option<std::path::PathBuf> {
    let is_id = (12..=128).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_hexdigit());
    let driver_ok = driver.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    (is_id && driver_ok).then(|| Path::new(graph_root).join(format!("{driver}-containers")).join(id).join("userdata"))
}

/// The last error lines of the CRIU log a runtime's error names (`log
/// file: /path/restore.log`), if it can be read.
fn criu_log_errors(stderr: &str) -> Option<String> {
    let path = stderr.lines().find_map(|l| l.trim().strip_prefix("log file: "))?.trim();
    if !path.starts_with('/') || !path.ends_with(".log") {
        return None;
    }
    let log = std::fs::read_to_string(path).ok()?;
    // The first errors say what went wrong; the last ones, that it did.
    let errors: Vec<&str> = log.lines().filter(|l| l.contains("Error") || l.contains("error")).collect();
    if errors.is_empty() {
        return None;
    }
    let mut shown: Vec<&str> = errors.iter().take(3).copied().collect();
    shown.extend(errors.iter().skip(3).rev().take(2).rev());
    Some(shown.join("\n"))
}

fn last_lines(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.trim().lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

fn tcp_flag(opts: CheckpointOpts) -> Option<&'static str> {
    opts.tcp_established.then_some("--tcp-established")
}

// Podman's arguments. Names, IDs and paths can come from a peer (a
// container's or image's name in `Begin`): every option comes first, paths
// are glued to their option (`--export=PATH`), and `--` ends the options
// before names and IDs, so none can ever read as an option.

fn tag_args<'a>(id: &'a str, name: &'a str) -> Vec<&'a str> {
    vec!["image", "tag", "--", id, name]
}

fn checkpoint_args<'a>(name: &'a str, export: &'a str, opts: CheckpointOpts) -> Vec<&'a str> {
    // Uncompressed: tern compresses on the wire where it pays, and the
    // hash base's pages must be seen as CRIU wrote them.
    let mut args = vec!["container", "checkpoint", "--keep", "--compress", "none", export];
    args.extend(tcp_flag(opts));
    if opts.with_previous {
        args.push("--with-previous");
    }
    if opts.leave_running {
        args.push("--leave-running");
    }
    args.extend(lock_flag(opts));
    args.extend(["--", name]);
    args
}

fn lock_flag(opts: CheckpointOpts) -> Option<&'static str> {
    opts.file_locks.then_some("--file-locks")
}

/// A stored checkpoint's restore (`checkpoints.rs`): under `name` with a
/// new ID and a new address (a replica), or as the container it was.
/// `name` is the option glued to its value, `--name=NAME`.
fn restore_archive_args<'a>(import: &'a str, name: Option<&'a str>, opts: CheckpointOpts) -> Vec<&'a str> {
    // No --keep: the archive stays in the store; Podman's unpacked copy of
    // the images is the container's own to drop.
    let mut args = vec!["container", "restore", import];
    if let Some(n) = name {
        args.extend([n, "--ignore-static-ip", "--ignore-static-mac"]);
    }
    args.extend(tcp_flag(opts));
    args.extend(lock_flag(opts));
    args
}

fn restore_local_args(name: &str, opts: CheckpointOpts) -> Vec<&str> {
    let mut args = vec!["container", "restore", "--keep"];
    args.extend(tcp_flag(opts));
    args.extend(["--", name]);
    args
}

fn restore_import_args(import: &str, opts: CheckpointOpts) -> Vec<&str> {
    // --keep: Podman would otherwise delete the images (as large as the
    // container's memory) before it returns, inside the downtime; the
    // target drops them right after (target/inplace.rs), and CRIU's
    // restore.log and statistics stay for the report and for diagnosis.
    let mut args = vec!["container", "restore", "--keep", import];
    args.extend(tcp_flag(opts));
    args
}

fn remove_args(name: &str, force: bool) -> Vec<&str> {
    let mut args = vec!["container", "rm"];
    if force {
        args.extend(["--force", "--time", "0"]);
    }
    args.extend(["--", name]);
    args
}

#[async_trait]
impl Engine for PodmanCli {
    async fn list(&self) -> Result<Vec<ContainerInfo>> {
        let out = self.run(&["ps", "-a", "-q", "--no-trunc"], QUICK).await?;
        let ids: Vec<String> = String::from_utf8_lossy(&out).split_whitespace().map(str::to_string).collect();
        match self.inspect_many(&ids).await {
            Ok(all) => Ok(all.into_iter().map(|c| c.info).collect()),
            // One of them went between the two calls (a migration removed
            // it): `inspect` fails for all; ask for each, skipping the gone.
            Err(EngineError::Failed { .. }) => {
                let mut found = Vec::new();
                for id in &ids {
                    if let Some(c) = self.inspect_here(id).await? {
                        found.push(c.info);
                    }
                }
                Ok(found)
            }
            Err(e) => Err(e),
        }
    }

    async fn inspect(&self, name: &str) -> Result<Option<ContainerInfo>> {
        Ok(self.inspect_here(name).await?.map(|c| c.info))
    }

    async fn inspect_here(&self, name: &str) -> Result<Option<Inspected>> {
        // One podman call for a container that is there. `inspect` fails
        // the same way (exit code 125) whatever went wrong, so only when it
        // fails is Podman asked whether the container exists.
        match self.inspect_many(&[name.to_string()]).await {
            Ok(v) => Ok(v.into_iter().next()),
            Err(e @ EngineError::Failed { .. }) => {
                if self.container_exists(name).await? {
                    Err(e)
                } else {
                    Ok(None)
                }
            }
            Err(e) => Err(e),
        }
    }

    async fn image_exists(&self, image_id: &str) -> Result<bool> {
        self.exists(&["image", "exists", "--", image_id]).await
    }

    async fn image_save(&self, image_id: &str, path: &Path) -> Result<()> {
        let out = format!("--output={}", path.to_string_lossy());
        self.run(&["image", "save", "--format", "oci-archive", &out, "--", image_id], SLOW).await.map(drop)
    }

    async fn image_load(&self, path: &Path) -> Result<()> {
        let input = format!("--input={}", path.to_string_lossy());
        self.run(&["image", "load", &input], SLOW).await.map(drop)
    }

    async fn image_tag(&self, id: &str, name: &str) -> Result<()> {
        self.run(&tag_args(id, name), QUICK).await.map(drop)
    }

    async fn pause(&self, name: &str, on: bool) -> Result<()> {
        self.run(&[if on { "pause" } else { "unpause" }, "--", name], QUICK).await.map(drop)
    }

    async fn set_criu_options(&self, id: &str, conf: &Path) -> Result<()> {
        // runc takes the file from the `org.criu.config` annotation, which
        // it keeps among the labels of its state (`<root>/<id>/state.json`);
        // Podman cannot change a running container's annotations.
        let root = self.runc_args.windows(2).find(|w| w[0] == "--root").map_or("/run/runc", |w| w[1].as_str());
        if id.is_empty() || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(EngineError::Parse { cmd: "set_criu_options".into(), detail: format!("{id:?} is not a container ID") });
        }
        let path = Path::new(root).join(id).join("state.json");
        let cmd = format!("edit {}", path.display());
        let parse = |detail: String| EngineError::Parse { cmd: cmd.clone(), detail };
        let text = std::fs::read(&path).map_err(|e| parse(e.to_string()))?;
        let mut state: serde_json::Value = serde_json::from_slice(&text).map_err(|e| parse(e.to_string()))?;
        let labels = state
            .get_mut("config")
            .and_then(|c| c.get_mut("labels"))
            .and_then(|l| l.as_array_mut())
            .ok_or_else(|| parse("no config.labels".into()))?;
        let key = format!("{CRIU_OPTIONS_ANNOTATION}=");
        if let Some(theirs) = labels.iter().filter_map(|l| l.as_str()).find(|l| l.starts_with(&key)) {
            let file = &theirs[key.len()..];
            if !file.contains("/tern-") {
                return Err(parse(format!("the container names a CRIU options file of its own ({file})")));
            }
        }
        labels.retain(|l| !l.as_str().is_some_and(|l| l.starts_with(&key)));
        labels.push(serde_json::Value::String(format!("{key}{}", conf.display())));
        let tmp = path.with_extension("json.tern");
        std::fs::write(&tmp, serde_json::to_vec(&state).map_err(|e| parse(e.to_string()))?).map_err(|e| parse(e.to_string()))?;
        std::fs::rename(&tmp, &path).map_err(|e| parse(e.to_string()))
    }

    async fn checkpoint_export(&self, name: &str, path: &Path, opts: CheckpointOpts) -> Result<()> {
        let export = format!("--export={}", path.to_string_lossy());
        // A lazy dump ends when the fill does; killing Podman mid-fill
        // would leave CRIU serving with nobody to report its end.
        let limit = if opts.lazy { Duration::from_secs(7 * 24 * 3600) } else { SLOW };
        self.run(&checkpoint_args(name, &export, opts), limit).await.map(drop)
    }

    async fn pre_dump(&self, id: &str, dir: &Path, parent: Option<&str>) -> Result<()> {
        let d = dir.to_string_lossy();
        // The work path holds CRIU's log and statistics next to the images.
        let mut args = vec!["checkpoint", "--pre-dump", "--image-path", &d, "--work-path", &d];
        if let Some(p) = parent {
            args.extend(["--parent-path", p]);
        }
        args.push(id);
        self.exec(&self.runc, &self.runc_args, &args, SLOW).await.map_err(|e| match e {
            // CRIU's own reason is in its log, not in runc's stderr.
            EngineError::Failed { cmd, code, status, stderr } => {
                let log = std::fs::read_to_string(dir.join("dump.log")).unwrap_or_default();
                let criu = last_lines(&log.lines().filter(|l| l.contains("Error")).collect::<Vec<_>>().join("\n"), 3);
                let stderr = if criu.is_empty() { stderr } else { format!("{stderr}\nCRIU: {criu}") };
                EngineError::Failed { cmd, code, status, stderr }
            }
            other => other,
        })?;
        Ok(())
    }

    async fn container_dir(&self, name: &str) -> Result<std::path::PathBuf> {
        let out = self.run(&["container", "inspect", "--format", "{{.StaticDir}}", "--", name], QUICK).await?;
        let dir = String::from_utf8_lossy(&out).trim().to_string();
        if !dir.starts_with('/') {
            return Err(EngineError::Parse { cmd: format!("podman container inspect {name}"), detail: format!("StaticDir is {dir:?}") });
        }
        Ok(dir.into())
    }

    async fn bundle_dir(&self, id: &str) -> Result<std::path::PathBuf> {
        let info = self.info().await?;
        let parse = |detail: String| EngineError::Parse { cmd: "podman info".into(), detail };
        let store = &info.store;
        let root = store
            .graph_root
            .as_deref()
            .filter(|r| r.starts_with('/'))
            .ok_or_else(|| parse(format!("store.graphRoot is {}", as_json(&store.graph_root))))?;
        let driver = store
            .graph_driver_name
            .as_deref()
            .filter(|d| !d.is_empty())
            .ok_or_else(|| parse(format!("store.graphDriverName is {}", as_json(&store.graph_driver_name))))?;
        bundle_path(root, driver, id).ok_or_else(|| EngineError::Parse { cmd: "bundle_dir".into(), detail: format!("{id:?} is not a container ID") })
    }

    async fn restore_local(&self, name: &str, opts: CheckpointOpts) -> Result<()> {
        self.run(&restore_local_args(name, opts), SLOW).await.map(drop)
    }

    async fn restore_import(&self, path: &Path, opts: CheckpointOpts) -> Result<()> {
        let import = format!("--import={}", path.to_string_lossy());
        self.run(&restore_import_args(&import, opts), SLOW).await.map(drop)
    }

    async fn restore_archive(&self, path: &Path, name: Option<&str>, opts: CheckpointOpts) -> Result<()> {
        let import = format!("--import={}", path.to_string_lossy());
        let name = name.map(|n| format!("--name={n}"));
        self.run(&restore_archive_args(&import, name.as_deref(), opts), SLOW).await.map(drop)
    }

    async fn remove(&self, name: &str, force: bool) -> Result<()> {
        self.run(&remove_args(name, force), QUICK).await.map(drop)
    }

    async fn volumes(&self) -> Result<Vec<String>> {
        let out = self.run(&["volume", "ls", "--quiet"], QUICK).await?;
        Ok(String::from_utf8_lossy(&out).split_whitespace().map(str::to_string).collect())
    }

    async fn volume_remove(&self, name: &str) -> Result<()> {
        self.run(&["volume", "rm", "--", name], QUICK).await.map(drop)
    }

    async fn info(&self) -> Result<PodmanInfo> {
        self.run_json(&["info", "--format", "json"]).await
    }

    async fn main_pid(&self, name: &str) -> Result<u32> {
        let out = self.run(&["container", "inspect", "--format", "{{.State.Pid}}", "--", name], QUICK).await?;
        let text = String::from_utf8_lossy(&out);
        text.trim()
            .parse()
            .map_err(|_| EngineError::Parse { cmd: format!("podman container inspect {name}"), detail: format!("State.Pid is {text:?}") })
    }

    async fn networks(&self) -> Result<Vec<NetworkDef>> {
        let raw: Vec<NetworkJson> = self.run_json(&["network", "ls", "--format", "json"]).await?;
        Ok(raw
            .into_iter()
            .map(|n| NetworkDef {
                name: n.name,
                driver: n.driver,
                subnets: n.subnets.into_iter().map(|s| s.subnet).collect(),
                interface: n.network_interface,
            })
            .collect())
    }
}

/// The fields of `podman info --format json` that tern reads. A field that
/// is missing, null or not a string reads as empty (`None`); only output
/// that is not JSON at all is an error.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct PodmanInfo {
    #[serde(default)]
    pub version: InfoVersion,
    #[serde(default)]
    pub host: InfoHost,
    #[serde(default)]
    pub store: InfoStore,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct InfoVersion {
    /// Podman's version.
    #[serde(default, rename = "Version", deserialize_with = "string_or_none")]
    pub version: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InfoHost {
    #[serde(default)]
    pub oci_runtime: InfoRuntime,
    #[serde(default, deserialize_with = "string_or_none")]
    pub network_backend: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct InfoRuntime {
    #[serde(default, deserialize_with = "string_or_none")]
    pub name: Option<String>,
    /// `runc version 1.1.5` and more lines.
    #[serde(default, deserialize_with = "string_or_none")]
    pub version: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InfoStore {
    #[serde(default, deserialize_with = "string_or_none")]
    pub graph_root: Option<String>,
    #[serde(default, deserialize_with = "string_or_none")]
    pub graph_driver_name: Option<String>,
    /// Where Podman keeps its per-container run files (`resolv.conf`, ...).
    #[serde(default, deserialize_with = "string_or_none")]
    pub run_root: Option<String>,
    /// Where named volumes live.
    #[serde(default, deserialize_with = "string_or_none")]
    pub volume_path: Option<String>,
}

/// A JSON string, or `None` for any other value (as `Value::as_str` read
/// them before these fields were typed).
fn string_or_none<'de, D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Option<String>, D::Error> {
    Ok(match serde_json::Value::deserialize(d)? {
        serde_json::Value::String(s) => Some(s),
        _ => None,
    })
}

/// A field of `podman info` as JSON shows it: `null` when absent.
fn as_json(field: &Option<String>) -> serde_json::Value {
    field.clone().map_or(serde_json::Value::Null, serde_json::Value::String)
}

/// The fields of `podman network ls --format json` that tern reads.
#[derive(Deserialize)]
struct NetworkJson {
    name: String,
    #[serde(default)]
    driver: String,
    #[serde(default)]
    subnets: Vec<SubnetJson>,
    #[serde(default)]
    network_interface: String,
}

#[derive(Deserialize)]
struct SubnetJson {
    #[serde(default)]
    subnet: String,
}

/// The fields of `podman container inspect` that tern reads.
#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct InspectJson {
    id: String,
    name: String,
    /// The image's ID.
    image: String,
    image_name: String,
    state: InspectState,
    network_settings: Option<InspectNet>,
    #[serde(default)]
    graph_driver: Option<InspectGraphDriver>,
    #[serde(default)]
    mounts: Vec<InspectMount>,
    #[serde(default)]
    config: InspectConfig,
    #[serde(default)]
    pod: Option<String>,
    #[serde(default)]
    dependencies: Vec<String>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase")]
struct InspectConfig {
    #[serde(default)]
    labels: Option<std::collections::BTreeMap<String, String>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct InspectGraphDriver {
    #[serde(default)]
    data: std::collections::BTreeMap<String, String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct InspectMount {
    #[serde(default, rename = "Type")]
    kind: String,
    #[serde(default)]
    name: String,
    #[serde(default)]
    source: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct InspectState {
    status: String,
    #[serde(default)]
    pid: i64,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct InspectNet {
    #[serde(default, rename = "IPAddress")]
    ip_address: String,
    #[serde(default)]
    networks: Option<std::collections::BTreeMap<String, InspectNetwork>>,
    /// `"6379/tcp": [{"HostIp": "", "HostPort": "8080"}]`, or null for a
    /// port exposed but not published.
    #[serde(default)]
    ports: Option<std::collections::BTreeMap<String, Option<Vec<InspectBinding>>>>,
}

#[derive(Deserialize)]
struct InspectNetwork {
    #[serde(default, rename = "IPAddress")]
    ip_address: String,
    #[serde(default, rename = "GlobalIPv6Address")]
    ipv6_address: String,
    #[serde(default, rename = "MacAddress")]
    mac: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct InspectBinding {
    #[serde(default)]
    host_ip: String,
    #[serde(default)]
    host_port: String,
}

impl InspectJson {
    /// `nets`: this host's networks, for the drivers of the container's.
    fn into_info(self, nets: &[NetworkDef]) -> Inspected {
        let mut ips: Vec<IpAddr> = Vec::new();
        if let Some(net) = &self.network_settings {
            let all = std::iter::once(net.ip_address.as_str()).chain(net.networks.iter().flatten().map(|(_, n)| n.ip_address.as_str()));
            for ip in all.filter_map(|s| s.parse().ok()) {
                if !ips.contains(&ip) {
                    ips.push(ip);
                }
            }
        }
        let memory_bytes = if self.state.pid > 0 { container_memory(self.state.pid) } else { 0 };
        // What `podman container checkpoint --export` packs besides memory:
        // the overlay's upper layer (the root file system changes) and the
        // named volumes (bind mounts stay behind).
        let volumes: Vec<tern_proto::facts::Volume> = self
            .mounts
            .iter()
            .filter(|m| m.kind == "volume" && !m.name.is_empty())
            .map(|m| tern_proto::facts::Volume { name: m.name.clone(), path: m.source.clone() })
            .collect();
        let upper = self.graph_driver.as_ref().and_then(|g| g.data.get("UpperDir"));
        let roots: Vec<&Path> = upper.into_iter().chain(volumes.iter().map(|v| &v.path)).filter(|p| !p.is_empty()).map(Path::new).collect();
        let files_bytes = files_size(&roots, tern_proto::facts::FILES_COUNTED);
        let networks: Vec<Attachment> = self
            .network_settings
            .iter()
            .flat_map(|n| n.networks.iter().flatten())
            .map(|(name, n)| Attachment {
                network: name.clone(),
                driver: nets.iter().find(|d| d.name == *name).map(|d| d.driver.clone()).unwrap_or_default(),
                ips: [&n.ip_address, &n.ipv6_address].into_iter().filter_map(|s| s.parse().ok()).collect(),
                mac: n.mac.clone(),
            })
            .collect();
        let ports = self.network_settings.as_ref().and_then(|n| n.ports.as_ref()).map(published).unwrap_or_default();
        let pid = u32::try_from(self.state.pid).unwrap_or(0);
        let connections = if pid > 0 { connections_of(pid) } else { Vec::new() };
        let process_uids = if pid > 0 { process_uids(pid) } else { Vec::new() };
        let upper_dir = upper.filter(|p| p.starts_with('/')).map(std::path::PathBuf::from);
        let systemd_unit = self.config.labels.as_ref().and_then(|l| l.get("PODMAN_SYSTEMD_UNIT")).filter(|u| !u.is_empty()).cloned();
        let info = ContainerInfo {
            process_uids,
            pid,
            networks,
            ports,
            connections,
            files_bytes,
            volumes,
            name: self.name,
            id: self.id,
            image: self.image_name,
            image_id: self.image,
            state: self.state.status,
            ips,
            memory_bytes,
            systemd_unit,
            pod: self.pod.filter(|p| !p.is_empty()),
            dependencies: self.dependencies,
        };
        Inspected { info, upper_dir }
    }
}

/// The published ports of `podman inspect`'s `NetworkSettings.Ports`.
fn published(ports: &std::collections::BTreeMap<String, Option<Vec<InspectBinding>>>) -> Vec<PublishedPort> {
    let mut out = Vec::new();
    for (key, bindings) in ports {
        let (port, protocol) = key.split_once('/').unwrap_or((key.as_str(), "tcp"));
        let Ok(container_port) = port.parse() else { continue };
        for b in bindings.iter().flatten() {
            if let Ok(host_port) = b.host_port.parse() {
                out.push(PublishedPort { host_ip: b.host_ip.clone(), host_port, container_port, protocol: protocol.to_string() });
            }
        }
    }
    out
}

/// The users other than root that the processes in the PID namespace of
/// `pid` run as (real, effective, saved or file system uid). Empty for a
/// container with a user namespace of its own: CRIU dumps those from
/// inside it (seen here: `--uidmap` containers checkpoint without
/// CAP_SYS_RESOURCE).
pub fn process_uids(pid: u32) -> Vec<u32> {
    let own_userns = std::fs::read_link("/proc/self/ns/user").ok();
    if own_userns.is_some() && std::fs::read_link(format!("/proc/{pid}/ns/user")).ok() != own_userns {
        return Vec::new();
    }
    let Ok(ns) = std::fs::read_link(format!("/proc/{pid}/ns/pid")) else { return Vec::new() };
    let mut uids: Vec<u32> = Vec::new();
    let Ok(all) = std::fs::read_dir("/proc") else { return uids };
    for entry in all.flatten() {
        let p = entry.path();
        if !entry.file_name().to_string_lossy().bytes().all(|b| b.is_ascii_digit()) || std::fs::read_link(p.join("ns/pid")).ok().as_ref() != Some(&ns)
        {
            continue;
        }
        let status = std::fs::read_to_string(p.join("status")).unwrap_or_default();
        let line = status.lines().find_map(|l| l.strip_prefix("Uid:")).unwrap_or("");
        uids.extend(line.split_whitespace().filter_map(|u| u.parse::<u32>().ok()).filter(|u| *u != 0));
    }
    uids.sort_unstable();
    uids.dedup();
    uids
}

/// The established TCP connections in the network namespace of `pid`.
pub fn connections_of(pid: u32) -> Vec<TcpConnection> {
    ["tcp", "tcp6"]
        .iter()
        .filter_map(|f| std::fs::read_to_string(format!("/proc/{pid}/net/{f}")).ok())
        .flat_map(|text| tern_proto::network::established(&text))
        .collect()
}

/// Bytes of file data under `roots`, symbolic links not followed, walking
/// at most `limit` entries (past that, what was counted: a lower bound).
/// Unreadable parts count as empty.
fn files_size(roots: &[&Path], limit: usize) -> u64 {
    let mut total = 0u64;
    let mut seen = 0usize;
    let mut dirs: Vec<std::path::PathBuf> = roots.iter().map(|p| p.to_path_buf()).collect();
    while let Some(dir) = dirs.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else { continue };
        for entry in entries.flatten() {
            seen += 1;
            if seen > limit {
                return total;
            }
            let Ok(meta) = entry.metadata() else { continue };
            if meta.is_dir() {
                dirs.push(entry.path());
            } else if meta.is_file() {
                total += meta.len();
            }
        }
    }
    total
}

/// Anonymous memory in the cgroup of process `pid` (0 when unreadable).
fn container_memory(pid: i64) -> u64 {
    let Ok(cgroups) = std::fs::read_to_string(format!("/proc/{pid}/cgroup")) else { return 0 };
    memory_stat_paths(&cgroups).into_iter().find_map(|(path, key)| Some(anon_bytes(&std::fs::read_to_string(path).ok()?, key))).unwrap_or(0)
}

/// Where a process's memory statistics are, from its `/proc/PID/cgroup`:
/// the v1 memory controller's `memory.stat` (key `total_rss`) or the
/// unified hierarchy's (key `anon`), whichever this host has.
fn memory_stat_paths(cgroups: &str) -> Vec<(std::path::PathBuf, &'static str)> {
    let mut out = Vec::new();
    for line in cgroups.lines() {
        let mut parts = line.splitn(3, ':');
        let (Some(_), Some(controllers), Some(path)) = (parts.next(), parts.next(), parts.next()) else { continue };
        let path = path.trim_start_matches('/');
        if controllers.split(',').any(|c| c == "memory") {
            out.push((Path::new("/sys/fs/cgroup/memory").join(path).join("memory.stat"), "total_rss"));
        } else if controllers.is_empty() {
            out.push((Path::new("/sys/fs/cgroup").join(path).join("memory.stat"), "anon"));
        }
    }
    out
}

fn anon_bytes(stat: &str, key: &str) -> u64 {
    stat.lines().find_map(|l| l.strip_prefix(key)?.strip_prefix(' ')?.trim().parse().ok()).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_files_without_following_links_and_within_the_bound() {
        let dir = std::env::temp_dir().join(format!("tern-files-size-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("a/b")).unwrap();
        std::fs::write(dir.join("a/one"), vec![1u8; 1000]).unwrap();
        std::fs::write(dir.join("a/b/two"), vec![2u8; 24]).unwrap();
        std::os::unix::fs::symlink("/usr", dir.join("a/usr")).unwrap();
        assert_eq!(files_size(&[dir.as_path()], 100), 1024);
        assert!(files_size(&[dir.as_path()], 1) < 1024, "the bound stops the walk");
        assert_eq!(files_size(&[Path::new("/nonexistent/tern")], 100), 0);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn inspect_output_names_the_upper_layer_and_volumes() {
        let raw = r#"[{"Id":"abc","Name":"v","Image":"i","ImageName":"n","State":{"Status":"exited"},
            "GraphDriver":{"Name":"overlay","Data":{"UpperDir":"/nonexistent/upper"}},
            "Mounts":[{"Type":"volume","Source":"/nonexistent/vol"},{"Type":"bind","Source":"/"}]}]"#;
        let v: Vec<InspectJson> = serde_json::from_str(raw).unwrap();
        assert_eq!(v[0].graph_driver.as_ref().unwrap().data["UpperDir"], "/nonexistent/upper");
        assert_eq!(v[0].mounts.len(), 2);
        // The bind mount of / is not counted: nothing else exists here.
        let c = v.into_iter().next().unwrap().into_info(&[]);
        assert_eq!(c.info.files_bytes, 0);
        assert_eq!(c.upper_dir.as_deref(), Some(Path::new("/nonexistent/upper")));
    }

    #[test]
    fn parses_podman_inspect_output() {
        let raw = r#"[{"Id":"abc","Name":"demo1","Image":"sha256img","ImageName":"localhost/tern-busybox:latest",
            "State":{"Status":"running","Running":true},
            "Config":{"Labels":{"PODMAN_SYSTEMD_UNIT":"container-demo1.service","other":"x"}},
            "NetworkSettings":{"IPAddress":"","Networks":{"podman":{"IPAddress":"203.0.113.7","MacAddress":"ae:4e:0b:b6:6b:4b"}},
                "Ports":{"6379/tcp":[{"HostIp":"","HostPort":"8080"}],"9000/udp":null}}}]"#;
        let v: Vec<InspectJson> = serde_json::from_str(raw).unwrap();
        let nets =
            [NetworkDef { name: "podman".into(), driver: "bridge".into(), subnets: vec!["203.0.113.0/24".into()], interface: "podman0".into() }];
        let info = v.into_iter().next().unwrap().into_info(&nets).info;
        assert_eq!(info.name, "demo1");
        assert_eq!(info.systemd_unit.as_deref(), Some("container-demo1.service"));
        assert_eq!(info.image_id, "sha256img");
        assert_eq!(info.ips, vec!["203.0.113.7".parse::<IpAddr>().unwrap()]);
        assert!(info.is_running());
        assert_eq!(info.networks[0].driver, "bridge");
        assert_eq!(info.networks[0].mac, "ae:4e:0b:b6:6b:4b");
        assert_eq!(info.ports, vec![PublishedPort { host_ip: String::new(), host_port: 8080, container_port: 6379, protocol: "tcp".into() }]);
    }

    #[test]
    fn finds_a_containers_memory_statistics() {
        let hybrid = "12:memory:/libpod_parent/libpod-abc\n1:name=systemd:/libpod_parent/libpod-abc\n0::/libpod_parent/libpod-abc\n";
        let paths = memory_stat_paths(hybrid);
        assert_eq!(paths[0], (Path::new("/sys/fs/cgroup/memory/libpod_parent/libpod-abc/memory.stat").into(), "total_rss"));
        let v2 = "0::/machine.slice/libpod-abc.scope/container\n";
        assert_eq!(memory_stat_paths(v2), vec![(Path::new("/sys/fs/cgroup/machine.slice/libpod-abc.scope/container/memory.stat").into(), "anon")]);
        assert_eq!(anon_bytes("cache 4096\nrss 8192\ntotal_rss 268435456\n", "total_rss"), 256 << 20);
        assert_eq!(anon_bytes("anon 1048576\nanon_thp 0\n", "anon"), 1 << 20);
        assert_eq!(anon_bytes("nonsense", "anon"), 0);
    }

    #[test]
    fn bundle_paths_follow_storage_layout_and_refuse_odd_ids() {
        let id = "8a744f9a5aff4143bb5fd13ef9d5f6331909a857b76e6504dbf7cd61c82d074b";
        assert_eq!(
            bundle_path("/var/lib/containers/storage", "overlay", id),
            Some(format!("/var/lib/containers/storage/overlay-containers/{id}/userdata").into())
        );
        for bad in ["../../etc", "", "abc", "8a744f9a5aff/../x", "8a744f9a5aff4143 "] {
            assert_eq!(bundle_path("/s", "overlay", bad), None, "{bad:?}");
        }
        assert_eq!(bundle_path("/s", "../x", id), None);
    }

    #[test]
    fn names_criu_errors_from_the_log_runc_points_at() {
        let dir = std::env::temp_dir().join(format!("tern-criu-log-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let log = dir.join("restore.log");
        std::fs::write(&log, "(00.1) a\n(00.2) Error (criu/tun.c:85): tun: Unable to create tun\n(00.3) b\n").unwrap();
        let stderr = format!("Error: OCI runtime error: runc: criu failed: type NOTIFY errno 0\nlog file: {}\n", log.display());
        assert_eq!(criu_log_errors(&stderr).unwrap(), "(00.2) Error (criu/tun.c:85): tun: Unable to create tun");
        assert!(criu_log_errors("log file: /etc/passwd").is_none());
        assert!(criu_log_errors("no log here").is_none());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn reads_the_fields_of_podman_info_and_leaves_odd_ones_empty() {
        let raw = r#"{"version":{"Version":"4.3.1"},"host":{"ociRuntime":{"name":"runc","version":"runc version 1.1.5\nspec: 1.0.2"},
            "networkBackend":"netavark"},"store":{"graphRoot":"/var/lib/containers/storage","graphDriverName":7,"volumePath":null}}"#;
        let info: PodmanInfo = serde_json::from_str(raw).unwrap();
        assert_eq!(info.version.version.as_deref(), Some("4.3.1"));
        assert_eq!(info.host.oci_runtime.name.as_deref(), Some("runc"));
        assert_eq!(info.host.network_backend.as_deref(), Some("netavark"));
        assert_eq!(info.store.graph_root.as_deref(), Some("/var/lib/containers/storage"));
        assert_eq!(info.store.graph_driver_name, None, "not a string: empty, as before");
        assert_eq!(info.store.volume_path, None);
        assert_eq!(as_json(&info.store.volume_path).to_string(), "null");
        assert_eq!(as_json(&info.store.graph_root).to_string(), "\"/var/lib/containers/storage\"");
        let empty: PodmanInfo = serde_json::from_str("{}").unwrap();
        assert_eq!(empty.host.oci_runtime.version, None);
        assert!(serde_json::from_str::<PodmanInfo>("not json").is_err());
    }

    /// Podman 5.4.2 (Debian 13, crun and runc) as the Podman 5 tier saw it
    /// (scripts/vm/podman5-byhand.cmd), trimmed to the fields around the
    /// ones tern reads: the names are those of Podman 4.
    #[test]
    fn reads_podman_5_info_and_inspect_output() {
        let info = r#"{"host":{"cgroupManager":"cgroupfs","cgroupVersion":"v2","networkBackend":"netavark",
            "ociRuntime":{"name":"crun","package":"crun_1.21-1_amd64","path":"/usr/bin/crun","version":"crun version 1.21\ncommit: 10269840aa07fb7e6b7e1acff6198692d8ff5c88\nrundir: /run/crun\nspec: 1.0.0"}},
            "store":{"graphDriverName":"overlay","graphRoot":"/var/lib/containers/storage","runRoot":"/run/containers/storage","volumePath":"/var/lib/containers/storage/volumes"},
            "version":{"APIVersion":"5.4.2","Version":"5.4.2"}}"#;
        let info: PodmanInfo = serde_json::from_str(info).unwrap();
        assert_eq!(info.version.version.as_deref(), Some("5.4.2"));
        assert_eq!(info.host.oci_runtime.name.as_deref(), Some("crun"));
        assert!(info.host.oci_runtime.version.as_deref().unwrap().starts_with("crun version 1.21\n"));
        assert_eq!(info.host.network_backend.as_deref(), Some("netavark"));
        assert_eq!(info.store.graph_driver_name.as_deref(), Some("overlay"));
        assert_eq!(info.store.run_root.as_deref(), Some("/run/containers/storage"));
        assert_eq!(info.store.volume_path.as_deref(), Some("/var/lib/containers/storage/volumes"));
        let id = "5872b93e07d4fdf3bcb00a03ce755eda82b08b254e549bf9dd3fb11a58c64881";
        let inspect = format!(
            r#"[{{"Id":"{id}","Name":"c-runc","Image":"042a7ecafdf92b34b6346187d976723a91edb07115ad7cca44ff0ff398524a2c",
            "ImageName":"localhost/tern-busybox:latest","State":{{"OciVersion":"1.2.0","Status":"running","Running":true,"Pid":0,"ConmonPid":2227,
            "CheckpointedAt":"0001-01-01T00:00:00Z","RestoredAt":"0001-01-01T00:00:00Z"}},
            "GraphDriver":{{"Name":"overlay","Data":{{"UpperDir":"/nonexistent/74749f0d/diff","WorkDir":"/nonexistent/74749f0d/work"}}}},
            "Mounts":[],"NetworkSettings":{{"Ports":{{}},"SandboxKey":"/run/netns/netns-0fd4ab10","IPAddress":"203.0.113.4","MacAddress":"76:76:52:8e:dd:33",
            "Networks":{{"podman":{{"EndpointID":"","Gateway":"203.0.113.1","IPAddress":"203.0.113.4","IPPrefixLen":24,"IPv6Gateway":"",
            "GlobalIPv6Address":"","GlobalIPv6PrefixLen":0,"MacAddress":"76:76:52:8e:dd:33","NetworkID":"2f259bab","DriverOpts":null,
            "IPAMConfig":null,"Links":null,"Aliases":["5872b93e07d4"]}}}}}},
            "StaticDir":"/var/lib/containers/storage/overlay-containers/{id}/userdata"}}]"#
        );
        let v: Vec<InspectJson> = serde_json::from_str(&inspect).unwrap();
        let nets =
            [NetworkDef { name: "podman".into(), driver: "bridge".into(), subnets: vec!["203.0.113.0/24".into()], interface: "podman0".into() }];
        let c = v.into_iter().next().unwrap().into_info(&nets);
        assert_eq!(c.info.name, "c-runc");
        assert!(c.info.is_running());
        assert_eq!(c.info.ips, vec!["203.0.113.4".parse::<IpAddr>().unwrap()]);
        assert_eq!(c.info.networks[0].mac, "76:76:52:8e:dd:33");
        assert!(c.info.ports.is_empty());
        assert_eq!(c.upper_dir.as_deref(), Some(Path::new("/nonexistent/74749f0d/diff")));
    }

    #[test]
    fn names_and_ids_come_after_the_end_of_options() {
        let hostile = "--rootfs=/";
        let opts = CheckpointOpts { tcp_established: true, with_previous: true, ..Default::default() };
        let cases: Vec<Vec<&str>> = vec![
            tag_args(hostile, hostile),
            checkpoint_args(hostile, "--export=/x", opts),
            restore_local_args(hostile, opts),
            remove_args(hostile, true),
        ];
        for args in cases {
            let end = args.iter().position(|a| *a == "--").unwrap_or_else(|| panic!("no -- in {args:?}"));
            let first_name = args.iter().position(|a| *a == hostile).unwrap();
            assert!(end < first_name, "{args:?}");
            assert!(args[..end].iter().all(|a| *a != hostile), "{args:?}");
        }
        assert_eq!(tag_args("abc", "localhost/x:1"), ["image", "tag", "--", "abc", "localhost/x:1"]);
        assert_eq!(
            checkpoint_args("web", "--export=/f", opts),
            ["container", "checkpoint", "--keep", "--compress", "none", "--export=/f", "--tcp-established", "--with-previous", "--", "web"]
        );
        // A path glued to its option stays its value whatever it starts with.
        assert_eq!(restore_import_args("--import=-x.tar", CheckpointOpts::default()), ["container", "restore", "--keep", "--import=-x.tar"]);
        assert_eq!(remove_args("web", false), ["container", "rm", "--", "web"]);
        // A replica's name is glued to its option too.
        let locks = CheckpointOpts { file_locks: true, ..Default::default() };
        assert_eq!(
            restore_archive_args("--import=/s/a.tar", Some("--name=-r1"), locks),
            ["container", "restore", "--import=/s/a.tar", "--name=-r1", "--ignore-static-ip", "--ignore-static-mac", "--file-locks"]
        );
        assert_eq!(restore_archive_args("--import=/a", None, CheckpointOpts::default()), ["container", "restore", "--import=/a"]);
        assert!(checkpoint_args("web", "--export=/f", locks).contains(&"--file-locks"));
    }

    #[test]
    fn keeps_only_the_last_lines_of_stderr() {
        assert_eq!(last_lines("a\nb\nc\n", 2), "b\nc");
        assert_eq!(last_lines("", 2), "");
    }
}
