//! A host that drains itself: when the agent is stopped with the system
//! going down, it evacuates this host first, and after the next start it
//! brings back what left (`[self_evacuation]` in the agent's config; off
//! by default).
//!
//! The agent does not plan or drive the moves itself: it runs `tern
//! evacuate` (then `tern return`) as a child, with an inventory whose
//! certificate is this host's *evacuator* certificate (`tern pki issue
//! NAME --evacuator`). That certificate is the whole of the host's
//! authority here: agents let it evacuate this host and bring back what an
//! evacuation took from it, and nothing else (`server::authorize`,
//! `tern_transport::ticket::evacuator_may_sign`). The agent keeps serving
//! while the child runs: it is the source of every move.
//!
//! The stop is held while the evacuation runs, within `limit_secs`:
//! systemd is asked for more time every 5 s (`EXTEND_TIMEOUT_USEC`; keep
//! the unit's `TimeoutStopSec` above the limit all the same). At the
//! limit the child gets SIGINT, as from Ctrl-C: the moves under way roll
//! back and the rest stay here.
//!
//! A marker file (`<state dir>/self-evacuated`) says an evacuation was
//! started by a stop; the next start runs `tern return` until it succeeds
//! (the other hosts may come up later than this one), then removes it.

use crate::config::{SelfEvacuation, WhenStopped};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

const MARKER: &str = "self-evacuated";

/// How `systemctl is-system-running` describes a system going down.
pub fn going_down(is_system_running: &str) -> bool {
    is_system_running.trim() == "stopping"
}

/// Whether this stop calls for an evacuation.
pub async fn wanted(cfg: &SelfEvacuation) -> bool {
    match cfg.on_stop {
        WhenStopped::Off => false,
        WhenStopped::Always => true,
        WhenStopped::Shutdown => {
            let out = tokio::process::Command::new("systemctl").arg("is-system-running").stdin(Stdio::null()).output().await;
            match out {
                Ok(o) => going_down(&String::from_utf8_lossy(&o.stdout)),
                Err(e) => {
                    tracing::info!("cannot ask systemd whether the system is going down ({e}): no evacuation");
                    false
                }
            }
        }
    }
}

/// The command line of the child: `tern --inventory INV evacuate NAME ...`
/// or `... return NAME ...`.
pub fn command_line(cfg: &SelfEvacuation, name: &str, verb: &str) -> Vec<String> {
    let mut v = vec!["--inventory".to_string(), cfg.inventory.display().to_string(), verb.to_string(), name.to_string()];
    v.extend(["--parallel".to_string(), cfg.parallel.to_string()]);
    v.extend(cfg.args.iter().cloned());
    v
}

fn marker(state_dir: &Path) -> PathBuf {
    state_dir.join(MARKER)
}

/// Evacuates this host before the agent stops: runs `tern evacuate` and
/// waits for it, within the limit. Returns when it is over, whatever its
/// outcome (the agent then stops as usual).
pub async fn evacuate(cfg: &SelfEvacuation, name: &str, state_dir: &Path) {
    if let Err(e) = crate::durable::write_atomic(&marker(state_dir), b"evacuated by the agent's stop\n") {
        tracing::warn!("cannot write {}: {e}; the way back after the next start must be asked by hand", marker(state_dir).display());
    }
    let limit = Duration::from_secs(cfg.limit_secs);
    tracing::info!(limit_secs = cfg.limit_secs, "the system is going down: evacuating this host first");
    crate::notify::notify(&format!("STATUS=evacuating this host before it stops (at most {} s)", cfg.limit_secs));
    match run_child(cfg, &command_line(cfg, name, "evacuate"), Some(limit)).await {
        Ok(0) => tracing::info!("this host is evacuated"),
        Ok(code) => tracing::warn!(code, "the evacuation ended with exit code {code}; what did not move stays here and stops with the host"),
        Err(e) => tracing::error!("the evacuation could not run: {e}; the containers stay here and stop with the host"),
    }
}

/// After a start: if the last stop evacuated this host, brings its
/// containers back, trying again every `retry` until it works.
pub async fn return_after_start(cfg: SelfEvacuation, name: String, state_dir: PathBuf, retry: Duration) {
    if !cfg.return_after_start || !marker(&state_dir).exists() {
        return;
    }
    loop {
        tracing::info!("the last stop evacuated this host: bringing its containers back");
        match run_child(&cfg, &command_line(&cfg, &name, "return"), None).await {
            Ok(0) => {
                let _ = std::fs::remove_file(marker(&state_dir));
                tracing::info!("back from the evacuation");
                return;
            }
            Ok(code) => tracing::warn!(code, "`tern return` ended with exit code {code}; trying again in {} s", retry.as_secs()),
            Err(e) => tracing::warn!("`tern return` could not run: {e}; trying again in {} s", retry.as_secs()),
        }
        tokio::time::sleep(retry).await;
    }
}

/// Runs `tern ARGS`, its output in the agent's log; at `limit`, SIGINT
/// (the moves under way roll back), and SIGKILL a minute later.
async fn run_child(cfg: &SelfEvacuation, args: &[String], limit: Option<Duration>) -> std::io::Result<i32> {
    tracing::info!(program = %cfg.tern.display(), ?args, "running");
    let mut child = tokio::process::Command::new(&cfg.tern)
        .args(args)
        .arg("--quiet")
        .stdin(Stdio::null())
        .stdout(Stdio::inherit())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()?;
    let started = Instant::now();
    let mut interrupted: Option<Instant> = None;
    loop {
        // Every 5 s: systemd gives 30 s more (no-op without systemd).
        crate::notify::notify("EXTEND_TIMEOUT_USEC=30000000");
        if let Ok(status) = tokio::time::timeout(Duration::from_secs(5), child.wait()).await {
            return Ok(status?.code().unwrap_or(128));
        }
        match (limit, interrupted) {
            (Some(l), None) if started.elapsed() >= l => {
                tracing::warn!("the evacuation took its {} s: interrupting it (the moves under way roll back)", l.as_secs());
                if let Some(pid) = child.id() {
                    // SAFETY: kill(2) on our own child's pid.
                    unsafe { libc::kill(pid as i32, libc::SIGINT) };
                }
                interrupted = Some(Instant::now());
            }
            (_, Some(at)) if at.elapsed() >= Duration::from_secs(60) => {
                tracing::error!("the evacuation did not stop within 60 s of SIGINT: killing it");
                child.kill().await?;
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_system_going_down_counts() {
        assert!(going_down("stopping\n"));
        for s in ["running\n", "degraded\n", "starting", "maintenance", "offline", ""] {
            assert!(!going_down(s), "{s}");
        }
    }

    #[test]
    fn the_child_is_tern_with_the_evacuator_inventory() {
        let cfg: SelfEvacuation =
            toml::from_str("on_stop = \"always\"\ninventory = \"/etc/tern/evacuate.toml\"\nparallel = 3\nargs = [\"--skip-blocked\"]").unwrap();
        assert_eq!(
            command_line(&cfg, "client1", "evacuate"),
            ["--inventory", "/etc/tern/evacuate.toml", "evacuate", "client1", "--parallel", "3", "--skip-blocked"]
        );
        assert_eq!(cfg.limit_secs, 900);
        assert!(cfg.return_after_start);
        let off: SelfEvacuation = toml::from_str("").unwrap();
        assert_eq!(off.on_stop, WhenStopped::Off);
    }

    #[tokio::test]
    async fn a_return_is_tried_again_until_it_works_and_then_the_marker_goes() {
        let d = tempfile::tempdir().unwrap();
        // A stand-in for tern: fails the first time, succeeds the second.
        let script = d.path().join("tern");
        let count = d.path().join("count");
        std::fs::write(&script, format!("#!/bin/sh\necho x >> {0}\n[ $(wc -l < {0}) -ge 2 ]\n", count.display())).unwrap();
        std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        let cfg = SelfEvacuation { tern: script, ..toml::from_str("on_stop = \"always\"").unwrap() };
        // No marker: nothing runs.
        return_after_start(cfg.clone(), "client1".into(), d.path().to_path_buf(), Duration::from_millis(10)).await;
        assert!(!count.exists());
        std::fs::write(marker(d.path()), b"x").unwrap();
        return_after_start(cfg, "client1".into(), d.path().to_path_buf(), Duration::from_millis(10)).await;
        assert_eq!(std::fs::read_to_string(&count).unwrap().lines().count(), 2);
        assert!(!marker(d.path()).exists());
    }
}
