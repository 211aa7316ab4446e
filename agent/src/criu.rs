//! The seam between the agent and the CRIU binary, for what it asks of
//! CRIU directly rather than through Podman and the runtime: the version,
//! `criu check --feature`, and the `criu lazy-pages` daemon beside a lazy
//! restore. [`HostCriu`] runs the real binary; tests put a stand-in behind
//! [`Criu`] so the agent's logic never depends on the host's CRIU.

use async_trait::async_trait;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};
use tokio::process::{Child, Command};

/// What went wrong with CRIU itself.
#[derive(Debug, thiserror::Error)]
pub enum CriuError {
    #[error("cannot start `criu lazy-pages`: {0}")]
    Spawn(std::io::Error),
    #[error("`criu lazy-pages` exited at once ({status}); see {}", log.display())]
    ExitedAtOnce { status: std::process::ExitStatus, log: PathBuf },
    #[error("`criu lazy-pages` did not listen on {} within 5 s", socket.display())]
    NoSocket { socket: PathBuf },
    #[error("`criu lazy-pages` was killed ({0}; fault injected) before the memory was complete")]
    Killed(std::process::ExitStatus),
    #[error("`criu lazy-pages` failed ({status}) before the memory was complete; see {}", log.display())]
    FillFailed { status: std::process::ExitStatus, log: PathBuf },
    #[error("waiting for `criu lazy-pages`: {0}")]
    Wait(std::io::Error),
    #[error("`criu lazy-pages` had not filled the memory after {limit_secs} s (started {started_secs} s ago)")]
    FillTimeout { limit_secs: u64, started_secs: u64 },
}

/// What `criu check --feature NAME` answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FeatureCheck {
    Supported,
    /// CRIU ran and said no; its last line, without the `Warn (file.c:1):` prefix.
    Unsupported(String),
    /// CRIU could not be run.
    NotRun,
}

/// What the agent asks of CRIU directly.
#[async_trait]
pub trait Criu: Send + Sync + 'static {
    /// CRIU's version (`4.2`), `None` when CRIU cannot be run.
    async fn version(&self) -> Option<String>;
    /// `criu check --feature NAME`.
    async fn check_feature(&self, name: &str) -> FeatureCheck;
    /// Starts a lazy-pages daemon serving the images in `folder/checkpoint`,
    /// once it listens on `folder/`[`SOCKET`]; with `page_server`, it takes
    /// the pages from that CRIU page server instead (post-copy).
    async fn lazy_pages(&self, folder: &Path, page_server: Option<std::net::SocketAddr>) -> Result<Box<dyn LazyPages>, CriuError>;
}

/// A lazy-pages daemon filling a restored container's memory.
#[async_trait]
pub trait LazyPages: Send {
    /// Tests: the daemon dies with pages still to fill; the fill then
    /// counts as failed, even if it had finished before the kill landed.
    fn kill(&mut self);
    /// Waits until every page is in place (the daemon exits by itself), at
    /// most `limit`.
    async fn finish(self: Box<Self>, limit: Duration) -> Result<(), CriuError>;
}

/// The socket `criu lazy-pages` listens on, in its work folder.
pub const SOCKET: &str = "lazy-pages.socket";

/// The CRIU binary on `PATH`.
pub struct HostCriu;

async fn output(args: &[&str]) -> Option<(bool, String)> {
    let out = Command::new("criu").args(args).stdin(Stdio::null()).output().await.ok()?;
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    Some((out.status.success(), text))
}

#[async_trait]
impl Criu for HostCriu {
    async fn version(&self) -> Option<String> {
        match output(&["--version"]).await {
            Some((true, text)) => Some(parse_version(&text)).filter(|v| !v.is_empty()),
            _ => None,
        }
    }

    async fn check_feature(&self, name: &str) -> FeatureCheck {
        match output(&["check", "--feature", name]).await {
            Some((true, _)) => FeatureCheck::Supported,
            Some((false, text)) => FeatureCheck::Unsupported(last_message(&text).to_string()),
            None => FeatureCheck::NotRun,
        }
    }

    async fn lazy_pages(&self, folder: &Path, page_server: Option<std::net::SocketAddr>) -> Result<Box<dyn LazyPages>, CriuError> {
        let socket = folder.join(SOCKET);
        let _ = std::fs::remove_file(&socket);
        let mut cmd = Command::new("criu");
        cmd.arg("lazy-pages");
        if let Some(a) = page_server {
            cmd.args(["--page-server", "--address", &a.ip().to_string(), "--port", &a.port().to_string()]);
        }
        let mut child = cmd
            .arg("--images-dir")
            .arg(folder.join("checkpoint"))
            .arg("--work-dir")
            .arg(folder)
            .args(["--log-file", "lazy-pages.log", "-v2"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .map_err(CriuError::Spawn)?;
        let deadline = Instant::now() + tern_transport::timeouts::scaled(Duration::from_secs(5));
        while !socket.exists() {
            if let Ok(Some(status)) = child.try_wait() {
                return Err(CriuError::ExitedAtOnce { status, log: log(folder) });
            }
            if Instant::now() > deadline {
                return Err(CriuError::NoSocket { socket });
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        Ok(Box::new(HostLazyPages { child, log: log(folder), started: Instant::now(), killed: false }))
    }
}

struct HostLazyPages {
    child: Child,
    log: PathBuf,
    started: Instant,
    killed: bool,
}

#[async_trait]
impl LazyPages for HostLazyPages {
    fn kill(&mut self) {
        tracing::error!("fault injected: killing criu lazy-pages before the memory is complete");
        let _ = self.child.start_kill();
        self.killed = true;
    }

    async fn finish(mut self: Box<Self>, limit: Duration) -> Result<(), CriuError> {
        let limit = tern_transport::timeouts::scaled(limit);
        match tokio::time::timeout(limit, self.child.wait()).await {
            Ok(Ok(s)) if self.killed => Err(CriuError::Killed(s)),
            Ok(Ok(s)) if s.success() => Ok(()),
            Ok(Ok(status)) => Err(CriuError::FillFailed { status, log: self.log.clone() }),
            Ok(Err(e)) => Err(CriuError::Wait(e)),
            Err(_) => Err(CriuError::FillTimeout { limit_secs: limit.as_secs(), started_secs: self.started.elapsed().as_secs() }),
        }
    }
}

fn log(folder: &Path) -> PathBuf {
    folder.join("lazy-pages.log")
}

/// The last line CRIU printed, without its `Warn  (file.c:123): ` prefix.
pub fn last_message(text: &str) -> &str {
    let last = text.trim().lines().last().unwrap_or("failed");
    last.split_once("): ").map(|(_, m)| m).unwrap_or(last).trim()
}

/// `criu --version` prints `Version: 4.2` (and sometimes a GitID line).
pub fn parse_version(text: &str) -> String {
    text.lines().find_map(|l| l.trim().strip_prefix("Version:")).map(|v| v.trim().to_string()).unwrap_or_default()
}
